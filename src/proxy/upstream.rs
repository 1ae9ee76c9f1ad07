//! The upstream client: pooled keep-alive connections over plain HTTP/1.1, or HTTPS (rustls)
//! with HTTP/2 when the server offers it by ALPN and HTTP/1.1 otherwise.

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ProxyBody;
use crate::error::ProxyError;

const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_mins(1);

/// Sends requests upstream over pooled connections, at most `max_concurrency` at once.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// One permit per request in flight, held until its response body ends: a burst of
    /// requests waits here instead of opening a connection each at the same moment.
    permits: Arc<Semaphore>,
}

/// A response body that gives its request's permit back when it ends or is dropped.
pub struct Permitted {
    body: Incoming,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Permitted {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Upstream {
    #[must_use]
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration, max_concurrency: usize) -> Self {
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
        Self {
            client,
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
        }
    }

    /// Sends `request`; `timeout` bounds waiting for a permit, connecting, and waiting for
    /// the response headers.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<Response<Permitted>, ProxyError> {
        let authority = request.uri().authority().map(ToString::to_string).unwrap_or_default();
        let exchange = async {
            // The semaphore is never closed, so acquiring only waits.
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                unreachable!("the upstream semaphore is never closed")
            };
            let response = self.client.request(request).await?;
            Ok(response.map(|body| Permitted { body, _permit: permit }))
        };
        match tokio::time::timeout(timeout, exchange).await {
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
