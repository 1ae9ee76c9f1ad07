//! Each grant's token requests. Client credentials need nothing but the client. The user
//! grants send the newest refresh token they hold (RFC 6749 §6), keep the one a response
//! rotates in (written to `state.file` before the new access token is handed out), and,
//! once the provider refuses theirs (`invalid_grant`: revoked, expired, or rotated by
//! someone else), send nothing more until a new consent brings a new one.
//!
//! With `shared_cache:`, the refresh token lives in Redis instead of `state.file`, one record
//! for every replica of the config, and only the process holding the token's lease (see
//! [`super::fleet`]) sends and rotates it; each write compares with the version it read, so
//! a consent that lands meanwhile is never overwritten.
//!
//! A `refresh_token` config starts from `refresh_token_file`. Its record remembers a hash of
//! the file it started from: the same file again after a restart is the token already
//! spent, and a changed file is a new start (the new consent of this grant).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{AuthorizationServer, FetchToken, GrantRequest, RequestToken, TokenError, TokenResponse};
use crate::config::AuthConfig;
use crate::metrics::Metrics;
use crate::secret::{AuthorizationCode, RefreshToken};
use crate::shared_cache::SharedCache;
use crate::state::{Record, StateStore, record_key, sha256_hex};

/// How long what this process read of a grant's record in Redis answers
/// [`FetchToken::blocked`] before it is read again: a consent given through another replica
/// reaches this one within about that long.
const REREAD: Duration = Duration::from_secs(1);

/// The token source of every auth config: each grant's requests to its token endpoint.
pub struct Grants {
    endpoint: Arc<dyn RequestToken>,
    /// Where the user grants' refresh tokens are; `None` when no config has ever needed it.
    keeper: Option<Keeper>,
    metrics: Arc<Metrics>,
}

/// Where the user grants keep their refresh tokens.
enum Keeper {
    /// `state.file`: this process's own.
    File(Arc<StateStore>),
    /// The fleet's Redis (`shared_cache:`): one record per grant for every replica.
    Fleet(Fleet),
}

/// The user grants' records in Redis, and what this process last read of each.
#[derive(Clone)]
struct Fleet {
    cache: Arc<SharedCache>,
    /// By entry hash: answers [`FetchToken::blocked`] without a round trip.
    known: Arc<Mutex<HashMap<String, Known>>>,
}

/// A grant's record as this process last read (or wrote) it.
struct Known {
    record: Option<Record>,
    read_at: Instant,
    /// A read of it is on its way.
    rereading: bool,
}

/// A grant's record as read, where, and its version for the compare-and-set that replaces
/// it.
struct Read {
    /// Where it was read: its key in `state.file`, or its entry hash in Redis.
    key: String,
    record: Option<Record>,
    /// Redis: the sealed value read (`None`: absent). `state.file` compares records.
    sealed: Option<Vec<u8>>,
}

/// The refresh token a user grant would send now.
struct Current {
    token: RefreshToken,
    /// `refresh_token` grant: the hash of the file the record starts from.
    seed_sha256: Option<String>,
}

impl Grants {
    #[must_use]
    pub fn new(endpoint: Arc<dyn RequestToken>, state: Option<Arc<StateStore>>, metrics: Arc<Metrics>) -> Self {
        Self {
            endpoint,
            keeper: state.map(Keeper::File),
            metrics,
        }
    }

    /// Keeps the user grants' refresh tokens in the fleet's Redis instead of `state.file`,
    /// shared by every replica (the token cache must share tokens through the same `shared`).
    #[must_use]
    pub fn with_shared_cache(mut self, shared: Arc<SharedCache>) -> Self {
        self.keeper = Some(Keeper::Fleet(Fleet {
            cache: shared,
            known: Arc::default(),
        }));
        self
    }

