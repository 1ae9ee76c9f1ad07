//! TLS client settings shared by upstream connections and token requests: one rustls
//! provider (aws-lc-rs), roots from webpki, the system store and `tls.ca_file`.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.ca_file {path}: {cause}")]
    CaFile { path: String, cause: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Every root bearerd trusts, as a store for its TLS clients and as the certificates
/// themselves (which `intercept.ca_bundle_out` hands on to apps).
pub struct Roots {
    pub store: RootCertStore,
    /// Each certificate in `store`, in the order added: webpki's, the system's, `ca_file`'s.
    pub certificates: Vec<CertificateDer<'static>>,
}

/// The trusted roots: webpki's, the system's, and those in `ca_file`.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    load_roots(ca_file).map(|roots| roots.store)
}

/// The trusted roots, with their certificates: webpki's, the system's, and those in
/// `ca_file` (each of which must be usable as a root).
pub fn load_roots(ca_file: Option<&Path>) -> Result<Roots, TlsError> {
    let mut roots = Roots {
        store: RootCertStore::empty(),
        certificates: Vec::new(),
    };
    let (_, ignored) = roots.add_parsable(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    if ignored > 0 {
        tracing::debug!(ignored, "webpki root certificates not usable as roots");
    }
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(
            errors = native.errors.len(),
            "some system CA certificates could not be read"
        );
    }
    let (added, ignored) = roots.add_parsable(native.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    if let Some(path) = ca_file {
        let ca_error = |cause: String| TlsError::CaFile {
            path: path.display().to_string(),
            cause,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|err| ca_error(err.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|err| ca_error(err.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificates in the file".into()));
        }
        for cert in certs {
            roots.store.add(cert.clone()).map_err(|err| ca_error(err.to_string()))?;
            roots.certificates.push(cert);
        }
    }
    Ok(roots)
}

impl Roots {
    /// Adds each certificate usable as a root; returns how many were added and ignored.
    fn add_parsable(&mut self, certs: impl IntoIterator<Item = CertificateDer<'static>>) -> (usize, usize) {
        let (mut added, mut ignored) = (0, 0);
        for cert in certs {
            if self.store.add(cert.clone()).is_ok() {
                self.certificates.push(cert);
                added += 1;
            } else {
                ignored += 1;
            }
        }
        (added, ignored)
    }
}

/// A certificate as PEM: base64 in lines of 64 characters (RFC 7468).
#[must_use]
pub fn pem_certificate(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::with_capacity(encoded.len() + encoded.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Makes aws-lc-rs the process's default rustls provider, for clients that build their
/// configuration with `ClientConfig::builder()` (the Redis client): with it installed, they
/// use the tree's one provider even if another provider's feature is ever compiled in
/// (without it, such a build would panic at their first TLS connection). A provider
/// installed earlier is kept.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client configuration trusting `roots` that presents `chain` (RFC 8705 `tls_client_auth`).
pub fn client_config_with_certificate(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// A client configuration trusting `roots`; the HTTP client on top sets ALPN.
pub fn client_config(roots: Arc<RootCertStore>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
