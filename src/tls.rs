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

/// The trusted roots: webpki's, the system's, and those in `ca_file`.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(
            errors = native.errors.len(),
            "some system CA certificates could not be read"
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
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
            roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
        }
    }
    Ok(roots)
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