    /// Sets `bearerd_consent_required` for every user grant among `configs`: at start, after
    /// a reload, and whenever a consent is spent or renewed.
    pub fn publish(&self, configs: &[Arc<AuthConfig>]) {
        for config in configs.iter().filter(|c| c.grant.is_user_grant()) {
            self.publish_one(config);
            if let Some(Keeper::Fleet(fleet)) = &self.keeper {
                // What this process knows of the fleet's record comes with a read.
                fleet.reread_publishing(Arc::clone(config), Arc::clone(&self.metrics));
            }
        }
    }

    fn publish_one(&self, config: &AuthConfig) {
        let required = matches!(self.blocked(config), Some(TokenError::ConsentRequired { .. }));
        self.metrics
            .consent_required
            .with_label_values(&[config.id.as_str()])
            .set(i64::from(required));
    }

    fn keeper(&self) -> Result<&Keeper, TokenError> {
        self.keeper.as_ref().ok_or_else(|| {
            TokenError::State(
                "no state.file is open: a state: block added by a reload takes effect at a restart".into(),
            )
        })
    }

    /// One refresh for a user grant: the token it holds is sent, and the response's new
    /// refresh token, if any, is kept (`state.file`, or the fleet's Redis) before the access
    /// token is returned.
    async fn refresh(&self, config: &AuthConfig) -> Result<TokenResponse, TokenError> {
        let store = self.keeper()?;
        let read = store.read(config).await?;
        let Some(current) = current(config, read.record.as_ref()) else {
            self.publish_one(config);
            return Err(consent_required(config, None));
        };
        match self
            .endpoint
            .request(config, GrantRequest::RefreshToken(&current.token))
            .await
        {
            Ok(mut response) => {
                let newest = response.refresh_token.take().unwrap_or_else(|| current.token.clone());
                let unchanged = read.record.as_ref().is_some_and(|record| {
                    record.refresh_token.as_ref() == Some(&newest) && record.seed_sha256 == current.seed_sha256
                });
                if !unchanged {
                    let record = Record::new(&config.id, Some(newest), current.seed_sha256.clone())
                        .succeeding(read.record.as_ref());
                    // Ok(false): a consent came meanwhile and its newer refresh token stays;
                    // this access token is good all the same.
                    store
                        .replace(read, Some(record))
                        .await
                        .map_err(|err| {
                            TokenError::State(format!(
                                "the refresh token the provider returned could not be kept, so its access token is not used: {err}"
                            ))
                        })?;
                }
                // A consent given through another replica ends this one's consent_required.
                self.publish_one(config);
                Ok(response)
            }
            Err(TokenError::Refused {
                status,
                error,
                description,
            }) if error == "invalid_grant" => {
                let refusal = description
                    .as_ref()
                    .map_or_else(|| error.clone(), |d| format!("{error}: {d}"));
                // Spent: the record keeps which file it started from, with no token.
                let spent = current
                    .seed_sha256
                    .clone()
                    .map(|seed| Record::new(&config.id, None, Some(seed)).succeeding(read.record.as_ref()));
                match store.replace(read, spent).await {
                    Ok(false) => {
                        // A consent replaced the refused token meanwhile.
                        return Err(TokenError::Refused {
                            status,
                            error,
                            description,
                        });
                    }
                    Ok(true) => {}
                    Err(err) => tracing::error!(auth_config = %config.id, "{err}"),
                }
                self.publish_one(config);
                let error = consent_required(config, Some(refusal));
                tracing::warn!(auth_config = %config.id, "{error}");
                Err(error)
            }
            Err(err) => Err(err),
        }
    }
}

