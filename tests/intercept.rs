//! The foundation of TLS interception, seen from outside: the CA bundle bearerd writes at
//! start, `GET /ca.pem` on the admin listener, the outcome series of
//! `bearerd_intercepted_connections_total`, and start errors for a bundle it cannot write.
//! A terminated `CONNECT` and the requests inside it: tests/interception.rs.
#[path = "support/binary.rs"]
mod binary;
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use binary::Bearerd;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use support::*;

const CONFIGS: &str = "auth_configs:\n  - id: api\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\nroutes:\n  - match: { host: api.test }\n    auth_config: api\n    intercept: true\n";

fn intercepting(dir: &Path, extra: &str) -> String {
    format!(
        "{extra}intercept:\n  ca_bundle_out: {}\n{CONFIGS}",
        dir.join("ca-bundle.pem").display()
    )
}

async fn ca_pem(bearerd: &bearerd::Server) -> reqwest::Response {
    direct_client()
        .get(format!("http://{}/ca.pem", bearerd.admin_addr))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_bundle_holds_the_ca_then_every_trusted_root_and_ca_pem_serves_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let extra_ca = TestCa::new();
    let ca_file = extra_ca.write_ca(dir.path());
    let bearerd = start_bearerd(&intercepting(
        dir.path(),
        &format!("tls:\n  ca_file: {}\n", ca_file.display()),
    ))
    .await;

    let response = ca_pem(&bearerd).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-pem-file");
    let served = response.text().await.unwrap();
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(served.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ca.len(), 1, "{served}");

    let path = dir.path().join("ca-bundle.pem");
    let bundle = std::fs::read(&path).unwrap();
    assert!(bundle.starts_with(served.as_bytes()));
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bundle)
        .collect::<Result<_, _>>()
        .unwrap();
    let roots = bearerd::tls::load_roots(Some(&ca_file)).unwrap();
    assert_eq!(certificates.len(), 1 + roots.certificates.len());
    assert_eq!(certificates[0], ca[0]);
    assert_eq!(certificates[1..], roots.certificates[..]);
    // webpki's roots first, `tls.ca_file` last; each usable as a root.
    assert_eq!(certificates[1], webpki_root_certs::TLS_SERVER_ROOT_CERTS[0]);
    let extra = CertificateDer::from_pem_slice(extra_ca.ca_pem.as_bytes()).unwrap();
    assert_eq!(certificates.last(), Some(&extra));
    let mut store = rustls::RootCertStore::empty();
    assert_eq!(
        store.add_parsable_certificates(certificates.clone()),
        (certificates.len(), 0)
    );

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // Written by rename: no temporary file is left beside it.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ca-bundle.pem", "ca.pem"]);

    let exposition = metrics(&bearerd).await;
    for outcome in ["ok", "handshake_failed", "refused"] {
        let series = format!("bearerd_intercepted_connections_total{{outcome=\"{outcome}\"}} 0");
        assert!(exposition.lines().any(|line| line == series), "{series} missing");
    }
}

#[tokio::test]
async fn a_restart_replaces_the_bundle_with_its_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca-bundle.pem");
    std::fs::write(&path, "stale\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let first = start_bearerd(&intercepting(dir.path(), "")).await;
    let first_ca = ca_pem(&first).await.text().await.unwrap();
    drop(first);
    let second = start_bearerd(&intercepting(dir.path(), "")).await;
    let second_ca = ca_pem(&second).await.text().await.unwrap();
    assert_ne!(first_ca, second_ca, "each start generates its own CA");
    let bundle = std::fs::read_to_string(&path).unwrap();
    assert!(bundle.starts_with(&second_ca));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
}

