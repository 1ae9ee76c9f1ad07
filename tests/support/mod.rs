//! Real servers on loopback for bearerd's black-box tests: a token endpoint that records
//! every request, an echo upstream (plain and TLS) that reports what it received, and helpers
//! to start bearerd on free ports.
#![allow(dead_code)] // each test binary uses a different part

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use bearerd::config::{Config, Env};

/// Every test's servers run only for the test; this bounds any wait on them.
pub const WAIT: Duration = Duration::from_secs(10);

/// Bounds the start of a child process (Node's oidc-provider generating RSA keys, bearerd's
/// binary): on a 2-core CI machine busy with the other tests a start has taken over 10 s.
pub const START: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Token endpoint

/// One request the token endpoint received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// The body as text (invalid UTF-8 replaced), for reading.
    pub body: String,
    /// The body exactly as it arrived, for byte-exact checks.
    pub bytes: Bytes,
    /// The DER of the TLS client certificate the caller presented, if any.
    pub client_certificate: Option<Vec<u8>>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the token endpoint answers: status, content type, body.
pub type Reply = (u16, &'static str, String);

type Responder = dyn Fn(usize, &Recorded) -> Reply + Send + Sync;

/// What the token endpoint waits for before it answers request `n`.
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A token endpoint on loopback that records every request and answers with `responder`
/// (given the 1-based request number), after `delay`. Dropping it closes its listener and
/// every connection.
pub struct TokenServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl TokenServer {
    /// Answers `{"access_token":"tok-<n>","token_type":"Bearer","expires_in":3600}`.
    pub async fn start() -> Self {
        Self::with(Duration::ZERO, |n, _| ok_token(&format!("tok-{n}"), 3600)).await
    }

    pub async fn with(delay: Duration, responder: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::with_delays(move |_| delay, responder).await
    }

    /// Answers request `n` after `delay(n)`.
    pub async fn with_delays(
        delay: impl Fn(usize) -> Duration + Send + Sync + 'static,
        responder: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::with_waits(move |n| Box::pin(tokio::time::sleep(delay(n))), responder).await
    }

    /// Answers request `n` once `wait(n)` is done.
    pub async fn with_waits(
        wait: impl Fn(usize) -> Wait + Send + Sync + 'static,
        responder: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(None, wait, responder).await
    }

    /// Over TLS with `tls`, which may require client certificates (`TestCa::mtls_server_config`).
    pub async fn with_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::serve(
            Some(tls),
            |_| Box::pin(std::future::ready(())),
            |n, _| ok_token(&format!("tok-{n}"), 3600),
        )
        .await
    }

    async fn serve(
        tls: Option<Arc<rustls::ServerConfig>>,
        wait: impl Fn(usize) -> Wait + Send + Sync + 'static,
        responder: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let wait: Arc<dyn Fn(usize) -> Wait + Send + Sync> = Arc::new(wait);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Responder> = Arc::new(responder);
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            // Connections live in this set, so dropping the server closes them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (recorded, responder) = (Arc::clone(&recorded), Arc::clone(&responder));
                let wait = Arc::clone(&wait);
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let record = move |client_certificate: Option<Vec<u8>>| {
                        service_fn(move |request: Request<Incoming>| {
                            let (recorded, responder) = (Arc::clone(&recorded), Arc::clone(&responder));
                            let wait = Arc::clone(&wait);
                            let client_certificate = client_certificate.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(http_body_util::Collected::to_bytes)
                                    .unwrap_or_default();
                                let request = Recorded {
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                    bytes: body,
                                    client_certificate,
                                };
                                let n = {
                                    let mut all = recorded.lock().unwrap();
                                    all.push(request.clone());
                                    all.len()
                                };
                                wait(n).await;
                                let (status, content_type, body) = responder(n, &request);
                                let mut response = Response::new(Full::new(Bytes::from(body)));
                                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                                response
                                    .headers_mut()
                                    .insert("content-type", content_type.parse().unwrap());
                                if status == 302 {
                                    response.headers_mut().insert("location", "/elsewhere".parse().unwrap());
                                }
                                Ok::<_, Infallible>(response)
                            }
                        })
                    };
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), record(None)).await;
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let presented = tls.get_ref().1.peer_certificates().map(|chain| chain[0].to_vec());
                            let _ = http.serve_connection(TokioIo::new(tls), record(presented)).await;
                        }
                    }
                });
            }
        });
        Self { addr, requests, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// The URL of a TLS token server (`with_tls`), by a name its certificate carries.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}/oauth2/token", self.addr.port())
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn ok_token(token: &str, expires_in: u64) -> Reply {
    (
        200,
        "application/json",
        format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#),
    )
}

// ---------------------------------------------------------------------------------------
// Echo upstream

/// An upstream on loopback (plain or TLS) that answers every request with JSON describing
/// what it received: method, URI, headers (in order), body length, and whether the body is
/// the test pattern. `GET /bytes/N` streams N pattern bytes instead; `/status/N` answers N;
/// `/only/<token>` answers 401 unless the request carries `Authorization: Bearer <token>`;
/// `/slow/<ms>` answers after that many milliseconds. Speaks HTTP/1.1 and HTTP/2 (over TLS
/// by ALPN, in cleartext with prior knowledge) and reports the version it received.
pub struct Echo {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca.server_config())).await
    }

    /// Over TLS, offering only `http/1.1` by ALPN (as nginx does without `http2 on`).
    pub async fn start_tls_http1(ca: &TestCa) -> Self {
        let mut config = (*ca.server_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_with(Some(Arc::new(config))).await
    }

    /// On another loopback address (`127.0.0.2`, say), to tell two upstreams apart by host.
    pub async fn start_on(ip: &str) -> Self {
        Self::serve(ip, None).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::serve("127.0.0.1", tls).await
    }

    async fn serve(ip: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conn_count, req_count) = (Arc::clone(&connections), Arc::clone(&requests));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conn_count.fetch_add(1, Ordering::SeqCst);
                let req_count = Arc::clone(&req_count);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let scheme = if acceptor.is_some() { "https" } else { "http" };
                    let service = service_fn(move |request| {
                        req_count.fetch_add(1, Ordering::SeqCst);
                        echo(request, scheme)
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(request: Request<Incoming>, scheme: &'static str) -> Result<Response<EchoBody>, Infallible> {
    let path = request.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|n| n.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()) {
        return Ok(Response::new(pattern_body(n)));
    }
    let mut status = path
        .strip_prefix("/status/")
        .and_then(|n| n.parse::<u16>().ok())
        .unwrap_or(200);
    // `/only/<token>`: 401 unless the request carries exactly `Bearer <token>`.
    if let Some(wanted) = path.strip_prefix("/only/") {
        let sent = request.headers().get("authorization").and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {wanted}").as_str()) {
            status = 401;
        }
    }
    let (parts, mut body) = request.into_parts();
    // Check the body as it streams, never holding it whole.
    let (mut length, mut pattern_ok) = (0_usize, true);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            pattern_ok &= data.iter().enumerate().all(|(i, b)| *b == pattern_byte(length + i));
            length += data.len();
        }
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let json = serde_json::json!({
        "scheme": scheme,
        "version": format!("{:?}", parts.version),
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_length": length,
        "body_is_pattern": pattern_ok,
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response.headers_mut().insert("x-echo", "1".parse().unwrap());
    Ok(response)
}

/// Byte `i` of the test pattern (a prime period, so offsets are checked too).
pub fn pattern_byte(i: usize) -> u8 {
    u8::try_from(i % 251).expect("below 251")
}

/// `n` pattern bytes in 64 KiB chunks, generated as they are sent.
pub fn pattern_body(n: usize) -> EchoBody {
    BodyExt::boxed(PatternBody { sent: 0, total: n })
}

struct PatternBody {
    sent: usize,
    total: usize,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        const CHUNK: usize = 64 * 1024;
        if self.sent == self.total {
            return std::task::Poll::Ready(None);
        }
        let end = (self.sent + CHUNK).min(self.total);
        let data: Vec<u8> = (self.sent..end).map(pattern_byte).collect();
        self.sent = end;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

/// What the echo upstream reported.
#[derive(Debug)]
pub struct Echoed {
    pub scheme: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body_length: usize,
    pub body_is_pattern: bool,
}

impl Echoed {
    pub fn parse(body: &[u8]) -> Self {
        let json: serde_json::Value =
            serde_json::from_slice(body).unwrap_or_else(|_| panic!("not an echo: {}", String::from_utf8_lossy(body)));
        Self {
            scheme: json["scheme"].as_str().unwrap().to_owned(),
            version: json["version"].as_str().unwrap().to_owned(),
            method: json["method"].as_str().unwrap().to_owned(),
            uri: json["uri"].as_str().unwrap().to_owned(),
            headers: serde_json::from_value(json["headers"].clone()).unwrap(),
            body_length: usize::try_from(json["body_length"].as_u64().unwrap()).unwrap(),
            body_is_pattern: json["body_is_pattern"].as_bool().unwrap(),
        }
    }

    /// Every value of header `name` (lowercase), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}

// ---------------------------------------------------------------------------------------
// Scripted upstream

/// A hand-written upstream: answers each request head it reads (requests without a body)
/// with the next of `responses`, in turn, keeping the connection open, or closing it after
/// one answer when `close_each`. Counts the connections it accepted and keeps the request
/// heads it read, byte for byte. Stops when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Scripted {
    pub async fn start(responses: &'static [&'static str], close_each: bool) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&heads);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let next = Arc::clone(&next);
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end;
                            }
                            let mut chunk = [0_u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(read) if read > 0 => buf.extend_from_slice(&chunk[..read]),
                                _ => return,
                            }
                        };
                        let head = buf.drain(..end + 4).collect::<Vec<_>>();
                        kept.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                        let response = responses[next.fetch_add(1, Ordering::SeqCst) % responses.len()];
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        if close_each {
                            let _ = stream.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            heads,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The request heads read so far, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that accepts connections, holds them open and never answers. Stops when
/// dropped.
pub struct Silent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        Self { addr, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Responses read off a raw connection

/// One HTTP/1.1 response as the app reads it off a raw connection.
pub struct RawReply {
    /// As the app read it, without its line end.
    pub status_line: String,
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    /// Every value of header `name` (lowercase), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    pub fn echoed(&self) -> Echoed {
        Echoed::parse(&self.body)
    }
}

/// Reads one response head off `stream`, up to and with its empty line, as text (bytes
/// after it stay in `buf`).
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    tokio::time::timeout(WAIT, async {
        let end = loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                break end;
            }
            fill(stream, buf).await;
        };
        String::from_utf8(buf.drain(..end + 4).collect()).unwrap()
    })
    .await
    .expect("a response head in time")
}

