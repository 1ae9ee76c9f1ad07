//! An intercepted `CONNECT`: bearerd answers `200`, takes the app's TLS handshake with its
//! own certificate for the host, and serves the requests inside (HTTP/2 when the app chose
//! `h2` by ALPN, else HTTP/1.1, as many as the app sends) each through the same request path
//! as a plain proxied request, bound for `https://<CONNECT host>:<port>`. Never a tunnel:
//! an app that will not take bearerd's certificate gets no connection at all.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::{AppBody, Proxy, hyper_server, in_own_version, with_header_map};
use crate::ProxyBody;
use crate::config::{Config, Route};
use crate::error::{ProxyError, respond};
use crate::intercept::Interception;

/// How long the app has for its TLS handshake after bearerd's `200`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A `CONNECT` that bearerd terminates: to a host an `intercept: true` route names and the
/// interception CA may sign for.
pub(super) struct Interceptor {
    proxy: Arc<Proxy>,
    interception: Arc<Interception>,
    /// The `CONNECT` host, lowercase and without brackets: the name the leaf is minted for.
    host: String,
    /// The `CONNECT` host and port, normalized: where every request inside goes.
    authority: Authority,
}

impl Interceptor {
    /// The interceptor for a `CONNECT` to `uri` when `config` has an `intercept: true` route
    /// for its host and port and the CA covers that host; `None`: the `CONNECT` is a tunnel
    /// (a host added by a reload was warned of then).
    pub(super) fn of(proxy: &Proxy, config: &Config, uri: &Uri) -> Option<Self> {
        let interception = proxy.interception.as_ref()?;
        let authority = uri.authority()?;
        let port = authority.port_u16()?;
        let host = super::target::normalize_host(authority.host());
        let named = config
            .routes
            .iter()
            .filter_map(Route::intercepted_host)
            .any(|pattern| pattern.matches(&host, port));
        if !named || !interception.covers(&host) {
            return None;
        }
        let authority = format!("{}:{port}", super::target::bracketed(&host)).parse().ok()?;
        Some(Self {
            proxy: proxy.me.upgrade()?,
            interception: Arc::clone(interception),
            host: host.into_owned(),
            authority,
        })
    }

    /// Answers the `CONNECT` with `200` and, once hyper hands over the connection, takes the
    /// handshake and serves the requests inside on a task of their own.
    pub(super) fn open<B: Send + 'static>(self, request: Request<B>) -> Response<ProxyBody> {
        tokio::spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => self.serve(TokioIo::new(upgraded)).await,
                Err(err) => tracing::debug!(host = %self.host, "CONNECT upgrade failed: {err}"),
            }
        });
        let mut response = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = StatusCode::OK;
        response
    }

    async fn serve(self, io: TokioIo<hyper::upgrade::Upgraded>) {
        let tls = match self.interception.accept_within(&self.host, io, HANDSHAKE_TIMEOUT).await {
            Ok(tls) => tls,
            Err(err) => {
                // Logged once, here: the error names the host (and, for a certificate the app
                // rejected, how to trust bearerd's CA).
                tracing::warn!("{err}");
                return;
            }
        };
        // Not served once shutdown started; else a graceful shutdown waits for it.
        let Some(watcher) = self.proxy.intercepted_watcher() else {
            return;
        };
        let Self {
            proxy, authority, host, ..
        } = self;
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let authority = authority.clone();
            async move {
                let version = request.version();
                let response = match bound_for(request, authority) {
                    Ok(request) => with_header_map(proxy.handle(request, None, None, None).await),
                    Err(err) => respond(&err, None).map(AppBody::Own),
                };
                Ok::<_, Infallible>(in_own_version(version, response))
            }
        });
        let builder = hyper_server();
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%host, "intercepted connection ended: {err}");
        }
    }
}

/// `request`, from inside the tunnel, made absolute-form for the `CONNECT`'s host and port:
/// the TLS connection the app opened is to that host, whatever its `Host` or `:authority`
/// says, so that is where the request goes and what routes and guards see.
fn bound_for<B>(mut request: Request<B>, authority: Authority) -> Result<Request<B>, ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT inside an intercepted tunnel is not supported".into(),
        ));
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    *request.uri_mut() =
        Uri::from_parts(parts).map_err(|err| ProxyError::BadRequest(format!("cannot build upstream URI: {err}")))?;
    Ok(request)
}
