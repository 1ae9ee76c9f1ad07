//! Access tokens: a moka cache keyed by auth config, filled by single-flight fetches from
//! the token endpoint.
//!
//! However many requests find the cache empty at once, one token request goes out and every
//! waiter shares its result, token or error (moka's `try_get_with`). A token is used until
//! `refresh_before` ahead of its expiry, measured on the monotonic clock from the moment
//! the response arrived; after that the next request replaces it.

mod endpoint;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use tokio::time::Instant;

pub use endpoint::{MAX_RESPONSE_BYTES, TokenClient, TokenError, TokenResponse, basic_auth, parse_response};

use crate::config::AuthConfig;
use crate::secret::AccessToken;

/// A token in the cache.
#[derive(Debug)]
pub struct CachedToken {
    pub token: AccessToken,
    /// Never sent at or after this instant.
    pub expires_at: Instant,
    /// Replaced by the first request at or after this instant.
    pub refresh_at: Instant,
    /// Scopes the provider granted, when it said.
    pub scope: Option<String>,
}

/// When a token received at `received` expires and when it should be replaced.
///
/// The refresh window is `refresh_before`, or half the lifetime when the lifetime is not
/// longer than that window, so a short-lived token is still used for a while.
#[must_use]
pub fn lifetimes(
    received: Instant,
    expires_in: Option<Duration>,
    default_ttl: Duration,
    refresh_before: Duration,
) -> (Instant, Instant) {
    let ttl = expires_in.unwrap_or(default_ttl);
    let window = if refresh_before < ttl { refresh_before } else { ttl / 2 };
    let expires_at = received + ttl;
    (expires_at, expires_at - window)
}

/// Where tokens come from: the token endpoint ([`TokenClient`]), or a script in tests.
pub trait FetchToken: Send + Sync + 'static {
    fn fetch<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>>;
}

impl FetchToken for TokenClient {
    fn fetch<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
        Box::pin(TokenClient::fetch(self, config))
    }
}

/// The token cache: one entry per auth config.
pub struct TokenCache {
    cache: moka::future::Cache<String, Arc<CachedToken>>,
    source: Box<dyn FetchToken>,
}

impl TokenCache {
    #[must_use]
    pub fn new(source: impl FetchToken) -> Self {
        Self {
            cache: moka::future::Cache::builder().max_capacity(100_000).build(),
            source: Box::new(source),
        }
    }

    /// A token for `config`: cached if still fresh, else from the one fetch in flight.
    pub async fn get(&self, config: &AuthConfig) -> Result<Arc<CachedToken>, Arc<TokenError>> {
        let key = &config.id;
        if let Some(cached) = self.cache.get(key).await {
            if Instant::now() < cached.refresh_at {
                return Ok(cached);
            }
            self.evict_if_current(key, &cached).await;
        }
        let token = self.cache.try_get_with_by_ref(key, self.fetch(config)).await?;
        // Someone else's flight may have finished a while ago; never send an expired token.
        if Instant::now() < token.expires_at {
            Ok(token)
        } else {
            self.evict_if_current(key, &token).await;
            Err(Arc::new(TokenError::Invalid(
                "the token expired before it could be used".into(),
            )))
        }
    }

