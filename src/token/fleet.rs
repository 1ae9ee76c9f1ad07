//! The token cache's side of the fleet-shared cache ([`crate::shared_cache`]): a slot's one
//! fetch in flight asks Redis first, and fetches only when it holds the lease or Redis
//! failed.
//!
//! Tokens cross between processes on the wall clock (the only clock they share) and become
//! local instants again on arrival.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{CachedToken, FetchToken, Outcome, fetch_counted};
use crate::config::AuthConfig;
use crate::metrics::Metrics;
use crate::shared_cache::{Found, SharedCache, SharedToken};

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
    let Ok(workload) = super::endpoint::workload_identity(config) else {
        // The token file cannot be used: the fetch says why, and backs off.
        return fetch_counted(source, config, metrics).await;
    };
    let hash = shared.sealer().token_hash(config, &workload);
    let current = current.map(|token| (&token.token, wall_clock(token.expires_at)));
    let usable = |stored: &SharedToken| match current {
        None => SystemTime::now() < stored.expires_at,
        Some((token, expires_at)) => stored.token != *token && stored.expires_at > expires_at,
    };
    match shared.find(&hash, config.timeout, refused, usable).await {
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
        Found::Alone => {
            metrics
                .shared_cache_fallbacks
                .with_label_values(&[config.id.as_str()])
                .inc();
            fetch_counted(source, config, metrics).await
        }
    }
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
