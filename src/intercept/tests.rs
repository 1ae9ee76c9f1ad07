use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use crate::config::OperatorCa;

const TTL: Duration = Duration::from_hours(24);
const WAIT: Duration = Duration::from_secs(10);

fn hosts(patterns: &[&str]) -> Vec<HostPattern> {
    patterns.iter().map(|p| HostPattern::parse(p, false).unwrap()).collect()
}

fn settings(dir: &Path, operator_ca: Option<OperatorCa>) -> Intercept {
    Intercept {
        ca_bundle_out: dir.join("bundle.pem"),
        operator_ca,
        leaf_ttl: TTL,
    }
}

/// Verifies `chain` for `name` as a client trusting only `root` would.
fn verify(root: &CertificateDer<'static>, chain: &[CertificateDer<'static>], name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> x509_parser::certificate::X509Certificate<'a> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

#[test]
fn the_generated_ca_is_constrained_to_the_intercepted_hosts() {
    let ca = Ca::generate(
        &hosts(&["api.test", "*.svc.test", "127.0.0.1", "::1"]),
        SystemTime::now(),
    )
    .unwrap();
    let parsed = parse(ca.certificate());
    assert!(parsed.is_ca());
    let constraints = parsed
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::NameConstraints(constraints) => Some((ext.critical, constraints)),
            _ => None,
        })
        .expect("a name constraints extension");
    let permitted: Vec<String> = constraints
        .1
        .permitted_subtrees
        .as_ref()
        .unwrap()
        .iter()
        .map(|subtree| match &subtree.base {
            GeneralName::DNSName(name) => format!("dns {name}"),
            GeneralName::IPAddress(bytes) => format!("ip {bytes:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    let v6_host_and_mask = format!("ip {:?}", [[0u8; 15].as_slice(), &[1], &[0xff; 16]].concat());
    assert_eq!(
        permitted,
        [
            "dns api.test".to_owned(),
            "dns .svc.test".to_owned(),
            "ip [127, 0, 0, 1, 255, 255, 255, 255]".to_owned(),
            v6_host_and_mask,
        ]
    );
    assert!(constraints.1.excluded_subtrees.is_none());

    // What a client checking the constraints (webpki) makes of leaves signed by it.
    let now = SystemTime::now();
    for allowed in ["api.test", "a.svc.test", "a.b.svc.test", "127.0.0.1", "::1"] {
        let leaf = ca.sign_leaf(allowed, TTL, now).unwrap();
        verify(ca.certificate(), &leaf.chain, allowed).unwrap_or_else(|err| panic!("{allowed}: {err}"));
        assert!(ca.permits(allowed), "{allowed}");
    }
    for outside in ["evil.test", "svc.test.evil", "api.test.evil", "10.0.0.1", "::2"] {
        let leaf = ca.sign_leaf(outside, TTL, now).unwrap();
        let err = verify(ca.certificate(), &leaf.chain, outside).unwrap_err();
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{outside}: {err:?}"
        );
        assert!(!ca.permits(outside), "{outside}");
    }
}

#[test]
fn a_kind_of_name_no_host_uses_is_still_constrained() {
    let now = SystemTime::now();
    // DNS hosts only: no IP address may be signed for.
    let dns_only = Ca::generate(&hosts(&["api.test"]), now).unwrap();
    let leaf = dns_only.sign_leaf("10.1.2.3", TTL, now).unwrap();
    let err = verify(dns_only.certificate(), &leaf.chain, "10.1.2.3").unwrap_err();
    assert!(format!("{err:?}").contains("NameConstraintViolation"), "{err:?}");
    // IP hosts only: no real DNS name may be signed for.
    let ip_only = Ca::generate(&hosts(&["127.0.0.1"]), now).unwrap();
    let leaf = ip_only.sign_leaf("api.test", TTL, now).unwrap();
    let err = verify(ip_only.certificate(), &leaf.chain, "api.test").unwrap_err();
    assert!(format!("{err:?}").contains("NameConstraintViolation"), "{err:?}");
    // No host at all: nothing.
    let none = Ca::generate(&[], now).unwrap();
    for name in ["api.test", "127.0.0.1"] {
        let leaf = none.sign_leaf(name, TTL, now).unwrap();
        assert!(verify(none.certificate(), &leaf.chain, name).is_err(), "{name}");
    }
}

#[test]
fn a_leaf_is_p256_for_its_host_for_leaf_ttl_signed_by_the_ca() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let ca = Ca::generate(&hosts(&["api.test", "127.0.0.1"]), now).unwrap();
    for (host, san) in [
        ("api.test", "DNSName(\"api.test\")"),
        ("127.0.0.1", "IPAddress([127, 0, 0, 1])"),
    ] {
        let leaf = ca.sign_leaf(host, Duration::from_hours(3), now).unwrap();
        assert_eq!(leaf.chain.len(), 2);
        assert_eq!(&leaf.chain[1], ca.certificate());
        let cert = parse(&leaf.chain[0]);
        assert_eq!(cert.issuer(), parse(ca.certificate()).subject());
        assert_eq!(cert.validity().not_before.timestamp(), 1_900_000_000 - 300);
        assert_eq!(cert.validity().not_after.timestamp(), 1_900_000_000 + 3 * 3600);
        assert!(!cert.is_ca());
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect();
        assert_eq!(sans, [san]);
        let spki = &cert.tbs_certificate.subject_pki;
        assert_eq!(spki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1"); // id-ecPublicKey
        let curve = spki.algorithm.parameters.as_ref().unwrap().as_oid().unwrap();
        assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7"); // prime256v1
    }
}

#[test]
fn concurrent_first_requests_mint_once_and_renewal_mints_again() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let interception = Arc::new(
        Interception::start(
            &settings(dir.path(), None),
            &hosts(&["api.test", "*.svc.test"]),
            &[],
            &metrics,
        )
        .unwrap(),
    );
    let now = SystemTime::now();
    let first = |at: SystemTime| {
        let barrier = Arc::new(Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (interception, barrier) = (Arc::clone(&interception), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    interception.server_config_at("api.test", at).unwrap()
                })
            })
            .collect();
        let configs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(configs.iter().all(|config| Arc::ptr_eq(config, &configs[0])));
        configs[0].clone()
    };
    let minted = first(now);
    assert_eq!(interception.leaves.minted(), 1);
    // More than a third of the lifetime left: the same leaf.
    let kept = first(now + TTL / 2);
    assert!(Arc::ptr_eq(&minted, &kept));
    assert_eq!(interception.leaves.minted(), 1);
    // Less than a third left: one new leaf, however many ask at once.
    let renewed = first(now + TTL * 2 / 3 + Duration::from_secs(1));
    assert!(!Arc::ptr_eq(&minted, &renewed));
    assert_eq!(interception.leaves.minted(), 2);
    // Another host, and one outside the CA's scope (which mints nothing).
    interception.server_config_at("a.svc.test", now).unwrap();
    assert_eq!(interception.leaves.minted(), 3);
    let err = interception.server_config_at("other.test", now).unwrap_err();
    assert!(matches!(*err, InterceptError::OutOfScope { .. }), "{err}");
    assert_eq!(interception.leaves.minted(), 3);
}

