//! The real `bearerd` binary on free loopback ports, for tests that drive it as a process
//! (`#[path = "support/binary.rs"] mod binary;` beside `mod support;`).
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{WAIT, eventually, get_text};

const BIN: &str = env!("CARGO_BIN_EXE_bearerd");

/// The binary, started on free ports with `config` (listen addresses added); killed on drop.
pub struct Bearerd {
    child: std::process::Child,
    pub proxy: String,
    pub admin: String,
    logs: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Bearerd {
    /// With `env` added to bearerd's environment.
    pub fn start(config: &str, rust_log: &str, env: &[(&str, &str)]) -> Self {
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
            .envs(env.iter().copied())
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
        let (proxy, admin) = rx.recv_timeout(crate::support::START).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("bearerd did not start: {}", logs.lock().unwrap())
        });
        Self {
            child,
            proxy: proxy.trim_matches('"').to_owned(),
            admin: admin.trim_matches('"').to_owned(),
            logs,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("bearerd.yaml")
    }

    /// Rewrites the config file (listen addresses kept as at start).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(
            self.config_path(),
            format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{config}"),
        )
        .unwrap();
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "bearerd did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        get_text(&format!("http://{}{path}", self.admin)).await
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The logs once `ready` holds for them (bounded by `WAIT`). bearerd writes a line before
    /// the event a test waits on (a response, an exit, a metric), but this side reads the pipe
    /// on a thread of its own, which may not have read that line yet.
    pub async fn logs_when(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        eventually(what, || async { ready(&self.logs()) }).await;
        self.logs()
    }
}

impl Drop for Bearerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
