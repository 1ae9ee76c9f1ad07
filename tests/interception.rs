//! A terminated `CONNECT`, seen from the app: after `200`, TLS with bearerd's certificate for
//! the host, then HTTP/1.1 or HTTP/2 (by ALPN) requests that go through the same request path
//! as plain proxied ones (token injected, guard, bearerd's JSON errors) to the real host over
//! verified TLS; beside it, a host without an intercept route stays a blind tunnel. Last, curl
//! against the real binary, trusting the CA bundle bearerd wrote.
#[path = "support/binary.rs"]
mod binary;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use binary::Bearerd;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A token endpoint, a TLS echo upstream (certificate for `localhost` and `127.0.0.1`, its CA
/// in `tls.ca_file`), and bearerd intercepting `localhost`, whose routes give `GET /v...` and
/// `/only/...` auth config `api` (other requests: `default_action`, passthrough); auth config
/// `elsewhere` may send only to `api.test`.
struct Setup {
    tokens: TokenServer,
    upstream_ca: TestCa,
    upstream: Echo,
    bearerd: bearerd::Server,
    /// bearerd's CA, from `GET /ca.pem`.
    ca: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        Self::with("").await
    }

    /// With `extra` YAML before the rest.
    async fn with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let upstream_ca = TestCa::new();
        let upstream = Echo::start_tls(&upstream_ca).await;
        let tokens = TokenServer::start().await;
        let bearerd = start_bearerd(&format!("{extra}{}", config(dir.path(), &upstream_ca, &tokens))).await;
        let pem = direct_client()
            .get(format!("http://{}/ca.pem", bearerd.admin_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let ca = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        Self {
            tokens,
            upstream_ca,
            upstream,
            bearerd,
            ca,
            _dir: dir,
        }
    }

    /// `CONNECT host:port` through bearerd, answered `200`: the connection after it.
    async fn connect(&self, host: &str, port: u16) -> TcpStream {
        let mut stream = TcpStream::connect(self.bearerd.proxy_addr).await.unwrap();
        stream
            .write_all(format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let head = read_head(&mut stream, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(buf.is_empty(), "nothing after the 200 before the app's TLS");
        stream
    }

    /// TLS through a `CONNECT` to `localhost:<upstream port>`, trusting only bearerd's CA,
    /// offering `alpn`, with `server_name` as SNI.
    async fn intercepted(&self, server_name: &str, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        let stream = self.connect("localhost", self.upstream.addr.port()).await;
        tls(&self.ca, stream, server_name, alpn).await
    }
}

fn config(dir: &Path, upstream_ca: &TestCa, tokens: &TokenServer) -> String {
    format!(
        "tls:\n  ca_file: {}\nintercept:\n  ca_bundle_out: {}\nauth_configs:\n  - id: api\n    token_url: {}\n    client_id: c\n    client_secret: s\n    allowed_hosts: [localhost]\n  - id: elsewhere\n    token_url: {}\n    client_id: c\n    client_secret: s\n    allowed_hosts: [api.test]\nroutes:\n  - match: {{ host: localhost, path_prefix: /v, methods: [GET] }}\n    auth_config: api\n    intercept: true\n  - match: {{ host: localhost, path_prefix: /only/ }}\n    auth_config: api\n",
        upstream_ca.write_ca(dir).display(),
        dir.join("ca-bundle.pem").display(),
        tokens.url(),
        tokens.url(),
    )
}

/// A TLS client on `stream` that trusts only `root`.
async fn tls(
    root: &CertificateDer<'static>,
    stream: TcpStream,
    server_name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

async fn body(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// The upstream's own certificate, as it presents it.
fn upstream_certificate(ca: &TestCa) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(ca.server_cert_pem.as_bytes()).unwrap()
}

fn series(exposition: &str, name: &str) -> Option<String> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[tokio::test]
async fn http1_requests_inside_the_tunnel_get_the_token_on_one_connection() {
    let setup = Setup::start().await;
    let tls = setup.intercepted("localhost", &[b"http/1.1"]).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        presented,
        upstream_certificate(&setup.upstream_ca),
        "bearerd presents its own leaf"
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    let connection = tokio::spawn(connection);
    let port = setup.upstream.addr.port();
    for (n, path) in ["/v1/a?x=1", "/v1/b"].into_iter().enumerate() {
        let request = Request::get(path)
            .header("host", format!("localhost:{port}"))
            .header("authorization", "Bearer app-own")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_11);
        let seen = Echoed::parse(&body(response).await);
        // To the real host over verified TLS, which offered h2 (the echo reports the
        // :scheme and :authority as an absolute URI).
        assert_eq!((seen.scheme.as_str(), seen.version.as_str()), ("https", "HTTP/2.0"));
        assert_eq!(seen.uri, format!("https://localhost:{port}{path}"));
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"], "request {n}");
    }
    drop(sender);
    connection.await.unwrap().unwrap();
    assert_eq!(setup.tokens.count(), 1, "one token for both requests");
    assert_eq!(setup.upstream.requests(), 2);
    let exposition = metrics(&setup.bearerd).await;
    assert_eq!(
        series(&exposition, "bearerd_intercepted_connections_total{outcome=\"ok\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        series(
            &exposition,
            "bearerd_requests_total{auth_config=\"api\",status=\"200\"}"
        )
        .as_deref(),
        Some("2")
    );
}

/// One HTTP/1.1 connection through an intercepted `CONNECT` to the upstream, and its task,
/// which ends when the connection does.
async fn http1_sender(
    setup: &Setup,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tls = setup.intercepted("localhost", &[b"http/1.1"]).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    (sender, tokio::spawn(connection))
}

#[tokio::test]
async fn routes_inside_the_tunnel_match_by_path_and_method_and_a_401_is_replayed() {
    let setup = Setup::start().await;
    let (mut sender, _) = http1_sender(&setup).await;
    let host = format!("localhost:{}", setup.upstream.addr.port());
    let send = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", &host)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // No route for these (another path, another method): default_action passthrough.
    for (method, path) in [("GET", "/public"), ("DELETE", "/v1/x")] {
        let response = sender.send_request(send(method, path)).await.unwrap();
        assert_eq!(response.status(), 200, "{method} {path}");
        let seen = Echoed::parse(&body(response).await);
        assert_eq!((seen.method.as_str(), seen.header("authorization")), (method, None));
    }
    assert_eq!(setup.tokens.count(), 0);
    // The upstream refuses tok-1 and wants tok-2: dropped, fetched anew, replayed once.
    let response = sender.send_request(send("GET", "/only/tok-2")).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = Echoed::parse(&body(response).await);
    assert_eq!(seen.all("authorization"), ["Bearer tok-2"]);
    assert_eq!(setup.tokens.count(), 2);
    assert_eq!(
        setup.upstream.requests(),
        4,
        "two passed through, the refused one, the replay"
    );
    let exposition = metrics(&setup.bearerd).await;
    assert_eq!(
        series(&exposition, "bearerd_upstream_retries_total{auth_config=\"api\"}").as_deref(),
        Some("1")
    );
    // The two passed through, and the CONNECT itself.
    let passed = "bearerd_requests_total{auth_config=\"none\",status=\"200\"}";
    assert_eq!(series(&exposition, passed).as_deref(), Some("3"));
}

#[tokio::test]
async fn an_h2_client_inside_the_tunnel_gets_the_token() {
    let setup = Setup::start().await;
    let tls = setup.intercepted("localhost", &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let port = setup.upstream.addr.port();
    for path in ["/v2/a", "/v2/b"] {
        let response = sender
            .send_request(get(&format!("https://localhost:{port}{path}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_2);
        let seen = Echoed::parse(&body(response).await);
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
        assert_eq!(seen.uri, format!("https://localhost:{port}{path}"));
    }
    drop(sender);
    connection.await.unwrap().unwrap();
    assert_eq!(setup.tokens.count(), 1);
    assert_eq!(setup.upstream.requests(), 2);
}

#[tokio::test]
async fn a_host_without_an_intercept_route_stays_a_blind_tunnel() {
    let setup = Setup::start().await;
    // The same upstream by its IP, which no intercept route names: its own certificate
    // reaches the app, which trusts only the upstream's CA.
    let stream = setup.connect("127.0.0.1", setup.upstream.addr.port()).await;
    let upstream_root = CertificateDer::from_pem_slice(setup.upstream_ca.ca_pem.as_bytes()).unwrap();
    let tls = tls(&upstream_root, stream, "127.0.0.1", &[b"http/1.1"]).await.unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        upstream_certificate(&setup.upstream_ca)
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/t")
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let seen = Echoed::parse(&body(sender.send_request(request).await.unwrap()).await);
    assert_eq!(seen.header("authorization"), None, "nothing is added to a tunnel");
    assert_eq!(setup.tokens.count(), 0);
    let exposition = metrics(&setup.bearerd).await;
    assert_eq!(
        series(&exposition, "bearerd_intercepted_connections_total{outcome=\"ok\"}").as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn connect_deny_refuses_tunnels_but_not_intercepted_hosts() {
    let setup = Setup::with("connect: deny\n").await;
    let mut stream = TcpStream::connect(setup.bearerd.proxy_addr).await.unwrap();
    let port = setup.upstream.addr.port();
    stream
        .write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-bearerd-error: route_denied"),
        "{head}"
    );
    let (mut sender, _) = http1_sender(&setup).await;
    let request = Request::get("/v1/x")
        .header("host", format!("localhost:{port}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let seen = Echoed::parse(&body(sender.send_request(request).await.unwrap()).await);
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(setup.upstream.requests(), 1);
}

#[tokio::test]
async fn a_client_hello_for_another_host_is_refused_and_counted() {
    let setup = Setup::start().await;
    let err = setup.intercepted("other.test", &[b"http/1.1"]).await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let exposition = metrics(&setup.bearerd).await;
    assert_eq!(
        series(
            &exposition,
            "bearerd_intercepted_connections_total{outcome=\"refused\"}"
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        series(&exposition, "bearerd_intercepted_connections_total{outcome=\"ok\"}").as_deref(),
        Some("0")
    );
    assert_eq!(setup.upstream.connections(), 0);
}

#[tokio::test]
async fn a_client_that_does_not_trust_bearerd_gets_no_tunnel() {
    let setup = Setup::start().await;
    // Trusting only the upstream's CA, as an app not set up for bearerd would: the handshake
    // fails, and nothing reaches the upstream.
    let stream = setup.connect("localhost", setup.upstream.addr.port()).await;
    let upstream_root = CertificateDer::from_pem_slice(setup.upstream_ca.ca_pem.as_bytes()).unwrap();
    let err = tls(&upstream_root, stream, "localhost", &[b"http/1.1"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    eventually("the failed handshake counted", || async {
        series(
            &metrics(&setup.bearerd).await,
            "bearerd_intercepted_connections_total{outcome=\"handshake_failed\"}",
        )
        .as_deref()
            == Some("1")
    })
    .await;
    assert_eq!(setup.upstream.connections(), 0);
    assert_eq!(setup.tokens.count(), 0);
}

#[tokio::test]
async fn errors_inside_the_tunnel_are_bearerds_json() {
    let setup = Setup::start().await;
    let tls = setup.intercepted("localhost", &[b"http/1.1"]).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/v1/x")
        .header("host", format!("localhost:{}", setup.upstream.addr.port()))
        .header("x-auth-config", "elsewhere")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-bearerd-error"], "host_not_allowed");
    let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
    assert_eq!(json["error"], "host_not_allowed");
    assert_eq!(json["auth_config"], "elsewhere");
    assert_eq!(
        json["message"].as_str().unwrap(),
        format!(
            "host `localhost:{}` is not in allowed_hosts of auth config `elsewhere`; nothing was sent",
            setup.upstream.addr.port()
        )
    );
    assert_eq!(setup.upstream.requests(), 0);
    assert_eq!(setup.tokens.count(), 0);
}

#[tokio::test]
async fn an_upstream_whose_certificate_is_not_trusted_is_502_inside_the_tunnel() {
    let setup = Setup::start().await;
    // Another upstream for `localhost`, its CA unknown to bearerd.
    let stranger_ca = TestCa::new();
    let stranger = Echo::start_tls(&stranger_ca).await;
    let stream = setup.connect("localhost", stranger.addr.port()).await;
    let tls = tls(&setup.ca, stream, "localhost", &[b"h2"]).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(get(&format!("https://localhost:{}/v1/x", stranger.addr.port())))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-bearerd-error"], "upstream_unreachable");
    let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
    assert_eq!(json["error"], "upstream_unreachable");
    assert_eq!(json["auth_config"], "api");
    assert_eq!(stranger.requests(), 0, "no request went to an unverified upstream");
}

/// curl, unmodified, as an app behind `HTTPS_PROXY` that trusts `ca_bundle_out`: `url` with
/// `version` (`--http1.1`, `--http2`); the echo's body and the HTTP version curl spoke.
async fn curl(bearerd: &Bearerd, bundle: &Path, version: &str, url: &str) -> (Echoed, String) {
    let proxy = std::ffi::OsString::from(format!("http://{}", bearerd.proxy));
    let args = [
        "-sS",
        "--fail",
        "--max-time",
        "10",
        version,
        "--cacert",
        &bundle.display().to_string(),
        "-w",
        "\n%{http_version}",
        url,
    ];
    let stdout = curl_output(&args, &[("HTTPS_PROXY", &proxy), ("https_proxy", &proxy)]).await;
    let (body, spoken) = stdout.rsplit_once('\n').unwrap();
    (Echoed::parse(body.as_bytes()), spoken.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_behind_https_proxy_trusting_the_bundle_gets_the_token_injected() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = TestCa::new();
    let upstream = Echo::start_tls(&upstream_ca).await;
    let tokens = TokenServer::start().await;
    let bearerd = Bearerd::start(&config(dir.path(), &upstream_ca, &tokens), "info", &[]);
    let bundle = dir.path().join("ca-bundle.pem");
    let port = upstream.addr.port();

    let (seen, spoken) = curl(
        &bearerd,
        &bundle,
        "--http1.1",
        &format!("https://localhost:{port}/v1/one?x=1"),
    )
    .await;
    assert_eq!(spoken, "1.1");
    assert_eq!(seen.uri, format!("https://localhost:{port}/v1/one?x=1"));
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    let (seen, spoken) = curl(
        &bearerd,
        &bundle,
        "--http2",
        &format!("https://localhost:{port}/v1/two"),
    )
    .await;
    assert_eq!(spoken, "2", "h2 chosen by ALPN inside the tunnel");
    assert_eq!(seen.uri, format!("https://localhost:{port}/v1/two"));
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    // The same upstream by its IP, which no intercept route names: tunnelled, its own
    // certificate verified by curl through the bundle's copy of `tls.ca_file`.
    let (seen, _) = curl(
        &bearerd,
        &bundle,
        "--http1.1",
        &format!("https://127.0.0.1:{port}/tunnelled"),
    )
    .await;
    assert_eq!(seen.uri, "/tunnelled");
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-request-id"), None, "bearerd did not read it");

    // Trusting only the upstream's CA, as an app not set up for bearerd: no tunnel either,
    // and one warning that names the host and says how to trust bearerd's CA.
    let proxy = format!("http://{}", bearerd.proxy);
    let refused = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy", &proxy, "--cacert"])
        .arg(upstream_ca.write_ca(dir.path()))
        .arg(format!("https://localhost:{port}/v1/refused"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(WAIT, refused).await.expect("curl hung").unwrap();
    assert!(!refused.status.success());
    let logs = bearerd
        .logs_when("the handshake warning", |logs| {
            logs.contains("TLS handshake with the app")
        })
        .await;
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("TLS handshake with the app"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("\"level\":\"WARN\""), "{}", warnings[0]);
    assert!(warnings[0].contains("for localhost failed"), "{}", warnings[0]);
    assert!(warnings[0].contains("SSL_CERT_FILE"), "{}", warnings[0]);
    assert!(!logs.contains("tok-1"), "a token in the logs");

    assert_eq!(tokens.count(), 1);
    assert_eq!(upstream.requests(), 3);
    let (_, exposition) = bearerd.admin_get("/metrics").await;
    assert_eq!(
        series(&exposition, "bearerd_intercepted_connections_total{outcome=\"ok\"}").as_deref(),
        Some("2")
    );
    assert_eq!(
        series(
            &exposition,
            "bearerd_requests_total{auth_config=\"api\",status=\"200\"}"
        )
        .as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn shutdown_waits_for_a_request_inside_an_intercepted_tunnel_and_closes_idle_ones() {
    let setup = Setup::start().await;
    let host = format!("localhost:{}", setup.upstream.addr.port());
    let request = |path: &str| {
        Request::get(path)
            .header("host", &host)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let (mut idle, idle_connection) = http1_sender(&setup).await;
    let response = idle.send_request(request("/v1/one")).await.unwrap();
    assert_eq!(response.status(), 200);
    body(response).await;
    let (mut busy, busy_connection) = http1_sender(&setup).await;
    let slow = tokio::spawn(busy.send_request(request("/slow/300")));
    eventually("the slow request upstream", || async { setup.upstream.requests() == 2 }).await;

    let Setup { bearerd, .. } = setup;
    let shutdown = tokio::spawn(bearerd.shutdown());
    tokio::time::timeout(WAIT, idle_connection)
        .await
        .expect("the idle intercepted connection stayed open")
        .unwrap()
        .unwrap();
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(
        Echoed::parse(&body(response).await).uri,
        format!("https://{host}/slow/300")
    );
    tokio::time::timeout(WAIT, busy_connection)
        .await
        .expect("the busy intercepted connection stayed open")
        .unwrap()
        .unwrap();
    assert!(
        shutdown.await.unwrap(),
        "shutdown did not finish within the grace period"
    );
}

/// `command` (an app reading its proxy from the environment) with `HTTPS_PROXY` set to
/// bearerd and nothing else proxy-related, run to its end; its output, one JSON line of
/// `[{"url", "status", "body"}, ...]`, as the bodies, each status checked.
async fn app_bodies(mut command: tokio::process::Command, bearerd: &Bearerd) -> Vec<String> {
    let proxy = format!("http://{}", bearerd.proxy);
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(name);
    }
    command
        .env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the app hung")
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
    answers
        .iter()
        .map(|answer| {
            assert_eq!(answer["status"], 200, "{answer}");
            answer["body"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The real binary intercepting `localhost` in front of a TLS echo upstream; an app calls
/// `https://localhost:<port>/v1/app?x=1` (intercepted) and `https://127.0.0.1:<port>/direct`
/// (tunnelled), trusting the bundle bearerd wrote, and each upstream request is checked.
async fn an_unmodified_app_gets_the_token(
    client: &str,
    app: impl FnOnce(&Path, [String; 2]) -> tokio::process::Command,
) {
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = TestCa::new();
    let upstream = Echo::start_tls(&upstream_ca).await;
    let tokens = TokenServer::start().await;
    let bearerd = Bearerd::start(&config(dir.path(), &upstream_ca, &tokens), "info", &[]);
    let port = upstream.addr.port();
    let urls = [
        format!("https://localhost:{port}/v1/app?x=1"),
        format!("https://127.0.0.1:{port}/direct"),
    ];
    let bodies = app_bodies(app(&dir.path().join("ca-bundle.pem"), urls), &bearerd).await;
    let intercepted = Echoed::parse(bodies[0].as_bytes());
    assert_eq!(
        intercepted.uri,
        format!("https://localhost:{port}/v1/app?x=1"),
        "{client}"
    );
    assert_eq!(intercepted.all("authorization"), ["Bearer tok-1"], "{client}");
    let tunnelled = Echoed::parse(bodies[1].as_bytes());
    assert_eq!(tunnelled.uri, "/direct", "{client}");
    assert_eq!(tunnelled.header("authorization"), None, "{client}");
    assert_eq!(
        tunnelled.header("x-request-id"),
        None,
        "{client}: bearerd did not read it"
    );
    assert_eq!((tokens.count(), upstream.requests()), (1, 2), "{client}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_behind_https_proxy_with_requests_ca_bundle() {
    an_unmodified_app_gets_the_token("python requests", |bundle, urls| {
        let mut python = tokio::process::Command::new("python3");
        python
            .arg("-c")
            .arg(
                "import json, sys, requests\n\
                 answers = [requests.get(url, timeout=10) for url in sys.argv[1:]]\n\
                 print(json.dumps([{'url': r.url, 'status': r.status_code, 'body': r.text} for r in answers]))\n",
            )
            .args(urls)
            .env("REQUESTS_CA_BUNDLE", bundle);
        python
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_undici_env_http_proxy_agent_with_node_extra_ca_certs() {
    an_unmodified_app_gets_the_token("node undici", |bundle, urls| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/undici-https-client.mjs");
        let mut node = tokio::process::Command::new("node");
        node.arg(script).args(urls).env("NODE_EXTRA_CA_CERTS", bundle);
        node
    })
    .await;
}