/// The refresh token `config` would send, given its `record`; `None` when it holds none the
/// provider may still honour (a new consent is needed).
fn current(config: &AuthConfig, record: Option<&Record>) -> Option<Current> {
    let held = || record.and_then(|r| r.refresh_token.clone());
    let Some(first) = &config.first_refresh_token else {
        return held().map(|token| Current {
            token,
            seed_sha256: None,
        });
    };
    let seed_sha256 = sha256_hex(first.token.expose().as_bytes());
    // The record started from this file, or from a newer one that replaced it (another
    // replica read the rotated Secret first): either way, the file's token is spent.
    let started_here = record
        .is_some_and(|r| r.seed_sha256.as_deref() == Some(&seed_sha256) || r.superseded_seeds.contains(&seed_sha256));
    let (token, seed_sha256) = if started_here {
        // The record's line goes on from the file it started from.
        let line = record.and_then(|r| r.seed_sha256.clone());
        (held()?, line.unwrap_or(seed_sha256))
    } else {
        (first.token.clone(), seed_sha256)
    };
    Some(Current {
        token,
        seed_sha256: Some(seed_sha256),
    })
}

/// Whether `config` (a user grant) holds a refresh token the provider may still honour,
/// given its `record` in `state.file`; if not, a new consent is needed.
#[must_use]
pub fn holds_refresh_token(config: &AuthConfig, record: Option<&Record>) -> bool {
    current(config, record).is_some()
}

/// What a consent's code exchange gave.
pub struct Consented {
    /// Its access token and lifetime (the refresh token is in `state.file`).
    pub response: TokenResponse,
    /// Whether the provider returned a refresh token: without one, the access token is all
    /// the consent gave, and another consent is needed once it expires.
    pub refresh_token_kept: bool,
}

impl Grants {
    /// Where `config`'s consent starts.
    pub async fn authorization_server(&self, config: &AuthConfig) -> Result<AuthorizationServer, TokenError> {
        self.endpoint.authorization_server(config).await
    }

    /// Exchanges a consent's authorization `code` (RFC 6749 §4.1.3, PKCE's `code_verifier`)
    /// and keeps the refresh token it gives in `state.file`, replacing any older one, before
    /// returning. Without a refresh token, the older one is dropped too: the new consent,
    /// perhaps another user's, decides whose access the config carries.
    pub async fn exchange(
        &self,
        config: &AuthConfig,
        code: &AuthorizationCode,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<Consented, TokenError> {
        let store = self.keeper()?;
        let grant = GrantRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        };
        let mut response = self.endpoint.request(config, grant).await?;
        let refresh_token = response.refresh_token.take();
        let refresh_token_kept = refresh_token.is_some();
        let record = refresh_token.map(|token| Record::new(&config.id, Some(token), None));
        let written = store.consented(config, record).await;
        self.publish_one(config);
        written.map_err(|err| {
            TokenError::State(format!(
                "the consent's refresh token could not be kept (it is held until bearerd stops): {err}"
            ))
        })?;
        Ok(Consented {
            response,
            refresh_token_kept,
        })
    }
}

impl FetchToken for Grants {
    fn fetch<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
        if config.grant.is_user_grant() {
            Box::pin(self.refresh(config))
        } else {
            self.endpoint.request(config, GrantRequest::service(config.grant))
        }
    }

    fn blocked(&self, config: &AuthConfig) -> Option<TokenError> {
        if !config.grant.is_user_grant() {
            return None;
        }
        match self.keeper() {
            Err(err) => Some(err),
            // Not known yet (Redis): the fetch reads it.
            Ok(store) => store.known(config).and_then(|read| {
                current(config, read.record.as_ref())
                    .is_none()
                    .then(|| consent_required(config, None))
            }),
        }
    }
}

/// `config` needs a new consent; `refusal` is the provider's word on the last refresh token.
fn consent_required(config: &AuthConfig, refusal: Option<String>) -> TokenError {
    TokenError::ConsentRequired {
        auth_config: config.id.clone(),
        remedy: remedy(config),
        refusal,
    }
}

/// How an operator gives user grant `config` a new consent.
#[must_use]
pub fn remedy(config: &AuthConfig) -> String {
    match &config.first_refresh_token {
        Some(first) => format!(
            "put a new refresh token in refresh_token_file ({})",
            first.path.display()
        ),
        None => format!("open /authorize/{} on the admin listener", config.id),
    }
}

