//! Token life cycle through the real proxy: replay after an upstream 401, back-off after
//! identity provider failures. (Expiry and refresh-ahead run on a paused clock in
//! `src/token/mod.rs`, and on the real clock against an upstream that checks `exp` in
//! `tests/expiry.rs`.)
mod support;

use std::time::Duration;

use support::*;

fn retries(metrics: &str) -> Option<&str> {
    metrics
        .lines()
        .find(|line| line.starts_with("bearerd_upstream_retries_total{auth_config=\"billing\"}"))
        .and_then(|line| line.split_whitespace().last())
}

#[tokio::test]
async fn an_upstream_401_drops_the_token_and_replays_once_with_a_new_one() {
    let world = World::billing("").await;
    // The upstream accepts only tok-2: tok-1 is refused, bearerd fetches tok-2 and replays.
    let response = world
        .proxy
        .post(world.url("/only/tok-2"))
        .header("x-auth-config", "billing")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = echoed(response).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-2"]);
    assert_eq!(
        (seen.method.as_str(), seen.body_length),
        ("POST", 7),
        "the body is replayed"
    );
    assert_eq!(world.tokens.count(), 2);
    assert_eq!(world.echo.requests(), 2);
    assert_eq!(retries(&metrics(&world.bearerd).await), Some("1"));

    // tok-2 is now the cached token.
    let seen = echoed(world.get("/only/tok-2").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-2"]);
    assert_eq!(world.tokens.count(), 2);
}

#[tokio::test]
async fn a_second_401_goes_back_to_the_app_unchanged() {
    let world = World::billing("").await;
    let response = world.get("/status/401").await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers().get("x-bearerd-error"),
        None,
        "the upstream's own 401"
    );
    let seen = echoed(response).await;
    assert_eq!(
        seen.all("authorization"),
        ["Bearer tok-2"],
        "replayed once, with the new token"
    );
    assert_eq!(world.tokens.count(), 2);
    assert_eq!(world.echo.requests(), 2);
    assert_eq!(retries(&metrics(&world.bearerd).await), Some("1"));
}

#[tokio::test]
async fn a_body_over_64_kib_is_not_replayed() {
    let world = World::billing("").await;
    let body = vec![b'x'; 64 * 1024 + 1];
    let response = world
        .proxy
        .put(world.url("/only/tok-2"))
        .header("x-auth-config", "billing")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let seen = echoed(response).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(seen.body_length, 64 * 1024 + 1);
    assert_eq!(world.echo.requests(), 1);
    assert_eq!(retries(&metrics(&world.bearerd).await), Some("0"));
    // The refused token was dropped all the same: the next request gets a new one.
    let seen = echoed(world.get("/only/tok-2").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-2"]);
    assert_eq!(world.tokens.count(), 2);

    // Exactly 64 KiB is kept and replayed.
    let world = World::billing("").await;
    let body = vec![b'y'; 64 * 1024];
    let response = world
        .proxy
        .put(world.url("/only/tok-2"))
        .header("x-auth-config", "billing")
        .body(body)
        .send()
        .await
        .unwrap();
    let seen = echoed(response).await;
    assert_eq!(
        (seen.body_length, seen.all("authorization")),
        (64 * 1024, vec!["Bearer tok-2"])
    );
}

#[tokio::test]
async fn retry_on_401_false_returns_the_401_and_keeps_the_token() {
    let world = World::billing("    retry_on_401: false\n").await;
    let response = world.get("/only/tok-2").await;
    assert_eq!(response.status(), 401);
    assert_eq!(world.tokens.count(), 1);
    let seen = echoed(world.get("/x").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(world.tokens.count(), 1);
}

#[tokio::test]
async fn after_a_failed_token_request_requests_fail_fast_with_retry_after() {
    let tokens = TokenServer::with(Duration::ZERO, |_, _| (500, "text/html", "<h1>down</h1>".to_owned())).await;
    let world = World::with_tokens(tokens, "    backoff: { initial: 30s, max: 5m }\n").await;

    let first = bearerd_error(world.get("/x").await).await;
    assert_eq!((first.status, first.code.as_str()), (502, "token_unavailable"));

    let response = world.get("/x").await;
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((24..=30).contains(&retry_after), "Retry-After: {retry_after}");
    let error = bearerd_error(response).await;
    assert_eq!(
        (error.code.as_str(), error.header.as_deref()),
        ("token_backoff", Some("token_backoff"))
    );
    assert!(
        error.message.starts_with(
            "no access token: token requests are backing off after 1 consecutive failure; next attempt in "
        ),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .ends_with("; last error: token endpoint answered HTTP 500 (text/html) without an OAuth error"),
        "{}",
        error.message
    );
    assert_eq!(world.tokens.count(), 1, "the provider saw one request");
    assert_eq!(world.echo.requests(), 0);
}

#[tokio::test]
async fn tls_client_auth_presents_the_client_certificate_to_the_token_endpoint() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let (cert_pem, key_pem, cert_der) = ca.client_identity("bearerd-mtls");
    std::fs::write(dir.path().join("client.crt"), cert_pem).unwrap();
    std::fs::write(dir.path().join("client.key"), key_pem).unwrap();
    let tokens = TokenServer::with_tls(ca.mtls_server_config()).await;
    let echo = Echo::start().await;
    let yaml = format!(
        "tls: {{ ca_file: {ca} }}
auth_configs:
  - id: mtls
    token_url: {url}
    client_id: mtls-client
    client_auth: tls_client_auth
    client_cert_file: {dir}/client.crt
    client_key_file: {dir}/client.key
    scopes: [a]
    allowed_hosts: [127.0.0.1]
  - id: nocert
    token_url: {url}
    client_id: other
    client_secret: s
    allowed_hosts: [127.0.0.1]
",
        ca = ca_file.display(),
        url = tokens.https_url(),
        dir = dir.path().display()
    );
    let bearerd = start_bearerd(&yaml).await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let seen = echoed(get_with_config(&proxy, &format!("http://{}/m", echo.addr), "mtls").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    let request = &tokens.requests()[0];
    assert_eq!(request.client_certificate.as_deref(), Some(cert_der.as_slice()));
    assert_eq!(
        request.body,
        "grant_type=client_credentials&scope=a&client_id=mtls-client"
    );
    assert_eq!(request.header("authorization"), None);

    // Without a certificate the server refuses the TLS handshake: a transport error.
    let error = bearerd_error(get_with_config(&proxy, &format!("http://{}/m", echo.addr), "nocert").await).await;
    assert_eq!(error.code, "token_unavailable");
    assert!(
        error
            .message
            .contains(&format!("token request to {} failed", tokens.https_url())),
        "{}",
        error.message
    );
    assert_eq!(tokens.count(), 1);
}
