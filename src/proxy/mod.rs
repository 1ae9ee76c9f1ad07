//! The proxy listener and the request path, step by step as in DESIGN.md
//! "Handling one request": accept → choose the auth config → guard → token → inject → forward.

mod connect;
mod intercepted;
mod replay;
mod target;
mod upstream;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use upstream::Upstream;
use upstream::{Outgoing, Permitted};

use crate::config::{AuthConfig, Config, Inject, RouteKind};
use crate::error::{AppBodyError, ProxyError, respond};
use crate::http1::lines::{REQUEST_ID_LEN, RequestLines, X_REQUEST_ID};
use crate::http1::server::{self, HEADER_READ_TIMEOUT, Rewound, Service, TakeLines};
use crate::http1::timer::Timer;
use crate::http1::{self, client::HeaderLines};
use crate::inject;
use crate::intercept::Interception;
use crate::metrics::{Metrics, NO_AUTH_CONFIG};
use crate::routes::{self, RequestFacts, SelectError};
use crate::running::{Active, Running};
use crate::token::{CachedToken, Lookup, TokenCache, TokenError};
use crate::{BoxError, ProxyBody};

use replay::{Keep, MAX_REPLAY_BODY};
use target::Target;

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// The configuration in force and the state built from it; a reload swaps both whole, so
    /// each request sees one.
    running: ArcSwap<Running>,
    pub tokens: TokenCache,
    upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// TLS interception, when `intercept:` was set at start.
    pub interception: Option<Arc<Interception>>,
    /// Set once shutdown starts: `/readyz` answers 503 from then on.
    draining: AtomicBool,
    /// The proxy itself, for the connections an intercepted `CONNECT` opens: they outlive
    /// the request that opened them.
    me: Weak<Proxy>,
    /// The connections inside intercepted `CONNECT`s, which a graceful shutdown waits for as
    /// it does for the listener's; `None` once shutdown started.
    intercepted: std::sync::Mutex<Option<GracefulShutdown>>,
}

impl Proxy {
    #[must_use]
    pub fn new(
        config: Arc<Config>,
        tokens: TokenCache,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        interception: Option<Arc<Interception>>,
    ) -> Arc<Self> {
        let running = Running::build(config, &tokens, &metrics);
        Arc::new_cyclic(|me| Self {
            running: ArcSwap::from_pointee(running),
            tokens,
            upstream,
            metrics,
            interception,
            draining: AtomicBool::new(false),
            me: me.clone(),
            intercepted: std::sync::Mutex::new(Some(GracefulShutdown::new())),
        })
    }