/// Reads one response off `stream` (bytes after it stay in `buf`). `head` says the request
/// was a `HEAD`: no body follows whatever the length says.
pub async fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> RawReply {
    tokio::time::timeout(WAIT, async {
        let text = read_head(stream, buf).await;
        let mut lines = text.trim_end().split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head || status == 204 || status == 304 || status < 200 {
        } else if let Some(length) = value("content-length") {
            let length: usize = length.parse().unwrap();
            while buf.len() < length {
                fill(stream, buf).await;
            }
            body.extend(buf.drain(..length));
        } else if value("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(end) = find(buf, b"\r\n") {
                        break end;
                    }
                    fill(stream, buf).await;
                };
                let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
                buf.drain(..line_end + 2);
                if size == 0 {
                    // No trailers in these tests: the empty line ends the body.
                    while buf.len() < 2 {
                        fill(stream, buf).await;
                    }
                    assert_eq!(&buf[..2], b"\r\n", "trailers where none were expected");
                    buf.drain(..2);
                    break;
                }
                while buf.len() < size + 2 {
                    fill(stream, buf).await;
                }
                body.extend(buf.drain(..size));
                assert_eq!(buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
            }
        } else {
            panic!("a response with neither a length nor chunks: {text}");
        }
        RawReply {
            status_line: status_line.to_owned(),
            status,
            headers,
            body,
        }
    })
    .await
    .expect("a whole response within WAIT")
}

