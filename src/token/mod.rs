//! Access tokens: a moka cache keyed by auth config, filled by single-flight fetches from
//! the token endpoint.
//!
//! However many requests find the cache empty at once, one token request goes out and every
//! waiter shares its result, token or error (moka's `try_get_with`). A token is used until
//! `refresh_before` ahead of its expiry, measured on the monotonic clock from the moment
//! the response arrived; after that the next request replaces it.

mod endpoint;

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

/// The token cache: one entry per auth config.
pub struct TokenCache {
    cache: moka::future::Cache<String, Arc<CachedToken>>,
    client: TokenClient,
}

impl TokenCache {
    #[must_use]
    pub fn new(client: TokenClient) -> Self {
        Self {
            cache: moka::future::Cache::builder().max_capacity(100_000).build(),
            client,
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
        let result = self.client.fetch(config).await;
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
    use super::*;

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