    /// The configuration in force now.
    #[must_use]
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.running.load().config)
    }

    /// Puts `config` in force, with the state built from it, for every request that starts
    /// from now on. Unchanged auth configs keep their token slots (and tokens).
    pub fn set_config(&self, config: Arc<Config>) {
        self.running
            .store(Arc::new(Running::build(config, &self.tokens, &self.metrics)));
    }

    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Accepts connections until `stop` turns true; then stops accepting, asks every open
    /// connection to finish its requests and close, and returns when all have.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        // A connection is accepted only with a slot free: past `max_connections`, the kernel's
        // accept queue holds the rest, as nginx's `worker_connections` does.
        let slots = Arc::new(Semaphore::new(self.config().max_connections));
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let Ok(slot) = slot else {
                unreachable!("the connection semaphore is never closed")
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::error!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let open = Open::start(&self.metrics, slot);
            tokio::spawn(server::serve(
                Arc::clone(&self),
                stream,
                local,
                peer,
                stop.clone(),
                graceful.watcher(),
                open,
            ));
        }
        self.draining.store(true, Ordering::Relaxed);
        drop(listener);
        tracing::info!(
            connections = graceful.count(),
            "stopped accepting; waiting for in-flight requests"
        );
        let intercepted = self.intercepted.lock().unwrap_or_else(PoisonError::into_inner).take();
        tokio::join!(graceful.shutdown(), async {
            if let Some(intercepted) = intercepted {
                intercepted.shutdown().await;
            }
        });
    }

    /// A watcher for a connection inside an intercepted `CONNECT`, so that a graceful
    /// shutdown waits for it; `None` once shutdown started (the connection is not served).
    fn intercepted_watcher(&self) -> Option<Watcher> {
        self.intercepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(GracefulShutdown::watcher)
    }

    /// Serves a connection with hyper (HTTP/2, and what bearerd's HTTP/1.1 loop hands over),
    /// until it ends or a graceful shutdown closes it.
    async fn serve_hyper(self: Arc<Self>, io: Rewound, local: Option<SocketAddr>, peer: SocketAddr, watcher: Watcher) {
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = Arc::clone(&self);
            async move {
                let version = request.version();
                let response = with_header_map(proxy.handle(request, None, None, local).await);
                Ok::<_, Infallible>(in_own_version(version, response))
            }
        });
        let builder = hyper_server();
        let connection = builder.serve_connection_with_upgrades(io, service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, "connection ended: {err}");
        }
    }

    /// Answers one request that came in on the listener socket `local`; every failure becomes
    /// bearerd's JSON error response. The phases, in order: [`target`] (where is it going?),
    /// [`select`] (which auth config and route?), [`guard`] (may its token go there?),
    /// [`Proxy::authorize`] (the token, injected), [`Proxy::send`], [`Proxy::replay`] (on a
    /// 401), and [`Proxy::finish`] (counted, timed, logged).
    ///
    /// The request's header lines are in `lines` when the listener loop kept them as the app
    /// wrote them; its header map then holds only what the proxy adds. A plain-HTTP
    /// upstream's header lines come in the body, not in the response's header map
    /// ([`AppBody::take_header_lines`]).
    fn handle<'a, B>(
        &'a self,
        mut request: Request<B>,
        mut lines: Option<&'a mut RequestLines>,
        timer: Option<&'a mut Timer>,
        local: Option<SocketAddr>,
    ) -> impl Future<Output = Response<AppBody>> + Send + 'a
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let inflight = Inflight::start(&self.metrics);
        // The id is kept for the log line only when that line will be written.
        let request_id = request_id(
            request.headers_mut(),
            lines.as_deref_mut(),
            tracing::enabled!(tracing::Level::DEBUG),
        );
        let method = request.method().clone();
        let running = self.running.load_full();
        // A block rather than an `async fn`: an `async fn`'s future holds its arguments twice
        // (as passed, and moved into its body), and the request is the largest of them.
        async move {
            let mut seen = Seen::default();
            let result = if method == Method::CONNECT {
                seen.authority = request.uri().authority().cloned();
                match intercepted::Interceptor::of(self, &running.config, request.uri()) {
                    Some(interceptor) => Ok(interceptor.open(request).map(AppBody::Own)),
                    // Boxed, as other rare paths are: a future's size is its largest path's,
                    // and the request's futures are moved (copied) at each step.
                    None => Box::pin(connect::open(&running.config, request))
                        .await
                        .map(|response| response.map(AppBody::Own)),
                }
            } else {
                // Pinned where it is made, as the listener loop does with this one.
                std::pin::pin!(self.forward(&running, request, lines, timer, local, &mut seen))
                    .await
                    .map(|response| response.map(AppBody::Upstream))
            };
            let response = self.finish(result, &method, &seen, started, request_id.as_ref());
            drop(inflight);
            response
        }
    }

    /// The phases of a request that goes upstream (every method but `CONNECT`). Those that
    /// need no wait (target, select, guard) run before the future is made, which then holds
    /// the request's head once, rather than the request as passed as well.
    fn forward<'r, B>(
        &'r self,
        running: &'r Running,
        request: Request<B>,
        mut lines: Option<&'r mut RequestLines>,
        mut timer: Option<&'r mut Timer>,
        local: Option<SocketAddr>,
        seen: &mut Seen<'r>,
    ) -> impl Future<Output = Result<Response<Permitted>, ProxyError>> + Send + 'r
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut prepared = prepare(running, request, lines.as_deref(), local, seen);
        async move {
            // Used where it is, not moved out: a move would copy the head into the future
            // again.
            let (prepared, body) = match prepared {
                Ok((ref mut prepared, body)) => (prepared, body),
                Err(err) => return Err(err),
            };
            let (parts, auth_config) = (&mut prepared.parts, prepared.auth_config);
            let timeout = running.config.upstream_timeout;
            let body = outgoing(body, timeout).await?;
            let token = match auth_config {
                Some(auth_config) => Some(self.authorize(auth_config, parts, lines.as_deref_mut()).await?),
                None => None,
            };
            // Kept in case of a replay.
            let (body, kept) = match body {
                body if !auth_config.is_some_and(|active| active.config.retry_on_401) => (body, None),
                Outgoing::Full(body) => (Outgoing::Full(body.clone()), Some(Kept::Whole(body))),
                Outgoing::Stream(body) => {
                    let (body, kept) = Keep::new(body);
                    (Outgoing::Stream(boxed(body)), Some(Kept::Streamed(kept)))
                }
            };
            // The head is lent, not given: it stays here for a replay.
            let response = self
                .send(parts, lines.as_deref(), body, timeout, timer.as_deref_mut())
                .await?;
            match (auth_config, token, kept) {
                (Some(auth_config), Some(token), Some(kept)) if response.status() == StatusCode::UNAUTHORIZED => {
                    let replay = Replay {
                        parts,
                        lines,
                        auth_config,
                        token,
                        kept,
                        timeout,
                        timer,
                    };
                    Box::pin(self.replay(response, replay)).await
                }
                _ => Ok(response),
            }
        }
    }

    /// Phase: the token, from the cache or the one fetch in flight, put on the request as
    /// the auth config says.
    async fn authorize(
        &self,
        auth_config: &Active,
        parts: &mut http::request::Parts,
        lines: Option<&mut RequestLines>,
    ) -> Result<Arc<CachedToken>, ProxyError> {
        let token = self.token(auth_config).await?;
        with_token(parts, lines, &auth_config.config, &token)?;
        Ok(token)
    }

    /// Phase: the request upstream, over a pooled connection; `timeout` bounds waiting for
    /// the response head, on the listener loop's connection `timer` when it lends one.
    fn send<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        lines: Option<&'a RequestLines>,
        body: Outgoing,
        timeout: Duration,
        timer: Option<&'a mut Timer>,
    ) -> impl Future<Output = Result<Response<Permitted>, ProxyError>> + 'a {
        self.upstream.send(parts, lines, body, timeout, timer)
    }

    /// Phase, after the upstream answered `refused` (a 401) to the token in `replay`: that
    /// token is dropped (only if it is still the cached one), and the request is sent once
    /// more with a new one, when its body was small enough to keep whole.
    async fn replay(
        &self,
        refused: Response<Permitted>,
        replay: Replay<'_>,
    ) -> Result<Response<Permitted>, ProxyError> {
        let Replay {
            parts,
            lines,
            auth_config,
            token,
            kept,
            timeout,
            timer,
        } = replay;
        self.tokens.evict_if_current(&auth_config.config, &token);
        let body = match kept {
            Kept::Whole(body) => body,
            Kept::Streamed(kept) => match kept.whole() {
                Some(body) => body,
                None => return Ok(refused),
            },
        };
        drop(refused);
        self.metrics
            .upstream_retries
            .with_label_values(&[auth_config.config.id.as_str()])
            .inc();
        let mut lines = lines;
        self.authorize(auth_config, parts, lines.as_deref_mut()).await?;
        self.send(parts, lines.as_deref(), Outgoing::Full(body), timeout, timer)
            .await
    }

    /// Phase, last: the outcome as the app's response (an error as bearerd's JSON), counted
    /// in the metrics and logged at debug.
    fn finish(
        &self,
        result: Result<Response<AppBody>, ProxyError>,
        method: &Method,
        seen: &Seen<'_>,
        started: Instant,
        request_id: Option<&http::HeaderValue>,
    ) -> Response<AppBody> {
        let auth_config = seen
            .auth_config
            .map_or(NO_AUTH_CONFIG, |active| active.config.id.as_str());
        let (response, status) = match result {
            Ok(response) => {
                let status = response.status();
                (response, Status::Http(status))
            }
            Err(error) => {
                let id = seen.auth_config.map(|active| active.config.id.as_str());
                let mut response = respond(&error, id).map(AppBody::Own);
                if *method == Method::CONNECT || matches!(error, ProxyError::BadRequest(_)) {
                    // The client may already have sent tunnel bytes behind the CONNECT, or a
                    // malformed request's body (whose framing is in doubt) may follow: neither
                    // may be read as the next request, so the connection ends with this answer,
                    // as nginx ends it after a 400.
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                (response, Status::Code(error.code()))
            }
        };
        let elapsed = started.elapsed();
        let status_label = match &status {
            Status::Http(code) => code.as_str(),
            Status::Code(code) => code,
        };
        // An auth config's own series are at hand; others (no auth config, other statuses)
        // are looked up by their labels.
        let series = seen.auth_config.map(|active| &active.series);
        match series {
            Some(series) if matches!(status, Status::Http(StatusCode::OK)) => series.ok.inc(),
            _ => self
                .metrics
                .requests
                .with_label_values(&[auth_config, status_label])
                .inc(),
        }
        match series {
            Some(series) => series.duration.observe(elapsed.as_secs_f64()),
            None => self
                .metrics
                .request_duration
                .with_label_values(&[auth_config])
                .observe(elapsed.as_secs_f64()),
        }
        tracing::debug!(
            request_id = request_id.and_then(|id| id.to_str().ok()).unwrap_or("-"),
            method = %method,
            authority = seen.authority.as_ref().map_or("-", http::uri::Authority::as_str),
            auth_config,
            status = status_label,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
        response
    }

    /// A token from the cache, the lookup counted by how it was found.
    async fn token(&self, auth_config: &Active) -> Result<Arc<CachedToken>, ProxyError> {
        let (token, lookup) = self.tokens.get_in(&auth_config.slot, &auth_config.config).await?;
        let result = match lookup {
            Lookup::Hit => {
                auth_config.series.hits.inc();
                return Ok(token);
            }
            Lookup::Miss => "miss",
            Lookup::RefreshAhead => "refresh_ahead",
        };
        self.metrics
            .token_cache_lookups
            .with_label_values(&[auth_config.config.id.as_str(), result])
            .inc();
        Ok(token)
    }
}

/// The proxy, as bearerd's HTTP/1.1 loop sees it.
impl Service for Proxy {
    type Body = AppBody;

    fn call<'a>(
        &'a self,
        request: Request<Full<Bytes>>,
        lines: &'a mut RequestLines,
        timer: &'a mut Timer,
        local: Option<SocketAddr>,
    ) -> impl Future<Output = Response<AppBody>> + Send + 'a {
        self.handle(request, Some(lines), Some(timer), local)
    }

    fn refuse(&self, why: String) -> Response<AppBody> {
        respond(&ProxyError::BadRequest(why), None).map(AppBody::Own)
    }

    fn hand_off(
        self: Arc<Self>,
        io: Rewound,
        local: Option<SocketAddr>,
        peer: SocketAddr,
        watcher: Watcher,
    ) -> impl Future<Output = ()> + Send {
        self.serve_hyper(io, local, peer, watcher)
    }
}

