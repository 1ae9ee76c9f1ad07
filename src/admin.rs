//! The admin listener: `/healthz` (liveness), `/readyz` (readiness), `/metrics`
//! (Prometheus), `/configs` (each auth config's public fields and token state), `/ca.pem`
//! (the interception CA's certificate), and the consent of the authorization code grant
//! (`/authorize/<id>`, `/callback`: [`crate::consent`]). Nothing here ever shows a secret, a
//! private key or a token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::{AuthConfig, Inject, TokenEndpoint, format_timestamp};
use crate::consent::Consents;
use crate::proxy::Proxy;

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, consents: Arc<Consents>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (proxy, consents) = (Arc::clone(&proxy), Arc::clone(&consents));
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (proxy, consents) = (Arc::clone(&proxy), Arc::clone(&consents));
                async move {
                    let config = proxy.config();
                    let response = match consents.answer(&request, peer, &config, &proxy.tokens).await {
                        Some(response) => response,
                        None => answer(&request, &proxy),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const PEM: &str = "application/x-pem-file";

fn answer<B>(request: &Request<B>, proxy: &Proxy) -> Response<Full<Bytes>> {
    let readable = matches!(*request.method(), Method::GET | Method::HEAD);
    let path = request.uri().path();
    let (status, content_type, body) = match (readable, path) {
        (true, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (true, "/readyz") => match not_ready(proxy) {
            None => (StatusCode::OK, TEXT, "ready\n".to_owned()),
            Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {reason}\n")),
        },
        (true, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", proxy.metrics.render()),
        (true, "/configs") => (StatusCode::OK, "application/json", configs(proxy).to_string()),
        (true, "/ca.pem") => match &proxy.interception {
            Some(interception) => (StatusCode::OK, PEM, interception.ca_pem().to_owned()),
            None => (
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: TLS interception is off (no intercept: in the configuration)\n".to_owned(),
            ),
        },
        (false, "/healthz" | "/readyz" | "/metrics" | "/configs" | "/ca.pem") => {
            (StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n".to_owned())
        }
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// Why bearerd is not ready: shutting down, or a `prefetch: true` config without a token yet.
fn not_ready(proxy: &Proxy) -> Option<String> {
    if proxy.draining() {
        return Some("shutting down".into());
    }
    let config = proxy.config();
    let waiting: Vec<String> = config
        .auth_configs
        .iter()
        .filter(|c| c.prefetch)
        .filter_map(|c| {
            let state = proxy.tokens.state(c);
            state.last_refresh.is_none().then(|| match state.last_error {
                Some(error) => format!("no token yet for `{}` (last error: {error})", c.id),
                None => format!("no token yet for `{}`", c.id),
            })
        })
        .collect();
    (!waiting.is_empty()).then(|| waiting.join("; "))
}

/// Every auth config's public fields and token state.
fn configs(proxy: &Proxy) -> Value {
    let config = proxy.config();
    let configs: Vec<Value> = config.auth_configs.iter().map(|c| auth_config(proxy, c)).collect();
    json!({
        "source": config.source,
        "auth_configs": configs,
        "routes": config.routes.len(),
    })
}

fn auth_config(proxy: &Proxy, c: &AuthConfig) -> Value {
    let time = |t: Option<SystemTime>| t.map(format_timestamp);
    let endpoint = match &c.endpoint {
        TokenEndpoint::Url(_) => json!({ "token_url": c.endpoint.to_string() }),
        TokenEndpoint::Discovery { issuer, document } => json!({
            "issuer": issuer,
            "discovery_url": crate::config::endpoint_name(document),
        }),
    };
    let inject = match &c.inject {
        Inject::Header { name, prefix } => json!({ "header": name.as_str(), "prefix": prefix }),
        Inject::Query { name } => json!({ "query": name }),
    };
    let state = proxy.tokens.state(c);
    json!({
        "id": c.id,
        "description": c.description,
        "grant": c.grant.as_str(),
        "endpoint": endpoint,
        // None for an external account: Google's STS is asked with no client identity.
        "client_id": (!c.client_id.is_empty()).then_some(c.client_id.as_str()),
        "client_auth": c.client_auth.as_str(),
        "scopes": c.scopes,
        // Names only: values are operator data that may not be meant for every reader.
        "extra_params": c.extra_params.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        "inject": inject,
        "allowed_hosts": c.allowed_hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "refresh_before_seconds": c.refresh_before.as_secs_f64(),
        "expiry_skew_seconds": c.expiry_skew.as_secs_f64(),
        "default_ttl_seconds": c.default_ttl.as_secs_f64(),
        "timeout_seconds": c.timeout.as_secs_f64(),
        "retry_on_401": c.retry_on_401,
        "prefetch": c.prefetch,
        "client_secret_expires_at": time(c.client_secret_expires_at),
        "refresh_token_file": c.first_refresh_token.as_ref().map(|first| first.path.display().to_string()),
        "authorize": c.authorize.as_ref().map(|authorize| json!({
            "path": format!("/authorize/{}", c.id),
            "authorization_url": authorize.url.as_ref().map(crate::config::endpoint_name),
            "redirect_uri": authorize.redirect_uri.as_ref().map(url::Url::as_str),
            // Names only, as for extra_params.
            "authorize_params": authorize.params.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        })),
        "token": {
            "valid_until": time(state.valid_until),
            "last_refresh": time(state.last_refresh),
            "last_error": state.last_error,
            "consecutive_failures": state.failures,
            "consent_required": state.consent_required,
        },
    })
}
