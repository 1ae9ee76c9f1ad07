//! `CONNECT host:port`: a byte tunnel. No token can be added inside TLS that bearerd does
//! not terminate, so the bytes pass unchanged.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ProxyBody;
use crate::config::{Config, ConnectPolicy};
use crate::error::ProxyError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the tunnel, or says why not. The caller answers errors with `Connection: close`.
pub(super) async fn open<B: Send + 'static>(
    config: &Config,
    request: Request<B>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if config.connect == ConnectPolicy::Deny {
        return Err(ProxyError::RouteDenied(
            "CONNECT tunnels are disabled (connect: deny)".into(),
        ));
    }
    let authority = request
        .uri()
        .authority()
        .filter(|authority| authority.port_u16().is_some())
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs a host:port target".into()))?
        .clone();
    let host = super::target::normalize_host(authority.host());
    let port = authority.port_u16().unwrap_or_default();
    let timeout = CONNECT_TIMEOUT.min(config.upstream_timeout);
    let mut upstream = match tokio::time::timeout(timeout, TcpStream::connect((host.as_ref(), port))).await {
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout {
                authority: authority.to_string(),
                timeout,
            });
        }
        Ok(Err(err)) => {
            return Err(ProxyError::UpstreamUnreachable {
                authority: authority.to_string(),
                cause: err.to_string(),
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = upstream.set_nodelay(true);
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%authority, "tunnel ended: {err}");
                }
            }
            Err(err) => tracing::debug!(%authority, "CONNECT upgrade failed: {err}"),
        }
    });
    let mut response = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