pub async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.reserve(16 * 1024);
    let n = stream.read_buf(buf).await.unwrap();
    assert!(
        n > 0,
        "the connection closed mid-response; read so far: {:?}",
        String::from_utf8_lossy(buf)
    );
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every value of header `name` (lowercase) among `headers`, in order.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------
// TLS

/// A throwaway CA and a server certificate for `localhost` and `127.0.0.1`.
pub struct TestCa {
    pub ca_pem: String,
    /// The server certificate and its key, as PEM, for servers not written in Rust.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bearerd test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            ca_der: ca_cert.der().clone(),
            issuer,
            cert: cert.der().clone(),
            key: rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key().into())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client certificate signed by this CA: (certificate PEM, private key PEM, certificate DER).
    pub fn client_identity(&self, common_name: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A server configuration that requires a client certificate signed by this CA.
    pub fn mtls_server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key().into())
            .unwrap();
        Arc::new(config)
    }

    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

// ---------------------------------------------------------------------------------------
// bearerd

/// bearerd in-process, on free ports, from a YAML document (listen addresses are added).
pub async fn start_bearerd(yaml: &str) -> bearerd::Server {
    start_bearerd_env(yaml, &Env::new()).await
}

pub async fn start_bearerd_env(yaml: &str, env: &Env) -> bearerd::Server {
    let yaml = format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{yaml}");
    let config = Config::from_yaml("test.yaml", &yaml, env).unwrap_or_else(|err| panic!("{err}"));
    bearerd::Server::start(config).await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Kubernetes volumes

/// A directory laid out as the kubelet mounts a `Secret` or `ConfigMap`: each key a symlink
/// `key -> ..data/key`, `..data` a symlink to a timestamped directory holding this version's
/// files. [`Mounted::update`] swaps versions the kubelet's way: a new directory, a new
/// link, renamed over `..data` in one step, the old directory removed.
#[cfg(unix)]
pub struct Mounted {
    pub dir: tempfile::TempDir,
    version: usize,
}

#[cfg(unix)]
impl Mounted {
    /// Mounted with `files` (name, content) as the first version.
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        let mut mounted = Self {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        mounted.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), mounted.path(name)).unwrap();
        }
        mounted
    }

    /// Where the app reads key `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The next version: exactly `files` (a key left out can no longer be read).
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        let root = self.dir.path();
        self.version += 1;
        let name = format!("..2026_11_23_10_00_00.{}", self.version);
        std::fs::create_dir(root.join(&name)).unwrap();
        for (file, content) in files {
            std::fs::write(root.join(&name).join(file), content).unwrap();
        }
        std::os::unix::fs::symlink(&name, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(root.join(format!("..2026_11_23_10_00_00.{}", self.version - 1))).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The common setup

/// One auth config `billing` (`client_secret_basic`) allowed to send to 127.0.0.1.
pub fn billing(tokens: &TokenServer, extra: &str) -> String {
    format!(
        "auth_configs:\n  - id: billing\n    token_url: {}\n    client_id: billing-client\n    client_secret: \"p@ss:w0rd/+%=&?\"\n    allowed_hosts: [127.0.0.1]\n{extra}",
        tokens.url()
    )
}

pub async fn get_with_config(proxy: &reqwest::Client, url: &str, config: &str) -> reqwest::Response {
    proxy.get(url).header("x-auth-config", config).send().await.unwrap()
}

/// A token endpoint, an echo upstream, bearerd with the `billing` config (plus `extra`
/// YAML), and a client that uses bearerd as its HTTP proxy.
pub struct World {
    pub tokens: TokenServer,
    pub echo: Echo,
    pub proxy: reqwest::Client,
    pub bearerd: bearerd::Server,
}

impl World {
    pub async fn billing(extra: &str) -> Self {
        Self::with_tokens(TokenServer::start().await, extra).await
    }

    pub async fn with_tokens(tokens: TokenServer, extra: &str) -> Self {
        let echo = Echo::start().await;
        let bearerd = start_bearerd(&billing(&tokens, extra)).await;
        let proxy = proxied_client(bearerd.proxy_addr);
        Self {
            tokens,
            echo,
            proxy,
            bearerd,
        }
    }

    /// The echo upstream's URL for `path`, as the app writes it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.echo.addr)
    }

    /// `GET path` on the echo upstream through bearerd, with `X-Auth-Config: billing`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        get_with_config(&self.proxy, &self.url(path), "billing").await
    }
}

