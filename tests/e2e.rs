//! The real `bearerd` binary with real clients: curl through `http_proxy`, 100 MB streamed
//! both ways, and the command line's answers to good and bad configuration.
mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/binary.rs"]
mod binary;

use binary::Bearerd;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "e2e-secret-4f1c9a";
const BIN: &str = env!("CARGO_BIN_EXE_bearerd");

/// curl with bearerd as its HTTP proxy, the way an app's environment sets it.
fn curl(bearerd: &Bearerd) -> tokio::process::Command {
    let mut curl = tokio::process::Command::new("curl");
    let proxy = format!("http://{}", bearerd.proxy);
    curl.args(["-sS", "--max-time", "60"])
        .env("http_proxy", &proxy) // curl reads the lower-case name for http:// URLs
        .env("HTTP_PROXY", &proxy)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .kill_on_drop(true);
    curl
}

fn config_for(tokens: &TokenServer) -> String {
    format!(
        "auth_configs:\n  - id: billing\n    token_url: {}\n    client_id: e2e-client\n    client_secret: ${{E2E_SECRET}}\n    scopes: [invoices.read]\n    allowed_hosts: [127.0.0.1]\n",
        tokens.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_through_http_proxy_gets_the_token_injected() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = Bearerd::start(&config_for(&tokens), "trace", &[("E2E_SECRET", SECRET)]);
    let health = direct_client()
        .get(format!("http://{}/healthz", bearerd.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    for attempt in 1..=3 {
        let output = curl(&bearerd)
            .args(["-H", "X-Auth-Config: billing", "-H", "Authorization: Bearer app-token"])
            .arg(format!("http://{}/v1/invoices?n={attempt}", echo.addr))
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let seen = Echoed::parse(&output.stdout);
        assert_eq!(seen.uri, format!("/v1/invoices?n={attempt}"));
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
        assert_eq!(seen.header("x-auth-config"), None);
        assert!(seen.header("user-agent").unwrap().starts_with("curl/"));
    }
    assert_eq!(tokens.count(), 1);
    assert_eq!(
        tokens.requests()[0].body,
        "grant_type=client_credentials&scope=invoices.read"
    );

    // A bearerd error, as curl sees it.
    let output = curl(&bearerd)
        .args(["-i", "-H", "X-Auth-Config: nosuch"])
        .arg(format!("http://{}/x", echo.addr))
        .output()
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 400"), "{reply}");
    assert!(reply.contains("x-bearerd-error: unknown_auth_config"), "{reply}");

    // Even at trace level for every crate, neither secret nor token reaches the logs (all
    // four requests' lines in).
    let logs = bearerd
        .logs_when("the four request lines", |logs| {
            logs.matches(r#""message":"request""#).count() == 4
        })
        .await;
    assert!(logs.contains("fetched access token"), "{logs}");
    assert!(!logs.contains(SECRET), "the client secret leaked into the logs");
    let basic = bearerd::token::basic_auth("e2e-client", &bearerd::secret::ClientSecret::new(SECRET));
    assert!(
        !logs.contains(basic.trim_start_matches("Basic ")),
        "the Basic credential leaked into the logs"
    );
    assert!(!logs.contains("tok-1"), "the access token leaked into the logs");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A streaming proxy holds a bounded window of a body, never the whole of it. A proxy that
/// buffered would grow by at least the body size (100 MiB); the bound here is a third of that.
#[tokio::test(flavor = "multi_thread")]
async fn hundred_megabytes_stream_both_ways_without_the_proxy_growing() {
    const SIZE: usize = 100 * 1024 * 1024;
    const GROWTH_LIMIT_KIB: u64 = 32 * 1024;
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = Bearerd::start(&config_for(&tokens), "warn,bearerd=info", &[("E2E_SECRET", SECRET)]);
    let warm = curl(&bearerd)
        .args(["-H", "X-Auth-Config: billing"])
        .arg(format!("http://{}/warm", echo.addr))
        .output();
    assert!(warm.await.unwrap().status.success());
    let before = peak_rss_kib(bearerd.pid());

    // Upload: curl reads the body from stdin and sends it chunked through bearerd.
    let mut upload = curl(&bearerd)
        .args(["-T", "-", "-H", "X-Auth-Config: billing"])
        .arg(format!("http://{}/upload", echo.addr))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = upload.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < SIZE {
            let chunk: Vec<u8> = (sent..(sent + 256 * 1024).min(SIZE)).map(pattern_byte).collect();
            stdin.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
    });
    let output = tokio::time::timeout(Duration::from_secs(120), upload.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    let seen = Echoed::parse(&output.stdout);
    assert_eq!(
        (seen.method.as_str(), seen.body_length, seen.body_is_pattern),
        ("PUT", SIZE, true)
    );
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);

    // Download: bearerd streams the upstream's 100 MB to curl, which streams it to us.
    let mut download = curl(&bearerd)
        .args(["-H", "X-Auth-Config: billing"])
        .arg(format!("http://{}/bytes/{SIZE}", echo.addr))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = download.stdout.take().unwrap();
    let (mut received, mut intact) = (0_usize, true);
    let mut buffer = vec![0_u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), stdout.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        intact &= buffer[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(received + i));
        received += n;
    }
    assert!(download.wait().await.unwrap().success());
    assert_eq!((received, intact), (SIZE, true));

    let after = peak_rss_kib(bearerd.pid());
    println!("bearerd peak RSS: {before} KiB before, {after} KiB after 2 x 100 MiB");
    assert!(
        after - before < GROWTH_LIMIT_KIB,
        "peak RSS grew by {} KiB moving 2 x 100 MiB",
        after - before
    );
}

#[test]
fn a_bad_config_exits_non_zero_naming_file_config_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "auth_configs:\n  - id: billing\n    token_url: http://idp.example.com/token\n    client_id: c\n    client_secret: ${UNSET_E2E_VAR}\n    allowed_hosts: [api.test]\n  - id: crm\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [api.test]\n    scope: [a]\n",
    )
    .unwrap();
    let output = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env_remove("UNSET_E2E_VAR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = path.display();
    assert!(stderr.contains("invalid configuration (3 problems)"), "{stderr}");
    for line in [
        format!("{file}: auth config `billing`: client_secret: environment variable UNSET_E2E_VAR is not set"),
        format!("{file}: auth config `billing`: token_url: must be https://"),
        format!("{file}: auth config `crm`: scope: unknown field `scope`"),
    ] {
        assert!(stderr.contains(&line), "missing `{line}` in:\n{stderr}");
    }

    let output = std::process::Command::new(BIN)
        .args(["--config", "/nonexistent/bearerd.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/bearerd.yaml: (file): cannot read"));
}

#[test]
fn version_help_and_usage_errors() {
    let output = std::process::Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("bearerd {}\n", env!("CARGO_PKG_VERSION"))
    );
    let output = std::process::Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("bearerd [run] [--config PATH]"));
    let output = std::process::Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unexpected argument `--bogus`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_path_comes_from_bearerd_config_and_healthz_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-env.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n").unwrap();
    let mut child = std::process::Command::new(BIN)
        .env("BEARERD_CONFIG", &path)
        .env("BEARERD_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["message"], "bearerd is serving", "{line}");
    let admin = json["admin_addr"].as_str().unwrap().to_owned();
    let health = direct_client()
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    drains_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_the_same_way() {
    drains_on("INT").await;
}

async fn drains_on(signal: &str) {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let mut bearerd = Bearerd::start(&config_for(&tokens), "info", &[("E2E_SECRET", SECRET)]);
    let slow = curl(&bearerd)
        .args(["-H", "X-Auth-Config: billing"])
        .arg(format!("http://{}/slow/1500", echo.addr))
        .output();
    let slow = tokio::spawn(slow);
    eventually("the slow request upstream", || async { echo.requests() == 1 }).await;
    bearerd.signal(signal);
    let output = slow.await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen = Echoed::parse(&output.stdout);
    assert_eq!(seen.uri, "/slow/1500");
    assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    assert_eq!(bearerd.exit_status().await.code(), Some(0));
    let logs = bearerd
        .logs_when("the exit line", |logs| {
            logs.contains("every in-flight request finished; exiting")
        })
        .await;
    assert!(
        logs.contains("stopped accepting; waiting for in-flight requests"),
        "{logs}"
    );
    assert!(logs.contains("every in-flight request finished; exiting"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_config_serving() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    // The file watcher is off, so only SIGHUP can reload.
    let base = format!("config_watch_interval: 0s\n{}", config_for(&tokens));
    let bearerd = Bearerd::start(&base, "info", &[("E2E_SECRET", SECRET)]);
    let crm = "  - id: crm\n    token_url: https://idp.example.com/t\n    client_id: crm\n    client_secret: s\n    allowed_hosts: [crm.example.com]\n";
    bearerd.rewrite(&format!("{base}{crm}"));
    bearerd.signal("HUP");
    eventually("the reload", || async {
        bearerd.admin_get("/configs").await.1.contains("\"crm\"")
    })
    .await;

    bearerd.rewrite(&format!("{base}{}", crm.replace("client_id: crm", "client_ide: crm")));
    bearerd.signal("HUP");
    eventually("the failed reload", || async {
        bearerd
            .admin_get("/metrics")
            .await
            .1
            .contains("bearerd_config_reloads_total{outcome=\"error\"} 1")
    })
    .await;
    let logs = bearerd
        .logs_when("the failed reload's line", |logs| logs.contains("client_ide"))
        .await;
    assert!(logs.contains("the previous configuration stays in force"), "{logs}");
    assert!(
        logs.contains("auth config `crm`: client_ide: unknown field `client_ide`"),
        "{logs}"
    );
    let (_, metrics) = bearerd.admin_get("/metrics").await;
    assert!(
        metrics.contains("bearerd_config_reloads_total{outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(bearerd.admin_get("/configs").await.1.contains("\"crm\""));
    let output = curl(&bearerd)
        .args(["-H", "X-Auth-Config: billing"])
        .arg(format!("http://{}/still", echo.addr))
        .output()
        .await
        .unwrap();
    assert_eq!(Echoed::parse(&output.stdout).all("authorization"), ["Bearer tok-1"]);
}

fn check(config: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(BIN)
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("E2E_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fetches_one_token_per_config_and_prints_a_row_each_without_the_token() {
    let tokens = TokenServer::with(Duration::ZERO, |_, request| {
        if request.body.contains("scope=invoices.read") {
            (
                200,
                "application/json",
                r#"{"access_token":"check-token-1","token_type":"Bearer","expires_in":1800,"scope":"invoices.read"}"#
                    .into(),
            )
        } else {
            (
                400,
                "application/json",
                r#"{"error":"invalid_scope","error_description":"no such scope"}"#.into(),
            )
        }
    })
    .await;
    let broken = format!(
        "  - id: crm\n    token_url: {}\n    client_id: crm\n    client_secret: crm-secret-value\n    scopes: [crm.all]\n    allowed_hosts: [crm.example.com]\n",
        tokens.url()
    );
    let (code, stdout, stderr) = check(&format!("{}{broken}", config_for(&tokens)), &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let columns = |line: &str| {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        columns(lines[0]),
        ["ID", "GRANT", "ENDPOINT", "RESULT", "EXPIRES_IN", "SCOPES / ERROR"]
    );
    assert_eq!(
        columns(lines[1]),
        [
            "billing",
            "client_credentials",
            &tokens.url(),
            "ok",
            "1800s",
            "invoices.read"
        ]
    );
    assert_eq!(
        columns(lines[2]),
        [
            "crm",
            "client_credentials",
            &tokens.url(),
            "FAILED",
            "-",
            "the identity provider refused the token request (HTTP 400): invalid_scope: no such scope"
        ]
    );
    assert_eq!(tokens.count(), 2);
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains("check-token-1") && !output.contains(SECRET),
            "{output}"
        );
    }

    // All good: exit 0.
    let (code, stdout, _) = check(&config_for(&tokens), &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(tokens.count(), 3);

    // Offline: validated, nothing contacted, even for an endpoint that could not answer.
    let (code, stdout, _) = check(&format!("{}{broken}", config_for(&tokens)), &["--offline"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.lines().nth(2).unwrap().contains("valid"), "{stdout}");
    assert!(stdout.contains("offline: nothing contacted"), "{stdout}");
    assert_eq!(tokens.count(), 3);

    // An invalid file fails before anything is contacted, naming the problem.
    let (code, _, stderr) = check("auth_configs:\n  - id: x\n", &["--offline"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("auth config `x`: token_url: missing"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_are_json_lines_and_never_show_a_secret_private_key_or_token() {
    let assertions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&assertions);
    let tokens = TokenServer::with(Duration::ZERO, move |n, request| {
        if let Some(assertion) = form_value(&request.body, "client_assertion") {
            seen.lock().unwrap().push(assertion);
        }
        (
            200,
            "application/json",
            format!(r#"{{"access_token":"trace-access-{n}","token_type":"Bearer","expires_in":600,"refresh_token":"trace-refresh-{n}","id_token":"trace-id-{n}"}}"#),
        )
    })
    .await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(dir.path().join("signing.pem"), &key).unwrap();
    let expiring = std::time::SystemTime::now() + Duration::from_secs(10 * 86_400 + 3600);
    let expiring = bearerd::config::format_timestamp(expiring);
    let config = format!(
        "{}    client_secret_expires_at: {expiring}\n  - id: jwt\n    token_url: {}\n    client_id: jwt-client\n    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: ES256\n    allowed_hosts: [127.0.0.1]\n",
        config_for(&tokens),
        tokens.url(),
        dir.path().join("signing.pem").display()
    );
    let bearerd = Bearerd::start(&config, "trace", &[("E2E_SECRET", SECRET)]);
    for (config, path) in [("billing", "/a"), ("jwt", "/b"), ("billing", "/c")] {
        let output = curl(&bearerd)
            .args(["-H", &format!("X-Auth-Config: {config}")])
            .arg(format!("http://{}{path}", echo.addr))
            .output()
            .await
            .unwrap();
        assert!(output.status.success());
    }
    let logs = bearerd
        .logs_when("the three request lines", |logs| {
            logs.matches(r#""message":"request""#).count() == 3
        })
        .await;
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}")))
        .collect();
    // One debug line per request, one info line per token fetch, a warning for the secret.
    let requests: Vec<&serde_json::Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(requests.len(), 3, "{logs}");
    assert_eq!(requests[0]["level"], "DEBUG");
    assert_eq!(requests[0]["method"], "GET");
    assert_eq!(requests[0]["authority"], echo.addr.to_string());
    assert_eq!(requests[0]["auth_config"], "billing");
    assert_eq!(requests[0]["status"], "200");
    assert_eq!(requests[0]["request_id"].as_str().unwrap().len(), 32);
    assert!(requests[0]["duration_us"].as_u64().is_some());
    let fetches: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "fetched access token")
        .collect();
    assert_eq!(fetches.len(), 2, "{logs}");
    assert!(fetches.iter().all(|l| l["level"] == "INFO"));
    let warning = lines
        .iter()
        .find(|l| l["message"] == "the client secret expires in less than 30 days (client_secret_expires_at)")
        .unwrap_or_else(|| panic!("no expiry warning in {logs}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["days_left"], 10);

    let assertions = assertions.lock().unwrap().clone();
    assert_eq!(assertions.len(), 1);
    let basic = bearerd::token::basic_auth("e2e-client", &bearerd::secret::ClientSecret::new(SECRET));
    let mut forbidden = vec![
        SECRET.to_owned(),
        basic.trim_start_matches("Basic ").to_owned(),
        "trace-access-".to_owned(),
        "trace-refresh-".to_owned(),
        "trace-id-".to_owned(),
        assertions[0].clone(),
    ];
    forbidden.extend(key.lines().filter(|l| !l.starts_with("-----")).map(str::to_owned));
    for secret in forbidden {
        assert!(!logs.contains(&secret), "`{secret}` appears in the trace logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_file_reloads_the_running_binary_and_never_shows_in_its_logs() {
    const FIRST: &str = "first-rotating-secret-7d2e";
    const SECOND: &str = "second-rotating-secret-91ab";
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let mut mounted = Mounted::new(&[("client-secret", format!("{FIRST}\n").as_bytes())]);
    let secret_file = mounted.path("client-secret");
    let config = format!(
        "config_watch_interval: 100ms\nauth_configs:\n  - id: billing\n    token_url: {}\n    client_id: e2e-client\n    client_auth: client_secret_post\n    client_secret_file: {}\n    allowed_hosts: [127.0.0.1]\n",
        tokens.url(),
        secret_file.display()
    );
    let bearerd = Bearerd::start(&config, "trace", &[]);
    let get = |token: &str| {
        curl(&bearerd)
            .args(["-H", "X-Auth-Config: billing"])
            .arg(format!("http://{}/only/{token}", echo.addr))
            .output()
    };
    let sent = |n: usize| form_value(&tokens.requests()[n].body, "client_secret");
    let reloads = |outcome: &'static str| {
        let bearerd = &bearerd;
        async move {
            let (_, metrics) = bearerd.admin_get("/metrics").await;
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&format!("bearerd_config_reloads_total{{outcome=\"{outcome}\"}} ")))
                .map(str::to_owned)
        }
    };

    let first = get("tok-1").await.unwrap();
    assert_eq!(Echoed::parse(&first.stdout).all("authorization"), ["Bearer tok-1"]);
    assert_eq!(sent(0).as_deref(), Some(FIRST));

    mounted.update(&[("client-secret", format!("{SECOND}\n").as_bytes())]);
    eventually("the reload", || async {
        reloads("success").await.as_deref() == Some("1")
    })
    .await;
    let replayed = get("tok-2").await.unwrap();
    assert_eq!(Echoed::parse(&replayed.stdout).all("authorization"), ["Bearer tok-2"]);
    assert_eq!(sent(1).as_deref(), Some(SECOND));

    // The key removed from the Secret: the reload fails, naming the file; the second secret
    // stays in force.
    mounted.update(&[]);
    eventually("the failed reload", || async {
        reloads("error").await.as_deref() == Some("1")
    })
    .await;
    let logs = bearerd
        .logs_when("the failed reload's line", |logs| {
            logs.contains("the previous configuration stays in force")
        })
        .await;
    let changed = serde_json::json!({ "file": secret_file.display().to_string() }).to_string();
    let changed = &changed[1..changed.len() - 1];
    assert_eq!(
        logs.matches("a file the configuration reads changed").count(),
        2,
        "one line per change: {logs}"
    );
    assert!(logs.contains(changed), "{changed} in {logs}");
    assert!(
        logs.contains(&format!(
            "auth config `billing`: client_secret_file: cannot read {}",
            secret_file.display()
        )),
        "{logs}"
    );
    let still = get("tok-2").await.unwrap();
    assert_eq!(Echoed::parse(&still.stdout).all("authorization"), ["Bearer tok-2"]);
    assert_eq!(tokens.count(), 2);
    for secret in [FIRST, SECOND] {
        assert!(!bearerd.logs().contains(secret), "`{secret}` appears in the trace logs");
    }
}

fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

/// A workload's JWT: recognisable header, payload and signature, none of which may be logged.
fn workload_jwt(exp: u64, signature: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{signature}",
        b64.encode(r#"{"alg":"RS256","kid":"trace-cluster"}"#),
        b64.encode(format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:trace:sa","exp":{exp}}}"#
        ))
    )
}

/// A provider that refuses `refused-client` quoting the assertion it got, as a careless one
/// might, and answers the others with `tok-<n>`.
fn quoting_refusals(n: usize, request: &Recorded) -> Reply {
    if form_value(&request.body, "client_id").as_deref() != Some("refused-client") {
        return ok_token(&format!("tok-{n}"), 3600);
    }
    let description = format!(
        "assertion {} is not trusted",
        form_value(&request.body, "client_assertion").unwrap_or_default()
    );
    (
        401,
        "application/json",
        serde_json::json!({ "error": "invalid_client", "error_description": description }).to_string(),
    )
}

/// What `bearerd check`, offline and then online, prints for the config at `path` (stdout
/// and stderr, logging at `trace`).
fn checked_at_trace(path: &std::path::Path) -> String {
    let mut printed = String::new();
    for args in [&["check", "--offline"][..], &["check"][..]] {
        let output = std::process::Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(path)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
        printed.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    printed
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_assertions_and_subject_tokens_never_show_in_trace_logs_admin_output_or_errors() {
    let tokens = TokenServer::with(Duration::ZERO, quoting_refusals).await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let live = workload_jwt(in_an_hour, "bGl2ZS1zaWduYXR1cmU");
    let expired = workload_jwt(1_000_000_000, "ZXhwaXJlZC1zaWduYXR1cmU");
    for (name, jwt) in [("live", &live), ("expired", &expired)] {
        std::fs::write(dir.path().join(name), format!("{jwt}\n")).unwrap();
    }
    let config = format!(
        "auth_configs:\n  - id: fed\n    token_url: {0}\n    client_id: fed-client\n    client_auth: federated_jwt\n    assertion_file: {1}/live\n    allowed_hosts: [127.0.0.1]\n  - id: bearer\n    grant: jwt_bearer\n    token_url: {0}\n    client_id: bearer-client\n    client_auth: none\n    assertion_file: {1}/live\n    allowed_hosts: [127.0.0.1]\n  - id: stale\n    token_url: {0}\n    client_id: stale-client\n    client_auth: federated_jwt\n    assertion_file: {1}/expired\n    allowed_hosts: [127.0.0.1]\n  - id: exchange\n    grant: token_exchange\n    token_url: {0}\n    client_id: exchange-client\n    client_auth: none\n    subject_token_file: {1}/live\n    subject_token_type: urn:ietf:params:oauth:token-type:jwt\n    allowed_hosts: [127.0.0.1]\n  - id: refused\n    token_url: {0}\n    client_id: refused-client\n    client_auth: federated_jwt\n    assertion_file: {1}/live\n    allowed_hosts: [127.0.0.1]\n",
        tokens.url(),
        dir.path().display()
    );
    let bearerd = Bearerd::start(&config, "trace", &[]);
    let mut bodies = String::new();
    // The token endpoint names no issued_token_type: the exchange fails after sending.
    for (id, status) in [
        ("fed", "200"),
        ("bearer", "200"),
        ("stale", "502"),
        ("exchange", "502"),
        ("refused", "502"),
    ] {
        let output = curl(&bearerd)
            .args(["-s", "-w", "%{http_code}", "-H", &format!("X-Auth-Config: {id}")])
            .arg(format!("http://{}/x", echo.addr))
            .output()
            .await
            .unwrap();
        let body = String::from_utf8(output.stdout).unwrap();
        assert!(body.ends_with(status), "{id}: {body}");
        bodies.push_str(&body);
    }
    assert!(
        bodies.contains("holds an assertion that expired at 2001-09-09T01:46:40Z"),
        "{bodies}"
    );
    assert!(bodies.contains("no issued_token_type"), "{bodies}");
    assert!(
        bodies.contains("invalid_client: assertion [redacted] is not trusted"),
        "{bodies}"
    );
    assert_eq!(tokens.count(), 4);
    for request in tokens.requests() {
        assert!(
            request.body.contains(&live),
            "the token endpoint got the assertion: {}",
            request.body
        );
    }
    let (status, configs) = bearerd.admin_get("/configs").await;
    assert_eq!(status, 200);
    let logs = bearerd
        .logs_when("the five request lines", |logs| {
            logs.matches(r#""message":"request""#).count() == 5
        })
        .await;
    // `check` lists the files, and offline reads them: never their content.
    let checked = checked_at_trace(&bearerd.config_path());
    assert_eq!(
        checked
            .matches(&format!("assertion file      {}/live", dir.path().display()))
            .count(),
        6,
        "fed, bearer and refused, offline and online: {checked}"
    );
    assert!(
        checked.contains("invalid_client: assertion [redacted] is not trusted"),
        "{checked}"
    );
    for jwt in [&live, &expired] {
        for part in jwt.split('.').skip(1) {
            for (what, text) in [
                ("trace logs", &logs),
                ("/configs", &configs),
                ("responses", &bodies),
                ("check's output", &checked),
            ] {
                assert!(!text.contains(part), "`{part}` appears in the {what}");
            }
        }
    }
}
