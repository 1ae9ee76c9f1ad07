//! The token cache's side of the fleet-shared cache ([`crate::shared_cache`]): a slot's one
//! fetch in flight asks Redis first, and fetches only when it holds the lease or Redis
//! failed.
//!
//! Tokens cross between processes on the wall clock (the only clock they share) and become
//! local instants again on arrival.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{CachedToken, FetchToken, Outcome, TokenError, fetch_counted};
use crate::config::AuthConfig;
use crate::metrics::Metrics;
use crate::shared_cache::{Found, OP_TIMEOUT, SharedCache, SharedToken, Without};

/// A token for `config` from the fleet: one another process stored, or one this process
/// fetches under the lease (and stores), or, when Redis fails, one it fetches alone.
/// `current` is the token a refresh-ahead replaces: only a newer one is taken from Redis.
pub(super) async fn obtain(
    shared: &Arc<SharedCache>,
    source: &dyn FetchToken,
    config: &AuthConfig,
    metrics: &Metrics,
    current: Option<&CachedToken>,
    refused: Option<&[u8]>,
) -> Outcome {
    let Ok(hash) = entry_hash(shared, config) else {
        // The token file cannot be used: the fetch says why, and backs off.
        return fetch_counted(source, config, metrics).await;
    };
    let current = current.map(|token| (&token.token, wall_clock(token.expires_at)));
    let usable = |stored: &SharedToken| match current {
        None => SystemTime::now() < stored.expires_at,
        Some((token, expires_at)) => stored.token != *token && stored.expires_at > expires_at,
    };
    // A user grant's holder reads its refresh token before the token request and writes
    // twice after it (the rotated refresh token, then the access token): its lease lasts
    // that much longer than the request may, so no other process takes it over and sends a
    // refresh token that is being rotated.
    let wait = if config.grant.is_user_grant() {
        config.timeout + 3 * OP_TIMEOUT
    } else {
        config.timeout
    };
    match shared.find(&hash, wait, refused, usable).await {
        Found::Stored(stored, value) => {
            tracing::debug!(auth_config = %config.id, "took the access token from the shared cache");
            Ok(Arc::new(local(stored, value)))
        }
        Found::Leased(lease) => match fetch_counted(source, config, metrics).await {
            Ok(token) => {
                let value = lease.store(&to_shared(&token)).await;
                Ok(Arc::new(CachedToken {
                    shared: value,
                    ..copy(&token)
                }))
            }
            Err(err) => {
                lease.release().await;
                Err(err)
            }
        },
        // A user grant's refresh token lives in Redis and is rotated only under the lease:
        // without either, sending it could race another process's rotation and revoke the
        // fleet's consent. The token held serves on until it expires.
        Found::Alone(without) if config.grant.is_user_grant() => {
            say_why(
                &config.id,
                &without,
                "the refresh token is sent only under the lease: no token",
            );
            Err(Arc::new(TokenError::State(
                "the shared cache holding its refresh token did not answer, or another bearerd held the refresh for longer than the timeout; only the holder of the lease may rotate it".into(),
            )))
        }
        Found::Alone(without) => {
            say_why(&config.id, &without, "fetching the token alone");
            metrics
                .shared_cache_fallbacks
                .with_label_values(&[config.id.as_str()])
                .inc();
            fetch_counted(source, config, metrics).await
        }
    }
}

/// Says why a miss goes on without the shared cache, and what comes of it: a line per miss
/// that does, never more often than the token requests themselves.
fn say_why(config: &str, without: &Without, outcome: &str) {
    match without {
        Without::Failed(err) => tracing::warn!(
            auth_config = %config,
            error = %crate::chain(err),
            "the shared cache failed; {outcome}"
        ),
        Without::Waited(wait) => tracing::warn!(
            auth_config = %config,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "no token came from the shared cache while another process held its lease; {outcome}"
        ),
    }
}

/// The hash that names `config`'s token, lease and (user grants) refresh token in Redis.
///
/// # Errors
/// A token file of `config` that cannot be read says why.
pub fn entry_hash(shared: &SharedCache, config: &AuthConfig) -> Result<String, TokenError> {
    let workload = super::endpoint::workload_identity(config)?;
    Ok(shared.sealer().token_hash(config, &workload))
}

/// `token` as the fleet shares it.
fn to_shared(token: &CachedToken) -> SharedToken {
    SharedToken {
        token: token.token.clone(),
        expires_at: wall_clock(token.expires_at),
        refresh_at: wall_clock(token.refresh_at),
        scope: token.scope.clone(),
    }
}

/// A stored token (and its sealed `value`) as a cache entry of this process.
fn local(stored: SharedToken, value: Vec<u8>) -> CachedToken {
    CachedToken {
        token: stored.token,
        expires_at: instant(stored.expires_at),
        refresh_at: instant(stored.refresh_at),
        scope: stored.scope,
        rendered: OnceLock::new(),
        shared: Some(value),
    }
}

fn copy(token: &CachedToken) -> CachedToken {
    CachedToken {
        token: token.token.clone(),
        expires_at: token.expires_at,
        refresh_at: token.refresh_at,
        scope: token.scope.clone(),
        rendered: OnceLock::new(),
        shared: token.shared.clone(),
    }
}

fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

fn instant(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}
