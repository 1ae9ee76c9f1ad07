//! Access tokens: a moka cache of one slot per auth config, filled by single-flight fetches
//! from the token endpoint, refreshed ahead of expiry, and backed off when the identity
//! provider fails.
//!
//! A slot holds the current token, the fetch in flight (if any), and the failure count.
//! - fresh token: used as it is;
//! - inside `refresh_before`: used, and one background refresh starts (unless one runs, or
//!   the slot is backing off); its result replaces the token for later requests;
//! - missing or expired: the request waits for the one fetch in flight, starting it if
//!   needed; every waiter gets the same token or the same error. With `shared_cache:`, that
//!   fetch (and a refresh) first asks the fleet's Redis, and asks the provider only under
//!   the fleet's lease or when Redis fails (`fleet`);
//! - after a failed fetch: consecutive failures back off exponentially with jitter, and a
//!   request with no valid token fails fast with [`TokenFailure::Backoff`] instead of
//!   reaching the provider. A still-valid token keeps being used when a refresh fails.
//!
//! Expiry is counted on the monotonic (tokio) clock from when the token request was sent,
//! not from when the response arrived: the provider starts the lifetime when it issues the
//! token, which is in between, so counting from the request never runs late. A JWT access
//! token's `exp` claim ends the lifetime when it comes first (whole seconds, so up to one
//! second before `expires_in` does). `expiry_skew`, capped at half the lifetime, is taken off
//! the end, for the time a request takes to reach an upstream that checks `exp` itself. An
//! expired token is never handed out. Fetches run as their own tasks, so a request that
//! gives up does not cancel a fetch other requests wait for.

mod answer;
mod discovery;
mod endpoint;
mod fleet;
mod grants;
mod impersonation;
mod jwt;

use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::time::Instant;

pub use answer::{MAX_RESPONSE_BYTES, TokenError, TokenResponse};
pub use endpoint::{
    AuthorizationServer, GrantRequest, RequestToken, TokenClient, TokenFile, TokenFileState, basic_auth,
    inspect_token_file, parse_response, token_files,
};
pub use fleet::entry_hash;
pub use grants::{Consented, Grants, holds_refresh_token, remedy};

use crate::config::{AuthConfig, CacheKey};
use crate::metrics::Metrics;
use crate::secret::AccessToken;
use crate::shared_cache::SharedCache;

/// Back-off delays are jittered down by up to this fraction, so they never pass the cap and
/// clients that failed together do not retry together.
const JITTER: f64 = 0.2;

/// A token in the cache.
#[derive(Debug)]
pub struct CachedToken {
    pub token: AccessToken,
    /// Never handed out at or after this instant.
    pub expires_at: Instant,
    /// From this instant on, requests start a background refresh.
    pub refresh_at: Instant,
    /// Scopes the provider granted, when it said.
    pub scope: Option<String>,
    /// The header value `<prefix> <token>`, rendered once for the prefix it was made with.
    pub rendered: OnceLock<(String, http::HeaderValue)>,
    /// Its sealed value in the shared cache, when it came from there or went there: an
    /// upstream's 401 evicts exactly that value from Redis, not a newer one.
    pub shared: Option<Vec<u8>>,
}

/// Lifetimes longer than this are cut to it, so instant arithmetic cannot overflow on a
/// `default_ttl` of centuries; it is also the most `expires_in` may say.
const LONGEST_LIFETIME: Duration = Duration::from_secs(10_000_000_000);

/// When a token whose request was sent at `sent` expires, and when its refresh should start;
/// `None` when it has no lifetime at all.
///
/// The lifetime runs from `sent` for `ttl`, or until the token's JWT `exp` (`exp_in` after
/// `sent`) when that comes first. The last `skew` of it, or its second half when that is
/// shorter, is never used. The refresh window is `refresh_before`, or half of what is left
/// when that is not longer than the window, so a short-lived token is still used for a while.
#[must_use]
pub fn lifetimes(
    sent: Instant,
    ttl: Duration,
    exp_in: Option<Duration>,
    skew: Duration,
    refresh_before: Duration,
) -> Option<(Instant, Instant)> {
    let lifetime = exp_in.map_or(ttl, |exp_in| exp_in.min(ttl)).min(LONGEST_LIFETIME);
    if lifetime.is_zero() {
        return None;
    }
    let usable = lifetime.saturating_sub(skew.min(lifetime / 2));
    let window = if refresh_before < usable {
        refresh_before
    } else {
        usable / 2
    };
    let expires_at = sent + usable;
    Some((expires_at, expires_at - window))
}

/// The wait after `failures` consecutive failed fetches: `initial` doubling per failure,
/// capped at `max`, then lowered by up to 20% (`jitter` in `[0, 1)`).
#[must_use]
pub fn backoff_delay(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let delay = initial.saturating_mul(1 << doublings).min(max);
    delay.mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
}

/// Where tokens come from: each grant's requests to the token endpoint ([`Grants`]), or a
/// script in tests.
pub trait FetchToken: Send + Sync + 'static {
    fn fetch<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>>;

    /// Why no token request may be sent for `config` now, when that is known without asking
    /// the provider (a user grant waiting for a new consent): requests then fail at once with
    /// it, and no refresh starts.
    fn blocked(&self, _config: &AuthConfig) -> Option<TokenError> {
        None
    }
}

impl<T: FetchToken> FetchToken for Arc<T> {
    fn fetch<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
        (**self).fetch(config)
    }

    fn blocked(&self, config: &AuthConfig) -> Option<TokenError> {
        (**self).blocked(config)
    }
}

/// How a request's token was found, for the cache metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Fresh in the cache.
    Hit,
    /// Fetched (or waited for) because the cache had no valid token.
    Miss,
    /// Valid but inside `refresh_before`: used while a refresh runs.
    RefreshAhead,
}

/// Why a request gets no token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TokenFailure {
    #[error("{0}")]
    Unavailable(Arc<TokenError>),
    #[error(
        "token requests are backing off after {failures} consecutive failure{}; next attempt in {}s{}",
        if *failures == 1 { "" } else { "s" },
        retry_after.as_secs_f64().ceil(),
        last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    Backoff {
        retry_after: Duration,
        failures: u32,
        last_error: Option<Arc<TokenError>>,
    },
}

/// The token state of one auth config, for admin output.
#[derive(Clone, Debug, Default)]
pub struct TokenState {
    pub valid_until: Option<SystemTime>,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// A user grant that holds no refresh token the provider still honours.
    pub consent_required: bool,
}

