//! A real `redis-server` on a free loopback port, with its own configuration and no
//! persistence, stopped by its PID on drop (`#[path = "support/redis.rs"] mod redis_server;`
//! beside `mod support;`).
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{TestCa, WAIT};

/// A `redis-server` process; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// TLS only (no plain port), with a certificate for `127.0.0.1` signed by this CA (PEM).
    tls_ca: Option<String>,
    /// An ACL user with every right, and its password; the `default` user is disabled.
    user: Option<(String, String)>,
}

impl RedisServer {
    /// Starts one on a port the kernel picked as free.
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    /// Serving TLS only (`rediss://`), with `ca`'s server certificate; clients need not
    /// present one.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca), None)
    }

    /// With one ACL user, `user` with `password`, allowed everything; `default` is disabled,
    /// so a connection without that password can do nothing.
    pub fn start_with_user(user: &str, password: &str) -> Self {
        Self::start_with(None, Some((user, password)))
    }

    fn start_with(ca: Option<&TestCa>, user: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(ca) = ca {
            for (name, pem) in [
                ("ca.pem", &ca.ca_pem),
                ("server.pem", &ca.server_cert_pem),
                ("server-key.pem", &ca.server_key_pem),
            ] {
                std::fs::write(dir.path().join(name), pem).unwrap();
            }
        }
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            tls_ca: ca.map(|ca| ca.ca_pem.clone()),
            user: user.map(|(user, password)| (user.to_owned(), password.to_owned())),
        };
        // The kernel names a free port; redis-server binds it a moment later. Another
        // process may take it in between, so a start that fails is tried on a new port.
        for _ in 0..5 {
            server.port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` over TLS, with the ACL user and its password
    /// when there is one).
    pub fn url(&self) -> String {
        match &self.user {
            Some((user, password)) => self.url_as(user, password),
            None => format!("{}://127.0.0.1:{}", self.scheme(), self.port),
        }
    }

    /// The URL with `user` and `password`, right or wrong.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("{}://{user}:{password}@127.0.0.1:{}", self.scheme(), self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls_ca.is_some() { "rediss" } else { "redis" }
    }

    /// A client for [`Self::url`] that trusts the server's CA alone.
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls_ca {
            None => redis::Client::open(self.url()),
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone().into_bytes()),
                },
            ),
        }
    }

    /// Kills the server (SIGKILL, by its PID) and waits for it: Redis is gone, as in a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server without losing what it holds (SIGSTOP): every operation times out,
    /// as with a Redis that hangs, until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server answer again (SIGCONT), with everything it held.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = std::time::Instant::now() + WAIT;
        while !self.spawn() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain connection for the test's own reads and writes.
    pub fn connection(&self) -> redis::Connection {
        self.client().unwrap().get_connection_with_timeout(WAIT).unwrap()
    }

    /// Every key whose name starts with `prefix`, and its raw value.
    pub fn values(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut connection = self.connection();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut connection)
            .unwrap();
        keys.sort();
        keys.into_iter()
            .filter_map(|key| {
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut connection).unwrap();
                value.map(|value| (key, value))
            })
            .collect()
    }

    /// The refresh token of the one user grant under `prefix`, opened with the shared
    /// cache's `key` as bearerd seals it.
    pub fn grant_refresh_token(&self, prefix: &str, key: &[u8]) -> String {
        let sealer = bearerd::shared_cache::Sealer::new(&bearerd::secret::SealingKey::parse(key).unwrap(), prefix);
        let grants = self.values(&format!("{prefix}:grant:"));
        assert_eq!(grants.len(), 1, "one record per grant: {grants:?}");
        let (name, value) = &grants[0];
        let record = sealer.open_record(name, value).unwrap();
        record.refresh_token.expect("a refresh token").expose().to_owned()
    }

    /// Asserts that no value under `prefix` holds any of `secrets` readable.
    pub fn assert_holds_none_of<S: AsRef<str>>(&self, prefix: &str, secrets: &[S]) {
        for (name, value) in self.values(prefix) {
            for secret in secrets.iter().map(AsRef::as_ref) {
                assert!(
                    !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{name} holds a token readable"
                );
            }
        }
    }

    /// Sets `key` to `value` (raw bytes) for `ttl_ms`.
    pub fn set(&self, key: &str, value: &[u8], ttl_ms: u64) {
        let mut connection = self.connection();
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query(&mut connection)
            .unwrap();
    }

    /// Starts the process and waits (bounded) until it answers `PING`; false when it exited
    /// instead (its port was taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if self.tls_ca.is_some() {
            let file = |name: &str| self.dir.path().join(name);
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(file("server.pem"))
                .arg("--tls-key-file")
                .arg(file("server-key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(file("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        if let Some((user, password)) = &self.user {
            command.args(["--user", "default", "off"]).args([
                "--user",
                user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ]);
        }
        let mut child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.answers() {
                self.child = Some(child);
                return true;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
            .is_ok_and(|pong| pong == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