impl Keeper {
    /// `config`'s record now. From Redis, a failure is the refresh's: without the record
    /// there is no refresh token to send.
    async fn read(&self, config: &AuthConfig) -> Result<Read, TokenError> {
        match self {
            Self::File(store) => {
                let key = record_key(config);
                Ok(Read {
                    record: store.get(&key),
                    key,
                    sealed: None,
                })
            }
            Self::Fleet(fleet) => {
                let hash = super::fleet::entry_hash(&fleet.cache, config)?;
                let (record, sealed) = fleet
                    .cache
                    .read_grant(&hash)
                    .await
                    .map_err(|err| {
                        TokenError::State(format!(
                            "its refresh token could not be read from the shared cache: {err}"
                        ))
                    })?
                    .unzip();
                fleet.learn(hash.clone(), record.clone());
                Ok(Read {
                    key: hash,
                    record,
                    sealed,
                })
            }
        }
    }

    /// `config`'s record as known without waiting: `state.file`'s, or what this process last
    /// read of the fleet's (`None` when it has read nothing yet; read again in the
    /// background when older than [`REREAD`]).
    fn known(&self, config: &AuthConfig) -> Option<Read> {
        match self {
            Self::File(store) => {
                let key = record_key(config);
                Some(Read {
                    record: store.get(&key),
                    key,
                    sealed: None,
                })
            }
            Self::Fleet(fleet) => {
                let hash = super::fleet::entry_hash(&fleet.cache, config).ok()?;
                fleet.known(hash)
            }
        }
    }

    /// Replaces the record `expected` was read from with `new`, if it is still as read.
    /// `Ok(false)`: another writer (a consent) changed it meanwhile, and its record stays.
    async fn replace(&self, expected: Read, new: Option<Record>) -> Result<bool, String> {
        match self {
            // Off the async threads: the write ends with two fsyncs.
            Self::File(store) => {
                let store = Arc::clone(store);
                tokio::task::spawn_blocking(move || store.replace(&expected.key, expected.record.as_ref(), new))
                    .await
                    .map_err(|err| format!("writing state.file stopped: {err}"))?
                    .map_err(|err| err.to_string())
            }
            Self::Fleet(fleet) => {
                let replaced = fleet
                    .cache
                    .replace_grant(&expected.key, expected.sealed.as_deref(), new.as_ref())
                    .await
                    .map_err(|err| err.to_string())?;
                if replaced {
                    fleet.learn(expected.key, new);
                } else {
                    fleet.forget(&expected.key);
                }
                Ok(replaced)
            }
        }
    }

    /// A consent's `record` replaces `config`'s, whatever it held.
    async fn consented(&self, config: &AuthConfig, record: Option<Record>) -> Result<(), String> {
        match self {
            Self::File(store) => {
                let (store, key) = (Arc::clone(store), record_key(config));
                tokio::task::spawn_blocking(move || store.put(&key, record))
                    .await
                    .map_err(|err| format!("writing state.file stopped: {err}"))?
                    .map_err(|err| err.to_string())
            }
            Self::Fleet(fleet) => {
                let hash = super::fleet::entry_hash(&fleet.cache, config).map_err(|err| err.to_string())?;
                fleet
                    .cache
                    .consented(&hash, record.as_ref())
                    .await
                    .map_err(|err| err.to_string())?;
                fleet.learn(hash, record);
                Ok(())
            }
        }
    }
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What this process read or wrote of the record named `hash` just now.
    fn learn(&self, hash: String, record: Option<Record>) {
        self.lock().insert(
            hash,
            Known {
                record,
                read_at: Instant::now(),
                rereading: false,
            },
        );
    }

    /// The record named `hash` changed under this process: it is unknown until read again.
    fn forget(&self, hash: &str) {
        self.lock().remove(hash);
    }