type Outcome = Result<Arc<CachedToken>, Arc<TokenError>>;

#[derive(Default)]
pub struct Slot {
    state: Mutex<SlotState>,
    /// `state.token`, readable without the lock: the cache-hit path only loads this.
    current: ArcSwapOption<CachedToken>,
}

#[derive(Default)]
struct SlotState {
    token: Option<Arc<CachedToken>>,
    /// The fetch in flight; `None` in the channel until it finishes.
    flight: Option<watch::Receiver<Option<Outcome>>>,
    failures: u32,
    backoff_until: Option<Instant>,
    last_error: Option<Arc<TokenError>>,
    last_refresh: Option<SystemTime>,
    /// The shared cache's value of a token an upstream refused: the next fetch deletes it
    /// from Redis (if it is still there) before looking.
    refused: Option<Vec<u8>>,
}

impl Slot {
    /// Sets the token under the lock, and its lock-free copy.
    fn set_token(&self, state: &mut SlotState, token: Option<Arc<CachedToken>>) {
        self.current.store(token.clone());
        state.token = token;
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock leaves consistent data: every update is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hasher for keys that carry their hash ([`CacheKey`]): it takes that number as it is.
/// Anything else written to it is folded in, FNV-style, so it is never wrong, only slower.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 ^= hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The token cache: one slot per auth config, keyed by everything that shapes its token.
pub struct TokenCache {
    slots: moka::sync::Cache<CacheKey, Arc<Slot>, BuildHasherDefault<Prehashed>>,
    source: Arc<dyn FetchToken>,
    metrics: Arc<Metrics>,
    flights: Arc<Flights>,
    /// The fleet's Redis (`shared_cache:`), asked at a local miss before the provider.
    shared: Option<Arc<SharedCache>>,
}

/// How many fetches run now, so a shutdown can let them finish: a refresh whose response
/// rotated a refresh token must live to keep the new one, or the next start finds only
/// the spent one.
#[derive(Default)]
struct Flights {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// Counts one fetch as running until dropped (also when its task panics or is cancelled).
struct InFlight(Arc<Flights>);

impl InFlight {
    fn start(flights: &Arc<Flights>) -> Self {
        flights.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(flights))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl TokenCache {
    /// Tokens from `source`; every fetch is counted and timed in `metrics`.
    #[must_use]
    pub fn new(source: impl FetchToken, metrics: Arc<Metrics>) -> Self {
        Self {
            slots: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .build_with_hasher(BuildHasherDefault::default()),
            source: Arc::new(source),
            metrics,
            flights: Arc::default(),
            shared: None,
        }
    }

    /// Shares tokens with the fleet through `shared`: a local miss looks there before it
    /// fetches, and a fetch stores its token there.
    #[must_use]
    pub fn with_shared_cache(mut self, shared: Arc<SharedCache>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Returns once no fetch is running (at once if none is).
    pub async fn idle(&self) {
        loop {
            let done = self.flights.done.notified();
            let mut done = std::pin::pin!(done);
            // Registered before the count is read, so a fetch ending in between still wakes us.
            done.as_mut().enable();
            if self.flights.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    /// Drops the slots (tokens, back-off) of every config whose cache key is not in `keep`:
    /// after a reload, changed and removed configs start afresh, unchanged ones keep theirs.
    pub fn retain(&self, keep: &std::collections::HashSet<&str>) {
        let stale: Vec<Arc<CacheKey>> = self
            .slots
            .iter()
            .filter(|(key, _)| !keep.contains(key.as_str()))
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            self.slots.invalidate(&*key);
        }
    }

    /// `config`'s slot: the one it has had since its token-shaping fields last changed, or a
    /// new one. The running state looks it up once per configuration, not per request.
    pub fn slot(&self, config: &AuthConfig) -> Arc<Slot> {
        self.slots
            .get_with_by_ref(config.cache_key(), || Arc::new(Slot::default()))
    }

    /// A valid token for `config`, and how it was found.
    pub async fn get(&self, config: &Arc<AuthConfig>) -> Result<(Arc<CachedToken>, Lookup), TokenFailure> {
        self.get_in(&self.slot(config), config).await
    }

    /// A valid token for `config` from its `slot` ([`TokenCache::slot`]), and how it was found.
    pub async fn get_in(
        &self,
        slot: &Arc<Slot>,
        config: &Arc<AuthConfig>,
    ) -> Result<(Arc<CachedToken>, Lookup), TokenFailure> {
        // The hit path: no lock, no allocation.
        if let Some(token) = slot.current.load_full()
            && Instant::now() < token.refresh_at
        {
            return Ok((token, Lookup::Hit));
        }
        // A second round only when a token fetched for us expired before we could use it.
        for _ in 0..2 {
            let flight = {
                let mut state = slot.lock();
                let now = Instant::now();
                match state.token.clone() {
                    Some(token) if now < token.refresh_at => return Ok((token, Lookup::Hit)),
                    Some(token) if now < token.expires_at => {
                        let backing_off = state.backoff_until.is_some_and(|until| now < until);
                        if state.flight.is_none() && !backing_off && self.source.blocked(config).is_none() {
                            let refused = state.refused.take();
                            state.flight = Some(self.start_fetch(slot, config, Some(token.clone()), refused));
                        }
                        return Ok((token, Lookup::RefreshAhead));
                    }
                    Some(_) => slot.set_token(&mut state, None),
                    None => {}
                }
                if let Some(flight) = &state.flight {
                    flight.clone()
                } else {
                    if let Some(blocked) = self.source.blocked(config) {
                        return Err(TokenFailure::Unavailable(Arc::new(blocked)));
                    }
                    if let Some(until) = state.backoff_until.filter(|until| now < *until) {
                        return Err(TokenFailure::Backoff {
                            retry_after: until - now,
                            failures: state.failures,
                            last_error: state.last_error.clone(),
                        });
                    }
                    let refused = state.refused.take();
                    let flight = self.start_fetch(slot, config, None, refused);
                    state.flight = Some(flight.clone());
                    flight
                }
            };
            match Box::pin(wait(slot, flight)).await {
                Ok(token) if Instant::now() < token.expires_at => return Ok((token, Lookup::Miss)),
                Ok(_) => {}
                Err(err) => return Err(TokenFailure::Unavailable(err)),
            }
        }
        Err(TokenFailure::Unavailable(Arc::new(TokenError::Invalid(
            "the token expired before it could be used".into(),
        ))))
    }

    /// Drops `refused` if it is still the cached token (after the upstream refused it), so
    /// many requests refused with the same token cause one new fetch, not one each.
    pub fn evict_if_current(&self, config: &AuthConfig, refused: &Arc<CachedToken>) -> bool {
        let Some(slot) = self.slots.get(config.cache_key()) else {
            return false;
        };
        let mut state = slot.lock();
        if state.token.as_ref().is_some_and(|token| Arc::ptr_eq(token, refused)) {
            slot.set_token(&mut state, None);
            state.refused.clone_from(&refused.shared);
            true
        } else {
            false
        }
    }

    /// Puts the access token of `response` (a consent's code exchange, sent at `sent`) in
    /// `config`'s slot, as if a fetch had brought it: the back-off and the last error end.
    pub fn install(&self, config: &AuthConfig, response: TokenResponse, sent: Sent) -> Result<(), TokenError> {
        let token = entry(config, response, sent)?;
        let slot = self.slot(config);
        let mut state = slot.lock();
        put(&slot, &mut state, &self.metrics, &config.id, token);
        Ok(())
    }

    /// A new consent came for `config` without a token request (a new `refresh_token_file`):
    /// the back-off and the last error, which were the old refresh token's refusal, end, so
    /// the next request sends the new one at once.
    pub fn consent_renewed(&self, config: &AuthConfig) {
        let Some(slot) = self.slots.get(config.cache_key()) else {
            return;
        };
        let mut state = slot.lock();
        state.failures = 0;
        state.backoff_until = None;
        state.last_error = None;
    }

    /// The token state of `config`, never the token itself.
    #[must_use]
    pub fn state(&self, config: &AuthConfig) -> TokenState {
        let consent_required = matches!(self.source.blocked(config), Some(TokenError::ConsentRequired { .. }));
        let Some(slot) = self.slots.get(config.cache_key()) else {
            return TokenState {
                consent_required,
                ..TokenState::default()
            };
        };
        let state = slot.lock();
        let now = Instant::now();
        TokenState {
            valid_until: state
                .token
                .as_ref()
                .filter(|token| now < token.expires_at)
                .map(|token| SystemTime::now() + (token.expires_at - now)),
            last_refresh: state.last_refresh,
            last_error: state.last_error.as_ref().map(ToString::to_string),
            failures: state.failures,
            consent_required,
        }
    }

    /// Starts the one fetch for `slot` as its own task; the caller records the receiver.
    /// `current` is the token it replaces (refresh-ahead), `refused` the shared cache's
    /// value of one an upstream refused.
    fn start_fetch(
        &self,
        slot: &Arc<Slot>,
        config: &Arc<AuthConfig>,
        current: Option<Arc<CachedToken>>,
        refused: Option<Vec<u8>>,
    ) -> watch::Receiver<Option<Outcome>> {
        let (done, flight) = watch::channel(None);
        let (slot, config, source) = (Arc::clone(slot), Arc::clone(config), Arc::clone(&self.source));
        let metrics = Arc::clone(&self.metrics);
        let shared = self.shared.clone();
        let in_flight = InFlight::start(&self.flights);
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let outcome = match shared {
                Some(shared) => {
                    fleet::obtain(
                        &shared,
                        &*source,
                        &config,
                        &metrics,
                        current.as_deref(),
                        refused.as_deref(),
                    )
                    .await
                }
                None => fetch_counted(&*source, &config, &metrics).await,
            };
            let id = config.id.as_str();
            {
                let mut state = slot.lock();
                state.flight = None;
                match &outcome {
                    Ok(token) => put(&slot, &mut state, &metrics, id, Arc::clone(token)),
                    Err(err) => {
                        state.failures = state.failures.saturating_add(1);
                        let delay = backoff_delay(
                            state.failures,
                            config.backoff_initial,
                            config.backoff_max,
                            fastrand::f64(),
                        );
                        state.backoff_until = Some(Instant::now() + delay);
                        state.last_error = Some(Arc::clone(err));
                        tracing::warn!(
                            auth_config = %config.id,
                            failures = state.failures,
                            backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            "token request failed: {err}"
                        );
                    }
                }
            }
            let _ = done.send(Some(outcome));
        });
        flight
    }
}

/// Puts a fetched `token` in `slot` (its `state` locked): the back-off and the last error
/// end, and its expiry is exported.
fn put(slot: &Slot, state: &mut SlotState, metrics: &Metrics, id: &str, token: Arc<CachedToken>) {
    let expires = unix_seconds(SystemTime::now()) + (token.expires_at - Instant::now()).as_secs_f64();
    metrics.token_expiry.with_label_values(&[id]).set(expires.round());
    slot.set_token(state, Some(token));
    state.failures = 0;
    state.backoff_until = None;
    state.last_error = None;
    state.last_refresh = Some(SystemTime::now());
}

/// Waits for a fetch's outcome. A fetch task that died without answering (a panic, a
/// runtime shutting down) is cleared, so the next request starts a new one.
async fn wait(slot: &Slot, mut flight: watch::Receiver<Option<Outcome>>) -> Outcome {
    if let Ok(outcome) = flight.wait_for(Option::is_some).await
        && let Some(outcome) = outcome.as_ref()
    {
        return outcome.clone();
    }
    let mut state = slot.lock();
    if state
        .flight
        .as_ref()
        .is_some_and(|current| current.same_channel(&flight))
    {
        state.flight = None;
    }
    Err(Arc::new(TokenError::Invalid("the token request was abandoned".into())))
}

/// Seconds since the Unix epoch (0 for a clock set before it).
#[must_use]
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// One token request, turned into a cache entry, counted and timed in `metrics`.
async fn fetch_counted(source: &dyn FetchToken, config: &AuthConfig, metrics: &Metrics) -> Outcome {
    let started = Instant::now();
    let outcome = fetch(source, config).await;
    let id = config.id.as_str();
    metrics
        .token_request_duration
        .with_label_values(&[id])
        .observe(started.elapsed().as_secs_f64());
    let outcome_label = if outcome.is_ok() { "success" } else { "error" };
    metrics.token_requests.with_label_values(&[id, outcome_label]).inc();
    outcome
}

/// One token request, turned into a cache entry.
async fn fetch(source: &dyn FetchToken, config: &AuthConfig) -> Outcome {
    let sent = Sent::now();
    let result = source.fetch(config).await;
    entry(config, result.map_err(Arc::new)?, sent).map_err(Arc::new)
}

/// When a token request was sent, on both clocks: a JWT's `exp` is wall-clock time, expiry
/// is on the monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    at: Instant,
    wall: SystemTime,
}

impl Sent {
    #[must_use]
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A token response to a request sent at `sent`, received now, as a cache entry.
fn entry(config: &AuthConfig, response: TokenResponse, sent: Sent) -> Result<Arc<CachedToken>, TokenError> {
    let Sent {
        at: sent,
        wall: sent_wall,
    } = sent;
    let received = Instant::now();
    let ttl = response.expires_in.unwrap_or(config.default_ttl);
    let exp_in =
        jwt::expiry(response.access_token.expose()).map(|exp| exp.duration_since(sent_wall).unwrap_or(Duration::ZERO));
    let Some((expires_at, refresh_at)) = lifetimes(sent, ttl, exp_in, config.expiry_skew, config.refresh_before) else {
        let why = if ttl.is_zero() {
            "expires_in is 0: the token is already expired"
        } else {
            "the access token is a JWT whose exp has already passed"
        };
        return Err(TokenError::Invalid(why.into()));
    };
    if expires_at <= received {
        return Err(TokenError::Invalid(
            "the token's lifetime less expiry_skew ran out before the token response arrived".into(),
        ));
    }
    tracing::info!(
        auth_config = %config.id,
        expires_in_secs = (expires_at - received).as_secs(),
        took_ms = u64::try_from((received - sent).as_millis()).unwrap_or(u64::MAX),
        "fetched access token"
    );
    Ok(Arc::new(CachedToken {
        token: response.access_token,
        expires_at,
        refresh_at,
        scope: response.scope,
        rendered: OnceLock::new(),
        shared: None,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;

    #[test]
    fn a_cache_key_hashes_to_the_number_it_carries() {
        use std::hash::BuildHasher as _;
        let hash = |key: &CacheKey| BuildHasherDefault::<Prehashed>::default().hash_one(key);
        let a = CacheKey::new("a\u{1f}client_credentials\u{1f}https://idp.test/token");
        let again = CacheKey::new("a\u{1f}client_credentials\u{1f}https://idp.test/token");
        let b = CacheKey::new("b\u{1f}client_credentials\u{1f}https://idp.test/token");
        assert_eq!(a, again);
        assert_eq!(hash(&a), hash(&again));
        assert_ne!(a, b);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(a.as_str(), "a\u{1f}client_credentials\u{1f}https://idp.test/token");
        // Other writes still count.
        let mut hasher = Prehashed::default();
        hasher.write(b"x");
        let x = hasher.finish();
        hasher.write(b"y");
        assert_ne!(x, hasher.finish());
    }

    /// Answers after `delay` (on the tokio clock): the next scripted result, or a token
    /// `t<n>` with `expires_in` once the script is used up. With `exp_in`, the token is a JWT
    /// whose signature segment is `t<n>` and whose `exp` is that many seconds after the
    /// request, in whole seconds of the wall clock, as issuers write it.
    struct Scripted {
        calls: Arc<AtomicUsize>,
        delay: Duration,
        expires_in: Option<Duration>,
        exp_in: Option<i64>,
        script: Mutex<VecDeque<bool>>,
    }

    impl FetchToken for Scripted {
        fn fetch<'a>(
            &'a self,
            _config: &'a AuthConfig,
        ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let exp = self.exp_in.map(|exp_in| unix_now() + exp_in);
                tokio::time::sleep(self.delay).await;
                if self.script.lock().unwrap().pop_front() == Some(false) {
                    return Err(TokenError::BadStatus {
                        status: 500,
                        content_type: "text/html".into(),
                    });
                }
                let name = format!("t{n}");
                let access_token = match exp {
                    Some(exp) => jwt(&format!(r#"{{"sub":"app","exp":{exp}}}"#), &name),
                    None => name,
                };
                Ok(TokenResponse {
                    access_token: AccessToken::new(access_token),
                    expires_in: self.expires_in,
                    scope: None,
                    refresh_token: None,
                })
            })
        }
    }

    /// Whole seconds since the epoch, now, as an issuer writes `iat` and `exp`.
    fn unix_now() -> i64 {
        i64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    /// A JWT with `claims` (JSON text) and `signature` as its last segment.
    fn jwt(claims: &str, signature: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{signature}",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(claims)
        )
    }

    fn auth_config(refresh_before: &str, default_ttl: &str) -> Arc<AuthConfig> {
        auth_config_with(&format!(
            "    refresh_before: {refresh_before}\n    default_ttl: {default_ttl}\n"
        ))
    }

    /// Config `a` with `fields` (YAML lines) added.
    fn auth_config_with(fields: &str) -> Arc<AuthConfig> {
        let yaml = format!(
            "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n{fields}"
        );
        Config::from_yaml("t", &yaml, &crate::config::Env::new())
            .unwrap()
            .auth_config("a")
            .unwrap()
    }

    /// A cache whose source succeeds or fails as `script` says (`true` = success), then succeeds.
    fn scripted(delay: Duration, expires_in: Option<Duration>, script: &[bool]) -> (TokenCache, Arc<AtomicUsize>) {
        scripted_jwt(delay, expires_in, None, script)
    }

    /// As [`scripted`], with JWT tokens whose `exp` is `exp_in` seconds after each request.
    fn scripted_jwt(
        delay: Duration,
        expires_in: Option<Duration>,
        exp_in: Option<i64>,
        script: &[bool],
    ) -> (TokenCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let source = Scripted {
            calls: Arc::clone(&calls),
            delay,
            expires_in,
            exp_in,
            script: Mutex::new(script.iter().copied().collect()),
        };
        (TokenCache::new(source, Arc::new(Metrics::new())), calls)
    }

    fn cache(delay: Duration, expires_in: Option<Duration>) -> (TokenCache, Arc<AtomicUsize>) {
        scripted(delay, expires_in, &[])
    }

    /// The name of the token `config` gets: `t<n>`, also when it is a JWT.
    async fn token(cache: &TokenCache, config: &Arc<AuthConfig>) -> String {
        name(&cache.get(config).await.unwrap().0)
    }

    fn name(token: &CachedToken) -> String {
        token.token.expose().rsplit('.').next().unwrap_or_default().to_owned()
    }

    /// Whether a request at this instant is refused a token, or gets one other than `old`.
    async fn never_gets(cache: &TokenCache, config: &Arc<AuthConfig>, old: &str) -> bool {
        cache.get(config).await.map_or(true, |(token, _)| name(&token) != old)
    }

    /// How much later than `sent + exp_in` a JWT's `exp` may fall: the wall clock is read
    /// once when the request is sent and once when the scripted source writes `exp`.
    const LATE: Duration = Duration::from_millis(1);

    /// Lets spawned fetch tasks run without moving the clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_remembers_its_slot_only_for_the_cache_and_the_generation_it_came_from() {
        let config = auth_config("60s", "300s");
        let (first, first_calls) = cache(Duration::ZERO, Some(Duration::from_secs(3600)));
        assert_eq!(token(&first, &config).await, "t1");
        assert_eq!(token(&first, &config).await, "t1", "the remembered slot's token");
        // A reload that drops the config's slot: the same config object fetches afresh.
        first.retain(&std::collections::HashSet::new());
        assert_eq!(token(&first, &config).await, "t2");
        assert_eq!(token(&first, &config).await, "t2");
        // One that keeps it: the token stays.
        first.retain(&std::iter::once(config.cache_key().as_str()).collect());
        assert_eq!(token(&first, &config).await, "t2");
        assert_eq!(first_calls.load(Ordering::SeqCst), 2);
        // Another cache (another proxy in the same process) has its own slot and source,
        // also for a config whose slot another cache's lookup remembered.
        let config = auth_config("60s", "300s");
        let (third, third_calls) = cache(Duration::ZERO, Some(Duration::from_secs(3600)));
        let (fourth, fourth_calls) = cache(Duration::ZERO, Some(Duration::from_secs(3600)));
        assert_eq!(token(&third, &config).await, "t1");
        assert_eq!(token(&fourth, &config).await, "t1");
        assert_eq!(token(&fourth, &config).await, "t1");
        assert_eq!(token(&third, &config).await, "t1");
        assert_eq!(
            (third_calls.load(Ordering::SeqCst), fourth_calls.load(Ordering::SeqCst)),
            (1, 1)
        );
    }

    /// The hit path only loads the slot's current token: with the slot's lock held elsewhere
    /// (by a refresh being started, say), a hit is answered at its first poll.
    #[tokio::test]
    async fn a_hit_is_answered_while_the_slots_lock_is_held() {
        let config = auth_config("60s", "300s");
        let (cache, calls) = cache(Duration::ZERO, Some(Duration::from_secs(3600)));
        assert_eq!(token(&cache, &config).await, "t1");
        let slot = cache.slot(&config);
        let held = slot.lock();
        let (answered, answer) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut get = std::pin::pin!(cache.get(&config));
                let polled = get
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                let _ = answered.send(match polled {
                    std::task::Poll::Ready(Ok((token, lookup))) => Some((token.token.expose().to_owned(), lookup)),
                    _ => None,
                });
            });
            let answer = answer.recv_timeout(Duration::from_secs(10));
            drop(held);
            assert_eq!(
                answer.expect("a hit waited for the slot's lock"),
                Some(("t1".to_owned(), Lookup::Hit))
            );
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_concurrent_requests_on_a_cold_cache_share_one_fetch() {
        let (cache, calls) = cache(Duration::from_secs(1), Some(Duration::from_secs(3600)));
        let cache = Arc::new(cache);
        let config = auth_config("60s", "300s");
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let (cache, config) = (Arc::clone(&cache), Arc::clone(&config));
                tokio::spawn(async move { cache.get(&config).await.unwrap() })
            })
            .collect();
        for waiter in waiters {
            let (token, lookup) = waiter.await.unwrap();
            assert_eq!((token.token.expose(), lookup), ("t1", Lookup::Miss));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_uses_the_current_token_while_one_background_refresh_runs() {
        let (cache, calls) = cache(Duration::from_secs(1), Some(Duration::from_secs(120)));
        let config = auth_config("60s", "300s");
        // Sent at 0 s, fetched at 1 s: usable until 115 s (the 5 s skew), refresh from 55 s.
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(53)).await;
        assert_eq!(cache.get(&config).await.unwrap().1, Lookup::Hit);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Inside the window: 20 requests get t1 at once, and only one refresh starts.
        for _ in 0..20 {
            let started = Instant::now();
            let (token, lookup) = cache.get(&config).await.unwrap();
            assert_eq!((token.token.expose(), lookup), ("t1", Lookup::RefreshAhead));
            assert_eq!(Instant::now(), started, "a refresh-ahead request must not wait");
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(1)).await; // the refresh answers
        settle().await;
        let (token, lookup) = cache.get(&config).await.unwrap();
        assert_eq!((token.token.expose(), lookup), ("t2", Lookup::Hit));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_never_waits_on_a_slow_token_endpoint() {
        // Every token request takes 1 s; a request arrives every 5 s for 2 hours of
        // 5-minute tokens. Only the very first request may wait.
        let (cache, calls) = cache(Duration::from_secs(1), Some(Duration::from_secs(300)));
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1");
        for _ in 0..(2 * 3600 / 5) {
            tokio::time::advance(Duration::from_secs(5)).await;
            let started = Instant::now();
            let (token, _) = cache.get(&config).await.unwrap();
            assert_eq!(Instant::now(), started, "a request waited on the token endpoint");
            assert!(Instant::now() < token.expires_at);
            settle().await;
        }
        // One fetch per 235 s of token use (300 s less the 5 s skew and the 60 s window),
        // give or take the first and last.
        let fetched = calls.load(Ordering::SeqCst);
        assert!((29..=32).contains(&fetched), "{fetched} fetches");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_expires_in_less_skew_and_refresh_before() {
        let (cache, calls) = cache(Duration::ZERO, Some(Duration::from_secs(120)));
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(54)).await;
        assert_eq!(token(&cache, &config).await, "t1");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            token(&cache, &config).await,
            "t1",
            "refresh-ahead: still the valid token"
        );
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(token(&cache, &config).await, "t2");
    }

    #[tokio::test(start_paused = true)]
    async fn default_ttl_applies_without_expires_in() {
        let (cache, calls) = cache(Duration::ZERO, None);
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(234)).await;
        assert_eq!(cache.get(&config).await.unwrap().1, Lookup::Hit);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(&config).await.unwrap().1, Lookup::RefreshAhead);
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_counts_from_when_the_request_was_sent() {
        // The fetch takes 10 s; the provider's 120 s started somewhere in those 10 s, so
        // bearerd's count starts when it sent the request. Every refresh fails, so t1 is used
        // to its very end.
        let script: Vec<bool> = std::iter::once(true).chain([false; 50]).collect();
        let (cache, calls) = scripted(Duration::from_secs(10), Some(Duration::from_secs(120)), &script);
        let config = auth_config_with("    refresh_before: 60s\n    expiry_skew: 0s\n");
        let sent = Instant::now();
        let (t1, lookup) = cache.get(&config).await.unwrap();
        assert_eq!(
            (name(&t1), lookup, Instant::now()),
            ("t1".into(), Lookup::Miss, sent + Duration::from_secs(10))
        );
        assert_eq!(
            (t1.expires_at, t1.refresh_at),
            (sent + Duration::from_secs(120), sent + Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(49)).await; // 59 s after sending
        assert_eq!(cache.get(&config).await.unwrap().1, Lookup::Hit);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (used, lookup) = cache.get(&config).await.unwrap();
        assert_eq!((name(&used), lookup), ("t1".into(), Lookup::RefreshAhead));
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep_until(sent + Duration::from_millis(119_999)).await;
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::sleep_until(sent + Duration::from_secs(120)).await;
        assert!(never_gets(&cache, &config, "t1").await, "t1 handed out at its expiry");
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_skew_is_taken_off_the_end_and_at_most_half_the_lifetime() {
        let s = Duration::from_secs;
        // (expires_in, expiry_skew, expected expires_at and refresh_at after sending)
        let cases = [
            (s(120), "5s", s(115), s(55)),
            (s(120), "0s", s(120), s(60)),
            // Capped at half the lifetime: 60 s are left, and half of them is the window.
            (s(120), "90s", s(60), s(30)),
            (s(6), "5s", s(3), Duration::from_millis(1500)),
            (s(1), "5s", Duration::from_millis(500), Duration::from_millis(250)),
        ];
        for (expires_in, skew, expires_after, refresh_after) in cases {
            let script: Vec<bool> = std::iter::once(true).chain([false; 50]).collect();
            let (cache, _) = scripted(Duration::ZERO, Some(expires_in), &script);
            let config = auth_config_with(&format!("    refresh_before: 60s\n    expiry_skew: {skew}\n"));
            let sent = Instant::now();
            let (t1, _) = cache.get(&config).await.unwrap();
            let case = format!("expires_in {expires_in:?}, expiry_skew {skew}");
            assert_eq!(t1.expires_at, sent + expires_after, "{case}");
            assert_eq!(t1.refresh_at, sent + refresh_after, "{case}");
            // The refresh fails: t1 serves to the end of its usable lifetime, not beyond.
            tokio::time::sleep_until(sent + expires_after - Duration::from_millis(1)).await;
            assert_eq!(token(&cache, &config).await, "t1", "{case}");
            tokio::time::sleep_until(sent + expires_after).await;
            assert!(
                never_gets(&cache, &config, "t1").await,
                "{case}: t1 used past its expiry"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_jwt_exp_before_expires_in_ends_the_lifetime() {
        let s = Duration::from_secs;
        let script: Vec<bool> = std::iter::once(true).chain([false; 50]).collect();
        let (cache, _) = scripted_jwt(Duration::from_secs(2), Some(s(3600)), Some(120), &script);
        let config = auth_config("60s", "300s");
        let sent = Instant::now();
        let (t1, _) = cache.get(&config).await.unwrap();
        assert_eq!(name(&t1), "t1");
        // `exp` is whole seconds of the wall clock: up to a second sooner than 120 s after
        // the request (later only by the instant between reading the two clocks). The 5 s
        // skew comes off that.
        assert!(
            sent + s(114) < t1.expires_at && t1.expires_at <= sent + s(115) + LATE,
            "expires {:?} after sending",
            t1.expires_at - sent
        );
        assert_eq!(t1.refresh_at, t1.expires_at - s(60));
        // /configs and the expiry metric say the same.
        let valid_until = cache.state(&config).valid_until.unwrap();
        let left = valid_until.duration_since(SystemTime::now()).unwrap() + (Instant::now() - sent);
        assert!(
            left > s(113) && left <= s(115) + LATE,
            "valid for {left:?} after sending"
        );
        let metric = cache.metrics.token_expiry.with_label_values(&["a"]).get();
        assert!((metric - unix_seconds(valid_until)).abs() <= 1.0, "{metric}");
        tokio::time::sleep_until(sent + s(114)).await;
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::sleep_until(sent + s(115) + LATE).await;
        assert!(never_gets(&cache, &config, "t1").await, "t1 used past its exp");

        // An `exp` after expires_in bounds nothing; neither does a token that is no JWT.
        for exp_in in [Some(7200), None] {
            let (cache, _) = scripted_jwt(Duration::ZERO, Some(s(120)), exp_in, &[]);
            let sent = Instant::now();
            let (t1, _) = cache.get(&config).await.unwrap();
            assert_eq!(t1.token.expose().contains('.'), exp_in.is_some());
            assert_eq!((t1.expires_at, t1.refresh_at), (sent + s(115), sent + s(55)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_already_expired_is_an_error_and_backs_off() {
        let config = auth_config("60s", "300s");
        for exp_in in [-1, -3600] {
            let (cache, calls) = scripted_jwt(Duration::ZERO, Some(Duration::from_secs(3600)), Some(exp_in), &[]);
            let TokenFailure::Unavailable(error) = cache.get(&config).await.unwrap_err() else {
                panic!("expected the fetch's error")
            };
            assert_eq!(
                error.to_string(),
                "token response is invalid: the access token is a JWT whose exp has already passed"
            );
            assert!(matches!(
                cache.get(&config).await,
                Err(TokenFailure::Backoff { failures: 1, .. })
            ));
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
        let (cache, _) = scripted(Duration::ZERO, Some(Duration::ZERO), &[]);
        let error = cache.get(&config).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "token response is invalid: expires_in is 0: the token is already expired"
        );
        // A token whose usable lifetime ran out while its response was on the way.
        let (cache, _) = scripted(Duration::from_secs(3), Some(Duration::from_secs(6)), &[]);
        let error = cache.get(&config).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "token response is invalid: the token's lifetime less expiry_skew ran out before the token response arrived"
        );
        assert_eq!(cache.state(&config).failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_and_back_off_run_on_a_jwts_clock() {
        // 120 s JWTs, fetched in 1 s; after t1, two refreshes fail, then they succeed.
        let s = Duration::from_secs;
        let (cache, calls) = scripted_jwt(s(1), Some(s(120)), Some(120), &[true, false, false]);
        let config = auth_config("60s", "300s");
        let sent = Instant::now();
        let (t1, _) = cache.get(&config).await.unwrap();
        let refresh_at = t1.refresh_at;
        assert!(
            refresh_at > sent + s(54) && refresh_at <= sent + s(55) + LATE,
            "{:?}",
            refresh_at - sent
        );
        tokio::time::sleep_until(refresh_at - Duration::from_millis(1)).await;
        assert_eq!(cache.get(&config).await.unwrap().1, Lookup::Hit);
        tokio::time::sleep_until(refresh_at).await;
        let (used, lookup) = cache.get(&config).await.unwrap();
        assert_eq!((name(&used), lookup), ("t1".into(), Lookup::RefreshAhead));
        // The refresh fails after 1 s; during the back-off t1 serves without a new request.
        settle().await;
        tokio::time::advance(s(1)).await;
        settle().await;
        assert_eq!(cache.state(&config).failures, 1);
        let (used, lookup) = cache.get(&config).await.unwrap();
        assert_eq!((name(&used), lookup), ("t1".into(), Lookup::RefreshAhead));
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a refresh during the back-off");
        // After it, the next request tries again (fails), and the one after that succeeds.
        for expected_calls in [3, 4] {
            tokio::time::advance(s(5)).await;
            assert_eq!(token(&cache, &config).await, "t1");
            settle().await;
            assert_eq!(calls.load(Ordering::SeqCst), expected_calls);
            tokio::time::advance(s(1)).await;
            settle().await;
        }
        let (t4, lookup) = cache.get(&config).await.unwrap();
        assert_eq!((name(&t4), lookup), ("t4".into(), Lookup::Hit));
        // Sent a second ago: counted from then, less the skew.
        assert!(
            t4.expires_at <= Instant::now() + s(114) + LATE,
            "{:?}",
            t4.expires_at - Instant::now()
        );
        assert_eq!(cache.state(&config).failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_valid_token_and_an_expired_one_is_never_used() {
        // t1 lives 120 s; every later fetch fails.
        let script: Vec<bool> = std::iter::once(true).chain([false; 50]).collect();
        let (cache, calls) = scripted(Duration::ZERO, Some(Duration::from_secs(120)), &script);
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1"); // usable until 115 s, refresh from 55 s
        tokio::time::advance(Duration::from_secs(56)).await;
        assert_eq!(token(&cache, &config).await, "t1"); // starts a refresh, which fails
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        for _ in 0..58 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(
                token(&cache, &config).await,
                "t1",
                "the still-valid token keeps being used"
            );
            settle().await;
        }
        tokio::time::advance(Duration::from_secs(1)).await; // t = 115 s: t1 has expired
        for _ in 0..5 {
            if let Ok((token, _)) = cache.get(&config).await {
                assert_ne!(token.token.expose(), "t1", "an expired token was handed out");
            }
            settle().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_fail_fast_in_between() {
        let (cache, calls) = scripted(Duration::ZERO, Some(Duration::from_secs(3600)), &[false; 100]);
        let config = auth_config("60s", "300s");
        let first = cache.get(&config).await.unwrap_err();
        assert!(matches!(first, TokenFailure::Unavailable(_)), "{first}");
        // Right after: fail fast, without a token request.
        let TokenFailure::Backoff {
            retry_after,
            failures,
            last_error,
        } = cache.get(&config).await.unwrap_err()
        else {
            panic!("expected back-off")
        };
        assert_eq!(failures, 1);
        assert!(
            retry_after <= Duration::from_secs(1) && retry_after >= Duration::from_millis(800),
            "{retry_after:?}"
        );
        assert!(last_error.unwrap().to_string().contains("HTTP 500"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_failing_for_a_minute_sees_at_most_seven_requests() {
        for _ in 0..20 {
            let (cache, calls) = scripted(Duration::ZERO, Some(Duration::from_secs(3600)), &[false; 100]);
            let config = auth_config("60s", "300s");
            // A request every 100 ms for 60 s.
            for _ in 0..600 {
                let _ = cache.get(&config).await;
                settle().await;
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            let requests = calls.load(Ordering::SeqCst);
            assert!((6..=7).contains(&requests), "{requests} token requests in 60 s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_back_off() {
        let (cache, calls) = scripted(Duration::ZERO, Some(Duration::from_secs(3600)), &[false, false]);
        let config = auth_config("60s", "300s");
        assert!(cache.get(&config).await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get(&config).await.is_err());
        assert_eq!(cache.state(&config).failures, 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(token(&cache, &config).await, "t3");
        let state = cache.state(&config);
        assert_eq!((state.failures, state.last_error), (0, None));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_fetch_in_flight() {
        let (cache, _) = cache(Duration::from_secs(3), Some(Duration::from_secs(3600)));
        let (cache, config) = (Arc::new(cache), auth_config("60s", "300s"));
        cache.idle().await; // nothing running
        let waiter = {
            let (cache, config) = (Arc::clone(&cache), Arc::clone(&config));
            tokio::spawn(async move { cache.get(&config).await.is_ok() })
        };
        settle().await;
        let started = Instant::now();
        cache.idle().await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "idle only once the fetch ended"
        );
        assert!(cache.state(&config).last_refresh.is_some(), "and its token is in place");
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_refusals_of_the_same_token_cause_one_new_fetch() {
        let (cache, calls) = cache(Duration::from_millis(500), Some(Duration::from_secs(3600)));
        let (cache, config) = (Arc::new(cache), auth_config("60s", "300s"));
        let (stale, _) = cache.get(&config).await.unwrap();
        let refusals: Vec<_> = (0..100)
            .map(|_| {
                let (cache, config, stale) = (Arc::clone(&cache), Arc::clone(&config), Arc::clone(&stale));
                tokio::spawn(async move {
                    cache.evict_if_current(&config, &stale);
                    cache.get(&config).await.unwrap().0.token.expose().to_owned()
                })
            })
            .collect();
        for refusal in refusals {
            assert_eq!(refusal.await.unwrap(), "t2");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A late refusal of the old token leaves the new one alone.
        assert!(!cache.evict_if_current(&config, &stale));
        assert_eq!(token(&cache, &config).await, "t2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_config_never_reuses_the_old_token() {
        let (cache, calls) = cache(Duration::ZERO, Some(Duration::from_secs(3600)));
        let before = auth_config("60s", "300s");
        assert_eq!(token(&cache, &before).await, "t1");
        let changed = {
            let yaml = "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    scopes: [more]\n";
            Config::from_yaml("t", yaml, &crate::config::Env::new())
                .unwrap()
                .auth_config("a")
                .unwrap()
        };
        assert_ne!(before.cache_key(), changed.cache_key());
        assert_eq!(token(&cache, &changed).await, "t2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn refresh_window_is_refresh_before_or_half_a_short_lifetime() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let lifetimes = |ttl, skew| lifetimes(t0, ttl, None, skew, s(60));
        assert_eq!(lifetimes(s(3600), s(0)), Some((t0 + s(3600), t0 + s(3540))));
        assert_eq!(lifetimes(s(60), s(0)), Some((t0 + s(60), t0 + s(30))));
        assert_eq!(lifetimes(s(10), s(0)), Some((t0 + s(10), t0 + s(5))));
        // The window is counted on what the skew leaves.
        assert_eq!(lifetimes(s(3600), s(5)), Some((t0 + s(3595), t0 + s(3535))));
        assert_eq!(lifetimes(s(65), s(5)), Some((t0 + s(60), t0 + s(30))));
        assert_eq!(lifetimes(s(66), s(5)), Some((t0 + s(61), t0 + s(1))));
        assert_eq!(
            lifetimes(s(10), s(5)),
            Some((t0 + s(5), t0 + Duration::from_millis(2500)))
        );
        assert_eq!(lifetimes(s(0), s(5)), None);
    }

    #[test]
    fn the_sooner_of_ttl_and_exp_ends_the_lifetime() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(
            lifetimes(t0, s(3600), Some(s(120)), s(5), s(60)),
            Some((t0 + s(115), t0 + s(55)))
        );
        assert_eq!(
            lifetimes(t0, s(120), Some(s(3600)), s(5), s(60)),
            Some((t0 + s(115), t0 + s(55)))
        );
        // A 3 s token whose whole-second exp came 0.4 s sooner than expires_in.
        assert_eq!(
            lifetimes(t0, s(3), Some(Duration::from_millis(2600)), s(5), s(60)),
            Some((t0 + Duration::from_millis(1300), t0 + Duration::from_millis(650)))
        );
        assert_eq!(lifetimes(t0, s(3600), Some(Duration::ZERO), s(5), s(60)), None);
        // A default_ttl of centuries is cut short enough to count with.
        let (expires_at, _) = lifetimes(t0, Duration::MAX, None, s(5), s(60)).unwrap();
        assert_eq!(expires_at, t0 + LONGEST_LIFETIME - s(5));
    }

    #[test]
    fn backoff_doubles_from_initial_to_max() {
        let s = Duration::from_secs;
        let delays: Vec<u64> = (1..=8).map(|n| backoff_delay(n, s(1), s(60), 0.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            backoff_delay(1, s(1), s(60), 0.999_99),
            Duration::from_secs_f64(1.0 - 0.2 * 0.999_99)
        );
        assert_eq!(backoff_delay(u32::MAX, s(1), s(60), 0.0), s(60));
    }

    proptest! {
        #[test]
        fn expiry_and_refresh_stay_inside_the_lifetime(
            ttl_ms in prop_oneof![0_u64..10_000_000, Just(u64::MAX)],
            exp_in_ms in proptest::option::of(0_u64..10_000_000),
            skew_ms in 0_u64..10_000_000,
            refresh_before_ms in 0_u64..10_000_000,
        ) {
            let ms = Duration::from_millis;
            let (ttl, exp_in, skew, refresh_before) = (ms(ttl_ms), exp_in_ms.map(ms), ms(skew_ms), ms(refresh_before_ms));
            let sent = Instant::now();
            let lifetime = exp_in.map_or(ttl, |exp_in| exp_in.min(ttl)).min(LONGEST_LIFETIME);
            let Some((expires_at, refresh_at)) = lifetimes(sent, ttl, exp_in, skew, refresh_before) else {
                prop_assert!(lifetime.is_zero(), "no lifetime from {lifetime:?}");
                return Ok(());
            };
            prop_assert!(!lifetime.is_zero());
            // Never at or before the request, never past expires_in nor exp.
            prop_assert!(sent < expires_at);
            prop_assert!(expires_at <= sent + ttl.min(LONGEST_LIFETIME));
            if let Some(exp_in) = exp_in {
                prop_assert!(expires_at <= sent + exp_in);
            }
            // The skew taken is the configured one, or half the lifetime when that is less.
            let taken = sent + lifetime - expires_at;
            prop_assert_eq!(taken, skew.min(lifetime / 2));
            prop_assert!(taken <= lifetime / 2);
            // Refresh starts inside what is left: refresh_before, or half of it when not longer.
            prop_assert!(sent <= refresh_at && refresh_at <= expires_at);
            let (usable, window) = (expires_at - sent, expires_at - refresh_at);
            if refresh_before < usable {
                prop_assert_eq!(window, refresh_before);
            } else {
                prop_assert_eq!(window, usable / 2);
            }
        }

        #[test]
        fn backoff_stays_within_its_bounds(
            failures in 0_u32..200,
            initial_ms in 1_u64..100_000,
            extra_ms in 0_u64..10_000_000,
            jitter in 0.0_f64..1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let delay = backoff_delay(failures, initial, max, jitter);
            let unjittered = backoff_delay(failures, initial, max, 0.0);
            prop_assert!(delay <= max, "past the cap");
            prop_assert!(delay <= unjittered);
            prop_assert!(delay.as_secs_f64() >= unjittered.as_secs_f64() * (1.0 - JITTER) - 1e-9, "jitter out of range");
            prop_assert!(delay + Duration::from_nanos(1) >= initial.mul_f64(1.0 - JITTER));
            // Each step waits at least as long as the previous one did without jitter.
            if failures > 1 {
                prop_assert!(unjittered >= backoff_delay(failures - 1, initial, max, 0.0));
            }
        }
    }
}
