//! HTTP/2 on both sides: apps may speak cleartext HTTP/2 with prior knowledge (h2c) to the
//! listener, and upstream HTTPS uses HTTP/2 when the server offers it by ALPN.
mod support;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// Two upstreams that speak HTTP/2 over TLS (ALPN h2) and HTTP/1.1 in cleartext, and
/// bearerd with a forward route to the first and a gateway route to the second.
async fn setup(ca: &TestCa, dir: &std::path::Path) -> (TokenServer, Echo, Echo, bearerd::Server) {
    let tokens = TokenServer::start().await;
    let secure = Echo::start_tls(ca).await;
    let plain = Echo::start().await;
    let yaml = format!(
        "tls: {{ ca_file: {} }}\nauth_configs:\n  - id: api\n    token_url: {}\n    client_id: c\n    client_secret: s\n    allowed_hosts: [localhost, 127.0.0.1]\nroutes:\n  - match: {{ host: localhost }}\n    auth_config: api\n    upstream_tls: true\n  - match: {{ path_prefix: /gw/ }}\n    auth_config: api\n    upstream: http://{}\n",
        ca.write_ca(dir).display(),
        tokens.url(),
        plain.addr
    );
    let bearerd = start_bearerd(&yaml).await;
    (tokens, secure, plain, bearerd)
}

#[tokio::test]
async fn upstream_https_uses_http2_when_the_server_offers_it() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (_tokens, secure, _plain, bearerd) = setup(&ca, dir.path()).await;
    let proxy = proxied_client(bearerd.proxy_addr);
    for _ in 0..3 {
        let response = proxy
            .get(format!("http://localhost:{}/h2?x=1", secure.addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_11, "the app's side stays HTTP/1.1");
        let seen = echoed(response).await;
        assert_eq!((seen.scheme.as_str(), seen.version.as_str()), ("https", "HTTP/2.0"));
        // HTTP/2 carries :scheme and :authority, which the echo reports as an absolute URI.
        assert_eq!(seen.uri, format!("https://localhost:{}/h2?x=1", secure.addr.port()));
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    }
    // HTTP/2 multiplexes: one connection carries all three. The other one is the handshake
    // of bearerd's HTTP/1.1 client, which found out that the upstream chose h2 (once).
    assert_eq!(secure.connections(), 2);
    assert_eq!(secure.requests(), 3);
}

#[tokio::test]
async fn the_listener_speaks_h2c_with_prior_knowledge_in_both_modes() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (tokens, secure, plain, bearerd) = setup(&ca, dir.path()).await;
    let stream = tokio::net::TcpStream::connect(bearerd.proxy_addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);

    // An HTTP/2 request always carries :authority. Naming bearerd itself, it is addressed
    // to bearerd: the gateway route sends it on.
    let request = Request::get(format!("http://{}/gw/items?page=2", bearerd.proxy_addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = Echoed::parse(&response.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(
        (seen.uri.as_str(), seen.version.as_str()),
        ("/items?page=2", "HTTP/1.1")
    );
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(seen.header("host"), Some(plain.addr.to_string().as_str()));

    // Naming another host, it is a forward-proxy request, like HTTP_PROXY use.
    let request = Request::get(format!("http://localhost:{}/fwd", secure.addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = Echoed::parse(&response.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(seen.uri, format!("https://localhost:{}/fwd", secure.addr.port()));
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(tokens.count(), 1);
    driver.abort();
}
