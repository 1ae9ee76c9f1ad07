//! bearerd's metrics as Prometheus itself sees them: the exposition passes `promtool check
//! metrics`, and a real Prometheus server (Debian's `prometheus` package, installed by
//! `.ci/run`) scrapes bearerd and answers queries with the counts the test caused.
mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

fn tool(name: &str) -> tokio::process::Command {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "`{name}` is not installed: `.ci/run` installs Debian's prometheus package (apt-get install prometheus)"
    );
    let mut command = tokio::process::Command::new(name);
    command.kill_on_drop(true);
    command
}

/// Traffic that touches every kind of metric: hits, a miss, an upstream error status, an
/// unknown config, a failed token request and a 401 replay.
async fn traffic() -> World {
    let world = World::billing("    client_secret_expires_at: 2031-01-02\n").await;
    for _ in 0..3 {
        assert_eq!(world.get("/ok").await.status(), 200);
    }
    assert_eq!(world.get("/status/502").await.status(), 502);
    assert_eq!(world.get("/only/tok-2").await.status(), 200);
    let unknown = get_with_config(&world.proxy, &world.url("/x"), "nope").await;
    assert_eq!(unknown.status(), 400);
    world
}

#[tokio::test]
async fn the_exposition_passes_promtool_check_metrics() {
    let world = traffic().await;
    let exposition = metrics(&world.bearerd).await;
    let mut promtool = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(WAIT, promtool.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {said}\n{exposition}");
    assert_eq!(said.trim(), "", "promtool found problems:\n{exposition}");
    // promtool checks what is there; this checks that everything DESIGN.md names is.
    for name in [
        "bearerd_requests_total",
        "bearerd_request_duration_seconds",
        "bearerd_token_requests_total",
        "bearerd_token_request_duration_seconds",
        "bearerd_token_cache_lookups_total",
        "bearerd_token_expiry_timestamp_seconds",
        "bearerd_upstream_retries_total",
        "bearerd_config_reloads_total",
        "bearerd_client_secret_expiry_timestamp_seconds",
        "bearerd_inflight_requests",
        "bearerd_connections",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(
            exposition.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{exposition}"
        );
    }
}

/// A free loopback port (bound and released; Prometheus binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Queries Prometheus until `query` has exactly one series with `value`; returns the
/// last answer seen when it never does.
async fn query_until(api: &str, query: &str, value: &str) -> Result<(), String> {
    let client = direct_client();
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(response) = client
            .post(format!("{api}/api/v1/query"))
            .form(&[("query", query)])
            .send()
            .await
            && let Ok(json) = response.json::<serde_json::Value>().await
        {
            let result = &json["data"]["result"];
            if result.as_array().is_some_and(|r| r.len() == 1) && result[0]["value"][1] == value {
                return Ok(());
            }
            last = json.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{query} never became {value}; last answer: {last}"))
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_counts_the_test_caused() {
    let world = traffic().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bearerd\n    static_configs:\n      - targets: ['{}']\n",
            world.bearerd.admin_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = tool("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let checks = [
        (
            r#"bearerd_token_requests_total{job="bearerd",auth_config="billing",outcome="success"}"#,
            "2",
        ),
        (
            r#"bearerd_requests_total{job="bearerd",auth_config="billing",status="200"}"#,
            "4",
        ),
        (
            r#"bearerd_requests_total{job="bearerd",auth_config="none",status="unknown_auth_config"}"#,
            "1",
        ),
        (
            r#"bearerd_upstream_retries_total{job="bearerd",auth_config="billing"}"#,
            "1",
        ),
        (
            r#"bearerd_client_secret_expiry_timestamp_seconds{job="bearerd",auth_config="billing"}"#,
            "1925078400",
        ),
        (r#"up{job="bearerd"}"#, "1"),
    ];
    for (query, value) in checks {
        query_until(&api, query, value).await.unwrap();
    }
}