/// The counts of `bearerd_intercepted_connections_total` as (`ok`, `handshake_failed`, `refused`).
fn outcomes(metrics: &Metrics) -> (u64, u64, u64) {
    let count = |outcome: &str| metrics.intercepted_connections.with_label_values(&[outcome]).get();
    (count("ok"), count("handshake_failed"), count("refused"))
}

/// A client trusting only `roots`, offering ALPN `h2` and `http/1.1`.
fn client(roots: RootCertStore) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One connection on loopback: bearerd's side accepts it as a CONNECT to `host`, the
/// client's side does a handshake for `server_name`. Each side's result.
async fn handshake(
    interception: Arc<Interception>,
    host: &'static str,
    connector: tokio_rustls::TlsConnector,
    server_name: &str,
) -> (
    Result<(), Arc<InterceptError>>,
    std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut tls = interception.accept(host, stream).await?;
        // One round trip, so the client's handshake completes both ways.
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        tls.write_all(&byte).await.unwrap();
        tls.flush().await.unwrap();
        Ok(())
    });
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let client = tokio::time::timeout(WAIT, async {
        let mut tls = connector.connect(name, stream).await?;
        tls.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(tls)
    })
    .await
    .unwrap();
    let server = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    (server, client)
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_does_not_finish_in_time_is_given_up_and_counted_failed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let interception = Interception::start(&settings(dir.path(), None), &hosts(&["api.test"]), &[], &metrics).unwrap();
    // The app's side stays open and sends nothing.
    let (_app, bearerd) = tokio::io::duplex(1024);
    let err = interception
        .accept_within("api.test", bearerd, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TLS handshake with the app for api.test did not finish within 10s"
    );
    assert_eq!(outcomes(&metrics), (0, 1, 0));
}