    /// Removes `stale` only if it is still the cached entry, so a token that a concurrent
    /// request just fetched is never thrown away.
    async fn evict_if_current(&self, key: &str, stale: &Arc<CachedToken>) {
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(entry) if Arc::ptr_eq(entry.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    async fn fetch(&self, config: &AuthConfig) -> Result<Arc<CachedToken>, TokenError> {
        let started = Instant::now();
        let result = self.source.fetch(config).await;
        let received = Instant::now();
        match result {
            Ok(response) => {
                let (expires_at, refresh_at) =
                    lifetimes(received, response.expires_in, config.default_ttl, config.refresh_before);
                if expires_at <= received {
                    let err = TokenError::Invalid("expires_in is 0: the token is already expired".into());
                    tracing::warn!(auth_config = %config.id, "token request failed: {err}");
                    return Err(err);
                }
                tracing::info!(
                    auth_config = %config.id,
                    expires_in_secs = (expires_at - received).as_secs(),
                    took_ms = u64::try_from((received - started).as_millis()).unwrap_or(u64::MAX),
                    "fetched access token"
                );
                Ok(Arc::new(CachedToken {
                    token: response.access_token,
                    expires_at,
                    refresh_at,
                    scope: response.scope,
                }))
            }
            Err(err) => {
                tracing::warn!(auth_config = %config.id, "token request failed: {err}");
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::Config;

    /// Answers after `delay` (on the tokio clock) with token `t<n>` and `expires_in`.
    struct Scripted {
        calls: Arc<AtomicUsize>,
        delay: Duration,
        expires_in: Option<Duration>,
    }

    impl FetchToken for Scripted {
        fn fetch<'a>(
            &'a self,
            _config: &'a AuthConfig,
        ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(self.delay).await;
                Ok(TokenResponse {
                    access_token: AccessToken::new(format!("t{n}")),
                    expires_in: self.expires_in,
                    scope: None,
                })
            })
        }
    }

    fn auth_config(refresh_before: &str, default_ttl: &str) -> Arc<AuthConfig> {
        let yaml = format!(
            "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    refresh_before: {refresh_before}\n    default_ttl: {default_ttl}\n"
        );
        Config::from_yaml("t", &yaml, &crate::config::Env::new())
            .unwrap()
            .auth_config("a")
            .unwrap()
    }

    fn cache(delay: Duration, expires_in: Option<Duration>) -> (TokenCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        (
            TokenCache::new(Scripted {
                calls: Arc::clone(&calls),
                delay,
                expires_in,
            }),
            calls,
        )
    }

    async fn token(cache: &TokenCache, config: &AuthConfig) -> String {
        cache.get(config).await.unwrap().token.expose().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_concurrent_requests_on_a_cold_cache_share_one_fetch() {
        let (cache, calls) = cache(Duration::from_secs(1), Some(Duration::from_secs(3600)));
        let cache = Arc::new(cache);
        let config = auth_config("60s", "300s");
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let (cache, config) = (Arc::clone(&cache), Arc::clone(&config));
                tokio::spawn(async move { token(&cache, &config).await })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), "t1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_expires_in_minus_refresh_before() {
        let (cache, calls) = cache(Duration::ZERO, Some(Duration::from_secs(120)));
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(token(&cache, &config).await, "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(token(&cache, &config).await, "t2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn default_ttl_applies_without_expires_in() {
        let (cache, calls) = cache(Duration::ZERO, None);
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(239)).await;
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(token(&cache, &config).await, "t2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_counts_from_when_the_response_arrived() {
        // The fetch takes 10 s; the 120 s lifetime starts when it answers, not when it was sent.
        let (cache, calls) = cache(Duration::from_secs(10), Some(Duration::from_secs(120)));
        let config = auth_config("60s", "300s");
        assert_eq!(token(&cache, &config).await, "t1");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(token(&cache, &config).await, "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn refresh_window_is_refresh_before_or_half_a_short_lifetime() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(
            lifetimes(t0, Some(s(3600)), s(300), s(60)),
            (t0 + s(3600), t0 + s(3540))
        );
        assert_eq!(lifetimes(t0, None, s(300), s(60)), (t0 + s(300), t0 + s(240)));
        assert_eq!(lifetimes(t0, Some(s(60)), s(300), s(60)), (t0 + s(60), t0 + s(30)));
        assert_eq!(lifetimes(t0, Some(s(10)), s(300), s(60)), (t0 + s(10), t0 + s(5)));
        assert_eq!(lifetimes(t0, Some(s(0)), s(300), s(60)), (t0, t0));
    }
}
