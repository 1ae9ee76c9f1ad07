//! bearerd: a sidecar HTTP forward proxy that adds OAuth 2.0 access tokens to an
//! application's outgoing API calls.
//!
//! The modules, in the order one request meets them:
//!
//! - [`config`]: YAML + environment → a validated [`config::Config`] (auth configs, routes).
//! - [`proxy`]: the listener and [`proxy::Proxy::handle`], which walks each request through
//!   the steps below and forwards it over pooled connections (or tunnels a `CONNECT`).
//! - [`routes`]: which auth config a request gets (`X-Auth-Config`, else the first matching
//!   route, else `default_action`), and the `allowed_hosts` guard.
//! - [`token`]: the token cache (moka, single flight) and the token endpoint client.
//! - [`inject`]: puts the token on the request and strips hop-by-hop headers.
//! - [`error`]: bearerd's own errors and the one table that turns them into responses.
//! - [`admin`]: the admin listener (`/healthz`).
//! - [`secret`] and [`tls`]: redacting secret types, and the rustls client settings.
//!
//! A request `GET http://api.example.com/v1/x` with `X-Auth-Config: billing` is parsed into a
//! target, `billing` is looked up, `api.example.com:80` is checked against its allowed hosts,
//! a token comes from the cache (or the one fetch in flight), `Authorization: Bearer …`
//! replaces anything the app sent, and the request goes upstream; the response streams back.

pub mod admin;
pub mod config;
pub mod error;
pub mod inject;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod secret;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::proxy::{Proxy, Upstream};
use crate::token::{TokenCache, TokenClient};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of everything bearerd sends: streamed through, or its own error JSON.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("token client: {0}")]
    TokenClient(#[from] reqwest::Error),
    #[error("cannot listen on {addr} ({what}): {cause}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// A running bearerd: the proxy and admin listeners. Dropping it stops both.
pub struct Server {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners (port 0 picks a free port) and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let roots = Arc::new(tls::roots(config.ca_file.as_deref())?);
        let upstream = Upstream::new(tls::client_config(Arc::clone(&roots))?, config.upstream_timeout);
        let tokens = TokenCache::new(TokenClient::new(roots)?);
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|cause| StartError::Bind { what, addr, cause })
        };
        let proxy_listener = bind("listen", config.listen).await?;
        let admin_listener = bind("admin_listen", config.admin_listen).await?;
        let local = |listener: &TcpListener, what, addr| {
            listener
                .local_addr()
                .map_err(|cause| StartError::Bind { what, addr, cause })
        };
        let proxy_addr = local(&proxy_listener, "listen", config.listen)?;
        let admin_addr = local(&admin_listener, "admin_listen", config.admin_listen)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let proxy = Arc::new(Proxy::new(Arc::new(config), tokens, upstream, Arc::clone(&metrics)));
        let tasks = vec![
            tokio::spawn(proxy.serve(proxy_listener)),
            tokio::spawn(admin::serve(admin_listener, metrics)),
        ];
        tracing::info!(%proxy_addr, %admin_addr, "bearerd is serving");
        Ok(Self {
            proxy_addr,
            admin_addr,
            tasks,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
