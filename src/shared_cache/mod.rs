//! The fleet-shared token cache (`shared_cache:`): one token per config for every bearerd
//! that shares a Redis, so a fleet of N replicas asks its provider as often as one does.
//!
//! The token cache asks here only when its own slot has no usable token (a local hit never
//! touches the network), from the one fetch in flight for that slot:
//! 1. `GET {prefix}:token:{hash}`: a token another process stored, sealed ([`seal`]);
//! 2. else `SET {prefix}:lease:{hash} <owner> NX PX <timeout>`: the process that takes the
//!    lease fetches, stores the sealed token with a TTL at its expiry, and releases the
//!    lease only if it still owns it (compare-and-delete);
//! 3. the others wait for the value, reading it again with a growing pause, and take the
//!    lease over when a holder that died lets it expire; after the config's `timeout`
//!    they fetch alone.
//!
//! Redis failing, refusing or slower than [`OP_TIMEOUT`] is never a failed request: the
//! process fetches alone ([`Found::Alone`], counted as a fallback) and tries Redis again at
//! its next miss; the connection manager reconnects by itself.

pub mod seal;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

pub use seal::{Sealer, SharedToken, Unsealed};

use crate::config::SharedCacheConfig;
use crate::metrics::Metrics;
use crate::state::Record;
use crate::tls;

/// The longest one Redis operation may take before this process stops waiting for it and
/// fetches alone: a shared cache slower than that costs more than it saves.
pub const OP_TIMEOUT: Duration = Duration::from_millis(100);

/// How long [`SharedCache::ping`] waits: long enough for the connection's own retries to
/// end, so that a refused connection, certificate or password is reported as itself.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Waiters read the value again after this pause, doubling up to [`MAX_PAUSE`]: quick
/// enough to pick a token up soon after it lands, rare enough that a fleet waiting on one
/// fetch sends Redis a few reads per second each.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Deletes KEYS[1] only while it still holds ARGV[1]: a lease is released only by its
/// owner, and a token evicted only while it is the one an upstream refused.
const COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Replaces KEYS[1] with ARGV[2] (deletes it when ARGV[2] is empty) only while it still
/// holds ARGV[1] (is absent when ARGV[1] is empty; no sealed value is empty): a user
/// grant's record changes only from the version its writer read.
const COMPARE_AND_SET: &str = "local held = redis.call('GET', KEYS[1]) or ''
if held ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1";

/// Why Redis gave no answer; the request goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum SharedCacheError {
    #[error("the shared cache at {url} did not answer within {}ms", within.as_millis())]
    Timeout { url: String, within: Duration },
    #[error("the shared cache at {url} failed: {cause}")]
    Redis { url: String, cause: redis::RedisError },
}

/// A connection to the fleet's Redis, and the keys that name and seal what it holds there.
pub struct SharedCache {
    connection: ConnectionManager,
    sealer: Sealer,
    /// The URL without its password, for messages.
    shown: String,
    metrics: Arc<Metrics>,
    /// The entries whose unreadable value was logged. Per entry, until a value there opens
    /// or this process stores one: one incident is read many times (twice per miss, again
    /// and again while waiting on a lease holder, at every miss that then fetches alone), and
    /// a line per read would bury it; per process, a later incident (another entry, or the
    /// same one after it was repaired) would go unlogged. At most one entry per config.
    reported_unreadable: Mutex<HashSet<String>>,
}

/// What a miss found in the shared cache.
pub enum Found {
    /// A token another process stored, and its sealed value (what a 401 evicts).
    Stored(SharedToken, Vec<u8>),
    /// This process holds the lease: fetch, then [`Lease::store`] or [`Lease::release`].
    Leased(Lease),
    /// Redis failed, or nothing came within the wait: fetch alone (a grant whose refresh
    /// token lives in Redis may not; the caller says which, and logs why).
    Alone(Without),
}

/// Why a miss goes on without the shared cache.
pub enum Without {
    /// Redis failed: a refused TLS certificate or password shows here and nowhere else once
    /// running.
    Failed(SharedCacheError),
    /// Another process held the lease for the whole wait and stored nothing.
    Waited(Duration),
}

