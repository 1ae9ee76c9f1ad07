//! bearerd's server loop and hyper's server, differentially: mutated request heads (bits
//! flipped, CR, LF, NUL, SP or HTAB inserted, bytes deleted, heads cut short, lines
//! duplicated) are accepted or rejected alike by both.
//!
//! bearerd's side is the loop's own decision ([`verdict`]): serve, wait for more, hand to
//! hyper, or answer 400 (a malformed head, or a target `http` does not take). hyper's side is
//! its HTTP/1.1 server as bearerd configures it for hand-offs (a 30 s header read timeout on
//! tokio's timer, defaults otherwise), fed the bytes on an in-memory stream whose write side
//! is then shut: it accepted the request if it called the service, and rejected it if it
//! answered 4xx or closed without calling it. A head the loop serves, hyper must accept; one
//! it answers 400, hyper must reject; one it waits on, hyper must not have served; one it
//! hands to hyper is hyper's to decide, so not compared. What the proxy then checks in an
//! accepted request (`Host`, routes) is the proxy's, not the wire's, and not compared either.
//!
//! No known difference is filtered out: both read heads with httparse's default (strict)
//! settings, so bare CR (RFC 9112 §2.2), whitespace before a colon (§5.1), obs-fold (§5.2)
//! and a request line with extra whitespace (§3) are rejected by both.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bearerd::http1::server::{HEADER_READ_TIMEOUT, Verdict, verdict};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many mutated heads are compared: 2048, enough to reach every kind of verdict many
/// times, few enough to keep the test to about a second (each case is a current-thread
/// exchange with hyper on an in-memory stream).
const CASES: u32 = 2048;

/// Valid requests the mutations start from: what apps send a forward proxy, in both target
/// forms, with and without a body, and header values of several shapes.
const SEEDS: &[&[u8]] = &[
    b"GET http://a.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n",
    b"GET /path/to HTTP/1.1\r\nHost: a.test:8080\r\nUser-Agent: app/1.0 (x; y)\r\n\r\n",
    b"POST http://a.test/submit HTTP/1.1\r\nHost: a.test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /r HTTP/1.1\r\nHost: a.test\r\nX-Auth-Config: billing\r\nContent-Length: 0\r\n\r\n",
    b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Quoted: \"a, b\"\r\nX-Tab: a\tb\r\nX-Empty:\r\n\
      X-Obs-Text: caf\xc3\xa9\r\nConnection: keep-alive\r\nTE: trailers\r\n\r\n",
    b"DELETE /items/1?force=true HTTP/1.1\r\nHost: [::1]:9000\r\nAuthorization: Bearer x.y.z\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
];

/// One change to a head. Positions are drawn as [`Index`]es, so they fit any length.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flips one bit of one byte.
    Flip(Index, u8),
    /// Inserts CR, LF, NUL, SP or HTAB.
    Insert(Index, u8),
    Delete(Index),
    /// Cuts the bytes short.
    Truncate(Index),
    /// Writes a line (up to and including its LF) twice.
    Duplicate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8_u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), prop::sample::select(&b"\r\n\0 \t"[..])).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
        any::<Index>().prop_map(Mutation::Duplicate),
    ]
}

fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for mutation in mutations {
        match *mutation {
            Mutation::Flip(at, bit) if !bytes.is_empty() => {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Mutation::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), byte),
            Mutation::Delete(at) if !bytes.is_empty() => {
                bytes.remove(at.index(bytes.len()));
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Mutation::Duplicate(at) => {
                let lines: Vec<&[u8]> = bytes.split_inclusive(|&byte| byte == b'\n').collect();
                if lines.is_empty() {
                    continue;
                }
                let line = at.index(lines.len());
                let mut duplicated = Vec::with_capacity(bytes.len() * 2);
                for (i, text) in lines.iter().enumerate() {
                    duplicated.extend_from_slice(text);
                    if i == line {
                        duplicated.extend_from_slice(text);
                    }
                }
                bytes = duplicated;
            }
            Mutation::Flip(..) | Mutation::Delete(_) => {}
        }
    }
    bytes
}

