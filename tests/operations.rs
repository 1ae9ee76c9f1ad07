//! Running bearerd in production: metrics, `/readyz`, `/configs`, reload, graceful shutdown,
//! request ids, and HTTP/2, each against real loopback servers.
// Metric samples are counts; comparing them exactly is the point.
#![allow(clippy::float_cmp)]
mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use bearerd::config::Env;
use support::*;

async fn admin(bearerd: &bearerd::Server, path: &str) -> (u16, String) {
    get_text(&format!("http://{}{path}", bearerd.admin_addr)).await
}

/// The value of the sample `series` (name and labels exactly as exported), if present.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().unwrap())
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_lookups_by_config_and_outcome() {
    let world = World::billing("    client_secret_expires_at: 2031-01-02\n").await;
    for _ in 0..3 {
        assert_eq!(world.get("/ok").await.status(), 200);
    }
    assert_eq!(world.get("/status/503").await.status(), 503);
    let unknown = get_with_config(&world.proxy, &world.url("/x"), "nope").await;
    assert_eq!(unknown.status(), 400);
    let elsewhere = get_with_config(&world.proxy, "http://localhost:1/x", "billing").await;
    assert_eq!(elsewhere.status(), 403);

    let text = metrics(&world.bearerd).await;
    let expect = [
        ("bearerd_requests_total{auth_config=\"billing\",status=\"200\"}", 3.0),
        ("bearerd_requests_total{auth_config=\"billing\",status=\"503\"}", 1.0),
        (
            "bearerd_requests_total{auth_config=\"billing\",status=\"host_not_allowed\"}",
            1.0,
        ),
        (
            "bearerd_requests_total{auth_config=\"none\",status=\"unknown_auth_config\"}",
            1.0,
        ),
        ("bearerd_request_duration_seconds_count{auth_config=\"billing\"}", 5.0),
        ("bearerd_request_duration_seconds_count{auth_config=\"none\"}", 1.0),
        (
            "bearerd_token_requests_total{auth_config=\"billing\",outcome=\"success\"}",
            1.0,
        ),
        (
            "bearerd_token_requests_total{auth_config=\"billing\",outcome=\"error\"}",
            0.0,
        ),
        (
            "bearerd_token_request_duration_seconds_count{auth_config=\"billing\"}",
            1.0,
        ),
        (
            "bearerd_token_cache_lookups_total{auth_config=\"billing\",result=\"miss\"}",
            1.0,
        ),
        (
            "bearerd_token_cache_lookups_total{auth_config=\"billing\",result=\"hit\"}",
            3.0,
        ),
        (
            "bearerd_token_cache_lookups_total{auth_config=\"billing\",result=\"refresh_ahead\"}",
            0.0,
        ),
        ("bearerd_upstream_retries_total{auth_config=\"billing\"}", 0.0),
        ("bearerd_config_reloads_total{outcome=\"success\"}", 0.0),
        ("bearerd_config_reloads_total{outcome=\"error\"}", 0.0),
        // 2031-01-02T00:00:00Z (`date -u -d 2031-01-02 +%s`)
        (
            "bearerd_client_secret_expiry_timestamp_seconds{auth_config=\"billing\"}",
            1_925_078_400.0,
        ),
        ("bearerd_inflight_requests", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    // The token server's tokens live 3600 s from when they were requested, less the 5 s skew.
    let expiry = sample(&text, "bearerd_token_expiry_timestamp_seconds{auth_config=\"billing\"}").unwrap();
    assert!((expiry - (unix_now() + 3595.0)).abs() < 30.0, "{expiry}");
    // Sub-millisecond and multi-second buckets, and the process metrics.
    assert!(text.contains("bearerd_request_duration_seconds_bucket{auth_config=\"billing\",le=\"0.0001\"}"));
    assert!(text.contains("bearerd_token_request_duration_seconds_bucket{auth_config=\"billing\",le=\"30\"}"));
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name}"));
        assert!(value.parse::<f64>().unwrap() >= 0.0, "{name} {value}");
    }
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1_000_000.0);
    // Never a host, a path or a token in a label.
    for leaked in ["127.0.0.1", "/ok", "tok-1", "localhost"] {
        assert!(!text.contains(leaked), "{leaked} in\n{text}");
    }
}