impl SharedCache {
    /// Connects lazily: a Redis that is down at start delays nothing, and the first miss
    /// finds out. A `rediss://` server must present a certificate that `roots` (every root
    /// bearerd trusts: [`crate::tls::load_roots`]) vouch for.
    pub fn new(
        config: &SharedCacheConfig,
        roots: &[CertificateDer<'static>],
        metrics: Arc<Metrics>,
    ) -> Result<Self, SharedCacheError> {
        let shown = config.redis.to_string();
        let failed = |cause| SharedCacheError::Redis {
            url: shown.clone(),
            cause,
        };
        let client = client(config, roots).map_err(failed)?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            // The retries of one connection fit in one operation's time (the crate's first
            // pause alone would be 100 ms), so what Redis said shows rather than a timeout.
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, settings).map_err(failed)?;
        Ok(Self {
            connection,
            sealer: Sealer::new(&config.key, &config.prefix),
            shown,
            metrics,
            reported_unreadable: Mutex::default(),
        })
    }

    /// Names entries and seals values.
    #[must_use]
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Connects at start, and says whether Redis answers: the first miss then finds the
    /// connection (and its TLS handshake) made, and a Redis that cannot be used (its
    /// certificate, its password) is logged at once, with why.
    pub async fn connect(&self) {
        match self.ping().await {
            Ok(()) => tracing::info!(redis = %self.shown, "the shared cache answers"),
            Err(err) => tracing::warn!(
                error = %crate::chain(&err),
                "the shared cache does not answer; tokens are fetched alone until it does"
            ),
        }
    }

    /// Whether Redis answers a `PING` now (for `bearerd check`).
    pub async fn ping(&self) -> Result<(), SharedCacheError> {
        self.run_within::<String>(&redis::cmd("PING"), PING_TIMEOUT)
            .await
            .map(drop)
    }