/// What hyper's server did with `bytes`: how often it called the service, and what it wrote.
async fn hyper_serves(bytes: &[u8]) -> (usize, Vec<u8>) {
    let (mut app, server) = tokio::io::duplex(64 * 1024);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = service_fn(move |_: Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let serving = builder.serve_connection(TokioIo::new(server), service);
    let app = async {
        app.write_all(bytes).await.unwrap();
        app.shutdown().await.unwrap();
        let mut answer = Vec::new();
        // The server may close before it read all: what it wrote is what counts.
        let _ = app.read_to_end(&mut answer).await;
        answer
    };
    let (_, answer) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(serving, app) })
        .await
        .expect("hyper's server neither answered nor closed within 5 s");
    (calls.load(Ordering::SeqCst), answer)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether hyper rejected the head: no call, and a 4xx or nothing written.
fn rejected((calls, answer): &(usize, Vec<u8>)) -> bool {
    *calls == 0 && (answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"))
}

#[test]
fn the_seeds_are_served_by_both_and_known_bad_heads_rejected_by_both() {
    let runtime = runtime();
    for seed in SEEDS {
        assert!(
            matches!(verdict(seed), Verdict::Serve { .. }),
            "{}",
            seed.escape_ascii()
        );
        assert_eq!(runtime.block_on(hyper_serves(seed)).0, 1, "{}", seed.escape_ascii());
    }
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    ] {
        assert_eq!(verdict(bad), Verdict::Malformed, "{}", bad.escape_ascii());
        let hyper = runtime.block_on(hyper_serves(bad));
        assert!(rejected(&hyper), "{}: {hyper:?}", bad.escape_ascii());
    }
    let bad_target = b"GET http://[a/ HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(verdict(bad_target), Verdict::BadTarget);
    assert!(rejected(&runtime.block_on(hyper_serves(bad_target))));
    let partial = b"GET / HTTP/1.1\r\nHost: a\r\n";
    assert_eq!(verdict(partial), Verdict::Partial);
    assert_eq!(runtime.block_on(hyper_serves(partial)).0, 0);
}

#[test]
fn mutated_heads_are_accepted_or_rejected_alike_by_bearerds_loop_and_hyper() {
    let runtime = runtime();
    let seen = [const { AtomicUsize::new(0) }; 5];
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let cases = (0..SEEDS.len(), prop::collection::vec(mutation(), 1..=3));
    let result = runner.run(&cases, |(seed, mutations)| {
        let head = mutate(SEEDS[seed], &mutations);
        let bearerd = verdict(&head);
        let kind = match bearerd {
            Verdict::Serve { .. } => 0,
            Verdict::Malformed => 1,
            Verdict::BadTarget => 2,
            Verdict::Partial => 3,
            Verdict::HandOff => 4,
        };
        seen[kind].fetch_add(1, Ordering::Relaxed);
        if bearerd == Verdict::HandOff {
            return Ok(());
        }
        let hyper = runtime.block_on(hyper_serves(&head));
        let shown = || {
            format!(
                "{}: bearerd {bearerd:?}, hyper called {} times and wrote {}",
                head.escape_ascii(),
                hyper.0,
                hyper.1.escape_ascii()
            )
        };
        match bearerd {
            Verdict::Serve { .. } => prop_assert!(hyper.0 > 0, "{}", shown()),
            Verdict::Malformed | Verdict::BadTarget => prop_assert!(rejected(&hyper), "{}", shown()),
            Verdict::Partial => prop_assert_eq!(hyper.0, 0, "{}", shown()),
            Verdict::HandOff => {}
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The comparison compared something: the mutations reach both sides of the line.
    let seen = seen.map(AtomicUsize::into_inner);
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "verdicts seen (serve, malformed, bad target, partial, hand-off): {seen:?}"
    );
}