/// The body of a response to the app.
pub enum AppBody {
    /// From the upstream. Holds its request's permit and, from bearerd's own HTTP/1.1 client,
    /// the response's header lines as the upstream wrote them.
    Upstream(Permitted),
    /// bearerd's own answer: an error's JSON, or a tunnel's empty body.
    Own(ProxyBody),
}

impl TakeLines for AppBody {
    /// The upstream response's header lines when they are here and not in the response's
    /// header map; `None` once taken.
    fn take_header_lines(&mut self) -> Option<HeaderLines> {
        match self {
            Self::Upstream(body) => body.take_header_lines(),
            Self::Own(_) => None,
        }
    }
}

impl http_body::Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream(body) => std::pin::Pin::new(body).poll_frame(cx),
            Self::Own(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Own(body) => body.size_hint(),
        }
    }
}

/// `response` with all its headers in its header map, for hyper's server, which writes
/// only the map.
fn with_header_map(mut response: Response<AppBody>) -> Response<AppBody> {
    if let Some(lines) = response.body_mut().take_header_lines() {
        lines.append_to(response.headers_mut());
    }
    response
}

/// hyper's server for the requests bearerd's own loop does not serve, and inside intercepted
/// tunnels: HTTP/1.1 or HTTP/2 by what the client speaks, with the loop's head timeout.
fn hyper_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// `response` to a request in `version`: an intermediary answers HTTP/1 requests in its own
/// version (RFC 9110 §6.2), not the upstream's.
fn in_own_version<B>(version: Version, mut response: Response<B>) -> Response<B> {
    if version < Version::HTTP_2 {
        *response.version_mut() = Version::HTTP_11;
    }
    response
}

