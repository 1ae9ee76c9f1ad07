//! A running bearerd: the proxy and admin listeners, and what operations do to them —
//! reload (a new config in force atomically, or the old one kept), prefetch, the client
//! secret expiry check, and graceful shutdown.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AuthConfig, Config, Env, HostPattern, LoadError, text_hash};
use crate::consent::Consents;
use crate::intercept::Interception;
use crate::proxy::{Proxy, Upstream};
use crate::shared_cache::SharedCache;
use crate::state::StateStore;
use crate::token::{Grants, RequestToken, TokenCache, TokenClient, TokenFailure, unix_seconds};
use crate::{StartError, admin, metrics, tls};

/// A client secret expiring sooner than this is warned about.
const SECRET_WARNING: Duration = Duration::from_hours(30 * 24);
/// How often the client secret expiry is checked again while running.
const SECRET_CHECK_EVERY: Duration = Duration::from_hours(24);

/// A running bearerd. Dropping it stops everything at once; [`Server::shutdown`] drains.
pub struct Server {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    serving: Option<JoinHandle<()>>,
}

/// What reloads and background tasks share with the server.
struct Shared {
    proxy: Arc<Proxy>,
    grants: Arc<Grants>,
    /// Admin, watcher, prefetch and secret-check tasks, stopped with the server.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn spawn(&self, tasks: impl IntoIterator<Item = JoinHandle<()>>) {
        let mut all = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|task| !task.is_finished());
        all.extend(tasks);
    }
}

