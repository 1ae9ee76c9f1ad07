//! The upstream client: pooled keep-alive connections over plain HTTP/1.1, or HTTPS (rustls)
//! with HTTP/2 when the server offers it by ALPN and HTTP/1.1 otherwise.
//!
//! Plain-HTTP upstreams (the sidecar's common case, and its hot path) use bearerd's own pool
//! of hyper HTTP/1.1 connections: a request takes an idle connection for its authority, and
//! its response body gives the connection back when it ends. HTTPS goes through hyper-util's
//! pooled client, which also handles ALPN and HTTP/2.

use http_body::Body as _;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use fnv::FnvBuildHasher;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::{BoxError, ProxyBody};

/// Idle upstream connections close after this (tests assume 90 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_mins(1);

/// Sends requests upstream over pooled connections, at most `max_concurrency` at once.
#[derive(Clone)]
pub struct Upstream {
    /// HTTPS upstreams.
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// Plain-HTTP upstreams.
    plain: Arc<Http1Pool>,
    /// One permit per request in flight, held until its response body ends: a burst of
    /// requests waits here instead of opening a connection each at the same moment.
    permits: Arc<Semaphore>,
}

/// A response body that gives its request's permit back, and its plain-HTTP connection to
/// the pool, when it ends or is dropped.
pub struct Permitted {
    body: Incoming,
    /// The body's last frame was read.
    ended: bool,
    /// The connection the response came on, to go back to the pool if the body ends.
    connection: Option<Pooled>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Permitted {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Permitted {
    fn drop(&mut self) {
        // A body dropped before its end leaves unread bytes on the connection: it closes
        // with its last sender.
        if let Some(connection) = self.connection.take()
            && (self.ended || self.body.is_end_stream())
        {
            connection.release();
        }
    }
}

/// Idle HTTP/1.1 connections to plain-HTTP upstreams, by authority.
///
/// Hashed with FNV (twice per request; std's `SipHash` took ~600 instructions a time): the
/// authorities are the app's own, the sidecar's one client, not an attacker's.
struct Http1Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>, FnvBuildHasher>>,
    connect_timeout: Duration,
}

/// An authority as the pool's key. `http`'s own `Hash` for `Authority` gives the hasher one
/// lowercased byte at a time, which made hashing most of a pool lookup; this gives it the
/// text at once (lowercased only if it has capitals, to agree with the case-insensitive `Eq`).
#[derive(PartialEq, Eq)]
struct Key(Authority);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let text = self.0.as_str();
        if text.bytes().any(|byte| byte.is_ascii_uppercase()) {
            text.to_ascii_lowercase().hash(state);
        } else {
            text.hash(state);
        }
    }
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// A connection in use, on its way back to `pool`.
struct Pooled {
    pool: Arc<Http1Pool>,
    authority: Authority,
    sender: http1::SendRequest<ProxyBody>,
}

impl Pooled {
    /// Puts the connection back in the pool once it can take the next request; one that
    /// is closing is dropped instead.
    fn release(self) {
        if self.sender.is_ready() {
            self.pool.put(self.authority, self.sender);
        } else if !self.sender.is_closed() {
            // The connection task has not yet finished the previous exchange (it does so
            // right after the body's last frame): wait for it off the request's path.
            let Self {
                pool,
                authority,
                mut sender,
            } = self;
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(authority, sender);
                }
            });
        }
    }
}

impl Http1Pool {
    fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Idle>, FnvBuildHasher>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `authority` that can take a request.
    fn checkout(&self, authority: Authority) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        let connections = idle.get_mut(&Key(authority))?;
        while let Some(connection) = connections.pop() {
            if connection.sender.is_ready() && connection.since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put(&self, authority: Authority, sender: http1::SendRequest<ProxyBody>) {
        let now = Instant::now();
        let mut idle = self.lock();
        // The connection goes in first: its host's list is then not empty, and the sweep
        // below keeps the host's entry (removing it and adding it back cost more than the
        // rest of `put`).
        idle.entry(Key(authority))
            .or_default()
            .push(Idle { sender, since: now });
        // Connections idle for too long are closed (by dropping their sender) whenever one
        // comes back; those of hosts no longer used go with them. Each list is in the order
        // its connections came back, so the expired ones are its front: one look at the
        // front per host, and a binary search only when it has expired.
        let expired = |connection: &Idle| now.duration_since(connection.since) >= POOL_IDLE_TIMEOUT;
        idle.retain(|_, connections| {
            if connections.first().is_some_and(expired) {
                let expired = connections.partition_point(expired);
                connections.drain(..expired);
            }
            !connections.is_empty()
        });
    }

    async fn connect(&self, authority: &Authority) -> Result<http1::SendRequest<ProxyBody>, BoxError> {
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
        stream.set_nodelay(true)?;
        socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
        let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("upstream connection ended: {err}");
            }
        });
        Ok(sender)
    }

    /// Sends `request` (absolute-form `http://` URI) in origin-form with its `Host`, on an
    /// idle connection or a new one. A request that a reused connection closed before
    /// taking is sent once more on a new connection.
    async fn send(self: &Arc<Self>, mut request: Request<ProxyBody>) -> Result<(Response<Incoming>, Pooled), BoxError> {
        let Some(authority) = request.uri().authority().cloned() else {
            return Err("the request URI has no authority".into());
        };
        request
            .headers_mut()
            .insert(http::header::HOST, host_header(&authority)?);
        *request.uri_mut() = origin_form(request.uri());
        let mut reused = true;
        loop {
            let mut sender = if let Some(sender) = self.checkout(authority.clone()) {
                sender
            } else {
                reused = false;
                self.connect(&authority).await?
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pooled = Pooled {
                        pool: Arc::clone(self),
                        authority,
                        sender,
                    };
                    return Ok((response, pooled));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }
}

/// The `Host` header for `authority`: without user info, and without the port when it is 80.
fn host_header(authority: &Authority) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let (host, port) = super::target::split_authority(authority);
    match port {
        None | Some(80) => HeaderValue::from_str(host),
        // `host:port` as written, unless it carries user info.
        Some(_) if !authority.as_str().contains('@') => HeaderValue::from_str(authority.as_str()),
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
    }
}

