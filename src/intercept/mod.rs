//! TLS interception for `HTTPS_PROXY` clients: bearerd's CA ([`ca`]), the leaf certificates
//! it mints per host ([`leaf`]), the CA bundle written for apps to trust, and the TLS
//! handshake with the app ([`Interception::accept`]) that a terminated `CONNECT` starts with.

mod bundle;
mod ca;
mod leaf;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

pub use ca::Ca;

use crate::config::{HostPattern, Intercept};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("{0}")]
    Ca(String),
    #[error("intercept.{field} {file}: {reason}")]
    OperatorCa {
        field: &'static str,
        file: String,
        reason: String,
    },
    #[error("intercept.ca_bundle_out {path}: cannot write the CA bundle: {cause}")]
    Bundle { path: String, cause: std::io::Error },
    #[error(
        "{host} is outside the interception CA's name constraints (it was not an intercepted route host at start); restart bearerd to intercept it"
    )]
    OutOfScope { host: String },
    #[error("cannot mint a certificate for {host}: {cause}")]
    Mint { host: String, cause: String },
    #[error(
        "refused TLS for {host}: the app's ClientHello asks for `{server_name}` (SNI), not the host it sent CONNECT for"
    )]
    ServerNameMismatch { host: String, server_name: String },
    #[error(
        "TLS handshake with the app for {host} failed: {cause}; if the app rejected bearerd's certificate, make it trust bearerd's CA ({bundle} as SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS or CURL_CA_BUNDLE, or GET /ca.pem on the admin listener); an app that pins certificates cannot be intercepted"
    )]
    Handshake {
        host: String,
        bundle: String,
        cause: std::io::Error,
    },
    #[error("TLS handshake with the app for {host} did not finish within {timeout:?}")]
    HandshakeTimeout { host: String, timeout: Duration },
}

/// The running interception: the CA, the leaves minted from it, and the counts of
/// `bearerd_intercepted_connections_total`. Built once at start; a reload does not change it.
pub struct Interception {
    ca: Ca,
    leaves: leaf::Leaves,
    bundle: PathBuf,
    outcomes: Outcomes,
}

impl std::fmt::Debug for Interception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interception")
            .field("ca", &self.ca)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// `bearerd_intercepted_connections_total` by outcome.
struct Outcomes {
    ok: IntCounter,
    handshake_failed: IntCounter,
    refused: IntCounter,
}

impl Interception {
    /// Makes the CA — the operator's, or a new one whose name constraints permit `hosts`
    /// (the intercepted route hosts) — and writes `ca_bundle_out`: the CA, then `roots`.
    pub fn start(
        settings: &Intercept,
        hosts: &[HostPattern],
        roots: &[CertificateDer<'static>],
        metrics: &Metrics,
    ) -> Result<Self, InterceptError> {
        let ca = match &settings.operator_ca {
            Some(operator) => Ca::operator(operator)?,
            None => Ca::generate(hosts, SystemTime::now())?,
        };
        bundle::write(&settings.ca_bundle_out, ca.pem(), roots).map_err(|cause| InterceptError::Bundle {
            path: settings.ca_bundle_out.display().to_string(),
            cause,
        })?;
        let outcome = |name: &str| metrics.intercepted_connections.with_label_values(&[name]);
        Ok(Self {
            leaves: leaf::Leaves::new(settings.leaf_ttl),
            bundle: settings.ca_bundle_out.clone(),
            outcomes: Outcomes {
                ok: outcome("ok"),
                handshake_failed: outcome("handshake_failed"),
                refused: outcome("refused"),
            },
            ca,
        })
    }

    /// The CA certificate, PEM (public: served as `GET /ca.pem`).
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        self.ca.pem()
    }

    /// Whether `host` (lowercase, no brackets) can be intercepted: a generated CA's name
    /// constraints were fixed at start, so a host added by a reload cannot (its `CONNECT`
    /// is tunnelled, with a warning, until a restart).
    #[must_use]
    pub fn covers(&self, host: &str) -> bool {
        self.ca.permits(host)
    }

    /// The server settings for a `CONNECT` to `host`: its leaf (minted on first use, renewed
    /// when a third of its lifetime is left), presented only to a `ClientHello` for `host`.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, Arc<InterceptError>> {
        self.server_config_at(host, SystemTime::now())
    }

    fn server_config_at(&self, host: &str, now: SystemTime) -> Result<Arc<ServerConfig>, Arc<InterceptError>> {
        if !self.covers(host) {
            return Err(Arc::new(InterceptError::OutOfScope { host: host.to_owned() }));
        }
        self.leaves
            .get(&self.ca, host, now)
            .map(|leaf| Arc::clone(&leaf.config))
    }

    /// The TLS handshake with an app whose `CONNECT` named `host` (lowercase, no brackets),
    /// on `io` (the connection after bearerd's `200`), counted in
    /// `bearerd_intercepted_connections_total`: `ok`, `refused` (SNI for another host, or a
    /// host outside the CA's scope), `handshake_failed` (anything else, such as an app that
    /// does not trust bearerd's CA). The error says what happened and how to trust the CA;
    /// the caller logs it once. Unbounded: [`Interception::accept_within`] bounds it.
    pub async fn accept<IO>(&self, host: &str, io: IO) -> Result<TlsStream<IO>, Arc<InterceptError>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.server_config(host).inspect_err(|err| match **err {
            InterceptError::OutOfScope { .. } => self.outcomes.refused.inc(),
            _ => self.outcomes.handshake_failed.inc(),
        })?;
        let handshake_failed = |cause: std::io::Error| {
            self.outcomes.handshake_failed.inc();
            Arc::new(InterceptError::Handshake {
                host: host.to_owned(),
                bundle: self.bundle.display().to_string(),
                cause,
            })
        };
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(handshake_failed)?;
        let server_name = start.client_hello().server_name().map(str::to_owned);
        if !leaf::server_name_agrees(host, server_name.as_deref()) {
            self.outcomes.refused.inc();
            // The leaf's resolver refuses this name too: the app gets an access_denied alert.
            let _ = start.into_stream(config).await;
            return Err(Arc::new(InterceptError::ServerNameMismatch {
                host: host.to_owned(),
                server_name: server_name.unwrap_or_default(),
            }));
        }
        let stream = start.into_stream(config).await.map_err(handshake_failed)?;
        self.outcomes.ok.inc();
        Ok(stream)
    }

    /// [`Interception::accept`], given up after `timeout` (an app that connects and sends no
    /// `ClientHello`, say), which is counted `handshake_failed` too.
    pub async fn accept_within<IO>(
        &self,
        host: &str,
        io: IO,
        timeout: Duration,
    ) -> Result<TlsStream<IO>, Arc<InterceptError>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::time::timeout(timeout, self.accept(host, io))
            .await
            .unwrap_or_else(|_| {
                self.outcomes.handshake_failed.inc();
                Err(Arc::new(InterceptError::HandshakeTimeout {
                    host: host.to_owned(),
                    timeout,
                }))
            })
    }
}
