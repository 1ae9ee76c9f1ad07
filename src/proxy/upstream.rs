//! The upstream client: pooled keep-alive connections over plain HTTP/1.1, or HTTPS (rustls)
//! with HTTP/2 when the server offers it by ALPN and HTTP/1.1 otherwise.

use std::error::Error as _;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::ProxyBody;
use crate::error::ProxyError;

const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_mins(1);

/// Sends requests upstream over pooled connections.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

impl Upstream {
    #[must_use]
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(TCP_KEEPALIVE));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            // Offered by ALPN on HTTPS; plain-HTTP upstreams stay on HTTP/1.1.
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Self { client }
    }

    /// Sends `request`; `timeout` bounds connecting plus waiting for the response headers.
    pub async fn send(&self, request: Request<ProxyBody>, timeout: Duration) -> Result<Response<Incoming>, ProxyError> {
        let authority = request.uri().authority().map(ToString::to_string).unwrap_or_default();
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout { authority, timeout }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if is_timeout(&err) => Err(ProxyError::UpstreamTimeout { authority, timeout }),
            Ok(Err(err)) => Err(ProxyError::UpstreamUnreachable {
                authority,
                cause: crate::error::chain(&err),
            }),
        }
    }
}

fn is_timeout(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source = err.source();
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}