/// What the phases before any wait made of a request that goes upstream (its body aside).
struct Prepared<'r> {
    /// Its head, bound for the chosen URI, HTTP/1.1.
    parts: http::request::Parts,
    auth_config: Option<&'r Active>,
}

/// Phases target, select and guard: where the request goes, under which auth config, and
/// whether its token may go there; noted in `seen` for the log line and metrics.
fn prepare<'r, B>(
    running: &'r Running,
    request: Request<B>,
    lines: Option<&RequestLines>,
    local: Option<SocketAddr>,
    seen: &mut Seen<'r>,
) -> Result<(Prepared<'r>, B), ProxyError> {
    let (target, named) = target(&request, lines, local)?;
    let chosen = select(running, &request, &target, named)?;
    seen.auth_config = chosen.auth_config;
    seen.authority = chosen.uri.authority().cloned();
    if let Some(auth_config) = chosen.auth_config {
        guard(&auth_config.config, &target, &chosen)?;
    }
    let Chosen { uri, auth_config, .. } = chosen;
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    if lines.is_none() {
        inject::strip_request_headers(&mut parts.headers);
    }
    Ok((Prepared { parts, auth_config }, body))
}

/// Phase: where the request is going as the app wrote it, and the auth config it names with
/// `X-Auth-Config`: read from its header `lines` when the listener loop kept them, else from
/// its header map.
fn target<'r, B>(
    request: &'r Request<B>,
    lines: Option<&'r RequestLines>,
    local: Option<SocketAddr>,
) -> Result<(Target<'r>, Option<&'r str>), ProxyError> {
    let (host, hosts, named) = if let Some(lines) = lines {
        (lines.host(), lines.hosts(), lines.auth_config())
    } else {
        let headers = request.headers();
        let value = |name| headers.get(name).map(http::HeaderValue::as_bytes);
        let hosts = headers.get_all(http::header::HOST).iter().count();
        let codings = headers.get_all(http::header::TRANSFER_ENCODING);
        if let Some(coding) = http1::other_coding(codings.iter().map(http::HeaderValue::as_bytes)) {
            return Err(ProxyError::BadRequest(http1::coding_refusal("request", coding)));
        }
        (value(http::header::HOST), hosts, value(inject::X_AUTH_CONFIG))
    };
    check_host(request.version(), host, hosts)?;
    let target = Target::of(request.uri(), host, local)?;
    let Some(named) = named else {
        return Ok((target, None));
    };
    match std::str::from_utf8(named) {
        Ok(name) if visible_ascii(named) => Ok((target, Some(name))),
        _ => Err(ProxyError::BadRequest(
            "X-Auth-Config is not a valid auth config name".into(),
        )),
    }
}