/// `/path?query` of an absolute URI.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .filter(|path| !path.as_str().is_empty())
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
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
            plain: Arc::new(Http1Pool::new(connect_timeout)),
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
            let (response, connection) = if request.uri().scheme() == Some(&Scheme::HTTP) {
                let (response, connection) = self.plain.send(request).await?;
                (response, Some(connection))
            } else {
                (self.client.request(request).await.map_err(BoxError::from)?, None)
            };
            Ok::<_, BoxError>(response.map(|body| Permitted {
                body,
                ended: false,
                connection,
                _permit: permit,
            }))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(ProxyError::UpstreamTimeout { authority, timeout }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if is_timeout(err.as_ref()) => Err(ProxyError::UpstreamTimeout { authority, timeout }),
            Ok(Err(err)) => Err(ProxyError::UpstreamUnreachable {
                authority,
                cause: crate::error::chain(err.as_ref()),
            }),
        }
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn ready_connection(
        pool: &Http1Pool,
        listener: &TcpListener,
        authority: &Authority,
    ) -> (http1::SendRequest<ProxyBody>, TcpStream) {
        let mut sender = pool.connect(authority).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        sender.ready().await.unwrap();
        (sender, server_side)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_reused_within_the_idle_timeout_and_closed_after_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Http1Pool::new(Duration::from_secs(5));
        assert!(pool.checkout(authority.clone()).is_none());

        let (first, mut first_server_side) = ready_connection(&pool, &listener, &authority).await;
        pool.put(authority.clone(), first);
        tokio::time::advance(Duration::from_secs(89)).await;
        let first = pool
            .checkout(authority.clone())
            .expect("idle for less than the timeout");
        assert!(pool.checkout(authority.clone()).is_none(), "one connection, taken");
        pool.put(authority.clone(), first);

        tokio::time::advance(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        // Putting another connection back sweeps the expired one, which then closes.
        let (second, _second_server_side) = ready_connection(&pool, &listener, &authority).await;
        pool.put(authority.clone(), second);
        let mut buf = [0_u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), first_server_side.read(&mut buf)).await;
        assert_eq!(read.expect("the expired connection closed").unwrap(), 0);
        let second = pool.checkout(authority.clone()).expect("the fresh connection");
        assert!(pool.checkout(authority.clone()).is_none(), "the expired one is gone");

        pool.put(authority.clone(), second);
        tokio::time::advance(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(pool.checkout(authority.clone()).is_none(), "idle past the timeout");
    }

    #[test]
    fn the_host_header_has_no_user_info_and_no_port_80() {
        for (authority, host) in [
            ("api.test", "api.test"),
            ("api.test:80", "api.test"),
            ("api.test:8080", "api.test:8080"),
            ("u:p@api.test:8080", "api.test:8080"),
            ("u@api.test", "api.test"),
            ("[::1]:9000", "[::1]:9000"),
            ("[::1]:80", "[::1]"),
        ] {
            assert_eq!(host_header(&authority.parse().unwrap()).unwrap(), host, "{authority}");
        }
    }

    #[tokio::test]
    async fn a_connection_is_found_under_its_authority_in_any_case() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lower: Authority = format!("localhost:{port}").parse().unwrap();
        let upper: Authority = format!("LocalHost:{port}").parse().unwrap();
        let pool = Http1Pool::new(Duration::from_secs(5));
        let (sender, _server_side) = ready_connection(&pool, &listener, &lower).await;
        pool.put(upper, sender);
        assert!(
            pool.checkout(lower.clone()).is_some(),
            "put as LocalHost, found as localhost"
        );
        let other: Authority = format!("127.0.0.1:{port}").parse().unwrap();
        let (sender, _server_side) = ready_connection(&pool, &listener, &other).await;
        pool.put(other, sender);
        assert!(
            pool.checkout(lower).is_none(),
            "another authority's connection is not taken"
        );
    }
}