impl Server {
    /// Binds both listeners (port 0 picks a free port) and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let roots = tls::load_roots(config.ca_file.as_deref())?;
        let metrics = Arc::new(metrics::Metrics::new());
        let interception = start_interception(&config, &roots.certificates, &metrics)?;
        let shared_cache = config
            .shared_cache
            .as_ref()
            .map(|shared| SharedCache::new(shared, &roots.certificates, Arc::clone(&metrics)))
            .transpose()?
            .map(Arc::new);
        let roots = Arc::new(roots.store);
        let upstream = Upstream::new(
            tls::client_config(Arc::clone(&roots))?,
            config.upstream_timeout,
            config.upstream_max_concurrency,
        );
        let state = config.state.as_ref().map(StateStore::open).transpose()?.map(Arc::new);
        let client: Arc<dyn RequestToken> = Arc::new(TokenClient::new(roots)?);
        let mut grants = Grants::new(client, state, Arc::clone(&metrics));
        if let Some(shared) = &shared_cache {
            // One record per user grant for the fleet, rotated under the token's lease.
            grants = grants.with_shared_cache(Arc::clone(shared));
        }
        let grants = Arc::new(grants);
        let mut tokens = TokenCache::new(Arc::clone(&grants), Arc::clone(&metrics));
        if let Some(shared) = &shared_cache {
            tokens = tokens.with_shared_cache(Arc::clone(shared));
        }
        let bind = |what, addr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|cause| StartError::Bind { what, addr, cause })?;
            let local = listener
                .local_addr()
                .map_err(|cause| StartError::Bind { what, addr, cause })?;
            Ok::<_, StartError>((listener, local))
        };
        let (proxy_listener, proxy_addr) = bind("listen", config.listen).await?;
        let (admin_listener, admin_addr) = bind("admin_listen", config.admin_listen).await?;
        let config = Arc::new(config);
        metrics.announce(&config.auth_configs);
        if config.shared_cache.is_some() {
            metrics.announce_shared_cache(&config.auth_configs);
        }
        grants.publish(&config.auth_configs);
        let proxy = Proxy::new(Arc::clone(&config), tokens, upstream, metrics, interception);
        let (stop, stopped) = watch::channel(false);
        let serving = tokio::spawn(Arc::clone(&proxy).serve(proxy_listener, stopped));
        let shared = Arc::new(Shared {
            proxy: Arc::clone(&proxy),
            grants,
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        shared.spawn([
            tokio::spawn(admin::serve(
                admin_listener,
                Arc::clone(&proxy),
                Arc::new(Consents::new(Arc::clone(&shared.grants), admin_addr)),
            )),
            tokio::spawn(check_secrets_daily(Arc::clone(&proxy))),
        ]);
        shared.spawn(start_prefetch(&proxy, &config));
        if let Some(cache) = shared_cache {
            shared.spawn([tokio::spawn(async move { cache.connect().await })]);
        }
        check_secrets(&proxy);
        tracing::info!(%proxy_addr, %admin_addr, auth_configs = config.auth_configs.len(), "bearerd is serving");
        Ok(Self {
            proxy_addr,
            admin_addr,
            shared,
            stop,
            serving: Some(serving),
        })
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> Arc<Config> {
        self.shared.proxy.config()
    }

    /// Loads `path` again and puts it in force. A file with any problem changes nothing: the
    /// old configuration keeps serving, the problems are logged and returned, and
    /// `bearerd_config_reloads_total{outcome="error"}` counts it.
    ///
    /// Tokens of auth configs whose token-shaping fields are unchanged stay cached; those of
    /// changed or removed configs are dropped. Listen addresses and `tls.ca_file` take effect
    /// only at the next start (a warning says so).
    pub fn reload(&self, path: &Path, env: &Env) -> Result<(), LoadError> {
        reload(&self.shared, path, env)
    }

    /// Reloads whenever the content of `path`, or of a secret, key, certificate or refresh
    /// token file it names, changes, checking every `every`. This also catches the
    /// Kubernetes `ConfigMap` and `Secret` pattern, where a file is a symlink through `..data`
    /// that the kubelet swaps atomically. Tokens stay cached across such a reload: a rotated
    /// secret is used from the next token request on, and a new refresh token file at once.
    pub fn watch(&self, path: PathBuf, env: Env, every: Duration) {
        let shared = Arc::downgrade(&self.shared);
        self.shared.spawn([tokio::spawn(watch_file(shared, path, env, every))]);
    }
}

/// The interception, when `intercept:` is set: its CA made and its bundle written.
fn start_interception(
    config: &Config,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    metrics: &metrics::Metrics,
) -> Result<Option<Arc<Interception>>, StartError> {
    let Some(settings) = &config.intercept else {
        return Ok(None);
    };
    let hosts = config.intercepted_hosts();
    let interception = Interception::start(settings, &hosts, roots, metrics)?;
    tracing::info!(
        ca_bundle_out = %settings.ca_bundle_out.display(),
        intercepted_hosts = hosts.len(),
        operator_ca = settings.operator_ca.is_some(),
        "TLS interception CA ready; its bundle is written"
    );
    Ok(Some(Arc::new(interception)))
}

/// Warns of each intercepted route host that the interception CA cannot sign for: added
/// by a reload, it is tunnelled until a restart.
fn warn_uncovered_hosts(proxy: &Proxy, config: &Config) {
    let Some(interception) = &proxy.interception else {
        return;
    };
    for host in config.intercepted_hosts() {
        let covered = match &host {
            HostPattern::Host(name) | HostPattern::HostPort(name, _) => interception.covers(name),
            // Any name under the suffix stands for it.
            HostPattern::Suffix(suffix) => interception.covers(&format!("x{suffix}")),
        };
        if !covered {
            tracing::warn!(%host, "intercept: true for a host the interception CA was not made for; its CONNECTs are tunnelled until bearerd restarts");
        }
    }
}

fn reload(shared: &Shared, path: &Path, env: &Env) -> Result<(), LoadError> {
    let new = match Config::load(path, env) {
        Ok(config) => config,
        Err(err) => {
            shared.proxy.metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(
                "reload of {} failed; the previous configuration stays in force:\n{err}",
                path.display()
            );
            return Err(err);
        }
    };
    let old = shared.proxy.config();
    for (what, changed) in [
        ("listen", new.listen != old.listen),
        ("admin_listen", new.admin_listen != old.admin_listen),
        ("tls.ca_file", new.ca_file != old.ca_file),
        ("intercept", new.intercept != old.intercept),
        ("state", new.state != old.state),
    ] {
        if changed {
            tracing::warn!("{what} changed; it takes effect when bearerd restarts");
        }
    }
    let new = Arc::new(new);
    let keep: HashSet<&str> = new.auth_configs.iter().map(|c| c.cache_key().as_str()).collect();
    shared.proxy.tokens.retain(&keep);
    let remaining: HashSet<&str> = new.auth_configs.iter().map(|c| c.id.as_str()).collect();
    for gone in old.auth_configs.iter().filter(|c| !remaining.contains(c.id.as_str())) {
        shared.proxy.metrics.forget(&gone.id);
    }
    warn_uncovered_hosts(&shared.proxy, &new);
    for renewed in new.auth_configs.iter().filter(|c| new_refresh_token_file(&old, c)) {
        shared.proxy.tokens.consent_renewed(renewed);
    }
    shared.proxy.set_config(Arc::clone(&new));
    shared.grants.publish(&new.auth_configs);
    check_secrets(&shared.proxy);
    shared.spawn(start_prefetch(&shared.proxy, &new));
    shared
        .proxy
        .metrics
        .config_reloads
        .with_label_values(&["success"])
        .inc();
    tracing::info!(
        source = %path.display(),
        auth_configs = new.auth_configs.len(),
        routes = new.routes.len(),
        "configuration reloaded"
    );
    Ok(())
}

/// Whether `config` (of a reload) starts from another refresh token than its namesake in
/// `old`: an updated `refresh_token_file`, the new consent of a `refresh_token` config.
fn new_refresh_token_file(old: &Config, config: &AuthConfig) -> bool {
    let before = old.auth_config(&config.id);
    match (
        &config.first_refresh_token,
        before.as_ref().and_then(|c| c.first_refresh_token.as_ref()),
    ) {
        (Some(first), Some(before)) => first.token != before.token,
        _ => false,
    }
}

impl Server {
    /// Stops accepting, lets in-flight requests and token requests finish for up to
    /// `shutdown_grace`, and returns whether they all did. A token request is waited for
    /// because a refresh may have rotated a refresh token: stopping before it is kept would
    /// leave only the spent one in `state.file`.
    pub async fn shutdown(mut self) -> bool {
        let grace = self.shared.proxy.config().shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let _ = self.stop.send(true);
        let Some(serving) = self.serving.take() else {
            return true;
        };
        if tokio::time::timeout_at(deadline, serving).await.is_err() {
            tracing::warn!(
                ?grace,
                "shutdown_grace passed with requests still in flight; closing them"
            );
            return false;
        }
        if tokio::time::timeout_at(deadline, self.shared.proxy.tokens.idle())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "shutdown_grace passed with a token request still running");
            return false;
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.serving.iter().for_each(JoinHandle::abort);
        let tasks = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn watch_file(shared: std::sync::Weak<Shared>, path: PathBuf, env: Env, every: Duration) {
    // What the last reload tried, so a bad file is reported once, not at every tick.
    let mut tried = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        // Unreadable (mid-swap, or removed): keep serving what is loaded and look again.
        let Ok(text) = std::fs::read(&path) else { continue };
        let config = shared.proxy.config();
        // The config file and the secret, key and certificate files it names: a rotated
        // Kubernetes Secret changes only the latter. One that can no longer be read counts
        // as changed, so its reload fails and is reported like a bad config file.
        let now = config.inputs_now(&text);
        if now == config.inputs_loaded() || tried == Some(now) {
            continue;
        }
        tried = Some(now);
        if text_hash(&text) != config.text_hash {
            tracing::info!(source = %path.display(), "configuration file changed");
        }
        for file in config.watched_files.iter().filter(|file| file.changed()) {
            tracing::info!(file = %file.path.display(), "a file the configuration reads changed");
        }
        let _ = reload(&shared, &path, &env);
    }
}

/// For each config with `prefetch: true` and no token yet, a task that fetches one (waiting
/// out back-off between attempts) so the first request does not wait, and `/readyz` turns
/// 200 once all have one. A task stops when its config is no longer in force.
fn start_prefetch(proxy: &Arc<Proxy>, config: &Config) -> Vec<JoinHandle<()>> {
    config
        .auth_configs
        .iter()
        .filter(|c| c.prefetch && proxy.tokens.state(c).last_refresh.is_none())
        .map(|auth_config| {
            let (proxy, auth_config) = (Arc::clone(proxy), Arc::clone(auth_config));
            tokio::spawn(async move {
                while in_force(&proxy, &auth_config) {
                    match proxy.tokens.get(&auth_config).await {
                        Ok(_) => return,
                        Err(TokenFailure::Backoff { retry_after, .. }) => tokio::time::sleep(retry_after).await,
                        Err(TokenFailure::Unavailable(_)) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

fn in_force(proxy: &Proxy, auth_config: &AuthConfig) -> bool {
    proxy
        .config()
        .auth_config(&auth_config.id)
        .is_some_and(|current| current.cache_key() == auth_config.cache_key())
}

/// Exports `client_secret_expires_at` and warns when a secret expires within 30 days.
fn check_secrets(proxy: &Proxy) {
    let now = SystemTime::now();
    for auth_config in &proxy.config().auth_configs {
        let Some(expires) = auth_config.client_secret_expires_at else {
            let _ = proxy
                .metrics
                .client_secret_expiry
                .remove_label_values(&[auth_config.id.as_str()]);
            continue;
        };
        proxy
            .metrics
            .client_secret_expiry
            .with_label_values(&[auth_config.id.as_str()])
            .set(unix_seconds(expires));
        match expires.duration_since(now) {
            Err(_) => {
                tracing::error!(auth_config = %auth_config.id, "the client secret has expired (client_secret_expires_at)");
            }
            Ok(left) if left < SECRET_WARNING => tracing::warn!(
                auth_config = %auth_config.id,
                days_left = left.as_secs() / 86_400,
                "the client secret expires in less than 30 days (client_secret_expires_at)"
            ),
            Ok(_) => {}
        }
    }
}

async fn check_secrets_daily(proxy: Arc<Proxy>) {
    // The first check ran at start.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SECRET_CHECK_EVERY, SECRET_CHECK_EVERY);
    loop {
        tick.tick().await;
        check_secrets(&proxy);
    }
}
