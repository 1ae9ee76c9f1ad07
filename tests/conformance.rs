//! Conformance with RFC 9112 and RFC 9110, byte for byte, in both directions.
//!
//! App → bearerd → upstream: request smuggling forms (`Content-Length` and
//! `Transfer-Encoding` in conflict, obfuscated codings, obs-fold, bare CR and LF, NUL,
//! pipelining, requests hidden in bodies, `Host`, target and user-info confusion), each
//! asserting the exact bytes a recording upstream received (or that nothing reached it) and
//! the exact bytes the app read. Upstream → bearerd → app: hostile responses (framing
//! defects, `HEAD`, 204 and 304 with bodies, interim responses, bytes after a response or on
//! an idle pooled connection, forbidden trailers), each asserting the exact bytes the app
//! read and the exact requests the upstream received, on which connection.
//!
//! Every request case runs through bearerd's own HTTP/1.1 loop and through hyper's server
//! (the app's connection handed off first by a chunked request); every response case through
//! bearerd's own client in clear (a plain upstream) and over TLS (an HTTP/1.1-only TLS
//! upstream behind an `upstream_tls: true` route), each on both app sides. After each, a request under the other
//! auth config, on a new connection and on the same one when it stayed open, must get the
//! echo upstream's exact answer carrying that config's token: no desync, and no token on the
//! wrong request.
//!
//! Each table's runs go at once; every run that departs from what is expected is reported
//! with the bytes seen and expected, so one failure hides no other. `date` values are masked
//! (`*`), and in bearerd's own JSON errors the prose `message` and the `content-length` that
//! follows from it, once checked.
mod support;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// The setup: two auth configs with different tokens, an echo upstream, bearerd

struct Env {
    bearerd: bearerd::Server,
    echo: Echo,
    ca: TestCa,
    _tokens: TokenServer,
    _dir: tempfile::TempDir,
}

/// `billing` gets `tok-billing`, `other` gets `tok-other`; both may send to 127.0.0.1, and
/// `billing` to `localhost` too, which a route sends over TLS (`upstream_tls: true`).
async fn env() -> Arc<Env> {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let tokens = TokenServer::with(Duration::ZERO, |_, request| {
        if request.body.contains("client_id=other-client") {
            ok_token("tok-other", 3600)
        } else {
            ok_token("tok-billing", 3600)
        }
    })
    .await;
    let bearerd = start_bearerd(&format!(
        "upstream_timeout: 5s
tls: {{ ca_file: {ca} }}
auth_configs:
  - id: billing
    token_url: {url}
    client_id: billing-client
    client_secret: billing-secret
    client_auth: client_secret_post
    allowed_hosts: [127.0.0.1, localhost]
  - id: other
    token_url: {url}
    client_id: other-client
    client_secret: other-secret
    client_auth: client_secret_post
    allowed_hosts: [127.0.0.1]
routes:
  - match: {{ host: localhost }}
    auth_config: billing
    upstream_tls: true
",
        ca = ca_file.display(),
        url = tokens.url(),
    ))
    .await;
    Arc::new(Env {
        bearerd,
        echo: Echo::start().await,
        ca,
        _tokens: tokens,
        _dir: dir,
    })
}

/// Who read the app's request: bearerd's own HTTP/1.1 loop, or hyper's server, to which the
/// loop handed the connection over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Loop,
    Hyper,
}

/// How bearerd's own HTTP/1.1 client talked to the upstream: in clear, or over TLS (an
/// HTTPS upstream that chose `http/1.1` by ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Plain,
    Tls,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Loop => "loop",
            Self::Hyper => "hyper-server",
        }
    }
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain-client",
            Self::Tls => "tls-client",
        }
    }
}

/// Placeholders in the tables: `{up}` the upstream as the app addresses it, `{id}` the
/// run's request id, `{echo}` the echo upstream; `{len}` the length of what follows the
/// first empty line (a request's body); `{pause}` where the app stops writing for a while.
struct Vars {
    up: String,
    id: String,
    echo: String,
}

impl Vars {
    fn fill(&self, template: &str) -> String {
        let text = template
            .replace("{up}", &self.up)
            .replace("{id}", &self.id)
            .replace("{echo}", &self.echo);
        let written = text.replace("{pause}", "");
        match written.find("\r\n\r\n") {
            Some(end) if text.contains("{len}") => {
                let body = written.len() - end - 4;
                text.replace("{len}", &body.to_string())
            }
            _ => text,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The app's side of a connection

/// The date an upstream in these tables writes, which the masking leaves as it is.
const UPSTREAM_DATE: &str = "Mon, 01 Jan 2001 00:00:00 GMT";

struct App {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    timed_out: bool,
}

impl App {
    async fn connect(env: &Env) -> Self {
        Self {
            stream: TcpStream::connect(env.bearerd.proxy_addr).await.unwrap(),
            buf: Vec::new(),
            closed: false,
            timed_out: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).await.is_err() {
            self.closed = true;
        }
    }

    /// `n` whole responses (to `HEAD` if `head`), or what came until the connection closed
    /// or `WAIT` passed; what came after them stays in the buffer.
    async fn read(&mut self, n: usize, head: bool) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (mut at, mut count) = (0, 0);
            while count < n {
                let Some(length) = response_length(&self.buf[at..], head) else {
                    break;
                };
                at += length;
                count += 1;
            }
            if count == n {
                return self.buf.drain(..at).collect();
            }
            if self.closed || self.timed_out {
                return std::mem::take(&mut self.buf);
            }
            self.fill(deadline).await;
        }
    }

    /// Whether bearerd closes the connection within `WAIT`; what came before stays in the
    /// buffer.
    async fn closes(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.closed && !self.timed_out {
            self.fill(deadline).await;
        }
        self.closed
    }

    async fn fill(&mut self, deadline: tokio::time::Instant) {
        self.buf.reserve(16 * 1024);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0) | Err(_)) => self.closed = true,
            Ok(Ok(_)) => {}
            Err(_) => self.timed_out = true,
        }
    }

    /// `bytes` as the report shows them: masked, and saying how the reading ended when it
    /// ended early.
    fn shown(&self, bytes: &[u8], head: bool) -> String {
        let mut text = masked(bytes, head);
        if self.timed_out {
            text.push_str(" [nothing more within WAIT]");
        } else if self.closed {
            text.push_str(" [closed]");
        }
        text
    }
}

/// The length of the whole response at the start of `buf` (one to `HEAD` if `head`), or
/// `None` until it is all there (or, without a length, until the connection closes).
fn response_length(buf: &[u8], head: bool) -> Option<usize> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = text.get(9..12)?.parse().ok()?;
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|line| {
            let (line_name, value) = line.split_once(':')?;
            (line_name == name).then(|| value.trim().to_owned())
        })
    };
    if head || status < 200 || status == 204 || status == 304 {
        return Some(end);
    }
    if header("transfer-encoding").is_some_and(|coding| coding.ends_with("chunked")) {
        return chunked_length(&buf[end..]).map(|body| end + body);
    }
    let length: usize = header("content-length")?.parse().ok()?;
    (buf.len() >= end + length).then_some(end + length)
}

fn status(bytes: &[u8]) -> Option<u16> {
    std::str::from_utf8(bytes.get(9..12)?).ok()?.parse().ok()
}

/// Responses as text, with each `date` value but [`UPSTREAM_DATE`] replaced by `*`, and in
/// bearerd's JSON errors the `message` and the `content-length` replaced by `*` (the length
/// only if it is the body's).
fn masked(bytes: &[u8], head: bool) -> String {
    let mut out = String::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let length = response_length(rest, head).unwrap_or(rest.len());
        let (response, after) = rest.split_at(length);
        rest = after;
        let text = String::from_utf8_lossy(response);
        let Some(end) = text.find("\r\n\r\n") else {
            out.push_str(&text);
            continue;
        };
        let (head_text, body) = (&text[..end + 2], &text[end + 4..]);
        let error = head_text
            .split("\r\n")
            .any(|line| line.to_ascii_lowercase().starts_with("x-bearerd-error:"));
        let body = if error { masked_error(body) } else { body.to_owned() };
        for line in head_text.split_inclusive("\r\n") {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.trim();
            let own_date = name.eq_ignore_ascii_case("date") && value != UPSTREAM_DATE;
            let error_length =
                error && name.eq_ignore_ascii_case("content-length") && value == (text.len() - end - 4).to_string();
            if own_date || error_length {
                let _ = write!(out, "{name}: *\r\n");
            } else {
                out.push_str(line);
            }
        }
        out.push_str("\r\n");
        out.push_str(&body);
    }
    out
}

