//! The request path end to end, in-process, against real loopback servers: auth config
//! choice, the allowed-hosts guard, token requests, injection, header hygiene, forwarding
//! over HTTP and HTTPS, CONNECT, and every error bearerd answers with itself.
mod support;

use std::time::Duration;

use base64::Engine;
use support::*;

#[tokio::test]
async fn injects_the_token_and_sends_the_exact_token_request() {
    let world = World::billing(
        "    scopes: [invoices.read, invoices.write]\n    extra_params: { audience: \"https://api.billing.test/\" }\n",
    )
    .await;
    let (tokens, echo) = (&world.tokens, &world.echo);

    let response = world.get("/v1/invoices?page=2").await;
    assert_eq!(response.status(), 200);
    let seen = echoed(response).await;
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/v1/invoices?page=2");
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));
    assert_eq!(seen.header("x-auth-config"), None);

    let requests = tokens.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/oauth2/token");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(
        request.body,
        "grant_type=client_credentials&scope=invoices.read+invoices.write&audience=https%3A%2F%2Fapi.billing.test%2F"
    );
    // RFC 6749 §2.3.1: each part form-urlencoded before base64.
    let basic = request.header("authorization").unwrap().strip_prefix("Basic ").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD.decode(basic).unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "billing-client:p%40ss%3Aw0rd%2F%2B%25%3D%26%3F"
    );

    // The token is cached: a second request sends no token request.
    let seen = echoed(world.get("/again").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(tokens.count(), 1);
}