/// What [`select`] chose: the auth config (if any), and the URI the request goes to.
struct Chosen<'r> {
    auth_config: Option<&'r Active>,
    uri: http::Uri,
    /// `uri` is the app's own target, not one a route rewrote or moved to HTTPS.
    as_sent: bool,
}

/// Phase: the auth config (`X-Auth-Config`, else the first matching route, else
/// `default_action`), and where the request goes: the app's URI unless a route sends it
/// elsewhere.
fn select<'r, B>(
    running: &'r Running,
    request: &Request<B>,
    target: &Target<'_>,
    named: Option<&str>,
) -> Result<Chosen<'r>, ProxyError> {
    let facts = RequestFacts {
        method: request.method(),
        host: target.host_port(),
        path: request.uri().path(),
        origin_form: target.is_origin_form(),
        named_config: named,
    };
    let chosen = running.choose(facts).map_err(|err| match err {
        SelectError::UnknownAuthConfig(name) => ProxyError::UnknownAuthConfig(printable(&name)),
        SelectError::Denied => ProxyError::RouteDenied(err.to_string()),
    })?;
    let (uri, as_sent) = match chosen.route.map(|route| &route.kind) {
        Some(RouteKind::Gateway { upstream }) => {
            let prefix = chosen.route.map_or("/", |route| route.path_prefix.as_str());
            (target::gateway_uri(upstream, prefix, request.uri())?, false)
        }
        Some(RouteKind::Forward { upstream_tls, .. }) => {
            (target.forward_uri(request.uri(), *upstream_tls)?, !*upstream_tls)
        }
        None => (target.forward_uri(request.uri(), false)?, true),
    };
    Ok(Chosen {
        auth_config: chosen.auth_config,
        uri,
        as_sent,
    })
}