#[tokio::test]
async fn a_failed_token_request_is_counted_as_an_error() {
    let tokens = TokenServer::with(Duration::ZERO, |_, _| (500, "text/plain", "down".into())).await;
    let world = World::with_tokens(tokens, "").await;
    assert_eq!(world.get("/x").await.status(), 502);
    let text = metrics(&world.bearerd).await;
    assert_eq!(
        sample(
            &text,
            "bearerd_token_requests_total{auth_config=\"billing\",outcome=\"error\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "bearerd_requests_total{auth_config=\"billing\",status=\"token_unavailable\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "bearerd_token_expiry_timestamp_seconds{auth_config=\"billing\"}"),
        None
    );
}

#[tokio::test]
async fn readyz_waits_for_prefetched_tokens_and_healthz_does_not() {
    // Token requests fail until the test lets them succeed; the prefetch retries after each
    // back-off step.
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail = std::sync::Arc::clone(&failing);
    let tokens = TokenServer::with(Duration::ZERO, move |n, _| {
        if fail.load(std::sync::atomic::Ordering::SeqCst) {
            (500, "text/plain", "warming up".into())
        } else {
            ok_token(&format!("tok-{n}"), 3600)
        }
    })
    .await;
    let world = World::with_tokens(
        tokens,
        "    prefetch: true\n    backoff: { initial: 100ms, max: 200ms }\n",
    )
    .await;
    assert_eq!(admin(&world.bearerd, "/healthz").await, (200, "ok\n".to_owned()));
    eventually("the first token request", || async { world.tokens.count() >= 1 }).await;
    let (status, body) = admin(&world.bearerd, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: no token yet for `billing`"), "{body}");
    assert!(body.contains("HTTP 500"), "{body}");

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("readiness", || async {
        admin(&world.bearerd, "/readyz").await.0 == 200
    })
    .await;
    let fetched = world.tokens.count();
    // The app's first request finds the prefetched token.
    assert_eq!(world.get("/x").await.status(), 200);
    assert_eq!(world.tokens.count(), fetched);
    let text = metrics(&world.bearerd).await;
    assert_eq!(
        sample(
            &text,
            "bearerd_token_cache_lookups_total{auth_config=\"billing\",result=\"hit\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn readyz_is_ready_at_once_without_prefetch() {
    let world = World::billing("").await;
    assert_eq!(admin(&world.bearerd, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(world.tokens.count(), 0);
}

#[tokio::test]
async fn configs_shows_public_fields_and_token_state_but_never_a_secret_key_or_token() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = ca.client_identity("bearerd-client");
    std::fs::write(dir.path().join("client.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("client.key"), &key).unwrap();
    let signing_key = rcgen::KeyPair::generate().unwrap().serialize_pem(); // P-256, PKCS#8
    std::fs::write(dir.path().join("signing.pem"), &signing_key).unwrap();
    let tokens = TokenServer::with(Duration::ZERO, |n, _| {
        (
            200,
            "application/json",
            format!(r#"{{"access_token":"secret-access-token-{n}","token_type":"Bearer","expires_in":600,"refresh_token":"secret-refresh-token"}}"#),
        )
    })
    .await;
    let yaml = format!(
        "{}    scopes: [a.read]\n    extra_params: {{ audience: hidden-audience-value }}\n  - id: jwt\n    token_url: http://127.0.0.1:1/t\n    client_id: jwt-client\n    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: ES256\n    allowed_hosts: [127.0.0.1]\n  - id: mtls\n    token_url: http://127.0.0.1:1/t\n    client_id: mtls-client\n    client_auth: tls_client_auth\n    client_cert_file: {}\n    client_key_file: {}\n    allowed_hosts: [127.0.0.1]\n",
        billing(&tokens, ""),
        dir.path().join("signing.pem").display(),
        dir.path().join("client.crt").display(),
        dir.path().join("client.key").display(),
    );
    let bearerd = start_bearerd(&yaml).await;
    let echo = Echo::start().await;
    let client = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    assert_eq!(get_with_config(&client, &url, "billing").await.status(), 200);
    // `jwt` fails (nothing listens on port 1): its last error shows.
    assert_eq!(get_with_config(&client, &url, "jwt").await.status(), 502);

    let (status, body) = admin(&bearerd, "/configs").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let billing = &json["auth_configs"][0];
    assert_eq!(billing["id"], "billing");
    assert_eq!(billing["client_id"], "billing-client");
    assert_eq!(billing["client_auth"], "client_secret_basic");
    assert_eq!(billing["endpoint"]["token_url"], tokens.url());
    assert_eq!(billing["scopes"], serde_json::json!(["a.read"]));
    assert_eq!(billing["extra_params"], serde_json::json!(["audience"]));
    assert_eq!(
        billing["inject"],
        serde_json::json!({"header": "authorization", "prefix": "Bearer"})
    );
    assert_eq!(billing["allowed_hosts"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(billing["token"]["consecutive_failures"], 0);
    assert!(billing["token"]["last_error"].is_null());
    let valid_until = billing["token"]["valid_until"].as_str().unwrap();
    assert!(valid_until.ends_with('Z') && valid_until.len() == 20, "{valid_until}");
    assert!(billing["token"]["last_refresh"].is_string());
    let jwt = &json["auth_configs"][1];
    assert_eq!(jwt["client_auth"], "private_key_jwt");
    assert!(jwt["token"]["valid_until"].is_null());
    assert_eq!(jwt["token"]["consecutive_failures"], 1);
    assert!(
        jwt["token"]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("token request to http://127.0.0.1:1/t failed"),
        "{}",
        jwt["token"]["last_error"]
    );
    assert_eq!(json["auth_configs"][2]["client_auth"], "tls_client_auth");

    let key_line = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    for secret in [
        "p@ss:w0rd/+%=&?".to_owned(),
        "hidden-audience-value".to_owned(),
        "secret-access-token".to_owned(),
        "secret-refresh-token".to_owned(),
        key_line(&signing_key),
        key_line(&key),
    ] {
        assert!(!body.contains(&secret), "{secret} in /configs:\n{body}");
    }
}

/// A config file for a reload test: configs `a` and `b` at `tokens`, `b` with `b_scope`.
fn reload_yaml(tokens: &TokenServer, b_scope: &str, extra: &str) -> String {
    format!(
        "auth_configs:\n  - id: a\n    token_url: {0}\n    client_id: a\n    client_secret: a\n    allowed_hosts: [127.0.0.1]\n  - id: b\n    token_url: {0}\n    client_id: b\n    client_secret: b\n    scopes: [{b_scope}]\n    allowed_hosts: [127.0.0.1]\n{extra}",
        tokens.url()
    )
}

async fn reloads(bearerd: &bearerd::Server, outcome: &str) -> f64 {
    let text = metrics(bearerd).await;
    sample(&text, &format!("bearerd_config_reloads_total{{outcome=\"{outcome}\"}}")).unwrap()
}

async fn start_watching(path: &Path) -> bearerd::Server {
    let mut config = bearerd::config::Config::load(path, &Env::new()).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let bearerd = bearerd::Server::start(config).await.unwrap();
    bearerd.watch(path.to_owned(), Env::new(), Duration::from_millis(50));
    bearerd
}

#[tokio::test]
async fn a_changed_file_is_reloaded_keeping_the_tokens_of_unchanged_configs() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, reload_yaml(&tokens, "one", "")).unwrap();
    let bearerd = start_watching(&path).await;
    let client = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    let token_of = |config: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = get_with_config(&client, &url, config).await;
            assert_eq!(response.status(), 200, "{config}");
            echoed(response).await.header("authorization").unwrap().to_owned()
        }
    };
    assert_eq!(token_of("a").await, "Bearer tok-1");
    assert_eq!(token_of("b").await, "Bearer tok-2");

    // b's scopes change and a config c appears; a is untouched.
    let c = "  - id: c\n    token_url: http://127.0.0.1:1/t\n    client_id: c\n    client_secret: c\n    allowed_hosts: [127.0.0.1]\n";
    std::fs::write(&path, reload_yaml(&tokens, "two", c)).unwrap();
    eventually("the reload", || async { reloads(&bearerd, "success").await == 1.0 }).await;
    assert_eq!(token_of("a").await, "Bearer tok-1");
    assert_eq!(token_of("b").await, "Bearer tok-3");
    assert!(tokens.requests()[2].body.contains("scope=two"));
    assert!(bearerd.config().auth_config("c").is_some());

    // A broken file changes nothing: the old config keeps serving, the error is counted.
    std::fs::write(&path, "auth_configs:\n  - id: a\n    tokne_url: x\n").unwrap();
    eventually("the failed reload", || async {
        reloads(&bearerd, "error").await == 1.0
    })
    .await;
    assert_eq!(reloads(&bearerd, "success").await, 1.0);
    assert_eq!(token_of("b").await, "Bearer tok-3");
    assert!(bearerd.config().auth_config("c").is_some());
    assert_eq!(tokens.count(), 3);
}

#[tokio::test]
async fn sighup_style_reload_returns_the_problems_of_a_bad_file() {
    let tokens = TokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, reload_yaml(&tokens, "one", "")).unwrap();
    let bearerd = start_bearerd(&std::fs::read_to_string(&path).unwrap()).await;
    std::fs::write(&path, reload_yaml(&tokens, "one", "").replace("    client_id: b\n", "")).unwrap();
    let err = bearerd.reload(&path, &Env::new()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "invalid configuration (1 problem)\n  {}: auth config `b`: client_id: missing: set client_id",
            path.display()
        )
    );
    assert!(bearerd.config().auth_config("b").is_some());
    assert_eq!(reloads(&bearerd, "error").await, 1.0);
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_style_symlink_swap_is_reloaded() {
    use std::os::unix::fs::symlink;
    let tokens = TokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // What the kubelet lays out: bearerd.yaml -> ..data/bearerd.yaml, ..data -> ..<timestamp>
    let version = |name: &str, yaml: &str| {
        let version = dir.path().join(name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("bearerd.yaml"), yaml).unwrap();
    };
    version("..2026_11_23_10_00_00.1", &reload_yaml(&tokens, "one", ""));
    symlink("..2026_11_23_10_00_00.1", dir.path().join("..data")).unwrap();
    symlink("..data/bearerd.yaml", dir.path().join("bearerd.yaml")).unwrap();
    let path = dir.path().join("bearerd.yaml");
    let bearerd = start_watching(&path).await;
    assert_eq!(bearerd.config().auth_config("b").unwrap().scopes, ["one"]);

    // The kubelet's atomic swap: a new directory, a new link, renamed over ..data.
    version("..2026_11_23_10_05_00.2", &reload_yaml(&tokens, "two", ""));
    symlink("..2026_11_23_10_05_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2026_11_23_10_00_00.1")).unwrap();

    eventually("the reload", || async { reloads(&bearerd, "success").await == 1.0 }).await;
    assert_eq!(bearerd.config().auth_config("b").unwrap().scopes, ["two"]);
}

/// The value of form field `name` in a recorded token request.
fn form_field(request: &Recorded, name: &str) -> String {
    form_urlencoded::parse(&request.bytes)
        .find(|(key, _)| key == name)
        .map_or_else(
            || panic!("no {name} in {}", request.body),
            |(_, value)| value.into_owned(),
        )
}

#[cfg(unix)]
#[tokio::test]
async fn a_rotated_kubernetes_secret_is_used_from_the_next_token_request_on_and_the_token_kept() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let mut secret = Mounted::new(&[("client-secret", b"first-secret\n")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(
        &path,
        format!(
            "auth_configs:\n  - id: billing\n    token_url: {}\n    client_id: billing-client\n    client_auth: client_secret_post\n    client_secret_file: {}\n    allowed_hosts: [127.0.0.1]\n",
            tokens.url(),
            secret.path("client-secret").display()
        ),
    )
    .unwrap();
    let bearerd = start_watching(&path).await;
    let client = proxied_client(bearerd.proxy_addr);
    // A request the upstream accepts only with `token`: any other is refused (401), dropped,
    // and replaced by a new token request before the one replay.
    let token_for = |token: &str| {
        let url = format!("http://{}/only/{token}", echo.addr);
        let client = client.clone();
        async move {
            let response = get_with_config(&client, &url, "billing").await;
            assert_eq!(response.status(), 200, "{url}");
            echoed(response).await.header("authorization").unwrap().to_owned()
        }
    };
    let secret_sent = |n: usize| form_field(&tokens.requests()[n], "client_secret");

    assert_eq!(token_for("tok-1").await, "Bearer tok-1");
    assert_eq!(secret_sent(0), "first-secret");

    // The kubelet swaps in the rotated secret: reloaded, and the token fetched with the old
    // secret stays in use until it is refused (or expires).
    secret.update(&[("client-secret", b"second-secret\n")]);
    eventually("the reload", || async { reloads(&bearerd, "success").await == 1.0 }).await;
    assert_eq!(token_for("tok-1").await, "Bearer tok-1");
    assert_eq!(tokens.count(), 1, "the cached token was kept");
    assert_eq!(token_for("tok-2").await, "Bearer tok-2");
    assert_eq!(tokens.count(), 2);
    assert_eq!(secret_sent(1), "second-secret");

    // The key disappears: a failed reload, like a bad config file's. The configuration in
    // force, its secret and its token stay.
    secret.update(&[]);
    eventually("the failed reload", || async {
        reloads(&bearerd, "error").await == 1.0
    })
    .await;
    assert_eq!(token_for("tok-2").await, "Bearer tok-2");
    assert_eq!(tokens.count(), 2);
    assert_eq!(token_for("tok-3").await, "Bearer tok-3");
    assert_eq!(secret_sent(2), "second-secret");

    // It comes back with a third secret: reloaded; the missing file was reported once.
    secret.update(&[("client-secret", b"third-secret\n")]);
    eventually("the second reload", || async {
        reloads(&bearerd, "success").await == 2.0
    })
    .await;
    assert_eq!(reloads(&bearerd, "error").await, 1.0);
    assert_eq!(token_for("tok-3").await, "Bearer tok-3");
    assert_eq!(token_for("tok-4").await, "Bearer tok-4");
    assert_eq!(secret_sent(3), "third-secret");
    assert_eq!(tokens.count(), 4);
}

#[cfg(unix)]
#[tokio::test]
async fn a_rotated_client_certificate_is_presented_from_the_next_token_request_on() {
    let ca = TestCa::new();
    let tokens = TokenServer::with_tls(ca.mtls_server_config()).await;
    let echo = Echo::start().await;
    let (cert, key, first) = ca.client_identity("bearerd-client");
    let mut mounted = Mounted::new(&[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(
        &path,
        format!(
            "tls: {{ ca_file: {} }}\nauth_configs:\n  - id: billing\n    token_url: {}\n    client_id: billing-client\n    client_auth: tls_client_auth\n    client_cert_file: {}\n    client_key_file: {}\n    allowed_hosts: [127.0.0.1]\n",
            ca.write_ca(dir.path()).display(),
            tokens.https_url(),
            mounted.path("tls.crt").display(),
            mounted.path("tls.key").display()
        ),
    )
    .unwrap();
    let bearerd = start_watching(&path).await;
    let client = proxied_client(bearerd.proxy_addr);
    let status = |token: &str| {
        let url = format!("http://{}/only/{token}", echo.addr);
        let client = client.clone();
        async move { get_with_config(&client, &url, "billing").await.status() }
    };
    assert_eq!(status("tok-1").await, 200);
    assert!(tokens.requests()[0].client_certificate.as_ref() == Some(&first));

    let (cert, key, second) = ca.client_identity("bearerd-client");
    assert_ne!(first, second);
    mounted.update(&[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())]);
    eventually("the reload", || async { reloads(&bearerd, "success").await == 1.0 }).await;
    assert_eq!(status("tok-1").await, 200);
    assert_eq!(tokens.count(), 1, "the cached token was kept");
    assert_eq!(status("tok-2").await, 200);
    assert_eq!(tokens.count(), 2);
    assert!(
        tokens.requests()[1].client_certificate.as_ref() == Some(&second),
        "the rotated certificate"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_refresh_token_put_in_its_kubernetes_secret_is_the_new_consent_without_a_restart() {
    // The provider refuses the first refresh token, and answers any other.
    let tokens = TokenServer::with(Duration::ZERO, |n, recorded| {
        if form_field(recorded, "refresh_token") == "rt-revoked" {
            (
                400,
                "application/json",
                r#"{"error":"invalid_grant","error_description":"revoked"}"#.to_owned(),
            )
        } else {
            ok_token(&format!("tok-{n}"), 3600)
        }
    })
    .await;
    let echo = Echo::start().await;
    let mut secret = Mounted::new(&[("refresh-token", b"rt-revoked\n")]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state-key"), [3; 32]).unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(
        &path,
        format!(
            "state: {{ file: {0}/state.json, key_file: {0}/state-key }}\nauth_configs:\n  - id: crm\n    grant: refresh_token\n    refresh_token_file: {1}\n    token_url: {2}\n    client_id: crm-client\n    client_auth: none\n    allowed_hosts: [127.0.0.1]\n",
            dir.path().display(),
            secret.path("refresh-token").display(),
            tokens.url(),
        ),
    )
    .unwrap();
    let bearerd = start_watching(&path).await;
    let client = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    let refused = bearerd_error(get_with_config(&client, &url, "crm").await).await;
    assert!(
        refused
            .message
            .contains("needs a new consent: put a new refresh token in refresh_token_file"),
        "{}",
        refused.message
    );
    assert_eq!(tokens.count(), 1);
    let consent_required = || async {
        sample(
            &metrics(&bearerd).await,
            "bearerd_consent_required{auth_config=\"crm\"}",
        )
    };
    assert_eq!(consent_required().await, Some(1.0));

    // The kubelet swaps in a new refresh token: reloaded with no SIGHUP, and it is used.
    secret.update(&[("refresh-token", b"rt-granted\n")]);
    eventually("the reload", || async { reloads(&bearerd, "success").await == 1.0 }).await;
    assert_eq!(consent_required().await, Some(0.0));
    // At once: the old token's refusal and its back-off ended with it.
    let seen = echoed(get_with_config(&client, &url, "crm").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer tok-2"));
    let requests = tokens.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].body,
        "grant_type=refresh_token&refresh_token=rt-granted&client_id=crm-client"
    );
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let world = World::billing("").await;
    let World {
        echo, proxy, bearerd, ..
    } = world;
    let slow = tokio::spawn({
        let proxy = proxy.clone();
        let url = format!("http://{}/slow/800", echo.addr);
        async move {
            let response = get_with_config(&proxy, &url, "billing").await;
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    eventually("the slow request upstream", || async { echo.requests() == 1 }).await;
    let proxy_addr = bearerd.proxy_addr;
    let shutdown = tokio::spawn(bearerd.shutdown());
    eventually("the listener to close", || async {
        tokio::net::TcpStream::connect(proxy_addr).await.is_err()
    })
    .await;
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("/slow/800"), "{body}");
    assert!(
        shutdown.await.unwrap(),
        "the request did not finish within the grace period"
    );
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("shutdown_grace: 300ms\n{}", billing(&tokens, ""))).await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/slow/5000", echo.addr);
    let slow = tokio::spawn(async move { get_with_config(&proxy, &url, "billing").await });
    eventually("the slow request upstream", || async { echo.requests() == 1 }).await;
    assert!(!bearerd.shutdown().await);
    slow.abort();
}

#[tokio::test]
async fn the_upstream_sees_a_request_id_the_app_sent_or_a_new_one() {
    let world = World::billing("").await;
    let seen = echoed(world.get("/x").await).await;
    let id = seen.header("x-request-id").unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let other = echoed(world.get("/x").await).await;
    assert_ne!(other.header("x-request-id"), Some(id));

    let response = world
        .proxy
        .get(world.url("/x"))
        .header("x-auth-config", "billing")
        .header("x-request-id", "app-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed(response).await.all("x-request-id"), ["app-chose-this"]);
}

#[tokio::test]
async fn upstream_requests_beyond_the_concurrency_limit_wait_for_a_permit() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!(
        "upstream_max_concurrency: 1\nupstream_timeout: 300ms\n{}",
        billing(&tokens, "")
    ))
    .await;
    let proxy = proxied_client(bearerd.proxy_addr);
    // A holds the only permit while its 10 MB body is not read.
    let held = get_with_config(&proxy, &format!("http://{}/bytes/10000000", echo.addr), "billing").await;
    assert_eq!(held.status(), 200);
    // B waits for it, past upstream_timeout, and never reaches the upstream.
    let waiting = get_with_config(&proxy, &format!("http://{}/b", echo.addr), "billing").await;
    let error = bearerd_error(waiting).await;
    assert_eq!((error.status, error.code.as_str()), (504, "upstream_timeout"));
    assert_eq!(echo.requests(), 1);
    // A's body ends (dropped): the permit is back, and C goes through.
    drop(held);
    eventually("the permit to come back", || async {
        let response = get_with_config(&proxy, &format!("http://{}/c", echo.addr), "billing").await;
        response.status() == 200
    })
    .await;
    assert_eq!(echo.requests(), 2, "B never reached the upstream; C did");
}