#[tokio::test]
async fn client_secret_post_sends_credentials_in_the_body() {
    let world = World::billing("    client_auth: client_secret_post\n    scopes: \"a b\"\n").await;
    let seen = echoed(world.get("/").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    let request = &world.tokens.requests()[0];
    assert_eq!(request.header("authorization"), None);
    assert_eq!(
        request.body,
        "grant_type=client_credentials&scope=a+b&client_id=billing-client&client_secret=p%40ss%3Aw0rd%2F%2B%25%3D%26%3F"
    );
}

#[tokio::test]
async fn the_apps_authorization_and_hop_by_hop_headers_never_reach_the_upstream() {
    let world = World::billing("").await;
    let response = world
        .proxy
        .post(world.url("/submit"))
        .header("x-auth-config", "billing")
        .header("authorization", "Bearer from-the-app")
        .header("proxy-authorization", "Basic cHJveHk6cHc=")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    let seen = echoed(response).await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_length, 5);
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    for gone in [
        "proxy-authorization",
        "x-hop-secret",
        "keep-alive",
        "te",
        "x-auth-config",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn inject_into_another_header_or_the_query() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!(
        "auth_configs:
  - id: apikey
    token_url: {url}
    client_id: c
    client_secret: s
    inject: {{ header: X-Api-Key, prefix: \"\" }}
    allowed_hosts: [127.0.0.1]
  - id: query
    token_url: {url}
    client_id: c
    client_secret: s
    inject: {{ query: access_token }}
    allowed_hosts: [127.0.0.1]
",
        url = tokens.url()
    ))
    .await;
    let proxy = proxied_client(bearerd.proxy_addr);

    let response = proxy
        .get(format!("http://{}/k", echo.addr))
        .header("x-auth-config", "apikey")
        .header("authorization", "Basic YXBwOmFwcA==")
        .send()
        .await
        .unwrap();
    let seen = echoed(response).await;
    assert_eq!(seen.all("x-api-key"), ["tok-1"]);
    assert_eq!(
        seen.all("authorization"),
        ["Basic YXBwOmFwcA=="],
        "only the configured header is replaced"
    );

    let seen = echoed(
        get_with_config(
            &proxy,
            &format!("http://{}/q?a=1&access_token=app&b=x%20y", echo.addr),
            "query",
        )
        .await,
    )
    .await;
    assert_eq!(seen.uri, "/q?a=1&b=x%20y&access_token=tok-2");
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn routes_choose_the_config_and_default_action_decides_the_rest() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!(
        "auth_configs:
  - id: reports
    token_url: {}
    client_id: c
    client_secret: s
routes:
  - match: {{ host: 127.0.0.1, path_prefix: /reports/, methods: [GET] }}
    auth_config: reports
",
        tokens.url()
    ))
    .await;
    let proxy = proxied_client(bearerd.proxy_addr);

    let seen = echoed(
        proxy
            .get(format!("http://{}/reports/1", echo.addr))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    // Same host, other method or path: no route, default_action passthrough, no token.
    let seen = echoed(
        proxy
            .post(format!("http://{}/reports/1", echo.addr))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("authorization"), None);
    let seen = echoed(proxy.get(format!("http://{}/other", echo.addr)).send().await.unwrap()).await;
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(tokens.count(), 1);
    assert_eq!(echo.requests(), 3);
}

#[tokio::test]
async fn default_action_deny_and_unknown_configs_send_nothing() {
    let world = World::billing("default_action: deny\n").await;

    let error = bearerd_error(world.proxy.get(world.url("/x")).send().await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (403, "route_denied"));
    assert_eq!(error.header.as_deref(), Some("route_denied"));
    assert_eq!(error.auth_config, None);

    let error = bearerd_error(get_with_config(&world.proxy, &world.url("/x"), "nosuch").await).await;
    assert_eq!((error.status, error.code.as_str()), (400, "unknown_auth_config"));
    assert_eq!(error.message, "no auth config named `nosuch`");
    assert_eq!(world.echo.requests(), 0);
    assert_eq!(world.tokens.count(), 0);
}

#[tokio::test]
async fn a_token_never_leaves_for_a_host_it_was_not_allowed() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!(
        "auth_configs:
  - id: billing
    token_url: {}
    client_id: c
    client_secret: s
    allowed_hosts: [\"localhost:{}\", \"*.billing.test\"]
",
        tokens.url(),
        echo.addr.port()
    ))
    .await;
    let proxy = proxied_client(bearerd.proxy_addr);
    // 127.0.0.1 is not in the list (only localhost on that port).
    let error = bearerd_error(get_with_config(&proxy, &format!("http://{}/x", echo.addr), "billing").await).await;
    assert_eq!((error.status, error.code.as_str()), (403, "host_not_allowed"));
    assert_eq!(error.auth_config.as_deref(), Some("billing"));
    assert_eq!(
        error.message,
        format!(
            "host `127.0.0.1:{}` is not in allowed_hosts of auth config `billing`; nothing was sent",
            echo.addr.port()
        )
    );
    // host:port entries allow that port only.
    let error = bearerd_error(get_with_config(&proxy, "http://localhost:1/x", "billing").await).await;
    assert_eq!(error.code, "host_not_allowed");
    assert_eq!(echo.requests(), 0);
    assert_eq!(tokens.count(), 0, "the guard runs before any token is fetched");

    // The allowed host:port passes.
    let seen =
        echoed(get_with_config(&proxy, &format!("http://localhost:{}/x", echo.addr.port()), "billing").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
}

#[tokio::test]
async fn gateway_routes_replace_the_prefix_with_the_upstream() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!(
        "auth_configs:
  - id: billing
    token_url: {}
    client_id: c
    client_secret: s
routes:
  - match: {{ path_prefix: /billing/ }}
    auth_config: billing
    upstream: http://127.0.0.1:{}/api
",
        tokens.url(),
        echo.addr.port()
    ))
    .await;
    let client = direct_client();
    let response = client
        .get(format!("http://{}/billing/v1/invoices?x=1", bearerd.proxy_addr))
        .header("authorization", "Bearer app")
        .send()
        .await
        .unwrap();
    let seen = echoed(response).await;
    assert_eq!(seen.uri, "/api/v1/invoices?x=1");
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));

    // Origin-form requests that match no gateway route are refused, not looped back.
    let error = bearerd_error(
        client
            .get(format!("http://{}/elsewhere", bearerd.proxy_addr))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((error.status, error.code.as_str()), (400, "bad_request"));
    assert_eq!(echo.requests(), 1);
}

#[tokio::test]
async fn fifty_concurrent_requests_on_a_cold_cache_make_one_token_request() {
    let tokens = TokenServer::with(Duration::from_millis(300), |n, _| ok_token(&format!("tok-{n}"), 3600)).await;
    let world = World::with_tokens(tokens, "").await;
    let url = world.url("/x");
    let requests = (0..50).map(|_| {
        let (proxy, url) = (world.proxy.clone(), url.clone());
        tokio::spawn(async move { echoed(get_with_config(&proxy, &url, "billing").await).await })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap().all("authorization"), ["Bearer tok-1"]);
    }
    assert_eq!(world.tokens.count(), 1);
    assert_eq!(world.echo.requests(), 50);
}

