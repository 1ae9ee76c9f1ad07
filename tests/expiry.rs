//! Never an expired token: a provider issuing 2-second JWTs (whole-second `iat` and `exp`,
//! as providers write them), an upstream that checks `exp` to the millisecond with no
//! leeway, and an app sending requests back to back through bearerd, while the provider
//! answers and while it fails.
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use support::*;

/// The provider's HS256 key: the upstream verifies with it, bearerd never needs it.
const KEY: &[u8] = b"bearerd expiry test key";
/// `expires_in`, and `exp - iat`.
const LIFETIME_SECS: u64 = 2;
/// How long the provider takes to answer a token request (a remote identity provider), so
/// part of each token's life passes before bearerd has it.
const PROVIDER_DELAY: Duration = Duration::from_millis(250);
/// Bounds the request loops whatever the clock does.
const MAX_REQUESTS: usize = 1_000_000;

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

fn hs256() -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, KEY)
}

/// Token request `n` answered: a JWT issued now, `iat` whole seconds, `exp` two seconds on.
fn issue(n: usize) -> Reply {
    let iat = unix_ms() / 1000;
    let header = B64URL.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "https://idp.test",
        "sub": "billing-client",
        "jti": n.to_string(),
        "iat": iat,
        "exp": iat + LIFETIME_SECS,
    });
    let signed = format!("{header}.{}", B64URL.encode(claims.to_string()));
    let signature = B64URL.encode(hmac::sign(&hs256(), signed.as_bytes()));
    ok_token(&format!("{signed}.{signature}"), LIFETIME_SECS)
}

/// The `exp` of `token` if the provider signed it.
fn verified_exp(token: &str) -> Option<u64> {
    let (signed, signature) = token.rsplit_once('.')?;
    hmac::verify(&hs256(), signed.as_bytes(), &B64URL.decode(signature).ok()?).ok()?;
    let (_, claims) = signed.split_once('.')?;
    let claims: serde_json::Value = serde_json::from_slice(&B64URL.decode(claims).ok()?).ok()?;
    claims["exp"].as_u64()
}

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    valid: AtomicUsize,
    /// How long after its `exp` each expired token arrived, in milliseconds.
    late_ms: Mutex<Vec<u64>>,
    /// Requests without a token the provider signed.
    unsigned: AtomicUsize,
}

impl Seen {
    fn expired(&self) -> Vec<u64> {
        self.late_ms.lock().unwrap().clone()
    }
}

/// An upstream that accepts only a token the provider signed and that has not expired by
/// its own clock: `now >= exp` is expired (RFC 7519 §4.1.4), with no leeway. Expired tokens
/// get 401, unsigned ones 403.
struct JwtUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl JwtUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let seen = Arc::clone(&counts);
                connections.spawn(async move {
                    let service =
                        service_fn(move |request| std::future::ready(Ok::<_, Infallible>(check(&request, &seen))));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }
}