/// bearerd's JSON error with its message replaced by `*`, if it is exactly as `serde_json`
/// writes it; else as it is.
fn masked_error(body: &str) -> String {
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    if !serde_json::to_string(&json).is_ok_and(|text| text == body) || !json["message"].is_string() {
        return body.to_owned();
    }
    json["message"] = "*".into();
    json.to_string()
}

/// bearerd's own JSON error as the app reads it, masked: from bearerd's loop, or from
/// hyper's server, with `auth_config` each of `configs`, ending the connection (`close`) or not.
fn error_forms(status_line: &str, code: &str, configs: &[Option<&str>], close: &[bool]) -> Vec<String> {
    let mut forms = Vec::new();
    for config in configs {
        let json = serde_json::json!({ "error": code, "message": "*", "auth_config": config }).to_string();
        let lines = format!("{status_line}\r\ncontent-type: application/json\r\nx-bearerd-error: {code}\r\n");
        for &close in close {
            if close {
                forms.push(format!(
                    "{lines}content-length: *\r\ndate: *\r\nconnection: close\r\n\r\n{json}"
                ));
                forms.push(format!(
                    "{lines}connection: close\r\ncontent-length: *\r\ndate: *\r\n\r\n{json}"
                ));
            } else {
                forms.push(format!("{lines}content-length: *\r\ndate: *\r\n\r\n{json}"));
            }
        }
    }
    forms
}

/// hyper's own answer to a request head it cannot parse.
const HYPER_400: &str = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: *\r\n\r\n";

// ---------------------------------------------------------------------------------------
// Checks, collected per run

#[derive(Default)]
struct Checks {
    failures: Vec<String>,
    /// Which of the allowed behaviours bearerd chose, for the log.
    notes: Vec<String>,
}

impl Checks {
    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn eq(&mut self, what: &str, seen: &str, expected: &str) {
        if seen != expected {
            self.failures
                .push(format!("{what}:\n      seen     {seen:?}\n      expected {expected:?}"));
        }
    }

    fn one_of(&mut self, what: &str, seen: &str, expected: &[String]) {
        if !expected.iter().any(|form| form == seen) {
            self.failures.push(format!(
                "{what}:\n      seen     {seen:?}\n      expected one of {expected:#?}"
            ));
        }
    }

    fn holds(&mut self, what: &str, holds: bool) {
        if !holds {
            self.failures.push(what.to_owned());
        }
    }
}

type Run = Pin<Box<dyn Future<Output = Checks> + Send>>;