/// Phase: a token only ever goes to the hosts its config allows; nothing is sent otherwise.
fn guard(auth_config: &AuthConfig, target: &Target<'_>, chosen: &Chosen<'_>) -> Result<(), ProxyError> {
    let host_port = match target.host_port() {
        Some((host, port)) if chosen.as_sent => Some((Cow::Borrowed(host), port)),
        _ => target::host_port_of(&chosen.uri),
    };
    let (host, port) = host_port.ok_or_else(|| ProxyError::BadRequest("the request target has no host".into()))?;
    if routes::host_allowed(auth_config, &host, port) {
        Ok(())
    } else {
        Err(ProxyError::HostNotAllowed {
            host: format!("{}:{port}", target::bracketed(&host)),
            auth_config: auth_config.id.clone(),
        })
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host` line, an HTTP/1.0 one at most,
/// and its value is a host and optional port (empty only for a target without one).
fn check_host(version: Version, host: Option<&[u8]>, hosts: usize) -> Result<(), ProxyError> {
    let problem = match (version, hosts) {
        (Version::HTTP_2 | Version::HTTP_3, _) => return Ok(()),
        (Version::HTTP_11, 0) => "the request has no Host header",
        (_, 2..) => "the request has more than one Host header",
        _ if host.is_some_and(|host| !http1::valid_host(host)) => "the Host header is not a host and port",
        _ => return Ok(()),
    };
    Err(ProxyError::BadRequest(problem.into()))
}

/// Whether a header value is visible ASCII, spaces and tabs, as `HeaderValue::to_str` has it.
fn visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&byte| byte.is_ascii_graphic() || byte == b' ' || byte == b'\t')
}

/// Puts `name: value` on the request in place of any header of that name the app sent:
/// beside its `lines` when the listener loop kept them, else in its header map.
fn set_header(
    headers: &mut http::HeaderMap,
    lines: Option<&mut RequestLines>,
    name: http::HeaderName,
    value: http::HeaderValue,
) {
    match lines {
        Some(lines) => lines.insert(name, value),
        None => {
            headers.insert(name, value);
        }
    }
}

/// Injects `token` into the request head as `auth_config` says, in place of any header of
/// that name the app sent (among its `lines` too). The head is lent, not moved: moving it in
/// and out cost two copies of it.
///
/// A header value is rendered once per token (and prefix) and then shared: on a cache hit,
/// injecting a header allocates nothing.
fn with_token(
    parts: &mut http::request::Parts,
    lines: Option<&mut RequestLines>,
    auth_config: &AuthConfig,
    token: &CachedToken,
) -> Result<(), ProxyError> {
    let invalid =
        |err: inject::InjectError| ProxyError::TokenUnavailable(Arc::new(TokenError::Invalid(err.to_string())));
    match &auth_config.inject {
        Inject::Header { name, prefix } => {
            let value = match token.rendered.get() {
                Some((rendered_for, value)) if rendered_for == prefix => value.clone(),
                _ => {
                    let value = inject::header_value(prefix, &token.token).map_err(invalid)?;
                    // The first render wins; a prefix changed by a reload renders per request
                    // until the token is replaced.
                    let _ = token.rendered.set((prefix.clone(), value.clone()));
                    value
                }
            };
            set_header(&mut parts.headers, lines, name.clone(), value);
        }
        Inject::Query { .. } => {
            inject::inject(&auth_config.inject, &token.token, &mut parts.headers, &mut parts.uri).map_err(invalid)?;
        }
    }
    Ok(())
}

fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The request body as it goes upstream: read whole first when it is known to be small (at
/// most [`MAX_REPLAY_BODY`]), as nginx does by default, so that it goes out with the head in
/// one write and is at hand for a replay; otherwise passed on as it arrives. The app has
/// `timeout` to send it.
async fn outgoing<B>(body: B, timeout: Duration) -> Result<Outgoing, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Outgoing::Full(Bytes::new()));
    }
    match body.size_hint().exact() {
        Some(length) if length <= MAX_REPLAY_BODY as u64 => {
            let collected = tokio::time::timeout(timeout, body.collect())
                .await
                .map_err(|_| ProxyError::BadRequest(format!("the request body did not arrive within {timeout:?}")))?
                .map_err(|err| {
                    let err: BoxError = err.into();
                    ProxyError::BadRequest(format!("the request body could not be read: {err}"))
                })?;
            Ok(Outgoing::Full(collected.to_bytes()))
        }
        _ => Ok(Outgoing::Stream(
            body.map_err(|err| BoxError::from(AppBodyError(err.into())))
                .boxed_unsync(),
        )),
    }
}

/// What a replay after a 401 needs.
struct Replay<'a> {
    parts: &'a mut http::request::Parts,
    lines: Option<&'a mut RequestLines>,
    auth_config: &'a Active,
    /// The token the upstream refused.
    token: Arc<CachedToken>,
    kept: Kept,
    timeout: Duration,
    /// The listener loop's connection timer, when it lent one.
    timer: Option<&'a mut Timer>,
}

/// A request body kept for a replay.
enum Kept {
    Whole(Bytes),
    Streamed(replay::KeptBody),
}

/// What `forward` learned about a request, for its metrics and log line.
#[derive(Default)]
struct Seen<'r> {
    auth_config: Option<&'r Active>,
    /// Where the request went (or was going).
    authority: Option<http::uri::Authority>,
}

enum Status {
    Http(StatusCode),
    Code(&'static str),
}

/// An open app connection: counted in `bearerd_connections` and holding one of the
/// listener's `max_connections` slots until dropped.
struct Open {
    gauge: prometheus::IntGauge,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn start(metrics: &Metrics, slot: OwnedSemaphorePermit) -> Self {
        metrics.connections.inc();
        Self {
            gauge: metrics.connections.clone(),
            _slot: slot,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Counts a request in `bearerd_inflight_requests` until dropped (also when the client goes
/// away and the request's future is dropped).
struct Inflight<'a>(&'a Metrics);

impl<'a> Inflight<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.inflight.inc();
        Self(metrics)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// The request's `X-Request-Id`: the app's, when it sent a usable one, else a new random
/// one, added to the request so the upstream sees the same id as bearerd's log. The app's is
/// among its `lines` when the listener loop kept them, else in `headers`.
fn request_id(
    headers: &mut http::HeaderMap,
    lines: Option<&mut RequestLines>,
    keep: bool,
) -> Option<http::HeaderValue> {
    let usable = |id: &[u8]| !id.is_empty() && id.len() <= 200 && visible_ascii(id);
    let app = match &lines {
        Some(lines) => lines.get(&X_REQUEST_ID),
        None => headers.get(&X_REQUEST_ID).map(http::HeaderValue::as_bytes),
    };
    match app {
        Some(id) if usable(id) => return keep.then(|| http::HeaderValue::from_bytes(id).ok()).flatten(),
        _ => {}
    }
    let id = random_id();
    let value =
        || http::HeaderValue::from_bytes(&id).unwrap_or_else(|_| unreachable!("hex digits are a valid header value"));
    let kept = keep.then(value);
    match lines {
        // Kept as its digits beside the lines: no header value is allocated for it.
        Some(lines) => lines.set_request_id(id),
        None => {
            headers.insert(X_REQUEST_ID.clone(), value());
        }
    }
    kept
}

/// 128 random bits as 32 lowercase hex digits.
fn random_id() -> [u8; REQUEST_ID_LEN] {
    /// Each byte's two hex digits: a byte a time from a table is cheaper than a nibble a
    /// time, or shifting the u128 for each digit.
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
            byte += 1;
        }
        pairs
    };
    let pairs = fastrand::u128(..).to_be_bytes().map(|byte| PAIRS[usize::from(byte)]);
    let mut text = [0; REQUEST_ID_LEN];
    text.copy_from_slice(pairs.as_flattened());
    text
}

/// App-supplied text made safe to echo in a message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_id_is_its_128_bits_in_hex() {
        for seed in [1, 7, 42, 1_000_003] {
            fastrand::seed(seed);
            let expected = format!("{:032x}", fastrand::u128(..));
            fastrand::seed(seed);
            assert_eq!(std::str::from_utf8(&random_id()).unwrap(), expected);
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID.clone(), http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let id = request_id(&mut headers, None, true).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&id]);
        // Not kept for a log line that will not be written, and still sent upstream.
        let mut headers = http::HeaderMap::new();
        assert_eq!(request_id(&mut headers, None, false), None);
        assert_eq!(headers.get(&X_REQUEST_ID).unwrap().len(), 32);
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID.clone(), http::HeaderValue::from_static("app-1"));
        assert_eq!(request_id(&mut headers, None, true).unwrap(), "app-1");
        assert_eq!(request_id(&mut headers, None, false), None);
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), ["app-1"]);
    }

    #[test]
    fn the_apps_request_id_among_its_lines_is_kept_there_or_replaced() {
        let names = |lines: &RequestLines| {
            lines
                .iter()
                .map(|(name, value)| format!("{}={}", String::from_utf8_lossy(name), String::from_utf8_lossy(value)))
                .collect::<Vec<_>>()
        };
        let (mut lines, _) = RequestLines::parsed(b"GET / HTTP/1.1\r\nX-Request-ID: app-1\r\nAccept: x\r\n\r\n");
        let mut headers = http::HeaderMap::new();
        assert_eq!(request_id(&mut headers, Some(&mut lines), true).unwrap(), "app-1");
        assert_eq!(request_id(&mut headers, Some(&mut lines), false), None);
        assert!(headers.is_empty());
        assert_eq!(names(&lines), ["X-Request-ID=app-1", "Accept=x"]);
        let (mut lines, _) =
            RequestLines::parsed(b"GET / HTTP/1.1\r\nx-request-id: caf\xe9\r\nAccept: x\r\nX-Request-Id: b\r\n\r\n");
        let id = request_id(&mut headers, Some(&mut lines), true).unwrap();
        assert_eq!(id.len(), 32);
        assert!(headers.is_empty(), "added beside the lines, not in the map");
        assert_eq!(
            names(&lines),
            ["Accept=x".to_owned(), format!("x-request-id={}", id.to_str().unwrap())]
        );
    }
}
