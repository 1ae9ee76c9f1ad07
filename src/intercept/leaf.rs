//! Leaf certificates, minted per host on first use and kept in a bounded cache, each with
//! the rustls server settings that present it: for that host's name only.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use super::InterceptError;
use super::ca::Ca;

/// Hosts whose leaves are kept; `*.suffix` routes can name any number of hosts.
const MAX_LEAVES: u64 = 1024;
/// ALPN, in bearerd's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A minted leaf, ready to serve.
pub(super) struct Leaf {
    pub(super) config: Arc<ServerConfig>,
    /// From then on the next request mints a new one.
    renew_at: SystemTime,
}

type Minted = Result<Arc<Leaf>, Arc<InterceptError>>;

/// The leaves by host. Concurrent first requests for one host wait for one mint.
pub(super) struct Leaves {
    cache: moka::sync::Cache<String, Minted>,
    ttl: Duration,
    /// Leaves minted so far (renewals included).
    minted: AtomicU64,
}

impl Leaves {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::new(MAX_LEAVES),
            ttl,
            minted: AtomicU64::new(0),
        }
    }

    /// The leaf for `host` at `now`: the cached one until a third of its lifetime is left,
    /// then a new one. A failed mint is tried again by the next request.
    pub(super) fn get(&self, ca: &Ca, host: &str, now: SystemTime) -> Result<Arc<Leaf>, Arc<InterceptError>> {
        self.cache
            .entry(host.to_owned())
            .or_insert_with_if(
                || self.mint(ca, host, now).map(Arc::new).map_err(Arc::new),
                |cached| !cached.as_ref().is_ok_and(|leaf| now < leaf.renew_at),
            )
            .into_value()
    }

    #[cfg(test)]
    pub(super) fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    fn mint(&self, ca: &Ca, host: &str, now: SystemTime) -> Result<Leaf, InterceptError> {
        self.minted.fetch_add(1, Ordering::Relaxed);
        let minted = ca.sign_leaf(host, self.ttl, now)?;
        let config = server_config(host, minted.chain, PrivateKeyDer::Pkcs8(minted.key))?;
        Ok(Leaf {
            config,
            renew_at: now + self.ttl - self.ttl / 3,
        })
    }
}

/// Server settings presenting `chain` to a client whose SNI names `host` (or that sends
/// none: an IP address cannot be sent as SNI), with ALPN `h2` and `http/1.1`.
pub(super) fn server_config(
    host: &str,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, InterceptError> {
    let fail = |err: rustls::Error| InterceptError::Mint {
        host: host.to_owned(),
        cause: err.to_string(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(fail)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(fail)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneHost {
            host: host.to_owned(),
            certified: Arc::new(certified),
        }));
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Presents the leaf only when the `ClientHello` asks for the host it was minted for: the
/// app's `CONNECT` named that host, and TLS to another name would not be what it asked for.
struct OneHost {
    host: String,
    certified: Arc<CertifiedKey>,
}

impl OneHost {
    fn accepts(&self, server_name: Option<&str>) -> bool {
        server_name_agrees(&self.host, server_name)
    }
}

/// Whether a `ClientHello`'s SNI agrees with the `CONNECT` host: the same name (any case),
/// or no SNI at all.
pub(super) fn server_name_agrees(host: &str, server_name: Option<&str>) -> bool {
    server_name.is_none_or(|name| name.eq_ignore_ascii_case(host))
}

impl ResolvesServerCert for OneHost {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No certificate: rustls answers with an access_denied alert.
        self.accepts(hello.server_name()).then(|| Arc::clone(&self.certified))
    }
}

impl fmt::Debug for OneHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneHost")
            .field("host", &self.host)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}