#[tokio::test]
async fn identity_provider_errors_become_token_unavailable_without_the_secret() {
    let tokens = TokenServer::with(Duration::ZERO, |_, _| {
        (
            401,
            "application/json",
            r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#.to_owned(),
        )
    })
    .await;
    let world = World::with_tokens(tokens, "").await;
    let error = bearerd_error(world.get("/x").await).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    assert_eq!(error.header.as_deref(), Some("token_unavailable"));
    assert_eq!(error.auth_config.as_deref(), Some("billing"));
    assert_eq!(
        error.message,
        "no access token: the identity provider refused the token request (HTTP 401): invalid_client: Client authentication failed"
    );
    assert!(!error.message.contains("p@ss"));
    assert_eq!(world.echo.requests(), 0);
}

#[tokio::test]
async fn malformed_token_responses_say_what_was_wrong() {
    let cases: [(Reply, &str); 5] = [
        (
            (500, "text/html", "<h1>oops</h1>".into()),
            "no access token: token endpoint answered HTTP 500 (text/html) without an OAuth error",
        ),
        (
            (200, "text/plain", "access_token=abc".into()),
            "no access token: token endpoint answered HTTP 200 with content type text/plain, not JSON",
        ),
        (
            (200, "application/json", r#"{"token_type":"Bearer"}"#.into()),
            "no access token: token response is invalid: no access_token",
        ),
        (
            (
                200,
                "application/json",
                r#"{"access_token":"a","token_type":"mac"}"#.into(),
            ),
            "no access token: token response is invalid: token_type `mac` is not Bearer",
        ),
        (
            (302, "text/html", String::new()),
            "no access token: token endpoint answered HTTP 302 (text/html) without an OAuth error; redirects are not followed",
        ),
    ];
    for (reply, message) in cases {
        let world = World::with_tokens(TokenServer::with(Duration::ZERO, move |_, _| reply.clone()).await, "").await;
        let error = bearerd_error(world.get("/x").await).await;
        assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
        assert_eq!(error.message, message);
        assert_eq!(world.tokens.count(), 1, "no retry, no redirect followed");
        assert_eq!(world.echo.requests(), 0);
    }
}

#[tokio::test]
async fn token_requests_time_out() {
    let tokens = TokenServer::with(Duration::from_secs(30), |_, _| ok_token("late", 3600)).await;
    let world = World::with_tokens(tokens, "    timeout: 300ms\n").await;
    let error = bearerd_error(world.get("/x").await).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    let expected = format!(
        "no access token: token request to {} timed out after 300ms",
        world.tokens.url()
    );
    assert_eq!(error.message, expected);
    assert_eq!(world.echo.requests(), 0);
}

#[tokio::test]
async fn unreachable_and_silent_upstreams() {
    // A port with nothing listening: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = Silent::start().await;
    let silent_addr = silent.addr;
    let bearerd = start_bearerd("upstream_timeout: 300ms\n").await;
    let proxy = proxied_client(bearerd.proxy_addr);

    let error = bearerd_error(proxy.get(format!("http://{closed}/x")).send().await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (502, "upstream_unreachable"));
    assert!(
        error.message.starts_with(&format!("upstream {closed} unreachable: ")),
        "{}",
        error.message
    );
    assert!(error.message.contains("Connection refused"), "{}", error.message);

    let error = bearerd_error(proxy.get(format!("http://{silent_addr}/x")).send().await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (504, "upstream_timeout"));
    assert_eq!(
        error.message,
        format!("upstream {silent_addr} did not answer within 300ms")
    );
}

#[tokio::test]
async fn malformed_requests_get_bad_request_not_a_panic() {
    let world = World::billing("").await;
    let addr = world.bearerd.proxy_addr;

    let reply = raw_exchange(
        addr,
        b"GET ftp://files.test/x HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-bearerd-error: bad_request"),
        "{reply}"
    );
    assert!(
        reply.contains(r#""message":"scheme `ftp` is not http or https""#),
        "{reply}"
    );

    let reply = raw_exchange(
        addr,
        b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Auth-Config: bill\xffing\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains(r#""error":"bad_request""#), "{reply}");

    // Not HTTP at all: hyper answers 400 and closes; bearerd keeps serving.
    let reply = raw_exchange(addr, b"\x16\x03\x01 not http\r\n\r\n").await;
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "{reply}");
    let health = direct_client()
        .get(format!("http://{}/healthz", world.bearerd.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(world.tokens.count(), 0);
}

#[tokio::test]
async fn upstream_tls_turns_http_into_https_with_the_configured_ca() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let tokens = TokenServer::start().await;
    let echo = Echo::start_tls(&ca).await;
    let bearerd = start_bearerd(&format!(
        "tls: {{ ca_file: {} }}
auth_configs:
  - id: secure
    token_url: {}
    client_id: c
    client_secret: s
routes:
  - match: {{ host: localhost }}
    auth_config: secure
    upstream_tls: true
",
        ca_file.display(),
        tokens.url()
    ))
    .await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let response = proxy
        .get(format!("http://localhost:{}/tls?x=1", echo.addr.port()))
        .header("authorization", "Basic YXBwOnNlY3JldA==")
        .header("x-app", "a")
        .header("x-app", "b")
        .header("x-auth-config", "secure")
        .send()
        .await
        .unwrap();
    let seen = echoed(response).await;
    assert_eq!(seen.scheme, "https");
    // The echo offers h2, so the URI arrives as HTTP/2's :scheme, :authority and :path.
    assert_eq!(seen.uri, format!("https://localhost:{}/tls?x=1", echo.addr.port()));
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    // The app's own headers come too (from the lines bearerd's listener loop kept), less
    // what stops at the proxy.
    assert_eq!(seen.all("x-app"), ["a", "b"]);
    assert_eq!(seen.all("x-auth-config"), Vec::<&str>::new());
    assert_eq!(seen.all("x-request-id").len(), 1);
}

#[tokio::test]
async fn an_http1_only_https_upstream_gets_the_token_over_one_kept_alive_tls_connection() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start().await;
    let echo = Echo::start_tls_http1(&ca).await;
    let bearerd = start_bearerd(&format!(
        "tls: {{ ca_file: {} }}\nauth_configs:\n  - id: secure\n    token_url: {}\n    client_id: c\n    client_secret: s\nroutes:\n  - match: {{ host: localhost }}\n    auth_config: secure\n    upstream_tls: true\n",
        ca.write_ca(dir.path()).display(),
        tokens.url()
    ))
    .await;
    let proxy = proxied_client(bearerd.proxy_addr);
    for i in 0..3 {
        let response = proxy
            .get(format!("http://localhost:{}/tls/{i}?x=1", echo.addr.port()))
            .header("x-app", "a")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = echoed(response).await;
        assert_eq!((seen.scheme.as_str(), seen.version.as_str()), ("https", "HTTP/1.1"));
        assert_eq!(seen.uri, format!("/tls/{i}?x=1"));
        assert_eq!(seen.all("host"), [format!("localhost:{}", echo.addr.port())]);
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
        assert_eq!(seen.all("x-app"), ["a"]);
    }
    assert_eq!(echo.connections(), 1, "one TLS connection, kept alive");
    assert_eq!(tokens.count(), 1);
}

#[tokio::test]
async fn an_upstream_certificate_from_an_unknown_ca_is_refused() {
    let ca = TestCa::new();
    let echo = Echo::start_tls(&ca).await;
    let bearerd = start_bearerd("").await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let error = bearerd_error(
        proxy
            .get(format!("http://localhost:{}/x", echo.addr.port()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Plain HTTP to a TLS port: the upstream hangs up.
    assert_eq!(error.code, "upstream_unreachable");
    // Absolute-form https:// (no CONNECT) is forwarded over TLS, which must verify.
    let reply = raw_exchange(
        bearerd.proxy_addr,
        format!(
            "GET https://localhost:{}/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            echo.addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert!(reply.contains("UnknownIssuer"), "{reply}");
    assert_eq!(echo.requests(), 0);
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let echo = Echo::start().await;
    let bearerd = start_bearerd("").await;
    let proxy = proxied_client(bearerd.proxy_addr);
    for i in 0..20 {
        let seen = echoed(proxy.get(format!("http://{}/{i}", echo.addr)).send().await.unwrap()).await;
        assert_eq!(seen.uri, format!("/{i}"));
    }
    assert_eq!(echo.requests(), 20);
    assert_eq!(
        echo.connections(),
        1,
        "20 sequential requests should share one upstream connection"
    );
}

#[tokio::test]
async fn connect_tunnels_bytes_unchanged_and_can_be_denied() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Echo::start().await;
    let bearerd = start_bearerd("").await;
    let mut stream = tokio::net::TcpStream::connect(bearerd.proxy_addr).await.unwrap();
    let target = echo.addr;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Auth-Config: ignored\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0_u8; 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
        .write_all(
            format!("GET /inside HTTP/1.1\r\nHost: {target}\r\nAuthorization: App\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let seen = Echoed::parse(body.as_bytes());
    assert_eq!(seen.uri, "/inside");
    assert_eq!(
        seen.all("authorization"),
        ["App"],
        "bytes inside a tunnel pass unchanged"
    );

    let denied = start_bearerd("connect: deny\n").await;
    let reply = raw_exchange(
        denied.proxy_addr,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains(r#""error":"route_denied""#), "{reply}");
    assert!(reply.contains("connect: deny"), "{reply}");
    assert_eq!(echo.connections(), 1);
}

#[tokio::test]
async fn environment_only_configs_work_end_to_end() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let env: bearerd::config::Env = [
        ("BEARERD_CONFIG__PAYMENTS__TOKEN_URL", tokens.url()),
        ("BEARERD_CONFIG__PAYMENTS__CLIENT_ID", "pay".to_owned()),
        ("BEARERD_CONFIG__PAYMENTS__CLIENT_SECRET", "pay-secret".to_owned()),
        ("BEARERD_CONFIG__PAYMENTS__ALLOWED_HOSTS", "127.0.0.1".to_owned()),
        ("BEARERD_CONFIG__PAYMENTS__SCOPES", "pay.read pay.write".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let bearerd = start_bearerd_env("", &env).await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let seen = echoed(get_with_config(&proxy, &format!("http://{}/p", echo.addr), "payments").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(
        tokens.requests()[0].body,
        "grant_type=client_credentials&scope=pay.read+pay.write"
    );
}

#[tokio::test]
async fn healthz_answers_on_the_admin_listener() {
    let bearerd = start_bearerd("").await;
    let client = direct_client();
    let response = client
        .get(format!("http://{}/healthz", bearerd.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");
    let response = client
        .get(format!("http://{}/nope", bearerd.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_gets_a_new_connection_each_time() {
    // Answers one request per connection with `Connection: close`, then hangs up.
    let upstream = Scripted::start(
        &["HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"],
        true,
    )
    .await;
    let addr = upstream.addr;
    let bearerd = start_bearerd("").await;
    let proxy = proxied_client(bearerd.proxy_addr);
    for i in 0..3 {
        let response = proxy.get(format!("http://{addr}/{i}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(upstream.connections(), 3);
}

/// Sends `body` to the echo upstream through bearerd, as written (raw, so chunked framing
/// can be chosen), and returns what the upstream saw.
async fn raw_upload(bearerd: std::net::SocketAddr, echo: std::net::SocketAddr, framing: &str, body: &[u8]) -> Echoed {
    let mut request = format!(
        "POST http://{echo}/upload HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: billing\r\n{framing}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body);
    let reply = raw_exchange(bearerd, &request).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    Echoed::parse(&reply.as_bytes()[reply.find("\r\n\r\n").unwrap() + 4..])
}

#[tokio::test]
async fn request_bodies_arrive_whole_read_first_or_streamed_and_one_that_never_comes_is_bad_request() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("upstream_timeout: 300ms\n{}", billing(&tokens, ""))).await;
    // Up to 64 KiB with a length: read whole, then sent with the head; over it, or chunked:
    // streamed through.
    for length in [1, 64 * 1024, 64 * 1024 + 1, 300_000] {
        let body: Vec<u8> = (0..length).map(pattern_byte).collect();
        let seen = raw_upload(
            bearerd.proxy_addr,
            echo.addr,
            &format!("Content-Length: {length}"),
            &body,
        )
        .await;
        assert_eq!((seen.body_length, seen.body_is_pattern), (length, true), "{length}");
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
        assert_eq!(seen.all("content-length"), [length.to_string()]);
    }
    let mut chunked = Vec::new();
    let mut sent = 0;
    for size in [5, 70_000, 1] {
        chunked.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        chunked.extend((sent..sent + size).map(pattern_byte));
        chunked.extend_from_slice(b"\r\n");
        sent += size;
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let seen = raw_upload(bearerd.proxy_addr, echo.addr, "Transfer-Encoding: chunked", &chunked).await;
    assert_eq!((seen.body_length, seen.body_is_pattern), (70_006, true));
    assert_eq!(echo.requests(), 5);

    // Ten bytes announced, five sent, then nothing: the app has upstream_timeout to send it.
    let reply = raw_exchange(
        bearerd.proxy_addr,
        format!(
            "POST http://{0}/upload HTTP/1.1\r\nHost: {0}\r\nX-Auth-Config: billing\r\nContent-Length: 10\r\n\r\nhello",
            echo.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains(r#""error":"bad_request""#), "{reply}");
    assert!(
        reply.contains(r#""message":"the request body did not arrive within 300ms""#),
        "{reply}"
    );
    assert_eq!(echo.requests(), 5, "nothing was sent upstream");
}
