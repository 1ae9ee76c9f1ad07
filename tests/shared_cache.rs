//! The fleet-shared token cache against a real `redis-server` (started per test on a free
//! loopback port, no persistence) and a counting token endpoint: several bearerd processes
//! share one token, Redis never holds a readable one, a value sealed under another key or
//! altered is fetched again (and logged once per incident), a dead lease holder's lease
//! expires into another's fetch, a Redis that goes away fails no request, `rediss://` is
//! verified against the roots bearerd trusts, and an ACL password shows nowhere.
#[path = "support/binary.rs"]
mod binary;
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bearerd::secret::{AccessToken, SealingKey};
use bearerd::shared_cache::{Sealer, SharedToken};
use binary::Bearerd;
use redis_server::RedisServer;
use support::*;

const PREFIX: &str = "fleet-test";

/// The `billing` config on `tokens`, sharing tokens through `redis` under the key in
/// `key_file`; `extra` is added to the auth config.
fn fleet_config(tokens: &TokenServer, redis: &RedisServer, key_file: &Path, extra: &str) -> String {
    format!(
        "shared_cache:\n  redis: {}\n  key_file: {}\n  prefix: {PREFIX}\n{}",
        redis.url(),
        key_file.display(),
        billing(tokens, extra)
    )
}

/// A key file holding 32 bytes of `byte`, in `dir`.
fn key_file(dir: &Path, name: &str, byte: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 32]).unwrap();
    path
}

/// The value of the counter `series` (name and labels exactly as exported), 0 when absent.
fn sample(exposition: &str, series: &str) -> u64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The token the echo upstream received, from its JSON description.
async fn token_sent(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    if status != 200 {
        return (status, String::from_utf8_lossy(&body).into_owned());
    }
    let echoed = Echoed::parse(&body);
    (
        status,
        echoed
            .header("authorization")
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_owned(),
    )
}

/// `GET /` on `echo` through the proxy at `proxy` with `X-Auth-Config: billing`.
async fn get_through(client: &reqwest::Client, echo: &Echo, path: &str) -> (u16, String) {
    token_sent(get_with_config(client, &format!("http://{}{path}", echo.addr), "billing").await).await
}