impl Drop for JwtUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn check(request: &Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    let now_ms = unix_ms();
    let exp = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(verified_exp);
    let status = match exp {
        None => {
            seen.unsigned.fetch_add(1, Ordering::SeqCst);
            StatusCode::FORBIDDEN
        }
        Some(exp) if now_ms >= exp * 1000 => {
            seen.late_ms.lock().unwrap().push(now_ms - exp * 1000);
            StatusCode::UNAUTHORIZED
        }
        Some(_) => {
            seen.valid.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = status;
    response
}

/// What the app got: responses by status and, for bearerd's own errors, by error code.
#[derive(Debug, Default)]
struct Tally {
    by_answer: BTreeMap<(u16, String), usize>,
    /// 503s that came without a `Retry-After`.
    backoff_without_retry_after: usize,
    /// Upstream 200s after bearerd's last error.
    ok_since_last_error: usize,
}

impl Tally {
    fn count(&self, status: u16, code: &str) -> usize {
        self.by_answer.get(&(status, code.to_owned())).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.by_answer.values().sum()
    }
}

/// Sends requests through bearerd one after another, each awaited, for `span`.
async fn back_to_back(bearerd: &bearerd::Server, upstream: &JwtUpstream, span: Duration) -> Tally {
    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/v1/invoices", upstream.addr);
    let end = Instant::now() + span;
    let mut tally = Tally::default();
    for _ in 0..MAX_REQUESTS {
        if Instant::now() >= end {
            break;
        }
        let response = get_with_config(&proxy, &url, "billing").await;
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-bearerd-error")
            .map(|code| code.to_str().unwrap().to_owned());
        if code.is_some() {
            tally.ok_since_last_error = 0;
            if status == 503 && response.headers().get("retry-after").is_none() {
                tally.backoff_without_retry_after += 1;
            }
        } else if status == 200 {
            tally.ok_since_last_error += 1;
        }
        *tally
            .by_answer
            .entry((status, code.unwrap_or_else(|| "upstream".into())))
            .or_default() += 1;
    }
    tally
}

/// No request reached the upstream with an expired token, nor with a token it could not read.
fn no_expired_token(upstream: &JwtUpstream, tally: &Tally) {
    let expired = upstream.seen.expired();
    assert!(
        expired.is_empty(),
        "{} expired tokens reached the upstream, up to {} ms after exp; the app got {:?}",
        expired.len(),
        expired.iter().max().unwrap_or(&0),
        tally.by_answer
    );
    assert_eq!(upstream.seen.unsigned.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn two_second_jwts_never_reach_the_upstream_expired() {
    let tokens = TokenServer::with(PROVIDER_DELAY, |n, _| issue(n)).await;
    let upstream = JwtUpstream::start().await;
    let bearerd = start_bearerd(&billing(&tokens, "")).await;

    let tally = back_to_back(&bearerd, &upstream, Duration::from_secs(30)).await;

    no_expired_token(&upstream, &tally);
    let requests = tally.total();
    assert_eq!(tally.count(200, "upstream"), requests, "{:?}", tally.by_answer);
    assert_eq!(upstream.seen.valid.load(Ordering::SeqCst), requests);
    assert!(requests >= 300, "only {requests} requests in 30 s");
    // `exp` is 1.25 s to 2 s after the request was sent (whole seconds, issued 250 ms in), so
    // a token serves half that, and its refresh starts half way: one token request every
    // 0.31 s to 0.5 s, the first one aside.
    let fetched = tokens.count();
    assert!((40..=100).contains(&fetched), "{fetched} token requests in 30 s");
}

#[tokio::test]
async fn while_the_provider_fails_requests_get_bearerds_error_never_an_expired_token() {
    // Three tokens, then three failed token requests (the back-off waits 1 s, then 2 s,
    // then 4 s), then tokens again.
    let tokens = TokenServer::with(PROVIDER_DELAY, |n, _| {
        if (4..=6).contains(&n) {
            (500, "text/plain", "identity provider down".to_owned())
        } else {
            issue(n)
        }
    })
    .await;
    let upstream = JwtUpstream::start().await;
    let bearerd = start_bearerd(&billing(&tokens, "")).await;

    let tally = back_to_back(&bearerd, &upstream, Duration::from_secs(15)).await;

    no_expired_token(&upstream, &tally);
    // Requests while no valid token existed got bearerd's errors: a failed token request
    // (502) or the back-off after one (503, with Retry-After). Nothing else.
    let (unavailable, backoff) = (tally.count(502, "token_unavailable"), tally.count(503, "token_backoff"));
    assert!(unavailable >= 1 && backoff >= 1, "{:?}", tally.by_answer);
    assert_eq!(
        tally.count(200, "upstream") + unavailable + backoff,
        tally.total(),
        "{:?}",
        tally.by_answer
    );
    assert_eq!(tally.backoff_without_retry_after, 0);
    assert_eq!(upstream.seen.valid.load(Ordering::SeqCst), tally.count(200, "upstream"));
    // Served again once the provider recovered.
    assert!(tally.ok_since_last_error >= 100, "{tally:?}");
    assert!(tokens.count() >= 8, "{} token requests", tokens.count());
}
