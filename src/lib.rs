//! bearerd: a sidecar HTTP forward proxy that adds OAuth 2.0 access tokens to an
//! application's outgoing API calls.
//!
//! The modules, in the order one request meets them:
//!
//! - [`config`]: YAML + environment → a validated [`config::Config`] (auth configs, routes):
//!   plain data, importing no runtime module.
//! - [`running`]: the state built from one config and swapped whole at reload: the route
//!   index, and each auth config's token cache slot and metric series.
//! - [`http1`]: HTTP/1.1 on the wire, knowing nothing of the rest: the server loop that reads
//!   an app's request and writes its response, and the pooled client that sends it on to a
//!   plain-HTTP upstream. It owns framing: no peer's `Content-Length`, `Transfer-Encoding`
//!   or `Connection`-named line is passed on. (hyper serves what it hands over: HTTP/2,
//!   streamed bodies, `CONNECT`, HTTPS upstreams.)
//! - [`proxy`]: the listener and [`proxy::Proxy`], which walks each request through named
//!   phases — `target` (where is it going?), `select` (which auth config and route?),
//!   `guard` (may its token go there?), `authorize` (the token, injected), `send`, `replay`
//!   (once, on a 401), `finish` (counted and logged) — or tunnels a `CONNECT`.
//! - [`routes`]: which auth config a request gets (`X-Auth-Config`, else the first matching
//!   route, else `default_action`), and the `allowed_hosts` guard.
//! - [`token`]: the token cache (moka, single flight), each grant's token requests (the user
//!   grants' refresh tokens kept in [`state`]), and the token endpoint client.
//! - [`inject`]: puts the token on the request and strips hop-by-hop headers.
//! - [`error`]: bearerd's own errors and the one table that turns them into responses.
//! - [`intercept`]: TLS interception for `HTTPS_PROXY` clients: bearerd's CA, the leaf
//!   certificates it mints per host, the CA bundle for apps, the handshake with the app.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/configs`, `/ca.pem`),
//!   and on it [`consent`]: the authorization code grant's `/authorize/<id>` and `/callback`.
//! - [`metrics`]: the Prometheus metrics of DESIGN.md, with bounded labels only.
//! - `server`: a running [`Server`]: listeners, reload, prefetch, graceful shutdown.
//! - [`state`]: the sealed file that keeps the user grants' refresh tokens across restarts.
//! - [`shared_cache`]: the fleet-wide token cache on Redis (`shared_cache:`): a local miss
//!   looks there, and one process per fleet fetches under a lease; values are sealed.
//! - [`secret`], [`assertion`] and [`tls`]: redacting secret types, client-assertion keys
//!   and JWTs, and the rustls client settings (and the roots bearerd trusts).
//! - [`check`]: `bearerd check`, the configuration validated and one token fetched per config.
//!
//! A request `GET http://api.example.com/v1/x` with `X-Auth-Config: billing` is read by the
//! HTTP/1.1 loop, its target parsed, `billing` looked up in the running state,
//! `api.example.com:80` checked against its allowed hosts, a token taken from the cache (or
//! the one fetch in flight), `Authorization: Bearer …` put in place of anything the app
//! sent, and the request sent upstream; the response streams back, framed by bearerd.

pub mod admin;
pub mod assertion;
pub mod check;
pub mod config;
pub mod consent;
pub mod error;
pub mod http1;
pub mod inject;
pub mod intercept;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod running;
pub mod secret;
mod server;
pub mod shared_cache;
pub mod state;
pub mod tls;
pub mod token;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

pub use server::Server;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of everything bearerd sends: streamed through, or its own error JSON.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Intercept(#[from] intercept::InterceptError),
    #[error("token client: {0}")]
    TokenClient(#[from] reqwest::Error),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    SharedCache(#[from] shared_cache::SharedCacheError),
    #[error("cannot listen on {addr} ({what}): {cause}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// An error and its causes on one line, skipping a cause whose text the line already has.
#[must_use]
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