#[tokio::test]
async fn without_intercept_ca_pem_is_not_found_and_no_series_exist() {
    let bearerd = start_bearerd(
        "auth_configs:\n  - id: api\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [api.test]\n",
    )
    .await;
    let response = ca_pem(&bearerd).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.text().await.unwrap(),
        "not found: TLS interception is off (no intercept: in the configuration)\n"
    );
    let response = direct_client()
        .post(format!("http://{}/ca.pem", bearerd.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(
        !metrics(&bearerd)
            .await
            .contains("bearerd_intercepted_connections_total{")
    );
}

#[tokio::test]
async fn a_bundle_that_cannot_be_written_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{}",
        intercepting(&missing, "")
    );
    let config = bearerd::config::Config::from_yaml("test.yaml", &yaml, &bearerd::config::Env::new()).unwrap();
    let Err(err) = bearerd::Server::start(config).await else {
        panic!("bearerd started without writing its CA bundle");
    };
    assert_eq!(
        err.to_string(),
        format!(
            "intercept.ca_bundle_out {}: cannot write the CA bundle: No such file or directory (os error 2)",
            missing.join("ca-bundle.pem").display()
        )
    );
}

/// An operator CA's certificate and PKCS#8 key, written to `dir` as `ca.pem` and `ca.key`.
fn write_operator_ca(dir: &Path) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp proxy CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
    (cert.pem(), key)
}

fn operator_config(dir: &Path) -> String {
    format!(
        "intercept:\n  ca_bundle_out: {}\n  ca_cert_file: {}\n  ca_key_file: {}\n{CONFIGS}",
        dir.join("ca-bundle.pem").display(),
        dir.join("ca.pem").display(),
        dir.join("ca.key").display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_an_operator_ca_and_never_logs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key) = write_operator_ca(dir.path());
    let bearerd = Bearerd::start(&operator_config(dir.path()), "trace", &[]);
    assert_eq!(bearerd.admin_get("/ca.pem").await, (200, cert_pem.clone()));
    let bundle = std::fs::read_to_string(dir.path().join("ca-bundle.pem")).unwrap();
    assert!(bundle.starts_with(&cert_pem));
    let logs = bearerd
        .logs_when("the interception line", |logs| {
            logs.contains("TLS interception CA ready")
        })
        .await;
    let key_pem = key.serialize_pem();
    for line in key_pem.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!logs.contains(line), "a line of the CA key is in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_is_not_the_cas_stops_the_binary_naming_the_file_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_operator_ca(dir.path());
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("ca.key"), other.serialize_pem()).unwrap();
    let config = dir.path().join("bearerd.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{}",
            operator_config(dir.path())
        ),
    )
    .unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(START, run).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "intercept.ca_key_file {}: the key does not belong to the certificate in {}",
        dir.path().join("ca.key").display(),
        dir.path().join("ca.pem").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    for line in other.serialize_pem().lines().filter(|line| !line.starts_with("-----")) {
        assert!(!stderr.contains(line), "a line of the key is in the output");
    }
    assert!(!dir.path().join("ca-bundle.pem").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_added_by_reload_is_outside_the_generated_ca_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("config_watch_interval: 0s\n{}", intercepting(dir.path(), ""));
    let bearerd = Bearerd::start(&config, "info", &[]);
    let added = "  - match: { host: new.test }\n    auth_config: api\n    intercept: true\n";
    let leaf_ttl = config.replace("  ca_bundle_out:", "  leaf_ttl: 2h\n  ca_bundle_out:");
    bearerd.rewrite(&format!("{leaf_ttl}{added}"));
    bearerd.signal("HUP");
    let logs = bearerd
        .logs_when("the reload", |logs| logs.contains("configuration reloaded"))
        .await;
    let warnings: Vec<&str> = logs.lines().filter(|line| line.contains("\"WARN\"")).collect();
    assert_eq!(warnings.len(), 2, "{logs}");
    assert!(
        warnings[0].contains("intercept changed; it takes effect when bearerd restarts"),
        "{logs}"
    );
    assert!(warnings[1].contains("new.test"), "{logs}");
    assert!(
        warnings[1].contains("its CONNECTs are tunnelled until bearerd restarts"),
        "{logs}"
    );
    assert!(!warnings[1].contains("api.test"), "{logs}");
}