    /// What this process knows of the record named `hash`; older than [`REREAD`], it is
    /// read again in the background (one read at a time).
    fn known(&self, hash: String) -> Option<Read> {
        let mut known = self.lock();
        let entry = known.get_mut(&hash)?;
        let record = entry.record.clone();
        if !entry.rereading
            && entry.read_at.elapsed() >= REREAD
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            entry.rereading = true;
            let (fleet, hash) = (self.clone(), hash.clone());
            runtime.spawn(async move {
                match fleet.cache.read_grant(&hash).await {
                    Ok(read) => fleet.learn(hash, read.map(|(record, _)| record)),
                    // Redis did not answer: the next look tries again.
                    Err(_) => {
                        if let Some(entry) = fleet.lock().get_mut(&hash) {
                            entry.rereading = false;
                            entry.read_at = Instant::now();
                        }
                    }
                }
            });
        }
        Some(Read {
            key: hash,
            record,
            sealed: None,
        })
    }

    /// Reads `config`'s record in the background and sets its `bearerd_consent_required`.
    fn reread_publishing(&self, config: Arc<AuthConfig>, metrics: Arc<Metrics>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(hash) = super::fleet::entry_hash(&self.cache, &config) else {
            return;
        };
        let fleet = self.clone();
        runtime.spawn(async move {
            let Ok(read) = fleet.cache.read_grant(&hash).await else {
                return;
            };
            let record = read.map(|(record, _)| record);
            let required = !holds_refresh_token(&config, record.as_ref());
            fleet.learn(hash, record);
            metrics
                .consent_required
                .with_label_values(&[config.id.as_str()])
                .set(i64::from(required));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, Env};
    use crate::secret::{AccessToken, SealingKey};
    use crate::token::{TokenCache, TokenFailure};

    /// What the scripted endpoint answers to one refresh.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// An access token `at<n>` and a rotated refresh token `rt<n>`.
        Rotate,
        /// An access token `at<n>`, no refresh token.
        Keep,
        InvalidGrant,
        /// HTTP 500.
        Down,
    }

    /// A token endpoint that records the refresh token of every request and answers as its
    /// script says (then `Rotate`), after `delay` on the tokio clock.
    struct Scripted {
        sent: Mutex<Vec<String>>,
        script: Mutex<VecDeque<Answer>>,
        delay: Duration,
        /// Runs while the next request is on its way (a consent landing meanwhile).
        meanwhile: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Scripted {
        fn new(script: &[Answer]) -> Arc<Self> {
            Arc::new(Self {
                sent: Mutex::new(Vec::new()),
                script: Mutex::new(script.iter().copied().collect()),
                delay: Duration::from_millis(200),
                meanwhile: Mutex::new(None),
            })
        }

        fn sent(&self) -> Vec<String> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl RequestToken for Scripted {
        fn request<'a>(
            &'a self,
            _config: &'a AuthConfig,
            grant: GrantRequest<'a>,
        ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
            Box::pin(async move {
                let GrantRequest::RefreshToken(token) = grant else {
                    panic!("a user grant sent {grant:?}")
                };
                let n = {
                    let mut sent = self.sent.lock().unwrap();
                    sent.push(token.expose().to_owned());
                    sent.len()
                };
                tokio::time::sleep(self.delay).await;
                let meanwhile = self.meanwhile.lock().unwrap().take();
                if let Some(meanwhile) = meanwhile {
                    meanwhile();
                }
                let answer = self.script.lock().unwrap().pop_front().unwrap_or(Answer::Rotate);
                let response = |refresh_token| TokenResponse {
                    access_token: AccessToken::new(format!("at{n}")),
                    expires_in: Some(Duration::from_secs(300)),
                    scope: None,
                    refresh_token,
                };
                match answer {
                    Answer::Rotate => Ok(response(Some(RefreshToken::new(format!("rt{n}"))))),
                    Answer::Keep => Ok(response(None)),
                    Answer::InvalidGrant => Err(TokenError::Refused {
                        status: 400,
                        error: "invalid_grant".into(),
                        description: Some("grant request is invalid".into()),
                    }),
                    Answer::Down => Err(TokenError::BadStatus {
                        status: 500,
                        content_type: "text/html".into(),
                    }),
                }
            })
        }

        fn authorization_server<'a>(
            &'a self,
            _config: &'a AuthConfig,
        ) -> Pin<Box<dyn Future<Output = Result<AuthorizationServer, TokenError>> + Send + 'a>> {
            unreachable!("a refresh_token config has no consent to start")
        }
    }

    /// A `refresh_token` config `crm` whose file holds `first`, with its state in `dir`.
    fn config(dir: &Path, first: &str) -> Arc<AuthConfig> {
        std::fs::write(dir.join("key"), [9; 32]).unwrap();
        std::fs::write(dir.join("refresh-token"), format!("{first}\n")).unwrap();
        let yaml = format!(
            "state: {{ file: {0}/state.json, key_file: {0}/key }}\nauth_configs:\n  - id: crm\n    grant: refresh_token\n    refresh_token_file: {0}/refresh-token\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n",
            dir.display()
        );
        Config::from_yaml("t", &yaml, &Env::new())
            .unwrap()
            .auth_config("crm")
            .unwrap()
    }

    fn open(dir: &Path) -> Arc<StateStore> {
        let config = crate::config::StateConfig {
            file: dir.join("state.json"),
            key_file: dir.join("key"),
            key: SealingKey::parse(&[9; 32]).unwrap(),
        };
        Arc::new(StateStore::open(&config).unwrap())
    }

    /// A cache over `endpoint` with the state in `dir`, as a (re)started bearerd has it.
    fn start(dir: &Path, endpoint: &Arc<Scripted>) -> (TokenCache, Arc<Grants>, Arc<Metrics>) {
        start_with(open(dir), endpoint)
    }

    /// As [`start`], on a state store the test also holds.
    fn start_with(store: Arc<StateStore>, endpoint: &Arc<Scripted>) -> (TokenCache, Arc<Grants>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let endpoint: Arc<dyn RequestToken> = Arc::clone(endpoint) as _;
        let grants = Arc::new(Grants::new(endpoint, Some(store), Arc::clone(&metrics)));
        (
            TokenCache::new(Arc::clone(&grants), Arc::clone(&metrics)),
            grants,
            metrics,
        )
    }

    /// The refresh token `state.file` holds for `config`, read from the disk.
    fn on_disk(dir: &Path, config: &AuthConfig) -> Option<String> {
        let records = StateStore::read(&dir.join("state.json"), &SealingKey::parse(&[9; 32]).unwrap())
            .unwrap()
            .unwrap();
        records
            .get(&record_key(config))
            .and_then(|record| record.refresh_token.as_ref().map(|t| t.expose().to_owned()))
    }

    fn gauge(metrics: &Metrics) -> i64 {
        metrics.consent_required.with_label_values(&["crm"]).get()
    }

    async fn access_token(cache: &TokenCache, config: &Arc<AuthConfig>) -> Result<String, String> {
        cache
            .get(config)
            .await
            .map(|(token, _)| token.token.expose().to_owned())
            .map_err(|failure| failure.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn the_file_starts_it_and_each_rotated_token_is_kept_before_its_access_token_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "rt-file");
        let endpoint = Scripted::new(&[]);
        let (cache, _, _) = start(dir.path(), &endpoint);
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at1");
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt1"));
        // Past the refresh window: the next refresh sends the rotated token.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at2");
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt2"));
        // A restart with the same file carries on from the newest token, not the file's.
        let (restarted, _, metrics) = start(dir.path(), &endpoint);
        assert_eq!(access_token(&restarted, &config).await.unwrap(), "at3");
        assert_eq!(endpoint.sent(), ["rt-file", "rt1", "rt2"]);
        assert_eq!(gauge(&metrics), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotated_token_that_cannot_be_written_keeps_its_access_token_unused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let config = config(&dir, "rt-file");
        let endpoint = Scripted::new(&[]);
        let (cache, _, _) = start(&dir, &endpoint);
        // The state directory goes away (a volume unmounted): the write fails.
        let key = std::fs::read(dir.join("key")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let failure = access_token(&cache, &config).await.unwrap_err();
        assert!(
            failure.starts_with(
                "the refresh token the provider returned could not be kept, so its access token is not used: state.file "
            ),
            "{failure}"
        );
        assert!(!failure.contains("rt1") && !failure.contains("at1"), "{failure}");
        // The directory is back: after the back-off, the newest token (held in memory) is
        // sent, and kept this time.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("key"), key).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at2");
        assert_eq!(endpoint.sent(), ["rt-file", "rt1"]);
        assert_eq!(on_disk(&dir, &config).as_deref(), Some("rt2"));
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_grant_asks_for_consent_once_and_never_loops() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "rt-file");
        let endpoint = Scripted::new(&[Answer::InvalidGrant]);
        let (cache, _, metrics) = start(dir.path(), &endpoint);
        let cache = Arc::new(cache);
        let expected = format!(
            "auth config `crm` needs a new consent: put a new refresh token in refresh_token_file ({}/refresh-token)",
            dir.path().display()
        );
        // 50 requests at once, then one every 100 ms for ten minutes.
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let (cache, config) = (Arc::clone(&cache), Arc::clone(&config));
                tokio::spawn(async move { access_token(&cache, &config).await })
            })
            .collect();
        for waiter in waiters {
            let failure = waiter.await.unwrap().unwrap_err();
            assert_eq!(
                failure,
                format!(
                    "{expected} (the identity provider refused its refresh token: invalid_grant: grant request is invalid)"
                )
            );
        }
        for _ in 0..6000 {
            assert_eq!(access_token(&cache, &config).await.unwrap_err(), expected);
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(endpoint.sent(), ["rt-file"], "exactly one token request");
        assert_eq!(gauge(&metrics), 1);
        let state = cache.state(&config);
        assert!(state.consent_required);
        assert!(state.last_error.unwrap().contains("invalid_grant"));
        assert_eq!(on_disk(dir.path(), &config), None);

        // A restart with the same file: still spent, still no request.
        let (restarted, grants, metrics) = start(dir.path(), &endpoint);
        grants.publish(std::slice::from_ref(&config));
        assert_eq!(gauge(&metrics), 1);
        assert_eq!(access_token(&restarted, &config).await.unwrap_err(), expected);
        assert_eq!(endpoint.sent(), ["rt-file"]);

        // A new refresh token in the file is the new consent.
        let renewed = self::config(dir.path(), "rt-new");
        assert_eq!(renewed.cache_key(), config.cache_key(), "the same slot and record");
        grants.publish(std::slice::from_ref(&renewed));
        assert_eq!(gauge(&metrics), 0);
        assert!(!restarted.state(&renewed).consent_required);
        tokio::time::advance(Duration::from_secs(2)).await; // the restarted cache's own back-off
        assert_eq!(access_token(&restarted, &renewed).await.unwrap(), "at2");
        assert_eq!(endpoint.sent(), ["rt-file", "rt-new"]);
        assert_eq!(on_disk(dir.path(), &renewed).as_deref(), Some("rt2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_ahead_refused_keeps_the_valid_token_and_starts_no_more_refreshes() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "rt-file");
        let endpoint = Scripted::new(&[Answer::Keep, Answer::InvalidGrant]);
        let (cache, _, metrics) = start(dir.path(), &endpoint);
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at1");
        // No rotation: the file's token is kept, with the file it came from.
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt-file"));
        // Inside refresh_before (60 s of a 295 s lifetime): at1 serves, the refresh is refused.
        tokio::time::advance(Duration::from_secs(240)).await;
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at1");
        // A sleep, not an advance: the paused clock moves only once the refresh, its state
        // file write included, has finished.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(gauge(&metrics), 1);
        for _ in 0..40 {
            assert_eq!(access_token(&cache, &config).await.unwrap(), "at1");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(endpoint.sent(), ["rt-file", "rt-file"]);
        // Expired: now the requests are refused, still without a token request.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            access_token(&cache, &config)
                .await
                .unwrap_err()
                .contains("needs a new consent")
        );
        assert_eq!(endpoint.sent().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_back_off_and_keep_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "rt-file");
        let endpoint = Scripted::new(&[Answer::Down, Answer::Down]);
        let (cache, _, metrics) = start(dir.path(), &endpoint);
        assert!(access_token(&cache, &config).await.unwrap_err().contains("HTTP 500"));
        assert!(matches!(cache.get(&config).await, Err(TokenFailure::Backoff { .. })));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(access_token(&cache, &config).await.is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at3");
        assert_eq!(endpoint.sent(), ["rt-file", "rt-file", "rt-file"]);
        assert_eq!(gauge(&metrics), 0);
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt3"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_still_reading_the_replaced_file_goes_on_from_the_record_not_the_spent_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = config(dir.path(), "rt-old");
        let endpoint = Scripted::new(&[]);
        let (cache, _, _) = start(dir.path(), &endpoint);
        assert_eq!(access_token(&cache, &old).await.unwrap(), "at1");
        // The Secret is rotated; this process reads the new file first: a new start.
        let new = config(dir.path(), "rt-new");
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(access_token(&cache, &new).await.unwrap(), "at2");
        // Another replica still reads the old file (its pod has not seen the Secret yet):
        // the old file's token is spent, so it goes on from the record.
        let (lagging, _, metrics) = start(dir.path(), &endpoint);
        assert_eq!(access_token(&lagging, &old).await.unwrap(), "at3");
        assert_eq!(gauge(&metrics), 0);
        // The record's line still starts from the new file: a replica reading it goes on too.
        let (current, _, _) = start(dir.path(), &endpoint);
        assert_eq!(access_token(&current, &new).await.unwrap(), "at4");
        assert_eq!(endpoint.sent(), ["rt-old", "rt-new", "rt2", "rt3"]);
        assert_eq!(on_disk(dir.path(), &new).as_deref(), Some("rt4"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_consent_that_lands_during_a_refresh_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "rt-file");
        let seed = sha256_hex(b"rt-file");
        let consented = |store: &Arc<StateStore>, config: &AuthConfig, token: &str| {
            let (store, key, seed) = (Arc::clone(store), record_key(config), seed.clone());
            let record = Record::new("crm", Some(RefreshToken::new(token)), Some(seed));
            Box::new(move || store.put(&key, Some(record)).unwrap()) as Box<dyn FnOnce() + Send>
        };
        // The refresh is refused, but a consent came meanwhile: not consent_required, and
        // the consent's token is what the next refresh sends.
        let endpoint = Scripted::new(&[Answer::InvalidGrant]);
        let store = open(dir.path());
        let (cache, grants, metrics) = start_with(Arc::clone(&store), &endpoint);
        *endpoint.meanwhile.lock().unwrap() = Some(consented(&store, &config, "rt-consent"));
        let failure = access_token(&cache, &config).await.unwrap_err();
        assert_eq!(
            failure,
            "the identity provider refused the token request (HTTP 400): invalid_grant: grant request is invalid"
        );
        grants.publish(std::slice::from_ref(&config));
        assert_eq!(gauge(&metrics), 0);
        assert!(!cache.state(&config).consent_required);
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt-consent"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at2");
        assert_eq!(endpoint.sent(), ["rt-file", "rt-consent"]);
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt2"));

        // A rotation that lands after a consent leaves the consent's token, and its access
        // token is used.
        tokio::time::advance(Duration::from_secs(300)).await;
        *endpoint.meanwhile.lock().unwrap() = Some(consented(&store, &config, "rt-newer-consent"));
        assert_eq!(access_token(&cache, &config).await.unwrap(), "at3");
        assert_eq!(on_disk(dir.path(), &config).as_deref(), Some("rt-newer-consent"));
    }
}
