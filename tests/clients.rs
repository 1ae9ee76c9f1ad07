//! Real HTTP clients configured the way apps are: curl, Python `requests` and Node's undici
//! `EnvHttpProxyAgent`, each reading `HTTP_PROXY` and `NO_PROXY` from its environment and
//! talking to the real `bearerd` binary. A host matched by a route gets the token through
//! bearerd; a `NO_PROXY` host is reached directly and bearerd never sees the request.
#[path = "support/binary.rs"]
mod binary;
mod support;

use std::path::Path;
use std::process::Stdio;

use binary::Bearerd;
use support::*;

/// An API behind bearerd (on 127.0.0.2, matched by a route) and a service the app reaches
/// directly (on 127.0.0.1, in `NO_PROXY`), with the bearerd binary between.
struct Setup {
    tokens: TokenServer,
    api: Echo,
    internal: Echo,
    bearerd: Bearerd,
}

impl Setup {
    async fn start() -> Self {
        let tokens = TokenServer::start().await;
        let api = Echo::start_on("127.0.0.2").await;
        let internal = Echo::start().await;
        let config = format!(
            "auth_configs:\n  - id: api\n    token_url: {}\n    client_id: app\n    client_secret: app-secret\nroutes:\n  - match: {{ host: 127.0.0.2 }}\n    auth_config: api\n",
            tokens.url()
        );
        let bearerd = Bearerd::start(&config, "info", &[]);
        Self {
            tokens,
            api,
            internal,
            bearerd,
        }
    }

    /// The URLs an app would call: the API (through bearerd) and the internal service (direct).
    fn urls(&self) -> [String; 2] {
        [
            format!("http://{}/v1/orders?page=1", self.api.addr),
            format!("http://{}/internal/health", self.internal.addr),
        ]
    }

    /// `command` with the app's proxy environment and nothing else proxy-related.
    fn app_environment(&self, command: &mut tokio::process::Command) {
        let proxy = format!("http://{}", self.bearerd.proxy);
        for name in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
            command.env_remove(name);
        }
        command
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .kill_on_drop(true);
    }

    /// What each URL's upstream saw, given the client's answers (URL order).
    async fn assert_answers(&self, client: &str, bodies: &[String]) {
        let api = Echoed::parse(bodies[0].as_bytes());
        assert_eq!(api.uri, "/v1/orders?page=1", "{client}");
        assert_eq!(api.all("authorization"), ["Bearer tok-1"], "{client}");
        let internal = Echoed::parse(bodies[1].as_bytes());
        assert_eq!(internal.uri, "/internal/health", "{client}");
        assert_eq!(internal.header("authorization"), None, "{client}");
        // bearerd saw only the API call: the NO_PROXY host went direct.
        assert_eq!(internal.header("x-request-id"), None, "{client}");
        let (_, metrics) = self.bearerd.admin_get("/metrics").await;
        let requests: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("bearerd_requests_total{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(
            (requests - 1.0).abs() < f64::EPSILON,
            "{client}: {requests} requests\n{metrics}"
        );
        assert_eq!((self.api.requests(), self.internal.requests()), (1, 1), "{client}");
        assert_eq!(self.tokens.count(), 1, "{client}");
    }
}

async fn run(mut command: tokio::process::Command) -> String {
    let output = tokio::time::timeout(WAIT, command.stdin(Stdio::null()).output())
        .await
        .expect("the client hung")
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// `[{"url", "status", "body"}, ...]` → the bodies, each status checked.
fn bodies(json: &str) -> Vec<String> {
    let answers: Vec<serde_json::Value> = serde_json::from_str(json.trim()).unwrap();
    answers
        .iter()
        .map(|answer| {
            assert_eq!(answer["status"], 200, "{answer}");
            answer["body"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl() {
    let setup = Setup::start().await;
    let mut answers = Vec::new();
    for url in setup.urls() {
        let mut curl = tokio::process::Command::new("curl");
        curl.args(["-sS", "--fail", "--max-time", "10", &url]);
        setup.app_environment(&mut curl);
        answers.push(run(curl).await);
    }
    setup.assert_answers("curl", &answers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests() {
    let setup = Setup::start().await;
    let mut python = tokio::process::Command::new("python3");
    python.arg("-c").arg(
        "import json, sys, requests\n\
         answers = [requests.get(url, timeout=10) for url in sys.argv[1:]]\n\
         print(json.dumps([{'url': r.url, 'status': r.status_code, 'body': r.text} for r in answers]))\n",
    );
    python.args(setup.urls());
    setup.app_environment(&mut python);
    let answers = bodies(&run(python).await);
    setup.assert_answers("python requests", &answers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_undici_env_http_proxy_agent() {
    let setup = Setup::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/undici-client.mjs");
    let mut node = tokio::process::Command::new("node");
    node.arg(script).args(setup.urls());
    setup.app_environment(&mut node);
    let answers = bodies(&run(node).await);
    setup.assert_answers("node undici", &answers).await;
}