    /// Looks for the token named `hash`: one that `usable` accepts, or the lease to fetch
    /// it, waiting at most `wait` (the config's token request timeout, also the lease's
    /// lifetime) for another process's fetch. `refused` is a value an upstream refused the
    /// token of: it is deleted first (if still there) and never returned.
    pub async fn find(
        self: &Arc<Self>,
        hash: &str,
        wait: Duration,
        refused: Option<&[u8]>,
        usable: impl Fn(&SharedToken) -> bool,
    ) -> Found {
        let key = self.sealer.token_key(hash);
        if let Some(refused) = refused {
            let _ = self.compare_and_delete("set", &key, refused).await;
        }
        let deadline = Instant::now() + wait;
        let mut pause = FIRST_PAUSE;
        loop {
            match self.get(&key).await {
                Err(err) => return Found::Alone(Without::Failed(err)),
                Ok(Some((token, value))) if usable(&token) && refused != Some(value.as_slice()) => {
                    return Found::Stored(token, value);
                }
                Ok(_) => {}
            }
            match self.take_lease(hash, wait).await {
                Err(err) => return Found::Alone(Without::Failed(err)),
                // Another holder may have stored its token and released the lease between
                // our read and our SET: one more read saves a second token request.
                Ok(Some(lease)) => {
                    return match self.get(&key).await {
                        Ok(Some((token, value))) if usable(&token) && refused != Some(value.as_slice()) => {
                            lease.release().await;
                            Found::Stored(token, value)
                        }
                        _ => Found::Leased(lease),
                    };
                }
                Ok(None) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Found::Alone(Without::Waited(wait));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// The token stored under `key` and its sealed value; a value that does not open is
    /// absent.
    async fn get(&self, key: &str) -> Result<Option<(SharedToken, Vec<u8>)>, SharedCacheError> {
        self.get_sealed(key, Sealer::open).await
    }

    /// What `open` reads from the value under `key`, and that sealed value; a value that
    /// does not open is absent (counted, and logged once per incident).
    async fn get_sealed<T>(
        &self,
        key: &str,
        open: impl FnOnce(&Sealer, &str, &[u8]) -> Result<T, Unsealed>,
    ) -> Result<Option<(T, Vec<u8>)>, SharedCacheError> {
        let value: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(key))
            .await
            .inspect_err(|_| self.count("get", "error"))?;
        let Some(value) = value else {
            self.count("get", "miss");
            return Ok(None);
        };
        match open(&self.sealer, key, &value) {
            Ok(opened) => {
                self.count("get", "hit");
                self.readable(key);
                Ok(Some((opened, value)))
            }
            Err(why) => {
                self.count("get", "error");
                self.report_unopenable(key, why);
                Ok(None)
            }
        }
    }

    /// `key` holds a value that opens: an unreadable one there later is a new incident.
    fn readable(&self, key: &str) {
        let mut reported = self.reported();
        if !reported.is_empty() {
            reported.remove(key);
        }
    }

    fn reported(&self) -> MutexGuard<'_, HashSet<String>> {
        self.reported_unreadable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease on `hash` for `ttl`, when no other process holds it.
    async fn take_lease(self: &Arc<Self>, hash: &str, ttl: Duration) -> Result<Option<Lease>, SharedCacheError> {
        let key = self.sealer.lease_key(hash);
        let owner = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let taken: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl).max(1)),
            )
            .await
            .inspect_err(|_| self.count("lease", "error"))?;
        if taken.is_none() {
            self.count("lease", "miss");
            return Ok(None);
        }
        self.count("lease", "ok");
        Ok(Some(Lease {
            cache: Arc::clone(self),
            key,
            owner,
            token_key: self.sealer.token_key(hash),
            released: false,
        }))
    }

    /// Deletes `key` if it still holds `value`; counted as `op`.
    async fn compare_and_delete(&self, op: &'static str, key: &str, value: &[u8]) -> Result<bool, SharedCacheError> {
        let deleted: i64 = self
            .run(redis::cmd("EVAL").arg(COMPARE_AND_DELETE).arg(1).arg(key).arg(value))
            .await
            .inspect_err(|_| self.count(op, "error"))?;
        self.count(op, "ok");
        Ok(deleted == 1)
    }

    /// The record of the user grant named `hash` (its refresh token), and its sealed value
    /// (the version a [`SharedCache::replace_grant`] compares with). A value that does not
    /// open is absent: the grant needs a new consent, which replaces it.
    pub async fn read_grant(&self, hash: &str) -> Result<Option<(Record, Vec<u8>)>, SharedCacheError> {
        self.get_sealed(&self.sealer.grant_key(hash), Sealer::open_record).await
    }

    /// Replaces the record of the user grant named `hash` with `new` (removes it when
    /// `None`), if it still holds `expected` (the sealed value read; `None`: absent). Whether
    /// it did: `false` means another process changed it since (a consent, or a rotation).
    pub async fn replace_grant(
        &self,
        hash: &str,
        expected: Option<&[u8]>,
        new: Option<&Record>,
    ) -> Result<bool, SharedCacheError> {
        let key = self.sealer.grant_key(hash);
        let new = new
            .map(|record| self.sealer.seal_record(&key, record))
            .unwrap_or_default();
        let replaced: i64 = self
            .run(
                redis::cmd("EVAL")
                    .arg(COMPARE_AND_SET)
                    .arg(1)
                    .arg(&key)
                    .arg(expected.unwrap_or_default())
                    .arg(new),
            )
            .await
            .inspect_err(|_| self.count("set", "error"))?;
        self.count("set", "ok");
        Ok(replaced == 1)
    }

    /// A new consent for the user grant named `hash`: its `record` replaces whatever the
    /// fleet held, and the access token of the consent before goes with it, so no process
    /// takes that one from Redis any more.
    pub async fn consented(&self, hash: &str, record: Option<&Record>) -> Result<(), SharedCacheError> {
        let key = self.sealer.grant_key(hash);
        let mut pipe = redis::pipe();
        pipe.atomic().del(self.sealer.token_key(hash)).ignore();
        match record {
            Some(record) => pipe.set(&key, self.sealer.seal_record(&key, record)).ignore(),
            None => pipe.del(&key).ignore(),
        };
        let mut connection = self.connection.clone();
        let written = self.timed(pipe.query_async::<()>(&mut connection), OP_TIMEOUT).await;
        self.count("set", if written.is_ok() { "ok" } else { "error" });
        written
    }

    /// Stores `token`, sealed, under `key` until it expires; its sealed value, or `None`
    /// when it is already expired or Redis failed.
    async fn put(&self, key: &str, token: &SharedToken) -> Option<Vec<u8>> {
        let ttl = token.expires_at.duration_since(SystemTime::now()).ok()?;
        let value = self.sealer.seal(key, token);
        let stored = self
            .run::<()>(redis::cmd("SET").arg(key).arg(&value).arg("PX").arg(millis(ttl).max(1)))
            .await;
        self.count("set", if stored.is_ok() { "ok" } else { "error" });
        if stored.is_ok() {
            self.readable(key);
        }
        stored.ok().map(|()| value)
    }

    /// Sends `command`, giving up after [`OP_TIMEOUT`].
    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, SharedCacheError> {
        self.run_within(command, OP_TIMEOUT).await
    }

    /// Sends `command`, giving up after `within`.
    async fn run_within<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        within: Duration,
    ) -> Result<T, SharedCacheError> {
        let mut connection = self.connection.clone();
        self.timed(command.query_async(&mut connection), within).await
    }

    /// `query`'s answer, or why there is none: Redis failed, or took longer than `within`.
    async fn timed<T>(
        &self,
        query: impl Future<Output = redis::RedisResult<T>>,
        within: Duration,
    ) -> Result<T, SharedCacheError> {
        match tokio::time::timeout(within, query).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(cause)) => Err(SharedCacheError::Redis {
                url: self.shown.clone(),
                cause,
            }),
            Err(_) => Err(SharedCacheError::Timeout {
                url: self.shown.clone(),
                within,
            }),
        }
    }

    /// Logs a value that does not open under `key`, once until a readable value is back
    /// there (see `reported_unreadable`).
    fn report_unopenable(&self, key: &str, why: Unsealed) {
        if self.reported().insert(key.to_owned()) {
            tracing::warn!(
                key,
                "a value in the shared cache was not used and will be replaced: {why}"
            );
        }
    }

    fn count(&self, op: &str, outcome: &str) {
        self.metrics
            .shared_cache_operations
            .with_label_values(&[op, outcome])
            .inc();
    }
}