fn proxied(proxy: &str) -> reqwest::Client {
    proxied_client(proxy.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_answer_200_cold_requests_with_one_token_request() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 7);
    // One second per token request: every process misses while the first fetch runs.
    let tokens = TokenServer::with(Duration::from_secs(1), |n, _| {
        ok_token(&format!("fleet-token-{n}"), 3600)
    })
    .await;
    let echo = Echo::start().await;
    let config = fleet_config(&tokens, &redis, &key, "");
    let fleet: Vec<Bearerd> = (0..4).map(|_| Bearerd::start(&config, "info", &[])).collect();
    let clients: Vec<reqwest::Client> = fleet.iter().map(|bearerd| proxied(&bearerd.proxy)).collect();

    let requests: Vec<_> = (0..200)
        .map(|i| {
            let client = clients[i % 4].clone();
            let url = format!("http://{}/cold/{i}", echo.addr);
            tokio::spawn(async move { token_sent(get_with_config(&client, &url, "billing").await).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), (200, "fleet-token-1".to_owned()));
    }
    assert_eq!(tokens.count(), 1, "one token request for the whole fleet");

    // Each process counted what it did: one fetched, the others found the token in Redis.
    let mut fetched = 0;
    let mut fallbacks = 0;
    for bearerd in &fleet {
        let (_, metrics) = bearerd.admin_get("/metrics").await;
        fetched += sample(
            &metrics,
            r#"bearerd_token_requests_total{auth_config="billing",outcome="success"}"#,
        );
        fallbacks += sample(
            &metrics,
            r#"bearerd_shared_cache_fallbacks_total{auth_config="billing"}"#,
        );
        // Exported from the start, so rate() sees the first fallback.
        assert!(
            metrics.contains("bearerd_shared_cache_fallbacks_total{auth_config=\"billing\"} "),
            "{metrics}"
        );
    }
    assert_eq!((fetched, fallbacks), (1, 0));

    // Redis holds the sealed token under a name that says nothing of the config, and the
    // lease is released.
    let values = redis.values(PREFIX);
    assert_eq!(
        values.len(),
        1,
        "{:?}",
        values.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let (name, value) = &values[0];
    let hash = name.strip_prefix(&format!("{PREFIX}:token:")).unwrap();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    for readable in [&b"fleet-token"[..], b"billing", b"p@ss"] {
        assert!(
            !value.windows(readable.len()).any(|w| w == readable),
            "{name} holds {readable:?}"
        );
    }
    // Nor does any log line carry the token or the Redis values.
    for bearerd in &fleet {
        assert!(!bearerd.logs().contains("fleet-token"), "{}", bearerd.logs());
    }
}

#[tokio::test]
async fn a_value_sealed_under_another_key_or_altered_is_fetched_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (key_file(dir.path(), "ours", 1), key_file(dir.path(), "theirs", 2));
    let tokens = TokenServer::with(Duration::ZERO, |n, _| ok_token(&format!("tok-{n}"), 3600)).await;
    let echo = Echo::start().await;
    // Each get is a new process (a cold local cache), so each looks in Redis.
    let get = |key: &Path| {
        let yaml = fleet_config(&tokens, &redis, key, "");
        let echo = &echo;
        async move {
            let bearerd = start_bearerd(&yaml).await;
            let got = get_through(&proxied_client(bearerd.proxy_addr), echo, "/").await;
            (got, metrics(&bearerd).await)
        }
    };
    let ((_, first), _) = get(&ours).await;
    assert_eq!(first, "tok-1");
    let ((_, from_redis), _) = get(&ours).await;
    assert_eq!(from_redis, "tok-1", "an intact value is used");
    let our_name = redis.values(PREFIX)[0].0.clone();

    // Another key names its tokens differently too; its value copied over ours does not open.
    let ((_, second), _) = get(&theirs).await;
    assert_eq!(second, "tok-2");
    let values = redis.values(PREFIX);
    assert_eq!(values.len(), 2);
    let (_, their_value) = values.iter().find(|(name, _)| *name != our_name).unwrap();
    redis.set(&our_name, their_value, 3_600_000);
    let ((status, third), metrics_text) = get(&ours).await;
    assert_eq!((status, third.as_str()), (200, "tok-3"));
    // Read twice: before the lease, and once more after taking it.
    assert_eq!(
        sample(
            &metrics_text,
            r#"bearerd_shared_cache_operations_total{op="get",outcome="error"}"#
        ),
        2
    );
    assert_eq!(tokens.count(), 3);

    // The refetched token replaced it; one altered byte makes it unusable again.
    let (_, mut value) = redis
        .values(PREFIX)
        .into_iter()
        .find(|(name, _)| *name == our_name)
        .unwrap();
    assert_ne!(&value, their_value);
    let last = value.len() - 1;
    value[last] ^= 0x01;
    redis.set(&our_name, &value, 3_600_000);
    let ((status, fourth), _) = get(&ours).await;
    assert_eq!((status, fourth.as_str()), (200, "tok-4"));
    let ((_, again), _) = get(&ours).await;
    assert_eq!(again, "tok-4");
    assert_eq!(tokens.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_lets_another_process_fetch_once_its_lease_expires() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 9);
    // The first token request never gets its answer in time; later ones are answered at once.
    let tokens = TokenServer::with_delays(
        |n| {
            if n == 1 {
                Duration::from_secs(60)
            } else {
                Duration::ZERO
            }
        },
        |n, _| ok_token(&format!("tok-{n}"), 3600),
    )
    .await;
    let echo = Echo::start().await;
    let config = fleet_config(&tokens, &redis, &key, "    timeout: 2s\n");
    let holder = Bearerd::start(&config, "info", &[]);
    let waiter = Bearerd::start(&config, "info", &[]);

    // Its request fails with the process; only the other process's matters here.
    let stuck = {
        let client = proxied(&holder.proxy);
        let url = format!("http://{}/stuck", echo.addr);
        tokio::spawn(async move {
            client
                .get(url)
                .header("x-auth-config", "billing")
                .send()
                .await
                .map(|r| r.status())
        })
    };
    eventually("the holder's token request", || async { tokens.count() == 1 }).await;
    let lease = format!("{PREFIX}:lease:");
    let mut connection = redis.connection();
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{lease}*"))
        .query(&mut connection)
        .unwrap();
    assert_eq!(leases.len(), 1, "the holder took the lease");
    let mut holder = holder;
    holder.signal("KILL");
    holder.exit_status().await;
    assert!(stuck.await.unwrap().is_err(), "the killed process answered");

    let (status, token) = get_through(&proxied(&waiter.proxy), &echo, "/after").await;
    assert_eq!((status, token.as_str()), (200, "tok-2"));
    assert_eq!(tokens.count(), 2);
    let (_, metrics) = waiter.admin_get("/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            r#"bearerd_shared_cache_fallbacks_total{auth_config="billing"}"#
        ),
        0,
        "took the expired lease over rather than fetching alone"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"bearerd_shared_cache_operations_total{op="lease",outcome="ok"}"#
        ),
        2,
        "taken, then released"
    );
    assert_eq!(redis.values(PREFIX).len(), 1, "the new token stored, the lease gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_no_request_and_the_fleet_returns_to_it() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 5);
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let yaml = fleet_config(&tokens, &redis, &key, "");
    let a = start_bearerd(&yaml).await;
    let a_client = proxied_client(a.proxy_addr);
    assert_eq!(get_through(&a_client, &echo, "/").await, (200, "tok-1".to_owned()));

    redis.stop();
    // A local hit needs no Redis; a cold process fetches alone and says so.
    assert_eq!(get_through(&a_client, &echo, "/").await, (200, "tok-1".to_owned()));
    let b = start_bearerd(&yaml).await;
    let b_client = proxied_client(b.proxy_addr);
    assert_eq!(get_through(&b_client, &echo, "/").await, (200, "tok-2".to_owned()));
    let fallbacks = r#"bearerd_shared_cache_fallbacks_total{auth_config="billing"}"#;
    assert_eq!(sample(&metrics(&b).await, fallbacks), 1);
    assert!(
        sample(
            &metrics(&b).await,
            r#"bearerd_shared_cache_operations_total{op="get",outcome="error"}"#
        ) >= 1
    );
    let (status, ready) = get_text(&format!("http://{}/readyz", b.admin_addr)).await;
    assert_eq!(status, 200, "{ready}");

    redis.restart();
    // The next process finds Redis again, fetches under the lease and stores its token ...
    let c = start_bearerd(&yaml).await;
    assert_eq!(
        get_through(&proxied_client(c.proxy_addr), &echo, "/").await,
        (200, "tok-3".to_owned())
    );
    assert_eq!(sample(&metrics(&c).await, fallbacks), 0);
    // ... which the process that fell back picks up at its next miss (its token refused).
    let mut served_from_redis = false;
    for _ in 0..5 {
        let (status, token) = get_through(&b_client, &echo, "/only/tok-3").await;
        if (status, token.as_str()) == (200, "tok-3") {
            served_from_redis = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served_from_redis, "b went back to Redis");
    assert_eq!(redis.values(PREFIX).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_refreshes_ahead_for_the_fleet() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 3);
    // 4 s tokens, refreshed from 2 s on: both processes reach the window with the same token.
    let tokens = TokenServer::with(Duration::ZERO, |n, _| ok_token(&format!("tok-{n}"), 4)).await;
    let echo = Echo::start().await;
    let yaml = fleet_config(&tokens, &redis, &key, "    expiry_skew: 0s\n    refresh_before: 2s\n");
    let (a, b) = (start_bearerd(&yaml).await, start_bearerd(&yaml).await);
    let (a_client, b_client) = (proxied_client(a.proxy_addr), proxied_client(b.proxy_addr));
    assert_eq!(get_through(&a_client, &echo, "/").await, (200, "tok-1".to_owned()));
    assert_eq!(get_through(&b_client, &echo, "/").await, (200, "tok-1".to_owned()));
    assert_eq!(tokens.count(), 1);

    // Requests keep coming to both; each is served (the old token while the refresh runs)
    // until both send the new one.
    let mut both_new = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let (a_got, b_got) = tokio::join!(get_through(&a_client, &echo, "/"), get_through(&b_client, &echo, "/"));
        for (status, token) in [&a_got, &b_got] {
            assert_eq!(*status, 200);
            assert!(token == "tok-1" || token == "tok-2", "{token}");
        }
        if a_got.1 == "tok-2" && b_got.1 == "tok-2" {
            both_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(both_new, "both processes moved to the refreshed token");
    assert_eq!(tokens.count(), 2, "one refresh for the fleet");
    for server in [&a, &b] {
        let text = metrics(server).await;
        assert_eq!(
            sample(&text, r#"bearerd_shared_cache_fallbacks_total{auth_config="billing"}"#),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_evicts_from_redis_only_the_token_it_refused() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 4);
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let yaml = fleet_config(&tokens, &redis, &key, "");
    let (a, b) = (start_bearerd(&yaml).await, start_bearerd(&yaml).await);
    let (a_client, b_client) = (proxied_client(a.proxy_addr), proxied_client(b.proxy_addr));
    assert_eq!(get_through(&a_client, &echo, "/").await, (200, "tok-1".to_owned()));
    assert_eq!(get_through(&b_client, &echo, "/").await, (200, "tok-1".to_owned()));

    // The upstream now wants tok-2: a's 401 on tok-1 removes tok-1 from Redis, and a fetches.
    assert_eq!(
        get_through(&a_client, &echo, "/only/tok-2").await,
        (200, "tok-2".to_owned())
    );
    assert_eq!(tokens.count(), 2);
    // b's 401 on the same tok-1 finds a newer token in Redis: it is kept and used.
    assert_eq!(
        get_through(&b_client, &echo, "/only/tok-2").await,
        (200, "tok-2".to_owned())
    );
    assert_eq!(tokens.count(), 2, "tok-2 was not evicted by a 401 that tok-1 got");
    assert_eq!(redis.values(PREFIX).len(), 1);
}

/// `bearerd check` on `config`, which must exit with `code`: its last line (what it found of
/// the shared cache) and everything it wrote, stdout first.
fn check(config: &str, code: i32) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(code), "{all}");
    (stdout.lines().last().unwrap_or_default().to_owned(), all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_redis_answers_without_its_password() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 6);
    let tokens = TokenServer::start().await;
    let (last, _) = check(&fleet_config(&tokens, &redis, &key, ""), 0);
    assert_eq!(last, format!("shared_cache: redis://127.0.0.1:{} answers", redis.port));

    redis.stop();
    let with_password = fleet_config(&tokens, &redis, &key, "").replace(
        &redis.url(),
        &format!("redis://default:s3cret-pw@127.0.0.1:{}", redis.port),
    );
    let (last, all) = check(&with_password, 1);
    assert!(
        last.starts_with(&format!(
            "shared_cache: FAILED: the shared cache at redis://default:[redacted]@127.0.0.1:{} ",
            redis.port
        )),
        "{last}"
    );
    assert!(!all.contains("s3cret-pw"), "{all}");
    // The auth config's own row still passed: only Redis failed.
    assert!(all.lines().nth(1).unwrap().contains(" ok "), "{all}");
}

/// Token requests the fleet sends in [`a_minute_of_steady_traffic_over_four_processes_fetches_once_per_refresh`]:
/// 5 s tokens (`expiry_skew: 0s`) whose lifetime counts from the request's sending, refreshed
/// once `refresh_before: 2s` remains, so each token request comes at least 3 s after the
/// previous one, and (the fleet reacting at once) about that.
const STEADY_LIFETIME: u64 = 5;
const STEADY_REFRESH_BEFORE: u64 = 2;
const STEADY_TRAFFIC: Duration = Duration::from_secs(60);
/// Traffic starts this long after the first token request arrived (or later, if the first
/// requests took longer): the end of traffic then lies half a refresh period past the
/// 20th, away from where a few milliseconds would change the count.
const STEADY_OFFSET: Duration = Duration::from_millis(1500);

/// One request of the steady traffic: when it started (after it passed the fence), and the
/// number of the token the upstream received.
struct Sent {
    started: std::time::Instant,
    token: usize,
}

/// One token request the endpoint answered: when it arrived and when it was answered.
struct Issued {
    received: std::time::Instant,
    answered: std::time::Instant,
}

/// The steady test's token endpoint, what it answered, and the fence between it and the
/// traffic. Requests hold a read guard while in flight. Before it answers a refresh, the
/// token endpoint takes the write guard: it waits for every request in flight to finish,
/// and none starts until it answered. A request waiting on that token request would never
/// finish (the endpoint gives up on it, and the check names it); one that does finish got
/// an older token. So every request got a token answered before it started, or it waited:
/// no clock decides it.
#[derive(Default)]
struct Fenced {
    fence: Arc<tokio::sync::RwLock<()>>,
    issued: Arc<std::sync::Mutex<Vec<Issued>>>,
}

impl Fenced {
    /// Answers each token request after 1 s with a token for `STEADY_LIFETIME`; fenced from
    /// the second on (the first is the cold start: every request waits on it).
    async fn token_endpoint(&self) -> TokenServer {
        let (fence, issued) = (Arc::clone(&self.fence), Arc::clone(&self.issued));
        TokenServer::with_waits(
            move |n| {
                let (fence, issued) = (Arc::clone(&fence), Arc::clone(&issued));
                Box::pin(async move {
                    let received = std::time::Instant::now();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Given up well before the clients' own timeout (WAIT), so a request
                    // that waits gets its token and the check names it.
                    let _drained = if n > 1 {
                        tokio::time::timeout(WAIT / 2, fence.write()).await.ok()
                    } else {
                        None
                    };
                    issued.lock().unwrap().push(Issued {
                        received,
                        answered: std::time::Instant::now(),
                    });
                })
            },
            |n, _| ok_token(&format!("tok-{n}"), STEADY_LIFETIME),
        )
        .await
    }

    /// When the first token request arrived.
    fn first_received(&self) -> std::time::Instant {
        self.issued.lock().unwrap()[0].received
    }

    /// Eight senders, two per client, each sending `GET url` then pausing 20 ms until
    /// `end`: the requests answered 200, and the answers of the others.
    async fn traffic(
        &self,
        clients: &[reqwest::Client],
        url: &str,
        end: tokio::time::Instant,
    ) -> (Vec<Sent>, Vec<(u16, String)>) {
        let senders: Vec<_> = (0..8)
            .map(|i| {
                let (client, url) = (clients[i % clients.len()].clone(), url.to_owned());
                let fence = Arc::clone(&self.fence);
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (Vec::new(), Vec::new());
                    while tokio::time::Instant::now() < end {
                        let in_flight = fence.read().await;
                        let started = std::time::Instant::now();
                        let answer = client.get(&url).header("x-auth-config", "billing").send().await;
                        match answer {
                            Ok(response) => match token_sent(response).await {
                                (200, token) => sent.push(Sent {
                                    started,
                                    token: token.strip_prefix("tok-").unwrap().parse().unwrap(),
                                }),
                                other => failed.push(other),
                            },
                            // Timed out (after WAIT) or refused: failed all the same.
                            Err(err) => failed.push((0, err.to_string())),
                        }
                        drop(in_flight);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (sent, failed)
                })
            })
            .collect();
        let (mut sent, mut failed) = (Vec::new(), Vec::new());
        for sender in senders {
            let (ok, not) = sender.await.unwrap();
            sent.extend(ok);
            failed.extend(not);
        }
        (sent, failed)
    }

    /// Checks that no request waited: each carried a token answered before it started, and
    /// never one older than the previous (still valid while its successor is fetched).
    /// Returns how many started while a token request was in flight.
    fn check_no_request_waited(&self, sent: &[Sent]) -> usize {
        let issued = self.issued.lock().unwrap();
        let mut during_fetches = 0;
        for request in sent {
            let newest = issued.iter().filter(|t| t.answered < request.started).count();
            assert!(
                request.token <= newest && request.token + 1 >= newest,
                "a request that started after tok-{newest} was answered got tok-{} (waited, or an expired token)",
                request.token
            );
            if issued
                .iter()
                .any(|t| t.received < request.started && request.started < t.answered)
            {
                during_fetches += 1;
            }
        }
        during_fetches
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minute_of_steady_traffic_over_four_processes_fetches_once_per_refresh() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 8);
    let fenced = Fenced::default();
    let tokens = fenced.token_endpoint().await;
    let echo = Echo::start().await;
    let yaml = fleet_config(
        &tokens,
        &redis,
        &key,
        &format!("    expiry_skew: 0s\n    refresh_before: {STEADY_REFRESH_BEFORE}s\n"),
    );
    let fleet: Vec<Bearerd> = (0..4).map(|_| Bearerd::start(&yaml, "info", &[])).collect();
    for bearerd in &fleet {
        let line = redis_at_start(bearerd).await;
        assert!(line.contains("the shared cache answers"), "{line}");
    }
    let clients: Vec<reqwest::Client> = fleet.iter().map(|bearerd| proxied(&bearerd.proxy)).collect();
    // The first request waits for the first token; the others find it in Redis.
    for client in &clients {
        assert_eq!(get_through(client, &echo, "/first").await, (200, "tok-1".to_owned()));
    }
    assert_eq!(tokens.count(), 1);

    let first_received = fenced.first_received();
    tokio::time::sleep_until((first_received + STEADY_OFFSET).into()).await;
    let end = tokio::time::Instant::now() + STEADY_TRAFFIC;
    let (sent, failed) = fenced
        .traffic(&clients, &format!("http://{}/steady", echo.addr), end)
        .await;
    assert_eq!(failed, Vec::<(u16, String)>::new(), "no request failed");
    let fetched = tokens.count();
    assert_eq!(
        fenced.issued.lock().unwrap().len(),
        fetched,
        "every token request answered"
    );
    let during_fetches = fenced.check_no_request_waited(&sent);
    assert!(during_fetches > 0, "requests were served while tokens were fetched");
    for server in &fleet {
        let (_, text) = server.admin_get("/metrics").await;
        let lookups = |result| {
            sample(
                &text,
                &format!(r#"bearerd_token_cache_lookups_total{{auth_config="billing",result="{result}"}}"#),
            )
        };
        assert_eq!(lookups("miss"), 1, "only the first request of each process waited");
        assert_eq!(
            sample(&text, r#"bearerd_shared_cache_fallbacks_total{auth_config="billing"}"#),
            0
        );
    }
    // One token request per refresh period for the fleet. A refresh is requested no sooner
    // than 3 s after the previous token's request was sent (the first's was sent before the
    // endpoint received it), by a request started before `end`: at most
    // 1 + floor(span / 3 s) token requests, `span` running from the first's arrival to `end`
    // (61.5 s when the first requests took less than 1.5 s). The design's count is that
    // maximum: the fleet starts each refresh at the first request after the refresh time,
    // which comes within milliseconds; one fewer allows it 75 to 236 ms on average (a
    // loaded machine). Later than 1 s, a token would expire before its successor came, and
    // a request would have waited (checked above).
    let span = end.into_std() - first_received;
    let period = Duration::from_secs(STEADY_LIFETIME - STEADY_REFRESH_BEFORE);
    let most = 1 + span.as_millis() / period.as_millis();
    assert!(
        (most - 1..=most).contains(&(fetched as u128)),
        "{fetched} token requests over {span:?} (expected {most}, or {} on a slow machine)",
        most - 1
    );
    eprintln!(
        "{fetched} token requests for 4 processes in {}s of steady traffic ({} requests, {during_fetches} started while a token was fetched; {STEADY_LIFETIME}s tokens refreshed {STEADY_REFRESH_BEFORE}s before expiry)",
        STEADY_TRAFFIC.as_secs(),
        sent.len()
    );
}

/// A `refresh_token` config `crm` whose file holds `rt-from-file`, keeping its refresh
/// token in `redis` (no `state:` block).
fn crm_fleet(dir: &Path, tokens: &TokenServer, redis: &RedisServer, key_file: &Path) -> String {
    std::fs::write(dir.join("refresh-token"), "rt-from-file\n").unwrap();
    format!(
        "shared_cache:\n  redis: {}\n  key_file: {}\n  prefix: {PREFIX}\nauth_configs:\n  - id: crm\n    grant: refresh_token\n    refresh_token_file: {}/refresh-token\n    token_url: {}\n    client_id: crm-client\n    client_secret: crm-secret\n    allowed_hosts: [127.0.0.1]\n",
        redis.url(),
        key_file.display(),
        dir.display(),
        tokens.url()
    )
}

/// `GET path` on `echo` through the proxy at `proxy` as config `crm`.
async fn crm_through(proxy: &str, echo: &Echo, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", echo.addr);
    token_sent(get_with_config(&proxied(proxy), &url, "crm").await).await
}

/// The refresh token each request to `tokens` sent.
fn refresh_tokens_sent(tokens: &TokenServer) -> Vec<String> {
    tokens
        .requests()
        .iter()
        .map(|request| {
            form_urlencoded::parse(request.body.as_bytes())
                .find(|(name, _)| name == "refresh_token")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// A user grant with `shared_cache:` keeps its refresh token in Redis, sealed: the replicas
/// share it with no consent of their own, the one that refreshes sends the newest, and
/// while Redis does not answer none sends any (that could race another's rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_grants_refresh_token_lives_in_redis_and_is_never_sent_without_it() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 11);
    let tokens = TokenServer::with(Duration::ZERO, rotating).await;
    let echo = Echo::start().await;
    let yaml = crm_fleet(dir.path(), &tokens, &redis, &key);
    let replicas = [Bearerd::start(&yaml, "trace", &[]), Bearerd::start(&yaml, "trace", &[])];

    assert_eq!(crm_through(&replicas[0].proxy, &echo, "/x").await, (200, "at1".into()));
    assert_eq!(crm_through(&replicas[1].proxy, &echo, "/x").await, (200, "at1".into()));
    assert_eq!(refresh_tokens_sent(&tokens), ["rt-from-file"]);
    // The second replica's upstream refuses at1: its refresh sends rt1, which the first
    // replica's refresh put in Redis.
    assert_eq!(
        crm_through(&replicas[1].proxy, &echo, "/only/at2").await,
        (200, "at2".into())
    );
    assert_eq!(refresh_tokens_sent(&tokens), ["rt-from-file", "rt1"]);

    // Redis holds one record, which opens with the key into rt2; nothing there is readable.
    assert_eq!(redis.grant_refresh_token(PREFIX, &[11; 32]), "rt2");
    redis.assert_holds_none_of(PREFIX, &["rt-from-file", "rt1", "rt2", "at1", "at2"]);

    // Redis hangs: the first replica's upstream refuses its at1, and no refresh token is
    // sent without Redis.
    redis.pause();
    let (status, body) = crm_through(&replicas[0].proxy, &echo, "/only/at3").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("the shared cache holding its refresh token did not answer"),
        "{body}"
    );
    assert_eq!(refresh_tokens_sent(&tokens), ["rt-from-file", "rt1"]);
    // The log says so too, and not that it fetches alone (it does not).
    let logs = replicas[0]
        .logs_when("the user grant's warning", |logs| {
            logs.contains("the refresh token is sent only under the lease")
        })
        .await;
    assert!(!logs.contains("fetching the token alone"), "{logs}");
    // Back: once its back-off ends, it refreshes with the newest, rt2.
    redis.resume();
    eventually("the first replica to refresh with Redis back", || async {
        crm_through(&replicas[0].proxy, &echo, "/only/at3").await == (200, "at3".into())
    })
    .await;
    assert_eq!(refresh_tokens_sent(&tokens), ["rt-from-file", "rt1", "rt2"]);

    // A new replica (a new pod) needs no consent: it takes at3 from Redis.
    let third = Bearerd::start(&yaml, "trace", &[]);
    assert_eq!(crm_through(&third.proxy, &echo, "/x").await, (200, "at3".into()));
    assert_eq!(tokens.count(), 3);
    let logs: String = replicas.iter().chain([&third]).map(Bearerd::logs).collect();
    for secret in ["rt-from-file", "rt1", "rt2", "rt3", "at1", "at2", "at3", "crm-secret"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

/// The refresh token refused (`invalid_grant`) through one replica is a new consent for
/// every replica, with that one token request: the others read the spent record and send
/// nothing. A new `refresh_token_file` is the new consent, spent once for the fleet, and
/// `bearerd check` reads the record in Redis without spending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_is_a_new_consent_for_every_replica_and_one_file_renews_them_all() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 12);
    let tokens = TokenServer::with(Duration::ZERO, |n, recorded| {
        if n == 1 { invalid_grant() } else { rotating(n, recorded) }
    })
    .await;
    let echo = Echo::start().await;
    let yaml = crm_fleet(dir.path(), &tokens, &redis, &key);
    let consent_row = |stdout: &str| {
        let row = stdout.lines().find(|line| line.starts_with("crm ")).unwrap().to_owned();
        row.split_whitespace().nth(3).unwrap().to_owned()
    };
    // Nothing in Redis yet: the file's token would be sent.
    let (_, all) = check(&yaml, 0);
    assert_eq!(consent_row(&all), "consented", "{all}");

    let replicas = [Bearerd::start(&yaml, "info", &[]), Bearerd::start(&yaml, "info", &[])];
    let consent_needed = "needs a new consent: put a new refresh token in refresh_token_file";
    for replica in &replicas {
        let (status, body) = crm_through(&replica.proxy, &echo, "/x").await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains(consent_needed), "{body}");
        let (_, metrics) = replica.admin_get("/metrics").await;
        assert_eq!(sample(&metrics, r#"bearerd_consent_required{auth_config="crm"}"#), 1);
    }
    assert_eq!(
        refresh_tokens_sent(&tokens),
        ["rt-from-file"],
        "one token request for the fleet"
    );
    let (_, all) = check(&yaml, 0);
    assert_eq!(consent_row(&all), "consent_required", "{all}");

    // A new refresh token in the file (the Secret both replicas mount): spent once, and
    // both replicas serve with what it brought.
    std::fs::write(dir.path().join("refresh-token"), "rt-new\n").unwrap();
    for replica in &replicas {
        eventually("the replica to take the new refresh token", || async {
            crm_through(&replica.proxy, &echo, "/x").await == (200, "at2".into())
        })
        .await;
        let (_, metrics) = replica.admin_get("/metrics").await;
        assert_eq!(sample(&metrics, r#"bearerd_consent_required{auth_config="crm"}"#), 0);
    }
    assert_eq!(refresh_tokens_sent(&tokens), ["rt-from-file", "rt-new"]);
    assert_eq!(redis.grant_refresh_token(PREFIX, &[12; 32]), "rt2");
    let (_, all) = check(&yaml, 0);
    assert_eq!(consent_row(&all), "consented", "{all}");
    assert_eq!(tokens.count(), 2, "check spent nothing");
}

/// What `bearerd` logged of Redis at start: that it answers, or why it does not.
async fn redis_at_start(bearerd: &Bearerd) -> String {
    let said =
        |line: &str| line.contains("the shared cache answers") || line.contains("the shared cache does not answer");
    let logs = bearerd
        .logs_when("the shared cache's start-up line", |logs| logs.lines().any(said))
        .await;
    logs.lines().find(|line| said(line)).unwrap().to_owned()
}

/// The fallbacks `bearerd` counted for `billing`.
async fn fallbacks(bearerd: &Bearerd) -> u64 {
    let (_, text) = bearerd.admin_get("/metrics").await;
    sample(&text, r#"bearerd_shared_cache_fallbacks_total{auth_config="billing"}"#)
}

/// Two processes on `sharing` share one token through `redis`; a third on `refused` says at
/// start that Redis does not answer and `why`, fetches alone, counts it, serves, and leaves
/// Redis as it was. The three processes, logging at `rust_log`.
async fn two_share_and_one_is_refused(
    (sharing, refused, why): (&str, &str, &str),
    rust_log: &str,
    (tokens, echo, redis): (&TokenServer, &Echo, &RedisServer),
) -> [Bearerd; 3] {
    let (a, b) = (
        Bearerd::start(sharing, rust_log, &[]),
        Bearerd::start(sharing, rust_log, &[]),
    );
    for bearerd in [&a, &b] {
        let line = redis_at_start(bearerd).await;
        assert!(line.contains("the shared cache answers"), "{line}");
    }
    assert_eq!(
        get_through(&proxied(&a.proxy), echo, "/").await,
        (200, "tok-1".to_owned())
    );
    assert_eq!(
        get_through(&proxied(&b.proxy), echo, "/").await,
        (200, "tok-1".to_owned())
    );
    assert_eq!(tokens.count(), 1, "b took a's token from Redis");
    assert_eq!((fallbacks(&a).await, fallbacks(&b).await), (0, 0));
    let stored = redis.values(PREFIX);
    assert_eq!(stored.len(), 1);

    let c = Bearerd::start(refused, rust_log, &[]);
    let line = redis_at_start(&c).await;
    assert!(
        line.contains("the shared cache does not answer") && line.contains(why),
        "{line}"
    );
    assert_eq!(
        get_through(&proxied(&c.proxy), echo, "/").await,
        (200, "tok-2".to_owned())
    );
    assert_eq!(tokens.count(), 2);
    assert_eq!(fallbacks(&c).await, 1);
    c.logs_when("the fallback's warning", |logs| {
        logs.contains("fetching the token alone")
    })
    .await;
    assert_eq!(redis.values(PREFIX), stored);
    [a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_against_the_roots_bearerd_trusts() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 10);
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let untrusting = fleet_config(&tokens, &redis, &key, "");
    assert!(untrusting.contains(&format!("redis: rediss://127.0.0.1:{}\n", redis.port)));
    let trusting = format!("tls:\n  ca_file: {}\n{untrusting}", ca.write_ca(dir.path()).display());

    // With the test CA in tls.ca_file, two processes share one token over TLS. Without it,
    // nothing vouches for the server's certificate: the process fetches alone.
    two_share_and_one_is_refused(
        (&trusting, &untrusting, "UnknownIssuer"),
        "info",
        (&tokens, &echo, &redis),
    )
    .await;

    // `bearerd check` connects the same way, and says why it failed.
    let (last, _) = check(&trusting, 0);
    assert_eq!(last, format!("shared_cache: rediss://127.0.0.1:{} answers", redis.port));
    let (last, _) = check(&untrusting, 1);
    assert!(
        last.starts_with(&format!(
            "shared_cache: FAILED: the shared cache at rediss://127.0.0.1:{} ",
            redis.port
        )) && last.contains("UnknownIssuer"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_and_password_share_the_token_and_the_password_shows_nowhere() {
    const USER: &str = "fleet-user";
    const PASSWORD: &str = "acl-pw-Zq81xT";
    const WRONG: &str = "wrong-pw-Kd47vN";
    let redis = RedisServer::start_with_user(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 11);
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let right = fleet_config(&tokens, &redis, &key, "");
    assert!(right.contains(&format!("redis: redis://{USER}:{PASSWORD}@127.0.0.1:{}\n", redis.port)));
    let wrong = right.replace(&redis.url(), &redis.url_as(USER, WRONG));

    // Logged in as the ACL user (the default user can do nothing), two processes share one
    // token; with a wrong password, Redis refuses and the process fetches alone.
    let fleet = two_share_and_one_is_refused(
        (&right, &wrong, "Password authentication failed"),
        "trace",
        (&tokens, &echo, &redis),
    )
    .await;

    // Neither password anywhere bearerd writes or answers, at trace level.
    let mut said = Vec::new();
    for bearerd in &fleet {
        said.push(bearerd.logs());
        for path in ["/configs", "/metrics"] {
            let (status, body) = bearerd.admin_get(path).await;
            assert_eq!(status, 200, "{path}");
            said.push(body);
        }
    }
    let (last, all) = check(&right, 0);
    assert_eq!(
        last,
        format!(
            "shared_cache: redis://{USER}:[redacted]@127.0.0.1:{} answers",
            redis.port
        )
    );
    said.push(all);
    let (last, all) = check(&wrong, 1);
    assert!(last.contains("Password authentication failed"), "{last}");
    said.push(all);
    for text in &said {
        for password in [PASSWORD, WRONG] {
            assert!(!text.contains(password), "{password} in {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_value_is_logged_once_per_incident_not_per_read() {
    const UNREADABLE: &str = "was not used and will be replaced";
    const WAITED: &str = "while another process held its lease";
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "cache-key", 12);
    let tokens = TokenServer::start().await;
    let echo = Echo::start().await;
    let bearerd = Bearerd::start(&fleet_config(&tokens, &redis, &key, "    timeout: 1s\n"), "info", &[]);
    let client = proxied(&bearerd.proxy);
    assert_eq!(get_through(&client, &echo, "/").await, (200, "tok-1".to_owned()));
    let name = redis.values(PREFIX)[0].0.clone();
    let lease = name.replace(":token:", ":lease:");
    // A token sealed for this very entry, under another key.
    let foreign = || {
        let sealer = Sealer::new(&SealingKey::parse(&[13; 32]).unwrap(), PREFIX);
        let now = std::time::SystemTime::now();
        let token = SharedToken {
            token: AccessToken::new("foreign-token"),
            expires_at: now + Duration::from_secs(3600),
            refresh_at: now + Duration::from_secs(3000),
            scope: None,
        };
        redis.set(&name, &sealer.seal(&name, &token), 3_600_000);
    };
    let count = |logs: &str, what: &str| logs.lines().filter(|line| line.contains(what)).count();

    // Another process seems to hold the lease: each refetch reads the unreadable value until
    // its wait ends, then fetches alone. Two refetches, many reads, one line.
    foreign();
    redis.set(&lease, b"another-process", 60_000);
    assert_eq!(
        get_through(&client, &echo, "/only/tok-2").await,
        (200, "tok-2".to_owned())
    );
    assert_eq!(
        get_through(&client, &echo, "/only/tok-3").await,
        (200, "tok-3".to_owned())
    );
    let logs = bearerd.logs_when("both waits", |logs| count(logs, WAITED) == 2).await;
    assert_eq!(count(&logs, UNREADABLE), 1, "{logs}");
    let (_, text) = bearerd.admin_get("/metrics").await;
    let unreadable_reads = sample(
        &text,
        r#"bearerd_shared_cache_operations_total{op="get",outcome="error"}"#,
    );
    assert!(unreadable_reads >= 4, "{unreadable_reads}");
    assert_eq!(fallbacks(&bearerd).await, 2);

    // The lease free again: this process fetches under it and replaces the value (still the
    // same incident). A new unreadable value after that is a new incident, logged again.
    let deleted: i64 = redis::cmd("DEL").arg(&lease).query(&mut redis.connection()).unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        get_through(&client, &echo, "/only/tok-4").await,
        (200, "tok-4".to_owned())
    );
    let ours = Sealer::new(&SealingKey::parse(&[12; 32]).unwrap(), PREFIX);
    let (_, stored) = &redis.values(PREFIX)[0];
    assert_eq!(ours.open(&name, stored).unwrap().token.expose(), "tok-4");
    foreign();
    assert_eq!(
        get_through(&client, &echo, "/only/tok-5").await,
        (200, "tok-5".to_owned())
    );
    let logs = bearerd
        .logs_when("the second incident", |logs| count(logs, UNREADABLE) >= 2)
        .await;
    assert_eq!(count(&logs, UNREADABLE), 2, "{logs}");
    assert_eq!(tokens.count(), 5);
}
