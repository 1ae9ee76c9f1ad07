//! The proxy listener and the request path, step by step as in DESIGN.md
//! "Handling one request": accept → choose the auth config → guard → token → inject → forward.

mod connect;
mod replay;
mod target;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use upstream::Upstream;

use crate::config::{AuthConfig, Config};
use crate::error::{ProxyError, respond};
use crate::inject;
use crate::metrics::Metrics;
use crate::routes::{self, RequestFacts, RouteKind, SelectError};
use crate::token::{CachedToken, TokenCache, TokenError};
use crate::{BoxError, ProxyBody};

use replay::Keep;
use target::Target;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    config: Arc<Config>,
    tokens: TokenCache,
    upstream: Upstream,
    metrics: Arc<Metrics>,
}

impl Proxy {
    #[must_use]
    pub fn new(config: Arc<Config>, tokens: TokenCache, upstream: Upstream, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            tokens,
            upstream,
            metrics,
        }
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::error!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let proxy = Arc::clone(&proxy);
                    async move { Ok::<_, Infallible>(proxy.handle(request).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                if let Err(err) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, "connection ended: {err}");
                }
            });
        }
    }

    /// Answers one request; every failure becomes bearerd's JSON error response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        if request.method() == Method::CONNECT {
            return connect::tunnel(&self.config, request).await;
        }
        let mut auth_config = None;
        match self.forward(request, &mut auth_config).await {
            Ok(response) => response,
            Err(error) => respond(&error, auth_config.as_deref().map(|c: &AuthConfig| c.id.as_str())),
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        chosen: &mut Option<Arc<AuthConfig>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // 1. Where is it going, as the app wrote it?
        let target = Target::of(request.uri(), request.headers())?;
        let named = match request.headers().get(inject::X_AUTH_CONFIG) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| ProxyError::BadRequest("X-Auth-Config is not a valid auth config name".into()))?,
            ),
        };

        // 2. Which auth config, and which route?
        let facts = RequestFacts {
            method: request.method(),
            host: target.host_port(),
            path: request.uri().path(),
            origin_form: target.is_origin_form(),
            named_config: named,
        };
        let selection = routes::select(&self.config, facts).map_err(|err| match err {
            SelectError::UnknownAuthConfig(name) => ProxyError::UnknownAuthConfig(printable(&name)),
            SelectError::Denied => ProxyError::RouteDenied(err.to_string()),
        })?;
        chosen.clone_from(&selection.auth_config);
        let uri = match selection.route.map(|route| &route.kind) {
            Some(RouteKind::Gateway { upstream }) => {
                let prefix = selection.route.map_or("/", |route| route.path_prefix.as_str());
                target::gateway_uri(upstream, prefix, request.uri())?
            }
            Some(RouteKind::Forward { upstream_tls }) => target.forward_uri(request.uri(), *upstream_tls)?,
            None => target.forward_uri(request.uri(), false)?,
        };

        // 3. Guard: a token only ever goes to the hosts its config allows.
        if let Some(auth_config) = &selection.auth_config {
            let (host, port) = target::host_port_of(&uri)
                .ok_or_else(|| ProxyError::BadRequest("the request target has no host".into()))?;
            if !routes::host_allowed(auth_config, &host, port) {
                return Err(ProxyError::HostNotAllowed {
                    host: format!("{}:{port}", target::bracketed(&host)),
                    auth_config: auth_config.id.clone(),
                });
            }
        }
        let (mut parts, body) = request.into_parts();
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        inject::strip_request_headers(&mut parts.headers);
        let Some(auth_config) = selection.auth_config else {
            return self.send(parts, boxed(body)).await;
        };

        // 4. Token, from the cache or the one fetch in flight.
        let (token, _) = self.tokens.get(&auth_config).await?;

        // 5. and 6. Inject and forward, keeping a small body in case of a replay.
        if !auth_config.retry_on_401 {
            return self.send(with_token(parts, &auth_config, &token)?, boxed(body)).await;
        }
        let (body, kept) = Keep::new(body);
        let response = self
            .send(with_token(parts.clone(), &auth_config, &token)?, boxed(body))
            .await?;

        // 7. The upstream refused the token: drop it (only if it is still the cached one)
        // and replay once with a new one, when the body was small enough to keep.
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        self.tokens.evict_if_current(&auth_config, &token);
        let Some(body) = kept.whole() else { return Ok(response) };
        drop(response);
        let (token, _) = self.tokens.get(&auth_config).await?;
        self.metrics
            .upstream_retries
            .with_label_values(&[auth_config.id.as_str()])
            .inc();
        let body = Full::new(body).map_err(|never| match never {}).boxed_unsync();
        self.send(with_token(parts, &auth_config, &token)?, body).await
    }

    /// Sends a prepared request upstream and prepares its response for the app.
    async fn send(&self, parts: http::request::Parts, body: ProxyBody) -> Result<Response<ProxyBody>, ProxyError> {
        let response = self
            .upstream
            .send(Request::from_parts(parts, body), self.config.upstream_timeout)
            .await?;
        let (mut parts, body) = response.into_parts();
        inject::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, boxed(body)))
    }
}

/// The request head with `token` injected as `auth_config` says.
fn with_token(
    mut parts: http::request::Parts,
    auth_config: &AuthConfig,
    token: &CachedToken,
) -> Result<http::request::Parts, ProxyError> {
    inject::inject(&auth_config.inject, &token.token, &mut parts.headers, &mut parts.uri)
        .map_err(|err| ProxyError::TokenUnavailable(Arc::new(TokenError::Invalid(err.to_string()))))?;
    Ok(parts)
}

fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// App-supplied text made safe to echo in a message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(128).collect()
}
