//! Heap allocations bearerd makes for a proxied request on the hit path: a cached token, a
//! pooled upstream connection, the app's keep-alive connection. bearerd runs on a thread of
//! its own (a current-thread runtime, as in production on one CPU), and this binary's
//! global allocator counts the allocations made on that thread; the app, the upstream and
//! the token endpoint run on the test's thread and are not counted.
mod support;

use std::net::SocketAddr;
use std::sync::mpsc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use support::{Echo, TokenServer, WAIT};

/// bearerd on a thread of its own. Its runtime runs only inside `block_on`, so between two
/// phases nothing of bearerd's runs: a phase's allocations are exactly what it did.
struct Bearerd {
    addr: SocketAddr,
    /// Each ends a phase: the warm-up, then the measured one.
    ends: [Option<oneshot::Sender<()>>; 2],
    /// The allocations counted in the measured phase.
    counted: mpsc::Receiver<u64>,
    thread: std::thread::JoinHandle<()>,
}

impl Bearerd {
    /// Starts bearerd with `yaml`, and its warm-up phase.
    fn start(yaml: String) -> Self {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (counted_tx, counted) = mpsc::channel();
        let (end_warm_up, warm_up_ended) = oneshot::channel::<()>();
        let (end_measured, measured_ended) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let bearerd = runtime.block_on(support::start_bearerd(&yaml));
            addr_tx.send(bearerd.proxy_addr).unwrap();
            let _ = runtime.block_on(warm_up_ended);
            let measured = allocation_counter::measure(|| {
                let _ = runtime.block_on(measured_ended);
            });
            counted_tx.send(measured.count_total).unwrap();
            drop(bearerd);
        });
        let addr = addr_rx.recv_timeout(WAIT).expect("bearerd did not start");
        Self {
            addr,
            ends: [Some(end_warm_up), Some(end_measured)],
            counted,
            thread,
        }
    }

    /// Ends the warm-up: what bearerd does from now on is counted. (Woken by this, bearerd's
    /// `block_on` polls its own future first and returns before running any task again, so a
    /// request sent after this call is served in the counted phase.)
    fn count_from_now(&mut self) {
        self.ends[0].take().unwrap().send(()).unwrap();
    }

    /// Ends the measured phase and stops bearerd; returns the allocations counted.
    fn stop(mut self) -> usize {
        self.ends[1].take().unwrap().send(()).unwrap();
        let counted = self.counted.recv_timeout(WAIT).expect("the count");
        self.thread.join().unwrap();
        usize::try_from(counted).unwrap()
    }
}

/// Sends `request` on `stream` and reads its response, which must be all there is.
async fn exchange(stream: &mut TcpStream, request: &[u8], buffer: &mut Vec<u8>) -> support::RawReply {
    stream.write_all(request).await.unwrap();
    let reply = support::read_reply(stream, buffer, false).await;
    assert_eq!(reply.all("content-length").len(), 1, "a Content-Length");
    assert!(buffer.is_empty(), "nothing after the response");
    reply
}

const WARM_UP: usize = 20;
const REQUESTS: usize = 200;

/// Sends `WARM_UP` requests for `http://{authority}/hit` through bearerd started with `yaml`,
/// then `REQUESTS` counted ones, all on one app connection: the allocations counted, with
/// what the last request carried upstream.
async fn allocations_per_run(yaml: String, authority: &str) -> (usize, support::Echoed) {
    let mut bearerd = Bearerd::start(yaml);
    let request = format!(
        "GET http://{authority}/hit?x=1 HTTP/1.1\r\nHost: {authority}\r\nX-Auth-Config: billing\r\nAccept: */*\r\n\r\n"
    );
    let mut app = TcpStream::connect(bearerd.addr).await.unwrap();
    let mut buffer = Vec::with_capacity(16 * 1024);
    // Warm up: the token fetched and cached, the upstream connection pooled, the buffers of
    // both connections and the header lines grown to their size.
    for _ in 0..WARM_UP {
        let reply = exchange(&mut app, request.as_bytes(), &mut buffer).await;
        assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    }
    bearerd.count_from_now();
    let mut last = None;
    for _ in 0..REQUESTS {
        let reply = exchange(&mut app, request.as_bytes(), &mut buffer).await;
        assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
        last = Some(reply);
    }
    let allocations = bearerd.stop();
    (allocations, last.expect("a response").echoed())
}

#[tokio::test]
async fn a_request_on_the_hit_path_allocates_once() {
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let (allocations, echoed) = allocations_per_run(support::billing(&tokens, ""), &echo.addr.to_string()).await;
    // What went upstream: the cached token, on the one pooled connection.
    assert_eq!(echoed.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(tokens.count(), 1);
    assert_eq!(echo.connections(), 1);
    assert_eq!(echo.requests(), WARM_UP + REQUESTS);
    // One allocation a request: the request's own state (the proxy's future for it) lives on
    // the heap while the request is under way, so an idle connection holds none. The token
    // goes in as a shared, once-rendered header value; the header lines, the read buffers
    // and the pooled connection are reused.
    assert_eq!(
        allocations, REQUESTS,
        "allocations on bearerd's thread for {REQUESTS} requests"
    );
}

#[tokio::test]
async fn a_request_to_an_https_upstream_on_the_hit_path_allocates_three_times() {
    let tokens = TokenServer::start().await;
    let ca = support::TestCa::new();
    let echo = Echo::start_tls_http1(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "tls: {{ ca_file: {} }}\n{}routes:\n  - match: {{ host: localhost }}\n    auth_config: billing\n    upstream_tls: true\n",
        ca.write_ca(dir.path()).display(),
        support::billing(&tokens, "").replace("[127.0.0.1]", "[localhost]"),
    );
    let (allocations, echoed) = allocations_per_run(yaml, &format!("localhost:{}", echo.addr.port())).await;
    assert_eq!((echoed.scheme.as_str(), echoed.version.as_str()), ("https", "HTTP/1.1"));
    assert_eq!(echoed.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(tokens.count(), 1);
    assert_eq!(echo.connections(), 1, "one TLS connection, pooled");
    assert_eq!(echo.requests(), WARM_UP + REQUESTS);
    // The request's state, as in clear, and two that rustls' buffered connection makes for
    // each TLS record: the encrypted request it queues to send, and the decrypted response
    // it holds until read (a small request and response are one record each way).
    assert_eq!(
        allocations,
        3 * REQUESTS,
        "allocations on bearerd's thread for {REQUESTS} requests"
    );
}
