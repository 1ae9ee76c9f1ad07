//! The real `bearerd` binary with real clients: curl through `http_proxy`, 100 MB streamed
//! both ways, and the command line's answers to good and bad configuration.
mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "e2e-secret-4f1c9a";
const BIN: &str = env!("CARGO_BIN_EXE_bearerd");

/// The binary, started on free ports with `config` (listen addresses added); killed on drop.
struct Bearerd {
    child: std::process::Child,
    proxy: String,
    admin: String,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Bearerd {
    fn start(config: &str, rust_log: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bearerd.yaml");
        std::fs::write(
            &path,
            format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{config}"),
        )
        .unwrap();
        let mut child = std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env("BEARERD_LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .env("E2E_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "bearerd is serving"
                {
                    let _ = tx.send((json["proxy_addr"].to_string(), json["admin_addr"].to_string()));
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let (proxy, admin) = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("bearerd did not start: {}", logs.lock().unwrap())
        });
        Self {
            child,
            proxy: proxy.trim_matches('"').to_owned(),
            admin: admin.trim_matches('"').to_owned(),
            logs,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Bearerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let bearerd = Bearerd::start(&config_for(&tokens), "trace");
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

    // Even at trace level for every crate, neither secret nor token reaches the logs.
    let logs = bearerd.logs();
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
    let bearerd = Bearerd::start(&config_for(&tokens), "warn,bearerd=info");
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