/// Polls `check` every 20 ms until it holds; panics after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Prometheus text bearerd's admin listener serves.
pub async fn metrics(bearerd: &bearerd::Server) -> String {
    direct_client()
        .get(format!("http://{}/metrics", bearerd.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An HTTP client that sends every request through bearerd, as `HTTP_PROXY` users do.
pub fn proxied_client(proxy: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A client that talks to bearerd directly (gateway routes, admin).
pub fn direct_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(WAIT).build().unwrap()
}

/// GET `url` directly (bearerd's admin listener): the status and the body as text.
pub async fn get_text(url: &str) -> (u16, String) {
    let response = direct_client().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A bearerd error response, parsed.
#[derive(Debug)]
pub struct BearerdError {
    pub status: u16,
    pub header: Option<String>,
    pub code: String,
    pub message: String,
    pub auth_config: Option<String>,
}

pub async fn bearerd_error(response: reqwest::Response) -> BearerdError {
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("x-bearerd-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not a bearerd error: {}", String::from_utf8_lossy(&body)));
    BearerdError {
        status,
        header,
        code: json["error"].as_str().unwrap().to_owned(),
        message: json["message"].as_str().unwrap().to_owned(),
        auth_config: json["auth_config"].as_str().map(str::to_owned),
    }
}

pub async fn echoed(response: reqwest::Response) -> Echoed {
    assert_eq!(
        response.headers().get("x-echo").map(|v| v.to_str().unwrap()),
        Some("1"),
        "not from the echo upstream"
    );
    Echoed::parse(&response.bytes().await.unwrap())
}

/// Sends raw bytes to `addr` and reads the response head and body until the peer closes
/// or `WAIT` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Raw recording upstream

/// What a [`RawUpstream`] writes for one complete request: `bytes`; then, if `later` is set,
/// after its delay, more bytes on the same connection that no request asked for; then it
/// closes the connection if `close`.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub bytes: Vec<u8>,
    pub later: Option<(Duration, Vec<u8>)>,
    pub close: bool,
}

impl Answer {
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        Self {
            bytes: bytes.as_ref().to_vec(),
            ..Self::default()
        }
    }

    /// Writes `bytes` too, `delay` after the answer, on the same connection.
    #[must_use]
    pub fn then_after(mut self, delay: Duration, bytes: impl AsRef<[u8]>) -> Self {
        self.later = Some((delay, bytes.as_ref().to_vec()));
        self
    }

    /// Closes the connection after the answer.
    #[must_use]
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

/// Bytes received, shared between an upstream's tasks.
type Record = Arc<Mutex<Vec<u8>>>;

/// An upstream that keeps every byte it receives, per connection, and answers each complete
/// request (a head ending in CRLF CRLF, then its `Content-Length` or chunked body) with the
/// next of its `script` (counted over all its connections; the last one again once they run
/// out; none if the script is empty). Plain, or TLS offering HTTP/1.1 only. Stops, with all
/// its connections, when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    /// What each connection received, in the order they were accepted.
    received: Arc<Mutex<Vec<Record>>>,
    shared: Arc<RawShared>,
    task: JoinHandle<()>,
}

/// What a [`RawUpstream`]'s connections share.
#[derive(Default)]
struct RawShared {
    script: Vec<Answer>,
    /// Every byte received, on any connection, in the order it arrived.
    arrived: Record,
    requests: AtomicUsize,
    sent_later: AtomicUsize,
}

impl RawUpstream {
    pub async fn start(script: Vec<Answer>) -> Self {
        Self::serve(None, script).await
    }

    /// Over TLS with `ca`'s server certificate (for `localhost` and `127.0.0.1`), offering
    /// only `http/1.1` by ALPN.
    pub async fn start_tls(ca: &TestCa, script: Vec<Answer>) -> Self {
        let mut config = (*ca.server_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::serve(Some(Arc::new(config)), script).await
    }

    async fn serve(tls: Option<Arc<rustls::ServerConfig>>, script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(RawShared {
            script,
            ..RawShared::default()
        });
        let (connections, all) = (Arc::clone(&received), Arc::clone(&shared));
        let task = tokio::spawn(async move {
            // Connections live in this set, so dropping the upstream closes them too.
            let mut set = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while set.try_join_next().is_some() {}
                let record = Record::default();
                connections.lock().unwrap().push(Arc::clone(&record));
                let (shared, acceptor) = (Arc::clone(&all), acceptor.clone());
                set.spawn(async move {
                    match acceptor {
                        None => answer_raw(stream, &record, &shared).await,
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                answer_raw(tls, &record, &shared).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            shared,
            task,
        }
    }

    /// Every byte received so far, on any connection, in the order it arrived.
    pub fn arrived(&self) -> Vec<u8> {
        self.shared.arrived.lock().unwrap().clone()
    }

    /// The bytes received so far on each connection, in the order they were accepted.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|connection| connection.lock().unwrap().clone())
            .collect()
    }

    /// Complete requests read so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many `then_after` writes have been made.
    pub fn sent_later(&self) -> usize {
        self.shared.sent_later.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads requests off one connection, keeping what arrives in `record`, and answers them.
async fn answer_raw<S>(mut stream: S, record: &Record, shared: &RawShared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut pending = Vec::new();
    let mut chunk = vec![0_u8; 16 * 1024];
    loop {
        while let Some(length) = request_length(&pending) {
            pending.drain(..length);
            let n = shared.requests.fetch_add(1, Ordering::SeqCst);
            let Some(answer) = shared.script.get(n.min(shared.script.len().saturating_sub(1))) else {
                continue;
            };
            if stream.write_all(&answer.bytes).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            if let Some((delay, bytes)) = &answer.later {
                tokio::time::sleep(*delay).await;
                if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                shared.sent_later.fetch_add(1, Ordering::SeqCst);
            }
            if answer.close {
                let _ = stream.shutdown().await;
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // Both under one lock, so the two records agree.
                let mut arrived = shared.arrived.lock().unwrap();
                arrived.extend_from_slice(&chunk[..n]);
                record.lock().unwrap().extend_from_slice(&chunk[..n]);
                drop(arrived);
                pending.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// The length of the complete request at the start of `buf` (its head ends in CRLF CRLF; its
/// body is framed by `Transfer-Encoding: chunked` or `Content-Length`), or `None` until it
/// is all there or when its framing cannot be read.
pub fn request_length(buf: &[u8]) -> Option<usize> {
    let head = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let (mut length, mut chunked) = (0, false);
    for line in text.split("\r\n").skip(1) {
        match line.split_once(':') {
            Some(("content-length", value)) => length = value.trim().parse().ok()?,
            Some(("transfer-encoding", value)) => chunked = value.trim().ends_with("chunked"),
            _ => {}
        }
    }
    if chunked {
        return chunked_length(&buf[head..]).map(|body| head + body);
    }
    (buf.len() >= head + length).then_some(head + length)
}

/// The length of the complete chunked body, with its trailer section, at the start of `buf`;
/// `None` until it is all there or when a chunk size cannot be read.
pub fn chunked_length(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = find(&buf[at..], b"\r\n")?;
        let text = std::str::from_utf8(&buf[at..at + line]).ok()?;
        let size = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            loop {
                let line = find(&buf[at..], b"\r\n")?;
                at += line + 2;
                if line == 0 {
                    return Some(at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// curl, unmodified, with `args`, as an app configured only by `env`: the proxy and CA
/// variables of the test's own environment are removed first. Asserts that it succeeded
/// (within `WAIT`) and returns what it printed.
pub async fn curl_output<A: AsRef<std::ffi::OsStr>>(args: &[A], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut curl = tokio::process::Command::new("curl");
    curl.args(args);
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
    ] {
        curl.env_remove(name);
    }
    curl.envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, curl.output())
        .await
        .expect("curl hung")
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "curl {:?}: {}{stdout}",
        args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Answers the `n`th token request with access token `at<n>` and refresh token `rt<n>`.
pub fn rotating(n: usize, _: &Recorded) -> Reply {
    (
        200,
        "application/json",
        format!(r#"{{"access_token":"at{n}","token_type":"Bearer","expires_in":3600,"refresh_token":"rt{n}"}}"#),
    )
}

/// The provider's refusal of a spent refresh token (RFC 6749 §5.2 `invalid_grant`).
pub fn invalid_grant() -> Reply {
    (
        400,
        "application/json",
        r#"{"error":"invalid_grant","error_description":"refresh token already used"}"#.to_owned(),
    )
}