/// The right to fetch one token for the fleet, until released or expired. Dropped without
/// [`Lease::store`] or [`Lease::release`] (its task cancelled), it is released in the
/// background.
pub struct Lease {
    cache: Arc<SharedCache>,
    key: String,
    owner: String,
    token_key: String,
    released: bool,
}

impl Lease {
    /// Stores the token this lease was taken for, then releases the lease; its sealed value
    /// when Redis took it.
    pub async fn store(mut self, token: &SharedToken) -> Option<Vec<u8>> {
        let stored = self.cache.put(&self.token_key, token).await;
        self.release_now().await;
        stored
    }

    /// Releases the lease without a token (the fetch failed): the next process may try.
    pub async fn release(mut self) {
        self.release_now().await;
    }

    async fn release_now(&mut self) {
        self.released = true;
        // Lost (expired, taken over): nothing to release, and no error.
        let _ = self
            .cache
            .compare_and_delete("lease", &self.key, self.owner.as_bytes())
            .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cache = Arc::clone(&self.cache);
            let (key, owner) = (std::mem::take(&mut self.key), std::mem::take(&mut self.owner));
            runtime.spawn(async move {
                let _ = cache.compare_and_delete("lease", &key, owner.as_bytes()).await;
            });
        }
    }
}

/// The client for `config.redis`. Over TLS it trusts exactly `roots`: the crate's own
/// default would be the system store alone, without webpki's roots or `tls.ca_file`. It
/// takes roots only as PEM, and builds its rustls configuration with the process's default
/// provider, which is made aws-lc-rs first.
fn client(config: &SharedCacheConfig, roots: &[CertificateDer<'static>]) -> redis::RedisResult<redis::Client> {
    if !config.redis.tls() {
        return redis::Client::open(config.redis.expose());
    }
    tls::install_default_provider();
    let pem: String = roots.iter().map(tls::pem_certificate).collect();
    redis::Client::build_with_tls(
        config.redis.expose(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.into_bytes()),
        },
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