/// Runs every `(name, run)` at once (a few at a time), and fails naming each run that
/// departed from what was expected, with what was seen.
async fn run_all(table: &str, runs: Vec<(String, Run)>) {
    let total = runs.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for (name, run) in runs {
        let limit = Arc::clone(&limit);
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let checks = tokio::time::timeout(WAIT * 4, run).await.unwrap_or_else(|_| Checks {
                failures: vec!["did not finish within 4 × WAIT".into()],
                notes: Vec::new(),
            });
            (name, checks)
        });
    }
    let mut failed = Vec::new();
    let mut notes = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((name, checks)) = &joined {
            notes.extend(checks.notes.iter().map(|note| format!("{name}: {note}")));
        }
        match joined {
            Ok((_, checks)) if checks.failures.is_empty() => {}
            Ok((name, checks)) => failed.push(format!("{name}\n    {}", checks.failures.join("\n    "))),
            Err(err) => failed.push(format!("a run panicked: {err}")),
        }
    }
    failed.sort();
    notes.sort();
    for note in notes {
        eprintln!("{table}: {note}");
    }
    eprintln!(
        "{table}: {} of {total} runs (case × path) as expected",
        total - failed.len()
    );
    assert!(
        failed.is_empty(),
        "{table}: {} of {total} runs departed from RFC 9112/9110:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// Around every run: the hand-off to hyper's server, and the follow-ups under `other`

/// The echo upstream's exact answer to `method uri` with these request `headers`, as the app
/// reads it through bearerd.
fn echoed(method: &str, uri: &str, headers: &[[&str; 2]]) -> String {
    let json = serde_json::json!({
        "scheme": "http",
        "version": "HTTP/1.1",
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_length": 0,
        "body_is_pattern": true,
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo: 1\r\ndate: *\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    )
}

/// Has bearerd's loop hand the connection to hyper's server: a chunked upload (to the echo,
/// under `other`), which hyper serves, keeping the connection open.
async fn hand_off(env: &Env, app: &mut App, checks: &mut Checks, id: &str) {
    let echo = env.echo.addr.to_string();
    app.send(
        format!(
            "POST http://{echo}/hand-off HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: other\r\n\
             X-Request-Id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let reply = app.read(1, false).await;
    checks.eq(
        "the hand-off request",
        &app.shown(&reply, false),
        &echoed(
            "POST",
            "/hand-off",
            &[
                ["x-request-id", id],
                ["authorization", "Bearer tok-other"],
                ["host", &echo],
                ["transfer-encoding", "chunked"],
            ],
        ),
    );
}

/// A request under `other` to the echo upstream, on `app`'s connection when it is still open
/// and on a new one, must get the echo's exact answer with `tok-other`.
async fn follow_ups(env: &Env, checks: &mut Checks, app: Option<&mut App>, id: &str) {
    let echo = env.echo.addr.to_string();
    let request = |id: &str| {
        format!(
            "GET http://{echo}/after HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: other\r\nX-Request-Id: {id}\r\n\r\n"
        )
    };
    let expected = |id: &str| {
        echoed(
            "GET",
            "/after",
            &[
                ["host", &echo],
                ["x-request-id", id],
                ["authorization", "Bearer tok-other"],
            ],
        )
    };
    if let Some(app) = app {
        let id = format!("{id}.after-same");
        app.send(request(&id).as_bytes()).await;
        let reply = app.read(1, false).await;
        checks.eq(
            "the follow-up under `other` on the same connection",
            &app.shown(&reply, false),
            &expected(&id),
        );
    }
    let id = format!("{id}.after-new");
    let mut fresh = App::connect(env).await;
    fresh.send(request(&id).as_bytes()).await;
    let reply = fresh.read(1, false).await;
    checks.eq(
        "the follow-up under `other` on a new connection",
        &fresh.shown(&reply, false),
        &expected(&id),
    );
}

// ---------------------------------------------------------------------------------------
// App → bearerd → upstream

/// What the recording upstream answers every request with, and how the app reads it.
const OK: &str = "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok";
const APP_OK: &str = "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok";

/// A request from the app to the upstream `{up}` under `billing`, with more header lines, and
/// a body.
macro_rules! to_up {
    ($method:literal, $lines:literal, $body:literal) => {
        concat!(
            $method,
            " http://{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n",
            $lines,
            "\r\n",
            $body
        )
    };
}

/// That request as bearerd's own client writes it to the upstream (a body in memory has
/// its `Content-Length` last).
macro_rules! own_client {
    ($method:literal, $lines:literal, $framing:literal, $body:literal) => {
        concat!(
            $method,
            " /r HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}\r\n",
            $lines,
            "authorization: Bearer tok-billing\r\n",
            $framing,
            "\r\n",
            $body
        )
    };
}

/// A chunked request as hyper's client writes it to the upstream (a streamed body).
macro_rules! hyper_client_chunked {
    ($lines:literal, $body:literal) => {
        concat!(
            "POST /r HTTP/1.1\r\nx-request-id: {id}\r\n",
            $lines,
            "authorization: Bearer tok-billing\r\nhost: {up}\r\ntransfer-encoding: chunked\r\n\r\n",
            $body
        )
    };
}

struct Req {
    name: &'static str,
    /// What the app writes (see [`Vars`]).
    send: &'static str,
    /// What the upstream answers each request with, in turn (`OK` if empty).
    answers: &'static [&'static str],
    want: Want,
}

const REQ: Req = Req {
    name: "",
    send: "",
    answers: &[],
    want: Want::Rejected { json: false },
};

enum Want {
    /// The upstream receives exactly `upstream` (over all its connections, in order), the
    /// app reads exactly `app`, and its connection then `closes`, or stays usable.
    Forwarded { upstream: Text, app: Text, closes: bool },
    /// 400 and the connection closed (RFC 9112 §6.3, §5, §2.2), whether or not the answer
    /// says `Connection: close`; nothing reaches the upstream. `json`: only bearerd's own error will do; else hyper's bare 400, for a head
    /// hyper cannot parse, will too.
    Rejected { json: bool },
    /// bearerd's error with this status line and code (or, if `bare`, hyper's bare 400 for
    /// a target it cannot parse); nothing reaches the upstream; the connection stays usable
    /// unless the answer says `Connection: close`.
    Refused {
        status: &'static str,
        code: &'static str,
        bare: bool,
    },
    /// A chunked body found malformed once the request is on its way: 400 `bad_request`
    /// (the app's fault, never a 502) and the connection closed, said or not; the upstream saw at most
    /// `head` and part of the body, never a whole request.
    BadBody { head: &'static str },
    /// The first if the app's first answer is a 400, else the second: where the RFCs allow
    /// either.
    Either(&'static Want, &'static Want),
}

/// Bytes that differ with who read the app's request: (bearerd's loop, hyper's server).
#[derive(Clone, Copy)]
enum Text {
    Same(&'static str),
    Split(&'static str, &'static str),
    /// As `Split`, but after a hand-off the field lines may come in another order across
    /// names (hyper's header map reorders them; RFC 9110 §5.3 lets a proxy do so), never
    /// within one name.
    Fields(&'static str, &'static str),
}

impl Text {
    fn get(self, server: Server) -> &'static str {
        match (self, server) {
            (Self::Same(text), _)
            | (Self::Split(text, _) | Self::Fields(text, _), Server::Loop)
            | (Self::Split(_, text) | Self::Fields(_, text), Server::Hyper) => text,
        }
    }

    /// `text` as compared: with its field lines in name order when their order may differ.
    fn compared(self, server: Server, text: &str) -> String {
        if !matches!((self, server), (Self::Fields(..), Server::Hyper)) {
            return text.to_owned();
        }
        let Some(end) = text.find("\r\n\r\n") else {
            return text.to_owned();
        };
        let mut lines: Vec<&str> = text[..end].split("\r\n").collect();
        // A stable sort: lines of one name keep their order.
        lines[1..].sort_by_key(|line| line.split(':').next().unwrap_or_default().to_ascii_lowercase());
        format!("{}{}", lines.join("\r\n"), &text[end..])
    }
}

const REJECTED: Want = Want::Rejected { json: false };
const REJECTED_JSON: Want = Want::Rejected { json: true };
const BAD_REQUEST: Want = Want::Refused {
    status: "HTTP/1.1 400 Bad Request",
    code: "bad_request",
    bare: false,
};
/// A request that is forwarded as it came, as bearerd's client writes a plain `GET`.
const FORWARDED_GET: Want = Want::Forwarded {
    upstream: Text::Same(own_client!("GET", "", "", "")),
    app: Text::Same(APP_OK),
    closes: false,
};

/// Runs each case on a new connection handled by bearerd's loop, and on one handed to
/// hyper's server first.
async fn request_table(table: &str, cases: &'static [Req]) {
    let env = env().await;
    let mut runs: Vec<(String, Run)> = Vec::new();
    for case in cases {
        for server in [Server::Loop, Server::Hyper] {
            let name = format!("{} [{}]", case.name, server.name());
            runs.push((name, Box::pin(request_run(Arc::clone(&env), case, server))));
        }
    }
    run_all(table, runs).await;
}

async fn request_run(env: Arc<Env>, case: &'static Req, server: Server) -> Checks {
    let mut checks = Checks::default();
    let answers = if case.answers.is_empty() {
        &[OK][..]
    } else {
        case.answers
    };
    let upstream = RawUpstream::start(answers.iter().map(Answer::new).collect()).await;
    let id = format!("{}.{}", case.name, server.name());
    let vars = Vars {
        up: upstream.addr.to_string(),
        id: id.clone(),
        echo: env.echo.addr.to_string(),
    };
    let mut app = App::connect(&env).await;
    if server == Server::Hyper {
        hand_off(&env, &mut app, &mut checks, &format!("{id}.hand-off")).await;
    }
    for (i, part) in vars.fill(case.send).split("{pause}").enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        app.send(part.as_bytes()).await;
    }
    let first = app.read(1, false).await;
    let want = match &case.want {
        Want::Either(rejecting, _) if status(&first) == Some(400) => {
            checks.note("refused (400)".into());
            *rejecting
        }
        Want::Either(_, forwarding) => {
            checks.note(format!("not refused ({:?})", status(&first)));
            *forwarding
        }
        want => want,
    };
    let open = judge(want, first, &mut app, &mut checks, (&vars, server, &upstream)).await;
    follow_ups(&env, &mut checks, open.then_some(&mut app), &id).await;
    checks
}

/// Checks what came of the case's request against `want`, given the app's first answer
/// (`first`); returns whether the app's connection is still open.
async fn judge(
    want: &Want,
    first: Vec<u8>,
    app: &mut App,
    checks: &mut Checks,
    (vars, server, upstream): (&Vars, Server, &RawUpstream),
) -> bool {
    let received = || upstream.arrived();
    let open = match want {
        Want::Forwarded {
            upstream: expected_upstream,
            app: expected,
            closes,
        } => {
            let expected = vars.fill(expected.get(server));
            let responses = count_responses(expected.as_bytes());
            let mut seen = first;
            if responses > 1 {
                seen.extend(app.read(responses - 1, false).await);
            }
            checks.eq("what the app read", &app.shown(&seen, false), &expected);
            let open = ends_as_expected(app, checks, *closes).await;
            checks.eq(
                "what the upstream received",
                &expected_upstream.compared(server, &String::from_utf8_lossy(&received())),
                &expected_upstream.compared(server, &vars.fill(expected_upstream.get(server))),
            );
            open
        }
        Want::Rejected { json } => {
            let mut forms = error_forms(
                "HTTP/1.1 400 Bad Request",
                "bad_request",
                &[None, Some("billing")],
                &[true, false],
            );
            if !json {
                forms.push(HYPER_400.to_owned());
            }
            checks.one_of("the app's answer", &app.shown(&first, false), &forms);
            ends_as_expected(app, checks, true).await
        }
        Want::Refused { status, code, bare } => {
            let mut forms = error_forms(status, code, &[None, Some("billing"), Some("other")], &[true, false]);
            if *bare {
                forms.push(HYPER_400.to_owned());
            }
            let shown = app.shown(&first, false);
            checks.one_of("the app's answer", &shown, &forms);
            ends_as_expected(app, checks, shown.contains("connection: close")).await
        }
        Want::BadBody { head } => {
            let forms = error_forms(
                "HTTP/1.1 400 Bad Request",
                "bad_request",
                &[None, Some("billing")],
                &[true, false],
            );
            checks.one_of("the app's answer", &app.shown(&first, false), &forms);
            let open = ends_as_expected(app, checks, true).await;
            let received = received();
            let head = vars.fill(head);
            checks.holds(
                &format!(
                    "the upstream received more than the beginning of one request: {:?}",
                    String::from_utf8_lossy(&received)
                ),
                received.is_empty() || (received.starts_with(head.as_bytes()) && request_length(&received).is_none()),
            );
            open
        }
        Want::Either(..) => unreachable!("an Either holds no Either"),
    };
    if !matches!(want, Want::Forwarded { .. } | Want::BadBody { .. }) {
        checks.eq("what the upstream received", &String::from_utf8_lossy(&received()), "");
    }
    open
}

fn count_responses(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    while let Some(length) = response_length(bytes, false) {
        bytes = &bytes[length..];
        count += 1;
    }
    count
}

/// Checks that the connection closes now if `closes` (with nothing more on it), and returns
/// whether it is still open for another request.
async fn ends_as_expected(app: &mut App, checks: &mut Checks, closes: bool) -> bool {
    if !closes {
        return !app.closed;
    }
    let ended = app.closes().await;
    checks.holds("the app's connection did not close", ended);
    let rest = std::mem::take(&mut app.buf);
    checks.eq(
        "what the app read after the answer",
        &String::from_utf8_lossy(&rest),
        "",
    );
    false
}

/// After a hand-off the response is written by hyper's server; a request that says
/// `Connection: close`, or one whose framing was in doubt, is answered so and closed.
const APP_OK_CLOSE: &str = "HTTP/1.1 200 OK\r\nx-up: 1\r\nconnection: close\r\ncontent-length: 2\r\ndate: *\r\n\r\nok";

/// `Content-Length` beside `Transfer-Encoding` (RFC 9112 §6.1): refused, or forwarded as
/// chunked alone, and either way the connection closes after the answer; a coding list not
/// ending in chunked (§6.3 rule 4) or a `Transfer-Encoding` in HTTP/1.0 (§6.1): 400 and close.
static FRAMING: &[Req] = &[
    Req {
        name: "cl_then_te",
        send: to_up!(
            "POST",
            "content-length: 6\r\ntransfer-encoding: chunked\r\n",
            "0\r\n\r\nG"
        ),
        want: Want::Either(
            &REJECTED_JSON,
            &Want::Forwarded {
                upstream: Text::Same(hyper_client_chunked!("", "0\r\n\r\n")),
                app: Text::Same(APP_OK_CLOSE),
                closes: true,
            },
        ),
        ..REQ
    },
    Req {
        name: "te_then_cl",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked\r\ncontent-length: 6\r\n",
            "0\r\n\r\nG"
        ),
        want: Want::Either(
            &REJECTED_JSON,
            &Want::Forwarded {
                upstream: Text::Same(hyper_client_chunked!("", "0\r\n\r\n")),
                app: Text::Same(APP_OK_CLOSE),
                closes: true,
            },
        ),
        ..REQ
    },
    Req {
        name: "cl_te_with_a_request_after_the_chunks",
        send: to_up!(
            "POST",
            "content-length: 100\r\ntransfer-encoding: chunked\r\n",
            "0\r\n\r\nGET http://{up}/smuggled HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\n\r\n"
        ),
        want: Want::Either(
            &REJECTED_JSON,
            &Want::Forwarded {
                upstream: Text::Same(hyper_client_chunked!("", "0\r\n\r\n")),
                app: Text::Same(APP_OK_CLOSE),
                closes: true,
            },
        ),
        ..REQ
    },
    Req {
        name: "te_chunked_then_identity",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked, identity\r\n",
            "5\r\nhello\r\n0\r\n\r\n"
        ),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_xchunked",
        send: to_up!("POST", "transfer-encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_identity_with_cl",
        send: to_up!("POST", "transfer-encoding: identity\r\ncontent-length: 5\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_gzip",
        send: to_up!("POST", "transfer-encoding: gzip\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_quoted",
        send: to_up!("POST", "transfer-encoding: \"chunked\"\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_chunked_vertical_tab",
        send: to_up!("POST", "transfer-encoding: chunked\x0b\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_obs_fold",
        send: to_up!("POST", "transfer-encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_space_before_colon_with_cl",
        send: to_up!(
            "POST",
            "transfer-encoding : chunked\r\ncontent-length: 5\r\n",
            "0\r\n\r\n"
        ),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_in_http_1_0",
        send: "POST http://{up}/r HTTP/1.0\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\
               transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_and_cl_in_http_1_0",
        send: "POST http://{up}/r HTTP/1.0\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\
               content-length: 15\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "te_leading_space",
        send: to_up!("POST", "transfer-encoding:  chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!("", "5\r\nhello\r\n0\r\n\r\n")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "te_leading_tab",
        send: to_up!("POST", "transfer-encoding:\tchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!("", "5\r\nhello\r\n0\r\n\r\n")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "te_upper_case",
        send: to_up!("POST", "Transfer-Encoding: CHUNKED\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!("", "5\r\nhello\r\n0\r\n\r\n")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "te_chunked_on_two_lines",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n"
        ),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(hyper_client_chunked!("", "5\r\nhello\r\n0\r\n\r\n")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        // RFC 9112 §6.1: a coding bearerd does not apply or undo may not be dropped on the
        // way (the upstream would read gzip as the content): refused, or passed on.
        name: "te_gzip_then_chunked",
        send: to_up!(
            "POST",
            "transfer-encoding: gzip, chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n"
        ),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(concat!(
                    "POST /r HTTP/1.1\r\nx-request-id: {id}\r\nauthorization: Bearer tok-billing\r\n",
                    "host: {up}\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                )),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "cl_twice_the_same",
        send: to_up!("POST", "content-length: 5\r\ncontent-length: 5\r\n", "hello"),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(own_client!("POST", "", "content-length: 5\r\n", "hello")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "cl_list_of_the_same",
        send: to_up!("POST", "content-length: 5, 5\r\n", "hello"),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(own_client!("POST", "", "content-length: 5\r\n", "hello")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "cl_conflicting_lines",
        send: to_up!("POST", "content-length: 5\r\ncontent-length: 6\r\n", "hello!"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_conflicting_list",
        send: to_up!("POST", "content-length: 5, 6\r\n", "hello!"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_signed",
        send: to_up!("POST", "content-length: +5\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_negative",
        send: to_up!("POST", "content-length: -5\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_hex",
        send: to_up!("POST", "content-length: 0x5\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_overflow",
        send: to_up!("POST", "content-length: 184467440737095516160\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_empty",
        send: to_up!("POST", "content-length: \r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "cl_space_before_colon",
        send: to_up!("POST", "content-length : 5\r\n", "hello"),
        want: REJECTED,
        ..REQ
    },
];

#[tokio::test]
async fn requests_with_conflicting_or_obfuscated_framing() {
    request_table("framing", FRAMING).await;
}

/// Heads a recipient must refuse (RFC 9112 §5.1 whitespace before a colon, §5.2 obs-fold,
/// §2.2 bare CR, NUL and other controls: or, where the RFC allows it, mend by a space before
/// forwarding); bare LF line ends may be taken as line ends (§2.2), and an empty line before
/// the request line skipped.
static HEADS: &[Req] = &[
    Req {
        name: "obs_fold",
        send: to_up!("GET", "x-folded: a\r\n b\r\n", ""),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(own_client!("GET", "x-folded: a b\r\n", "", "")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "obs_fold_tab",
        send: to_up!("GET", "x-folded: a\r\n\tb\r\n", ""),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(own_client!("GET", "x-folded: a b\r\n", "", "")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "whitespace_before_the_first_line",
        send: "GET http://{up}/r HTTP/1.1\r\n x-first: 1\r\nhost: {up}\r\nx-auth-config: billing\r\n\
               x-request-id: {id}\r\n\r\n",
        want: Want::Either(&REJECTED, &FORWARDED_GET),
        ..REQ
    },
    Req {
        name: "space_before_colon",
        send: to_up!("GET", "x-a : b\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "tab_before_colon",
        send: to_up!("GET", "x-a\t: b\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "space_before_colon_in_host",
        send: "GET http://{up}/r HTTP/1.1\r\nhost : {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "bare_cr_in_a_value",
        send: to_up!("GET", "x-a: b\rc\r\n", ""),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(own_client!("GET", "x-a: b c\r\n", "", "")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "bare_cr_ending_a_line",
        send: to_up!("GET", "x-a: b\rx-b: c\r\n", ""),
        want: Want::Either(
            &REJECTED,
            &Want::Forwarded {
                upstream: Text::Same(own_client!("GET", "x-a: b x-b: c\r\n", "", "")),
                app: Text::Same(APP_OK),
                closes: false,
            },
        ),
        ..REQ
    },
    Req {
        name: "bare_cr_ending_the_head",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "bare_cr_in_the_request_line",
        send: "GET http://{up}/r\r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "nul_in_a_value",
        send: to_up!("GET", "x-a: b\0c\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "nul_in_a_name",
        send: to_up!("GET", "x-\0a: b\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "nul_in_the_target",
        send: "GET http://{up}/r\0x HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "control_in_a_name",
        send: to_up!("GET", "x-\x01a: b\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "separator_in_a_name",
        send: to_up!("GET", "x(a): b\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "line_without_a_colon",
        send: to_up!("GET", "x-a b\r\n", ""),
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "space_in_the_target",
        send: "GET http://{up}/a b HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: REJECTED,
        ..REQ
    },
    Req {
        name: "bare_lf_line_ends",
        send: "GET http://{up}/r HTTP/1.1\nhost: {up}\nx-auth-config: billing\nx-request-id: {id}\n\n",
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "bare_lf_and_crlf_mixed",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: {up}\nx-auth-config: billing\r\nx-request-id: {id}\n\r\n",
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "empty_line_before_the_request_line",
        send: concat!("\r\n", to_up!("GET", "", "")),
        want: FORWARDED_GET,
        ..REQ
    },
];

#[tokio::test]
async fn malformed_request_heads() {
    request_table("heads", HEADS).await;
}

/// The beginning of a chunked request as hyper's client writes it upstream.
const CHUNKED_HEAD: &str = hyper_client_chunked!("", "");

/// Chunked bodies (RFC 9112 §7.1): a malformed one is the app's 400, never the upstream's
/// 502, and no whole request reaches the upstream; extensions and leading zeros are valid.
static CHUNKED: &[Req] = &[
    Req {
        name: "chunk_size_overflow",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked\r\n",
            "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
        ),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_size_not_hex",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_size_negative",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_size_with_a_space_inside",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "5 5\r\nhello\r\n0\r\n\r\n"),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_size_ending_in_bare_lf",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_data_without_crlf",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_data_longer_than_its_size",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"),
        want: Want::BadBody { head: CHUNKED_HEAD },
        ..REQ
    },
    Req {
        name: "chunk_extension",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked\r\n",
            "5;ext=\"a b\"\r\nhello\r\n0;last\r\n\r\n"
        ),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!("", "5\r\nhello\r\n0\r\n\r\n")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "chunk_sizes_with_leading_zeros",
        send: to_up!("POST", "transfer-encoding: chunked\r\n", "005\r\nhello\r\n000\r\n\r\n"),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!("", "5\r\nhello\r\n0\r\n\r\n")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
];

#[tokio::test]
async fn chunked_request_bodies() {
    request_table("chunked", CHUNKED).await;
}

/// Pipelined requests are answered in order, each with its own config's token; a request
/// written inside another's body is that body, byte for byte.
static PIPELINES: &[Req] = &[
    Req {
        name: "three_gets_in_one_write",
        send: "GET http://{up}/1 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}.1\r\n\r\n\
               GET http://{up}/2 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\nx-request-id: {id}.2\r\n\r\n\
               GET http://{up}/3 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}.3\r\n\r\n",
        answers: &[
            "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nx-up: 2\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nx-up: 3\r\ncontent-length: 2\r\n\r\nok",
        ],
        want: Want::Forwarded {
            upstream: Text::Same(
                "GET /1 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.1\r\nauthorization: Bearer tok-billing\r\n\r\n\
                 GET /2 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.2\r\nauthorization: Bearer tok-other\r\n\r\n\
                 GET /3 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.3\r\nauthorization: Bearer tok-billing\r\n\r\n",
            ),
            app: Text::Same(
                "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok\
                 HTTP/1.1 200 OK\r\nx-up: 2\r\ncontent-length: 2\r\ndate: *\r\n\r\nok\
                 HTTP/1.1 200 OK\r\nx-up: 3\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            ),
            closes: false,
        },
    },
    Req {
        name: "post_with_length_then_get",
        send: "POST http://{up}/1 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}.1\r\n\
               content-length: 5\r\n\r\nhello\
               GET http://{up}/2 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\nx-request-id: {id}.2\r\n\r\n",
        answers: &[
            "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nx-up: 2\r\ncontent-length: 2\r\n\r\nok",
        ],
        want: Want::Forwarded {
            upstream: Text::Same(
                "POST /1 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.1\r\nauthorization: Bearer tok-billing\r\n\
                 content-length: 5\r\n\r\nhello\
                 GET /2 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.2\r\nauthorization: Bearer tok-other\r\n\r\n",
            ),
            app: Text::Same(
                "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok\
                 HTTP/1.1 200 OK\r\nx-up: 2\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            ),
            closes: false,
        },
    },
    Req {
        name: "get_then_chunked_post_then_get",
        send: "GET http://{up}/1 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}.1\r\n\r\n\
               POST http://{up}/2 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\nx-request-id: {id}.2\r\n\
               transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
               GET http://{up}/3 HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}.3\r\n\r\n",
        answers: &[
            "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nx-up: 2\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nx-up: 3\r\ncontent-length: 2\r\n\r\nok",
        ],
        want: Want::Forwarded {
            upstream: Text::Same(
                "GET /1 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.1\r\nauthorization: Bearer tok-billing\r\n\r\n\
                 POST /2 HTTP/1.1\r\nx-request-id: {id}.2\r\nauthorization: Bearer tok-other\r\nhost: {up}\r\n\
                 transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
                 GET /3 HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}.3\r\nauthorization: Bearer tok-billing\r\n\r\n",
            ),
            app: Text::Same(
                "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok\
                 HTTP/1.1 200 OK\r\nx-up: 2\r\ncontent-length: 2\r\ndate: *\r\n\r\nok\
                 HTTP/1.1 200 OK\r\nx-up: 3\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            ),
            closes: false,
        },
    },
    Req {
        name: "request_hidden_in_a_length_body",
        send: to_up!(
            "POST",
            "content-length: {len}\r\n",
            "GET http://{up}/smuggled HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\n\r\n"
        ),
        want: Want::Forwarded {
            upstream: Text::Same(own_client!(
                "POST",
                "",
                "content-length: {len}\r\n",
                "GET http://{up}/smuggled HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\n\r\n"
            )),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "request_hidden_in_a_chunked_body",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked\r\n",
            "2b\r\nGET /smuggled HTTP/1.1\r\nhost: evil.test\r\n\r\n\r\n0\r\n\r\n"
        ),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!(
                "",
                "2B\r\nGET /smuggled HTTP/1.1\r\nhost: evil.test\r\n\r\n\r\n0\r\n\r\n"
            )),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "head_in_two_writes",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: bil{pause}ling\r\nx-request-id: {id}\r\n\r\n",
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "length_body_in_two_writes",
        send: to_up!("POST", "content-length: 5\r\n", "he{pause}llo"),
        want: Want::Forwarded {
            upstream: Text::Same(own_client!("POST", "", "content-length: 5\r\n", "hello")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "chunked_body_in_three_writes",
        send: to_up!(
            "POST",
            "transfer-encoding: chunked\r\n",
            "3\r\nhel\r\n{pause}2\r\nlo\r\n{pause}0\r\n\r\n"
        ),
        want: Want::Forwarded {
            upstream: Text::Same(hyper_client_chunked!("", "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "get_with_a_body",
        send: to_up!("GET", "content-length: 5\r\n", "hello"),
        want: Want::Forwarded {
            upstream: Text::Same(own_client!("GET", "", "content-length: 5\r\n", "hello")),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
];

#[tokio::test]
async fn pipelined_requests_and_requests_hidden_in_bodies() {
    request_table("pipelines", PIPELINES).await;
}

const HOST_NOT_ALLOWED: Want = Want::Refused {
    status: "HTTP/1.1 403 Forbidden",
    code: "host_not_allowed",
    bare: false,
};

/// `Host` (RFC 9112 §3.2: exactly one in HTTP/1.1, a valid host and port; a proxy takes the
/// target's authority over it, §3.2.2) and the target (no user info, RFC 9110 §4.2.4): a
/// token only ever goes to the host the guard checked.
static HOSTS: &[Req] = &[
    Req {
        name: "no_host",
        send: "GET http://{up}/r HTTP/1.1\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "two_hosts_the_same",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: {up}\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "two_hosts_different",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: {up}\r\nhost: evil.test\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "host_with_a_space",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: a b\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "host_with_user_info",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: a@b\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "host_with_two_colons",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: a:b:c\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "host_with_an_open_bracket",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: [::1\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "host_with_a_bad_port",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: 127.0.0.1:80x\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "host_empty",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: \r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "host_other_than_the_target",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: evil.test\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "host_port_other_than_the_target",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: 127.0.0.1:1\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "target_not_allowed_host_allowed",
        send: "GET http://evil.test/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: HOST_NOT_ALLOWED,
        ..REQ
    },
    Req {
        name: "target_allowed_to_another_config_only",
        send: "GET http://localhost:1/r HTTP/1.1\r\nhost: localhost:1\r\nx-auth-config: other\r\nx-request-id: {id}\r\n\r\n",
        want: HOST_NOT_ALLOWED,
        ..REQ
    },
    Req {
        name: "user_info_naming_an_allowed_host",
        send: "GET http://127.0.0.1@evil.test/r HTTP/1.1\r\nhost: evil.test\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "user_info_before_an_allowed_host",
        send: "GET http://user:pw@{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "user_info_empty",
        send: "GET http://@{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "user_info_percent_encoded_at",
        send: "GET http://127.0.0.1%40evil.test/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: Want::Either(
            &Want::Refused {
                status: "HTTP/1.1 400 Bad Request",
                code: "bad_request",
                bare: true,
            },
            &HOST_NOT_ALLOWED,
        ),
        ..REQ
    },
    Req {
        name: "origin_form_matching_no_route",
        send: "GET /r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "asterisk_form",
        send: "OPTIONS * HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "authority_form_outside_connect",
        send: "GET {up} HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
    Req {
        name: "scheme_not_http",
        send: "GET ftp://{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: BAD_REQUEST,
        ..REQ
    },
];

#[tokio::test]
async fn host_target_and_user_info_confusion() {
    request_table("hosts", HOSTS).await;
}

/// The app's header lines reach the upstream as it wrote them (names in hyper's lowercase
/// after a hand-off), less hop-by-hop ones, those `Connection` names, `X-Auth-Config` and
/// `Proxy-Authorization`; any `Authorization` is replaced by the token; HTTP/1.0 requests
/// go on as HTTP/1.1 with the target's host.
static LINES: &[Req] = &[
    Req {
        name: "lines_as_written",
        send: to_up!(
            "GET",
            "User-Agent: raw/1\r\nAuthorization: Basic YXBwOnNlY3JldA==\r\nConnection: X-Private, keep-alive\r\n\
             X-Private: 1\r\nProxy-Authorization: Basic cHJveHk=\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Multi:a\r\nx-multi: b\r\nX-Empty:\r\n\
             X-Padded:   p   \r\n",
            ""
        ),
        want: Want::Forwarded {
            upstream: Text::Fields(
                own_client!(
                    "GET",
                    "User-Agent: raw/1\r\nX-Multi: a\r\nx-multi: b\r\nX-Empty: \r\nX-Padded: p\r\n",
                    "",
                    ""
                ),
                own_client!(
                    "GET",
                    "user-agent: raw/1\r\nx-multi: a\r\nx-multi: b\r\nx-empty: \r\nx-padded: p\r\n",
                    "",
                    ""
                ),
            ),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "authorization_twice",
        send: to_up!("GET", "authorization: Basic YQ==\r\nauthorization: Basic Yg==\r\n", ""),
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "proxy_authorization",
        send: to_up!("GET", "proxy-authorization: Basic cHJveHk=\r\n", ""),
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "connection_names_an_end_to_end_header",
        send: to_up!("GET", "connection: authorization, x-private\r\nx-private: 1\r\n", ""),
        want: FORWARDED_GET,
        ..REQ
    },
    Req {
        name: "auth_config_named_twice",
        send: to_up!("GET", "x-auth-config: other\r\n", ""),
        want: Want::Either(&BAD_REQUEST, &FORWARDED_GET),
        ..REQ
    },
    Req {
        name: "the_other_config",
        send: "GET http://{up}/r HTTP/1.1\r\nhost: {up}\r\nx-auth-config: other\r\nx-request-id: {id}\r\n\r\n",
        want: Want::Forwarded {
            upstream: Text::Same(
                "GET /r HTTP/1.1\r\nhost: {up}\r\nx-request-id: {id}\r\nauthorization: Bearer tok-other\r\n\r\n",
            ),
            app: Text::Same(APP_OK),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "connection_close",
        send: to_up!("GET", "connection: close\r\n", ""),
        want: Want::Forwarded {
            upstream: Text::Same(own_client!("GET", "", "", "")),
            app: Text::Split(
                "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\nconnection: close\r\n\r\nok",
                APP_OK_CLOSE,
            ),
            closes: true,
        },
        ..REQ
    },
    Req {
        name: "http_1_0_keep_alive",
        send: "GET http://{up}/r HTTP/1.0\r\nconnection: keep-alive\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: Want::Forwarded {
            upstream: Text::Same(own_client!("GET", "", "", "")),
            app: Text::Same(
                "HTTP/1.0 200 OK\r\nx-up: 1\r\nconnection: keep-alive\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            ),
            closes: false,
        },
        ..REQ
    },
    Req {
        name: "http_1_0",
        send: "GET http://{up}/r HTTP/1.0\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n\r\n",
        want: Want::Forwarded {
            upstream: Text::Same(own_client!("GET", "", "", "")),
            app: Text::Same("HTTP/1.0 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok"),
            closes: true,
        },
        ..REQ
    },
];

#[tokio::test]
async fn header_lines_go_upstream_as_written_less_what_stops_at_the_proxy() {
    request_table("lines", LINES).await;
}

// ---------------------------------------------------------------------------------------
// Upstream → bearerd → app

/// What the upstream answers the request after each case's (`/next`) with, and how the app
/// reads it.
const NEXT: &str = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext";
const APP_NEXT: &str = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\ndate: *\r\n\r\nnext";

struct Resp {
    name: &'static str,
    /// `GET` or `HEAD`.
    method: &'static str,
    /// The app says `TE: trailers`.
    trailers: bool,
    /// The upstream's answer to the case's request.
    answer: &'static str,
    /// What the upstream sends on the same connection 50 ms after its answer, unasked.
    later: Option<&'static str>,
    /// The upstream closes the connection after its answer.
    close: bool,
    want: Got,
}

const RESP: Resp = Resp {
    name: "",
    method: "GET",
    trailers: false,
    answer: "",
    later: None,
    close: false,
    want: Got::Unreachable,
};

enum Got {
    /// The app reads exactly `app`, and its connection stays usable. `fresh`: the upstream's
    /// connection must carry no other request (bytes past the response, or a response to
    /// nothing, make it unusable).
    Relayed { app: &'static str, fresh: bool },
    /// 502 `upstream_unreachable`; the app's connection stays usable; the upstream's
    /// connection is not used again.
    Unreachable,
    /// 502 `upstream_unreachable` for a response whose framing was whole but whose content
    /// bearerd will not pass on; the app's connection stays usable, and the upstream's may be
    /// used again.
    Refused,
    /// As `Relayed`, in one of these forms (where the RFCs allow each).
    RelayedAs { apps: &'static [&'static str], fresh: bool },
    /// The app reads exactly `app`, or nothing at all, and then its connection closes (a
    /// response found broken once under way can only be cut short, never completed); the
    /// upstream's connection is not used again.
    CutShort { app: &'static str },
    /// The first if the app's answer is a 502, else the second: where the RFCs allow either.
    Either(&'static Got, &'static Got),
}

/// The request bearerd sends the upstream for `method path`, as each client writes it.
fn upstream_request(method: &str, path: &str, host: &str, id: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nx-request-id: {id}\r\nauthorization: Bearer tok-billing\r\n\r\n"
    )
}

/// Runs each case through bearerd's own client in clear and over TLS, each on a new
/// connection handled by bearerd's loop and on one handed to hyper's server.
async fn response_table(table: &str, cases: &'static [Resp]) {
    let env = env().await;
    let mut runs: Vec<(String, Run)> = Vec::new();
    for case in cases {
        for client in [Client::Plain, Client::Tls] {
            for server in [Server::Loop, Server::Hyper] {
                let name = format!("{} [{} + {}]", case.name, server.name(), client.name());
                runs.push((name, Box::pin(response_run(Arc::clone(&env), case, server, client))));
            }
        }
    }
    run_all(table, runs).await;
}

async fn response_run(env: Arc<Env>, case: &'static Resp, server: Server, client: Client) -> Checks {
    let mut checks = Checks::default();
    let mut answer = Answer::new(case.answer);
    if let Some(later) = case.later {
        answer = answer.then_after(Duration::from_millis(50), later);
    }
    if case.close {
        answer = answer.closing();
    }
    let script = vec![answer, Answer::new(NEXT)];
    let (upstream, host) = match client {
        Client::Plain => {
            let upstream = RawUpstream::start(script).await;
            let host = format!("127.0.0.1:{}", upstream.addr.port());
            (upstream, host)
        }
        Client::Tls => {
            let upstream = RawUpstream::start_tls(&env.ca, script).await;
            let host = format!("localhost:{}", upstream.addr.port());
            (upstream, host)
        }
    };
    let id = format!("{}.{}.{}", case.name, server.name(), client.name());
    let te = if case.trailers { "te: trailers\r\n" } else { "" };
    let request = |method: &str, path: &str, id: &str| {
        format!(
            "{method} http://{host}{path} HTTP/1.1\r\nhost: {host}\r\nx-auth-config: billing\r\nx-request-id: {id}\r\n{te}\r\n"
        )
    };
    let mut app = App::connect(&env).await;
    if server == Server::Hyper {
        hand_off(&env, &mut app, &mut checks, &format!("{id}.hand-off")).await;
    }
    app.send(request(case.method, "/case", &id).as_bytes()).await;
    let head = case.method == "HEAD";
    let first = app.read(1, head).await;
    let want = match &case.want {
        Got::Either(unreachable, _) if status(&first) == Some(502) => {
            checks.note("refused (502)".into());
            *unreachable
        }
        Got::Either(_, relayed) => {
            checks.note(format!("not refused ({:?})", status(&first)));
            *relayed
        }
        want => want,
    };
    let fresh = judge_response(want, first, &mut app, &mut checks, head).await;
    if case.later.is_some() {
        unasked_bytes_sent(&upstream, &mut checks).await;
    }

    // The same upstream again: never the rest of the last response, nor one nobody asked for.
    let next_id = format!("{id}.next");
    let same = !app.closed;
    let mut other = None;
    let next_app = if same {
        &mut app
    } else {
        other.insert(App::connect(&env).await)
    };
    next_app.send(request("GET", "/next", &next_id).as_bytes()).await;
    let reply = next_app.read(1, false).await;
    checks.eq(
        if same {
            "the next response from that upstream, on the same connection"
        } else {
            "the next response from that upstream, on a new connection"
        },
        &next_app.shown(&reply, false),
        APP_NEXT,
    );
    let expected = [
        upstream_request(case.method, "/case", &host, &id),
        upstream_request("GET", "/next", &host, &next_id),
    ];
    upstream_received(&upstream, &mut checks, fresh, &expected);
    let open = same && !app.closed;
    follow_ups(&env, &mut checks, open.then_some(&mut app), &id).await;
    checks
}

/// Checks the app's answer to the case's request against `want`, given its first bytes
/// (`first`); returns whether the upstream's connection must carry no other request.
async fn judge_response(want: &Got, first: Vec<u8>, app: &mut App, checks: &mut Checks, head: bool) -> bool {
    match want {
        Got::Relayed { app: expected, fresh } => {
            checks.eq("what the app read", &app.shown(&first, head), expected);
            *fresh
        }
        Got::RelayedAs { apps, fresh } => {
            let forms: Vec<String> = apps.iter().map(|&form| form.to_owned()).collect();
            checks.one_of("what the app read", &app.shown(&first, head), &forms);
            *fresh
        }
        Got::Unreachable | Got::Refused => {
            let forms = error_forms(
                "HTTP/1.1 502 Bad Gateway",
                "upstream_unreachable",
                &[Some("billing")],
                &[false],
            );
            checks.one_of("the app's answer", &app.shown(&first, head), &forms);
            matches!(want, Got::Unreachable)
        }
        Got::CutShort { app: expected } => {
            let mut seen = first;
            app.closes().await;
            seen.append(&mut app.buf);
            checks.one_of(
                "what the app read",
                &app.shown(&seen, head),
                &[format!("{expected} [closed]"), " [closed]".to_owned()],
            );
            true
        }
        Got::Either(..) => unreachable!("an Either holds no Either"),
    }
}

/// Waits for the upstream's unasked bytes to go out, then gives them time to arrive.
async fn unasked_bytes_sent(upstream: &RawUpstream, checks: &mut Checks) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while upstream.sent_later() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    checks.holds("the upstream's unasked bytes were not sent", upstream.sent_later() == 1);
    // Time for them to arrive, and for bearerd to notice them.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The upstream received exactly `expected`, the requests in order; each on a connection of
/// its own if `fresh`.
fn upstream_received(upstream: &RawUpstream, checks: &mut Checks, fresh: bool, expected: &[String]) {
    if fresh {
        let received: Vec<String> = upstream
            .received()
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect();
        checks.eq(
            "what the upstream received, by connection",
            &format!("{received:?}"),
            &format!("{expected:?}"),
        );
    } else {
        checks.eq(
            "what the upstream received",
            &String::from_utf8_lossy(&upstream.arrived()),
            &expected.concat(),
        );
    }
}

/// `Content-Length` and `Transfer-Encoding` from the upstream (RFC 9112 §6.3, RFC 9110
/// §8.6): one valid length passes on as bearerd's own `Content-Length`, anything that makes
/// the length uncertain is a 502; `Connection` names are dropped, and the app's `Date` is
/// exactly one.
static RESPONSE_FRAMING: &[Resp] = &[
    Resp {
        name: "connection_names_content_length",
        answer: "HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\r\nhello",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: *\r\n\r\nhello",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "connection_names_date",
        answer: "HTTP/1.1 200 OK\r\nconnection: date\r\ndate: Mon, 01 Jan 2001 00:00:00 GMT\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "upstream_date_kept",
        answer: "HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2001 00:00:00 GMT\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2001 00:00:00 GMT\r\ncontent-length: 2\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "hop_by_hop_lines_dropped",
        answer: "HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: 1\r\nkeep-alive: timeout=5\r\n\
                 proxy-connection: keep-alive\r\nupgrade: h2c\r\nx-kept: 1\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\nx-kept: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "length_twice_the_same",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: *\r\n\r\nhello",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "length_list_of_the_same",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: *\r\n\r\nhello",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "lengths_conflicting",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "length_list_conflicting",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "length_not_a_number",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\nhello",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "length_negative",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "length_signed",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "length_overflow",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 184467440737095516160\r\n\r\nhello",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "chunked_beside_a_length",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "length_beside_chunked",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        // RFC 9112 §6.1: the gzip coding is the message's; dropping it would hand the app
        // compressed bytes as the content. Refused, or passed on.
        name: "gzip_then_chunked",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // bearerd decodes chunked only; the chunks were whole, so hyper's client may keep
        // the connection.
        want: Got::Refused,
        ..RESP
    },
    Resp {
        name: "no_length_until_close",
        answer: "HTTP/1.1 200 OK\r\nx-up: 1\r\n\r\nhello",
        close: true,
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\nx-up: 1\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "http_1_0_response_not_kept_alive",
        answer: "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "bare_lf_line_ends",
        answer: "HTTP/1.1 200 OK\nx-up: 1\ncontent-length: 2\n\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "body_shorter_than_its_length",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
        close: true,
        want: Got::CutShort {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ndate: *\r\n\r\nhello",
        },
        ..RESP
    },
    Resp {
        name: "chunk_size_overflow",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        want: Got::Either(
            &Got::Unreachable,
            &Got::CutShort {
                app: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n",
            },
        ),
        ..RESP
    },
    Resp {
        name: "chunk_size_not_hex",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        want: Got::Either(
            &Got::Unreachable,
            &Got::CutShort {
                app: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n",
            },
        ),
        ..RESP
    },
    Resp {
        name: "chunk_data_without_crlf",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        want: Got::Either(
            &Got::Unreachable,
            &Got::CutShort {
                app: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n5\r\nhello\r\n",
            },
        ),
        ..RESP
    },
];

#[tokio::test]
async fn responses_with_conflicting_or_invalid_framing() {
    response_table("response framing", RESPONSE_FRAMING).await;
}

/// No body after `HEAD`, 1xx, 204 and 304 whatever the upstream sends (RFC 9112 §6.3): its
/// stray bytes never reach the app, and its connection is not used again; a `HEAD` or 304
/// passes its declared length on (RFC 9110 §8.6), a 204 never has one; interim responses are
/// read past; a 101 nobody asked for is a 502.
static BODILESS: &[Resp] = &[
    Resp {
        name: "head_with_a_length",
        method: "HEAD",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ndate: *\r\n\r\n",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "head_with_a_body",
        method: "HEAD",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: *\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "head_with_a_chunked_body",
        method: "HEAD",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ndate: *\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "no_content_with_a_length_and_body",
        answer: "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
        want: Got::Relayed {
            app: "HTTP/1.1 204 No Content\r\ndate: *\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "no_content_with_a_chunked_body",
        answer: "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        want: Got::Relayed {
            app: "HTTP/1.1 204 No Content\r\ndate: *\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "no_content_then_a_response",
        answer: "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
        want: Got::Relayed {
            app: "HTTP/1.1 204 No Content\r\ndate: *\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "not_modified_with_a_length_and_body",
        answer: "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 5\r\n\r\nhello",
        // RFC 9110 §8.6: a 304 may carry the length a 200 would have had, or none.
        want: Got::RelayedAs {
            apps: &[
                "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 5\r\ndate: *\r\n\r\n",
                "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ndate: *\r\n\r\n",
            ],
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "not_modified_with_a_chunked_body",
        answer: "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        want: Got::Relayed {
            app: "HTTP/1.1 304 Not Modified\r\ndate: *\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "continue_then_final",
        answer: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "early_hints_then_final",
        answer: "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "three_interim_then_final",
        answer: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
                 HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "interim_with_a_length",
        answer: "HTTP/1.1 100 Continue\r\ncontent-length: 5\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "switching_protocols_unasked",
        answer: "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: evil\r\n\r\nGARBAGE",
        want: Got::Unreachable,
        ..RESP
    },
];

#[tokio::test]
async fn bodiless_and_interim_responses() {
    response_table("bodiless", BODILESS).await;
}

/// Bytes past a complete response, or sent on an idle pooled connection, are never read as
/// a later response: the connection is dropped. A connection the upstream closes (or says
/// it will) is not used again, and its `Connection: close` stays on its side.
static STRAY: &[Resp] = &[
    Resp {
        name: "a_response_after_a_length_body",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: *\r\n\r\nhello",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "a_response_after_a_chunked_body",
        answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "garbage_after_a_length_body",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello, and more",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: *\r\n\r\nhello",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "unasked_response_on_an_idle_connection",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        later: Some("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"),
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "unasked_interim_response_on_an_idle_connection",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        later: Some("HTTP/1.1 100 Continue\r\n\r\n"),
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "unasked_garbage_on_an_idle_connection",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        later: Some("garbage\r\n"),
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "connection_close_said_and_done",
        answer: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        close: true,
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "connection_close_said_not_done",
        answer: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
    Resp {
        name: "closed_without_a_word",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        close: true,
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
            fresh: true,
        },
        ..RESP
    },
];

#[tokio::test]
async fn stray_bytes_and_unasked_responses_never_reach_the_app() {
    response_table("stray", STRAY).await;
}

/// A chunked response with trailers that may be trailers (`x-sum`) and fields that may not
/// (RFC 9110 §6.5.1: framing, routing, authentication, controls, content metadata).
const TRAILED: &str = "HTTP/1.1 200 OK\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\
                       x-sum: 7\r\ncontent-length: 9\r\ntransfer-encoding: gzip\r\nhost: evil.test\r\n\
                       authorization: Bearer stolen\r\nset-cookie: a=b\r\ncontent-type: text/evil\r\n\r\n";

/// Trailers (passed on only to an app that said `TE: trailers`, and only those that may be
/// trailers; `Trailer`, which announces them, is end to end, RFC 9110 §6.6.2), and response heads a proxy must refuse or mend (RFC 9112 §5.1, §5.2, §2.2).
static TRAILERS_AND_HEADS: &[Resp] = &[
    Resp {
        name: "trailers_to_an_app_that_takes_them",
        trailers: true,
        answer: TRAILED,
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n2\r\nok\r\n0\r\nx-sum: 7\r\n\r\n",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "trailers_to_an_app_that_does_not",
        answer: TRAILED,
        want: Got::Relayed {
            app: "HTTP/1.1 200 OK\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            fresh: false,
        },
        ..RESP
    },
    Resp {
        name: "obs_fold",
        answer: "HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Either(
            &Got::Unreachable,
            &Got::Relayed {
                app: "HTTP/1.1 200 OK\r\nx-folded: a b\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
                fresh: false,
            },
        ),
        ..RESP
    },
    Resp {
        name: "space_before_colon",
        answer: "HTTP/1.1 200 OK\r\nx-a : b\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Either(
            &Got::Unreachable,
            &Got::Relayed {
                app: "HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
                fresh: false,
            },
        ),
        ..RESP
    },
    Resp {
        name: "space_before_colon_in_content_length",
        answer: "HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
        want: Got::Either(
            &Got::Unreachable,
            &Got::Relayed {
                app: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
                fresh: false,
            },
        ),
        ..RESP
    },
    Resp {
        name: "bare_cr_in_a_value",
        answer: "HTTP/1.1 200 OK\r\nx-a: b\rc\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Either(
            &Got::Unreachable,
            &Got::Relayed {
                app: "HTTP/1.1 200 OK\r\nx-a: b c\r\ncontent-length: 2\r\ndate: *\r\n\r\nok",
                fresh: false,
            },
        ),
        ..RESP
    },
    Resp {
        name: "nul_in_a_value",
        answer: "HTTP/1.1 200 OK\r\nx-a: b\0c\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Unreachable,
        ..RESP
    },
    Resp {
        name: "status_not_a_number",
        answer: "HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok",
        want: Got::Unreachable,
        ..RESP
    },
];

#[tokio::test]
async fn trailers_and_malformed_response_heads() {
    response_table("trailers and heads", TRAILERS_AND_HEADS).await;
}
