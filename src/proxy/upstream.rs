//! The upstream client: pooled keep-alive connections over plain HTTP/1.1, or HTTPS (rustls)
//! with HTTP/2 when the server offers it by ALPN and HTTP/1.1 otherwise.
//!
//! A request whose body is in memory goes through bearerd's own HTTP/1.1 client
//! ([`crate::http1::client`]), to a plain-HTTP upstream or over TLS to an HTTPS one that
//! chooses HTTP/1.1 by ALPN. HTTPS upstreams that choose HTTP/2, and requests with a streaming
//! body, go through hyper-util's pooled client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{AppBodyError, ProxyError};
use crate::http1::client::{self as h1, POOL_IDLE_TIMEOUT, TCP_KEEPALIVE};
use crate::http1::lines::RequestLines;
use crate::http1::timer::Timer;
use crate::http1::{self, unframe};
use crate::{BoxError, ProxyBody};

/// Sends requests upstream over pooled connections, at most `max_concurrency` at once.
#[derive(Clone)]
pub struct Upstream {
    /// HTTPS upstreams, and requests with a streaming body.
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// Plain-HTTP upstreams.
    plain: Arc<h1::Pool>,
    /// HTTPS upstreams that speak HTTP/1.1.
    tls: Arc<h1::Pool>,
    /// One permit per request in flight, held until its response body ends: a burst of
    /// requests waits here instead of opening a connection each at the same moment.
    permits: Arc<Semaphore>,
}

/// A request body on its way upstream.
pub enum Outgoing {
    /// Read whole (or known to be empty).
    Full(Bytes),
    /// Passed on as it arrives.
    Stream(ProxyBody),
}

/// A response body that gives its request's permit back when it ends or is dropped.
pub struct Permitted {
    body: Received,
    _permit: OwnedSemaphorePermit,
}

enum Received {
    H1(h1::ResponseBody),
    Hyper(Incoming),
}

impl Permitted {
    /// The response's header lines, when bearerd's client kept them as the upstream wrote
    /// them instead of putting them in the response's header map.
    pub fn take_header_lines(&mut self) -> Option<h1::HeaderLines> {
        match &mut self.body {
            Received::H1(body) => body.take_header_lines(),
            Received::Hyper(_) => None,
        }
    }
}

impl http_body::Body for Permitted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match &mut self.body {
            Received::H1(body) => Pin::new(body).poll_frame(cx),
            Received::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Received::H1(body) => body.is_end_stream(),
            Received::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.body {
            Received::H1(body) => body.size_hint(),
            Received::Hyper(body) => body.size_hint(),
        }
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
        let tls_pool = h1::Pool::with_tls(connect_timeout, tls.clone());
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
            plain: Arc::new(h1::Pool::new(connect_timeout)),
            tls: Arc::new(tls_pool),
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
        }
    }

    /// Sends the request, with the app's header `lines` when the listener loop kept them
    /// (then `request`'s map holds what the proxy adds), and returns the response without its
    /// hop-by-hop headers; `timeout` bounds waiting for a permit, connecting, and waiting for
    /// the response headers, on the listener loop's connection `timer` when it lends one. A
    /// plain-HTTP upstream's header lines are in the body ([`Permitted::take_header_lines`]).
    pub(super) async fn send(
        &self,
        request: &http::request::Parts,
        lines: Option<&RequestLines>,
        body: Outgoing,
        timeout: Duration,
        timer: Option<&mut Timer>,
    ) -> Result<Response<Permitted>, ProxyError> {
        // Named in an error only; cloning it shares its bytes.
        let target = request.uri.authority().cloned();
        let authority = || target.as_ref().map(ToString::to_string).unwrap_or_default();
        // Pinned here: lent to the timer, not moved into it (a move copies the whole future).
        let mut exchange = std::pin::pin!(async {
            // Waiting for a permit, and hyper's client, are boxed: a future is as large as its
            // largest path, and the request's futures are moved (copied) at each step.
            let permit = if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
                permit
            } else {
                // The semaphore is never closed, so acquiring only waits.
                let Ok(permit) = Box::pin(Arc::clone(&self.permits).acquire_owned()).await else {
                    unreachable!("the upstream semaphore is never closed")
                };
                permit
            };
            let pool = match request.uri.scheme() {
                Some(scheme) if *scheme == Scheme::HTTP => Some(&self.plain),
                Some(scheme) if *scheme == Scheme::HTTPS => Some(&self.tls),
                _ => None,
            };
            // bearerd's client answers from its own arm: nothing of its exchange is held
            // while hyper's runs (a future keeps whatever lives across an await), and its
            // response becomes a `Permitted` in one step. `body` is matched alone: a tuple
            // with `pool` would be a temporary kept in the future for the whole match.
            let body = match body {
                Outgoing::Full(body) if let Some(pool) = pool => {
                    match pool
                        .send(&request.method, &request.uri, lines, &request.headers, &body)
                        .await?
                    {
                        h1::Sent::Response(response) => {
                            return Ok(response.map(|body| Permitted {
                                body: Received::H1(body),
                                _permit: permit,
                            }));
                        }
                        h1::Sent::Http2 => Outgoing::Full(body),
                    }
                }
                body => body,
            };
            let response = Box::pin(self.via_hyper(request, lines, body)).await?;
            Ok::<_, BoxError>(response.map(|body| Permitted { body, _permit: permit }))
        });
        let outcome = match timer {
            Some(timer) => timer.within(Instant::now() + timeout, exchange.as_mut()).await,
            None => tokio::time::timeout(timeout, exchange).await.ok(),
        };
        match outcome {
            None => Err(ProxyError::UpstreamTimeout {
                authority: authority(),
                timeout,
            }),
            Some(Ok(response)) => Ok(response),
            Some(Err(ref err)) if let Some(app) = AppBodyError::in_chain(err.as_ref()) => {
                Err(ProxyError::BadRequest(app.to_string()))
            }
            Some(Err(err)) if is_timeout(err.as_ref()) => Err(ProxyError::UpstreamTimeout {
                authority: authority(),
                timeout,
            }),
            Some(Err(err)) => Err(ProxyError::UpstreamUnreachable {
                authority: authority(),
                cause: crate::chain(err.as_ref()),
            }),
        }
    }

    /// Sends the request with hyper's client (HTTPS upstreams, streaming bodies): its header
    /// map gets the app's `lines`, when there are any.
    async fn via_hyper(
        &self,
        request: &http::request::Parts,
        lines: Option<&RequestLines>,
        body: Outgoing,
    ) -> Result<Response<Received>, BoxError> {
        let body = match body {
            Outgoing::Full(body) => Full::new(body).map_err(|never| match never {}).boxed_unsync(),
            Outgoing::Stream(body) => body,
        };
        let mut parts = request.clone();
        if let Some(lines) = lines {
            lines.append_to(&mut parts.headers);
        }
        let method = parts.method.clone();
        let mut response = self.client.request(Request::from_parts(parts, body)).await?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // bearerd sends no `Upgrade`: nothing it could relay would follow.
            return Err("the upstream switched protocols unasked".into());
        }
        let codings = response.headers().get_all(http::header::TRANSFER_ENCODING);
        if let Some(coding) = http1::other_coding(codings.iter().map(http::HeaderValue::as_bytes)) {
            return Err(http1::coding_refusal("response", coding).into());
        }
        crate::inject::strip_hop_by_hop(response.headers_mut());
        let status = response.status();
        unframe(response.headers_mut(), &method, status)?;
        Ok(response.map(Received::Hyper))
    }
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
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