#[tokio::test]
async fn handshakes_serve_the_hosts_leaf_refuse_other_names_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let interception = Arc::new(
        Interception::start(
            &settings(dir.path(), None),
            &hosts(&["api.test", "127.0.0.1"]),
            &[],
            &metrics,
        )
        .unwrap(),
    );
    let mut ca_only = RootCertStore::empty();
    ca_only.add(interception.ca.certificate().clone()).unwrap();

    // The CONNECT host, trusted through bearerd's CA, with h2 chosen.
    let (server, client_side) = handshake(
        Arc::clone(&interception),
        "api.test",
        client(ca_only.clone()),
        "api.test",
    )
    .await;
    server.unwrap();
    let tls = client_side.unwrap();
    let (_, connection) = tls.get_ref();
    assert_eq!(connection.alpn_protocol(), Some(b"h2".as_slice()));
    let presented = connection.peer_certificates().unwrap();
    let leaf = parse(&presented[0]);
    assert_eq!(leaf.issuer(), parse(interception.ca.certificate()).subject());
    assert_eq!(outcomes(&metrics), (1, 0, 0));

    // An IP host: the client sends no SNI.
    let (server, client_side) = handshake(
        Arc::clone(&interception),
        "127.0.0.1",
        client(ca_only.clone()),
        "127.0.0.1",
    )
    .await;
    server.unwrap();
    client_side.unwrap();
    assert_eq!(outcomes(&metrics), (2, 0, 0));

    // SNI for another host than the CONNECT named: refused, with an alert.
    let (server, client_side) = handshake(
        Arc::clone(&interception),
        "api.test",
        client(ca_only.clone()),
        "other.test",
    )
    .await;
    let err = server.unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused TLS for api.test: the app's ClientHello asks for `other.test` (SNI), not the host it sent CONNECT for"
    );
    let client_err = client_side.unwrap_err();
    assert!(client_err.to_string().contains("AccessDenied"), "{client_err}");
    assert_eq!(outcomes(&metrics), (2, 0, 1));

    // An app that does not trust bearerd's CA: a failed handshake whose error says what to do.
    let mut public_only = RootCertStore::empty();
    public_only.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    let (server, client_side) = handshake(Arc::clone(&interception), "api.test", client(public_only), "api.test").await;
    let err = server.unwrap_err().to_string();
    assert!(
        err.starts_with("TLS handshake with the app for api.test failed: "),
        "{err}"
    );
    assert!(
        err.contains(&dir.path().join("bundle.pem").display().to_string()),
        "{err}"
    );
    assert!(err.contains("GET /ca.pem"), "{err}");
    let client_err = client_side.unwrap_err();
    assert!(client_err.to_string().contains("UnknownIssuer"), "{client_err}");
    assert_eq!(outcomes(&metrics), (2, 1, 1));

    // A host outside the CA's scope is refused before any TLS.
    let (server, client_side) = handshake(Arc::clone(&interception), "other.test", client(ca_only), "other.test").await;
    assert!(matches!(*server.unwrap_err(), InterceptError::OutOfScope { .. }));
    assert!(client_side.is_err());
    assert_eq!(outcomes(&metrics), (2, 1, 2));
}

/// An operator's CA (RSA or EC, PKCS#8) written as PEM files, and its certificate.
fn operator_ca(dir: &Path, key: &rcgen::KeyPair) -> (OperatorCa, rcgen::Certificate) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp proxy CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(key).unwrap();
    let ca = OperatorCa {
        cert_file: dir.join("ca.pem"),
        key_file: dir.join("ca.key"),
        chain: vec![cert.der().clone()],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    (ca, cert)
}

#[test]
fn an_operator_ca_signs_any_host_and_a_mismatched_or_non_ca_pair_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let (operator, cert) = operator_ca(dir.path(), &key);
    let ca = Ca::operator(&operator).unwrap();
    assert_eq!(ca.pem(), cert.pem());
    assert!(ca.permits("anything.example"));
    let leaf = ca.sign_leaf("anything.example", TTL, SystemTime::now()).unwrap();
    verify(cert.der(), &leaf.chain, "anything.example").unwrap();

    // Another key than the certificate's.
    let other = rcgen::KeyPair::generate().unwrap();
    let mismatched = OperatorCa {
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(other.serialize_der().into()),
        ..operator_ca(dir.path(), &key).0
    };
    let err = Ca::operator(&mismatched).unwrap_err().to_string();
    let key_file = dir.path().join("ca.key").display().to_string();
    let cert_file = dir.path().join("ca.pem").display().to_string();
    assert_eq!(
        err,
        format!("intercept.ca_key_file {key_file}: the key does not belong to the certificate in {cert_file}")
    );
    for secret in [other.serialize_pem(), format!("{:?}", other.serialize_der())] {
        assert!(!err.contains(secret.lines().nth(1).unwrap_or(&secret)));
    }

    // A certificate that is not a CA's.
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let not_ca = rcgen::CertificateParams::new(vec!["host.test".to_owned()])
        .unwrap()
        .self_signed(&leaf_key)
        .unwrap();
    let not_ca = OperatorCa {
        chain: vec![not_ca.der().clone()],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        ..operator_ca(dir.path(), &key).0
    };
    assert_eq!(
        Ca::operator(&not_ca).unwrap_err().to_string(),
        format!(
            "intercept.ca_cert_file {cert_file}: the first certificate is not a CA certificate (basicConstraints CA:TRUE)"
        )
    );
}

#[test]
fn debug_output_never_shows_the_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (operator, _) = operator_ca(dir.path(), &key);
    let metrics = Metrics::new();
    let interception = Interception::start(&settings(dir.path(), Some(operator)), &[], &[], &metrics).unwrap();
    let shown = format!("{interception:?} {:?}", interception.ca);
    assert!(shown.contains("key: \"[redacted]\""), "{shown}");
    let der = key.serialize_der();
    assert!(!shown.contains(&format!("{der:?}")[1..40]), "{shown}");
    let pem = key.serialize_pem();
    assert!(!shown.contains(pem.lines().nth(1).unwrap()), "{shown}");
}
