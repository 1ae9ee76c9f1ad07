//! Loading: a YAML document and the environment → a validated [`Config`], every problem
//! collected (naming the file, the auth config and the field) before giving up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, Method};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use url::Url;

use super::env::{ENV_CONFIG_PREFIX, Env, env_field, expand_vars};
use super::google;
use super::raw::{
    RawAuthConfig, RawDuration, RawInject, RawIntercept, RawRoute, RawScopes, RawSharedCache, RawState, RawTimestamp,
    RawTop,
};
use super::time::{parse_duration, parse_timestamp};
use super::{
    AuthConfig, Authorize, CacheKey, ClientAuth, ClientCertificate, Config, ConfigError, Credential, ExternalAccount,
    FirstRefreshToken, GOOGLE_CLOUD_PLATFORM_SCOPE, GOOGLE_ISSUER, Grant, HostPattern, Impersonation, Inject,
    Intercept, LoadError, MICROSOFT_AUTHORITY, OperatorCa, Provider, RedisUrl, Route, RouteKind, SharedCacheConfig,
    SigningKey, StateConfig, TokenEndpoint, TokenExchange, WatchedFile, check_endpoint_url,
};
use crate::http1;
use crate::secret::{ClientSecret, RefreshToken, SealingKey};

/// Validates a YAML document; `source` names it in messages.
pub(super) fn from_yaml(source: &str, text: &str, env: &Env) -> Result<Config, LoadError> {
    let mut loader = Loader {
        source,
        env,
        errors: Vec::new(),
        from_env: HashMap::new(),
        watched: Vec::new(),
    };
    let config = loader.load(text);
    match config {
        Some(mut config) if loader.errors.is_empty() => {
            config.text_hash = text_hash(text.as_bytes());
            Ok(config)
        }
        _ => Err(LoadError(loader.errors)),
    }
}

const MAX_DESCRIPTION_CHARS: usize = 1024;
const MAX_SCOPES: usize = 500;
const MAX_SCOPE_CHARS: usize = 250;
const MAX_ID_CHARS: usize = 128;
const MAX_PREFIX_CHARS: usize = 64;
/// The fields that say where token requests go; the first three each name an endpoint.
const ENDPOINT_FIELDS: &[&str] = &[
    "token_url",
    "issuer",
    "provider",
    "discovery_url",
    "tenant",
    "authority_host",
    "credentials_file",
];
/// What Azure Workload Identity's webhook injects into a pod labelled
/// `azure.workload.identity/use: "true"`.
const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Where Google's client libraries look for a credential file.
const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// RFC 8693 §3: what an external account's STS exchange asks for.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Authorization request parameters that bearerd itself sets (RFC 6749 §4.1.1, RFC 7636
/// §4.3); bearerd reads the response from the query, so `response_mode` is its own too.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
];
/// Token request parameters that bearerd itself sets; `extra_params` may not override them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "refresh_token",
    "code",
    "redirect_uri",
    "code_verifier",
];

struct Loader<'a> {
    source: &'a str,
    env: &'a Env,
    errors: Vec<ConfigError>,
    /// (config id, top-level field) → the variable that set it, for messages.
    from_env: HashMap<(String, String), String>,
    /// The secret, key, certificate and refresh token files read so far.
    watched: Vec<WatchedFile>,
}

/// A route, validated, before auth configs are final.
struct PendingRoute {
    host: Option<HostPattern>,
    path_prefix: String,
    methods: Vec<Method>,
    auth_config: String,
    kind: RouteKind,
}

impl Loader<'_> {
    fn error(&mut self, config_id: Option<&str>, field: &str, message: impl Into<String>) {
        let mut field = field.to_owned();
        if let Some(id) = config_id {
            let top = field.split(['.', '[']).next().unwrap_or_default().to_owned();
            if let Some(var) = self.from_env.get(&(id.to_owned(), top)) {
                field = format!("{field} (from {var})");
            }
        }
        self.errors
            .push(ConfigError::new(self.source, config_id, &field, message));
    }

    fn load(&mut self, text: &str) -> Option<Config> {
        let document: Value = match serde_yaml::from_str(text) {
            Ok(Value::Null) => Value::Mapping(Mapping::new()),
            Ok(value) => value,
            Err(err) => {
                self.error(None, "(document)", format!("not valid YAML: {err}"));
                return None;
            }
        };
        let Value::Mapping(mut top) = document else {
            self.error(None, "(document)", "expected a mapping of settings at the top level");
            return None;
        };
        let raw_configs = self.take_sequence(&mut top, "auth_configs");
        let raw_routes = self.take_sequence(&mut top, "routes");

        let mut top = Value::Mapping(top);
        self.expand(&mut top, None, "");
        let mut raw_top: Option<RawTop> = self.deserialize(top, None, "");
        // Unknown when the top level did not parse: then routes are not blamed for it.
        let intercept_on = raw_top.as_ref().is_none_or(|top| top.intercept.is_some());

        let mut configs = self.expanded_configs(raw_configs);
        self.apply_env_overrides(&mut configs);
        let (validated, seen) = self.auth_configs(configs);

        let routes: Vec<PendingRoute> = raw_routes
            .into_iter()
            .enumerate()
            .filter_map(|(index, mut value)| {
                let field = format!("routes[{index}]");
                self.expand(&mut value, None, &field);
                let raw = self.deserialize::<RawRoute>(value, None, &field)?;
                self.route(&field, raw, &seen, intercept_on)
            })
            .collect();

        let intercept = raw_top
            .as_mut()
            .and_then(|top| top.intercept.take())
            .and_then(|raw| self.intercept(raw));
        let raw_top = raw_top?;
        let listen = self.socket_addr("listen", "BEARERD_LISTEN", raw_top.listen.as_deref(), "127.0.0.1:8080");
        let admin_listen = self.socket_addr(
            "admin_listen",
            "BEARERD_ADMIN_LISTEN",
            raw_top.admin_listen.as_deref(),
            "127.0.0.1:9090",
        );
        let upstream_timeout = self.duration(
            None,
            "upstream_timeout",
            raw_top.upstream_timeout,
            Duration::from_mins(1),
        );
        let shutdown_grace = self.duration(None, "shutdown_grace", raw_top.shutdown_grace, Duration::from_secs(30));
        let config_watch_interval = self.duration(
            None,
            "config_watch_interval",
            raw_top.config_watch_interval,
            Duration::from_secs(1),
        );
        let state_set = raw_top.state.is_some();
        let state = raw_top.state.and_then(|raw| self.state(raw));
        let shared_cache = raw_top.shared_cache.and_then(|raw| self.shared_cache(raw));
        let ca_file = self.ca_file(raw_top.tls.and_then(|tls| tls.ca_file));

        let auth_configs = self.finish_auth_configs(validated, &routes);
        // With shared_cache, the user grants keep their refresh tokens in Redis.
        if !state_set && shared_cache.is_none() {
            self.require_state(&auth_configs);
        }
        let by_id: HashMap<String, usize> = auth_configs
            .iter()
            .enumerate()
            .map(|(i, config)| (config.id.clone(), i))
            .collect();
        let routes = indexed_routes(routes, &by_id);

        Some(Config {
            source: self.source.to_owned(),
            text_hash: 0,
            listen: listen?,
            admin_listen: admin_listen?,
            default_action: raw_top.default_action,
            connect: raw_top.connect,
            upstream_timeout,
            upstream_max_concurrency: raw_top.upstream_max_concurrency.filter(|&n| n > 0).unwrap_or(256),
            shutdown_grace,
            max_connections: raw_top.max_connections.filter(|&n| n > 0).unwrap_or(4096),
            config_watch_interval,
            worker_threads: raw_top.worker_threads.filter(|&n| n > 0),
            ca_file,
            intercept,
            state,
            shared_cache,
            watched_files: std::mem::take(&mut self.watched),
            auth_configs,
            routes,
            by_id,
        })
    }

    /// Without `state:`, a user grant would lose its refresh token at every restart.
    fn require_state(&mut self, auth_configs: &[Arc<AuthConfig>]) {
        for user in auth_configs.iter().filter(|c| c.grant.is_user_grant()) {
            self.error(
                Some(&user.id),
                "grant",
                format!(
                    "{} keeps its refresh token in state.file: add a state: block (file, key_file), or a shared_cache: block to keep it in Redis",
                    user.grant.as_str()
                ),
            );
        }
    }

    /// `state:`: both paths, and a key file holding a 256-bit key.
    fn state(&mut self, raw: RawState) -> Option<StateConfig> {
        let file = raw.file.filter(|file| !file.as_os_str().is_empty());
        if file.is_none() {
            self.error(None, "state.file", "missing: where the sealed state is written");
        }
        let Some(key_file) = raw.key_file else {
            self.error(None, "state.key_file", "missing: the key the state is sealed with");
            return None;
        };
        let key = match self.read_watched(&key_file) {
            Ok(content) => SealingKey::parse(&content),
            Err(err) => Err(format!("cannot read: {err}")),
        };
        let key = key
            .map_err(|message| self.error(None, "state.key_file", format!("{}: {message}", key_file.display())))
            .ok()?;
        Some(StateConfig {
            file: file?,
            key_file,
            key,
        })
    }

    /// `shared_cache:`: a Redis URL, a key file holding a 256-bit key, and a key prefix.
    fn shared_cache(&mut self, raw: RawSharedCache) -> Option<SharedCacheConfig> {
        let redis = match raw.redis.as_deref().filter(|url| !url.is_empty()) {
            None => {
                self.error(
                    None,
                    "shared_cache.redis",
                    "missing: the redis:// or rediss:// URL of the shared cache",
                );
                None
            }
            Some(text) => RedisUrl::parse(text)
                .map_err(|message| self.error(None, "shared_cache.redis", message))
                .ok(),
        };
        let prefix = raw
            .prefix
            .unwrap_or_else(|| SharedCacheConfig::DEFAULT_PREFIX.to_owned());
        let prefix_ok = valid_key_prefix(&prefix);
        if !prefix_ok {
            self.error(
                None,
                "shared_cache.prefix",
                format!("must be 1 to {MAX_PREFIX_CHARS} letters, digits or _ . - : (found {prefix:?})"),
            );
        }
        let Some(key_file) = raw.key_file else {
            self.error(
                None,
                "shared_cache.key_file",
                "missing: the key every value in Redis is sealed with",
            );
            return None;
        };
        let key = match self.read_watched(&key_file) {
            Ok(content) => SealingKey::parse(&content),
            Err(err) => Err(format!("cannot read: {err}")),
        };
        let key = key
            .map_err(|message| {
                self.error(
                    None,
                    "shared_cache.key_file",
                    format!("{}: {message}", key_file.display()),
                );
            })
            .ok()?;
        Some(SharedCacheConfig {
            redis: redis?,
            key_file,
            key,
            prefix: Some(prefix).filter(|_| prefix_ok)?,
        })
    }

    /// Each auth config checked on its own; also every id seen, for routes to refer to.
    fn auth_configs(&mut self, configs: Vec<(Option<String>, Value)>) -> (Vec<PendingConfig>, HashSet<String>) {
        let mut validated = Vec::new();
        let mut seen = HashSet::new();
        for (index, (id, value)) in configs.into_iter().enumerate() {
            let Some(id) = id else {
                self.error(
                    None,
                    &format!("auth_configs[{index}].id"),
                    "missing: every auth config needs an id",
                );
                continue;
            };
            if !seen.insert(id.clone()) {
                self.error(Some(&id), "id", "duplicate id: each auth config id must be unique");
                continue;
            }
            if let Some(raw) = self.deserialize::<RawAuthConfig>(value, Some(&id), "") {
                validated.push(self.auth_config(id, raw));
            }
        }
        (validated, seen)
    }

    fn take_sequence(&mut self, top: &mut Mapping, key: &str) -> Vec<Value> {
        match top.remove(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items,
            Some(_) => {
                self.error(None, key, "expected a list");
                Vec::new()
            }
        }
    }

    /// Each auth config's id (when it has a usable one) and its expanded document.
    fn expanded_configs(&mut self, raw: Vec<Value>) -> Vec<(Option<String>, Value)> {
        raw.into_iter()
            .enumerate()
            .map(|(index, mut value)| {
                let id = match value.get("id") {
                    Some(Value::String(id)) => Some(id.clone()),
                    Some(_) => {
                        self.error(None, &format!("auth_configs[{index}].id"), "must be a string");
                        None
                    }
                    None => None,
                };
                self.expand(&mut value, id.as_deref(), "");
                (id, value)
            })
            .collect()
    }

    /// Expands `${VAR}` and `${VAR:-default}` in every string below `value`.
    fn expand(&mut self, value: &mut Value, config_id: Option<&str>, path: &str) {
        match value {
            Value::String(text) => match expand_vars(text, self.env) {
                Ok(expanded) => *text = expanded,
                Err(message) => self.error(config_id, path.trim_start_matches('.'), message),
            },
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.expand(item, config_id, &format!("{path}[{i}]"));
                }
            }
            Value::Mapping(map) => {
                for (key, item) in map.iter_mut() {
                    let key = key.as_str().unwrap_or("?");
                    self.expand(item, config_id, &format!("{path}.{key}"));
                }
            }
            _ => {}
        }
    }

    /// Merges `BEARERD_CONFIG__<ID>__<FIELD>` variables, creating configs that only the
    /// environment defines.
    fn apply_env_overrides(&mut self, configs: &mut Vec<(Option<String>, Value)>) {
        for (name, value) in self.env.range(ENV_CONFIG_PREFIX.to_owned()..) {
            let Some(rest) = name.strip_prefix(ENV_CONFIG_PREFIX) else {
                break;
            };
            let Some((id, field)) = rest.split_once("__") else {
                self.error(None, name, "expected BEARERD_CONFIG__<ID>__<FIELD>");
                continue;
            };
            let id = id.to_ascii_lowercase();
            let index = if let Some(index) = configs
                .iter()
                .position(|(existing, _)| existing.as_deref() == Some(id.as_str()))
            {
                index
            } else {
                let mut map = Mapping::new();
                map.insert("id".into(), Value::String(id.clone()));
                configs.push((Some(id.clone()), Value::Mapping(map)));
                configs.len() - 1
            };
            let Value::Mapping(map) = &mut configs[index].1 else {
                continue;
            };
            let (top, nested, value) = env_field(field, value);
            if ENDPOINT_FIELDS[..3].contains(&top.as_str()) {
                // An endpoint from the environment replaces the file's, whichever kind it was.
                for other in ENDPOINT_FIELDS {
                    if !self.from_env.contains_key(&(id.clone(), (*other).to_owned())) {
                        map.remove(*other);
                    }
                }
            }
            match nested {
                None => {
                    map.insert(Value::String(top.clone()), value);
                }
                Some(key) => {
                    let entry = map
                        .entry(Value::String(top.clone()))
                        .or_insert_with(|| Value::Mapping(Mapping::new()));
                    if let Value::Mapping(inner) = entry {
                        inner.insert(Value::String(key), value);
                    }
                }
            }
            self.from_env.insert((id, top), name.clone());
        }
    }

    /// Deserializes with the path of the first problem in the error.
    fn deserialize<T: DeserializeOwned>(&mut self, value: Value, config_id: Option<&str>, base: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(raw) => Some(raw),
            Err(err) => {
                let path = err.path().to_string();
                let message = err.inner().to_string();
                let mut field = base.to_owned();
                if path != "." {
                    push_field(&mut field, &path);
                }
                // serde names unknown and missing fields in the message, not the path.
                if let Some(name) = named_field(&message).filter(|name| !path.ends_with(name)) {
                    push_field(&mut field, name);
                }
                if field.is_empty() {
                    field.push_str("(document)");
                }
                self.error(config_id, &field, message);
                None
            }
        }
    }

    fn auth_config(&mut self, id: String, mut raw: RawAuthConfig) -> PendingConfig {
        let cid = Some(id.as_str());
        self.id_and_description(&id, raw.description.as_deref());
        let source = self.token_source(&id, &mut raw);
        // Settled now that the provider templates have chosen.
        let (grant, client_auth) = (raw.grant(), raw.client_auth());
        let scopes = self.scopes(cid, raw.scopes);
        let extra_params = self.extra_params(cid, raw.extra_params);
        let inject = self.inject(cid, raw.inject);
        let listed_hosts = raw.allowed_hosts.as_ref().map_or(0, Vec::len);
        let allowed_hosts: Option<Vec<HostPattern>> = raw.allowed_hosts.map(|hosts| {
            hosts
                .iter()
                .enumerate()
                .filter_map(|(i, host)| {
                    HostPattern::parse(host, true)
                        .map_err(|message| self.error(cid, &format!("allowed_hosts[{i}]"), message))
                        .ok()
                })
                .collect()
        });
        let hosts_invalid = listed_hosts > 0 && allowed_hosts.as_ref().is_some_and(Vec::is_empty);
        let refresh_before = self.duration(cid, "refresh_before", raw.refresh_before, Duration::from_mins(1));
        let expiry_skew = self.duration(cid, "expiry_skew", raw.expiry_skew, Duration::from_secs(5));
        let default_ttl = self.duration(cid, "default_ttl", raw.default_ttl, Duration::from_mins(5));
        let timeout = self.duration(cid, "timeout", raw.timeout, Duration::from_secs(10));
        if timeout.is_zero() {
            self.error(cid, "timeout", "must be more than 0s");
        }
        if default_ttl.is_zero() {
            self.error(cid, "default_ttl", "must be more than 0s");
        }
        let (initial, max) = raw.backoff.map_or((None, None), |b| (b.initial, b.max));
        let backoff_initial = self.duration(cid, "backoff.initial", initial, Duration::from_secs(1));
        let backoff_max = self.duration(cid, "backoff.max", max, Duration::from_secs(60));
        if backoff_initial.is_zero() {
            self.error(cid, "backoff.initial", "must be more than 0s");
        } else if backoff_max < backoff_initial {
            self.error(cid, "backoff.max", "must not be less than backoff.initial");
        }

        let client_secret_expires_at = self.secret_expiry(cid, raw.client_secret_expires_at.take());
        let first_refresh_token = self.first_refresh_token(cid, grant, raw.refresh_token_file.take());
        let authorize = source.authorize;
        let user_grant_valid = !grant.is_user_grant() || authorize.is_some() || first_refresh_token.is_some();
        let (Some(endpoint), Some(client_id), Some(credential), Some((assertion_file, token_exchange, external)), true) = (
            source.endpoint,
            source.client_id,
            source.credential,
            source.grant_files,
            user_grant_valid,
        ) else {
            return PendingConfig {
                id,
                allowed_hosts,
                hosts_invalid,
                config: None,
            };
        };
        let config = AuthConfig {
            id: id.clone(),
            description: raw.description,
            grant,
            endpoint,
            client_id,
            client_auth,
            credential,
            request_body: raw.request_body,
            scopes,
            extra_params,
            inject,
            allowed_hosts: Vec::new(),
            refresh_before,
            expiry_skew,
            default_ttl,
            timeout,
            backoff_initial,
            backoff_max,
            retry_on_401: raw.retry_on_401.unwrap_or(true),
            prefetch: raw.prefetch.unwrap_or(false),
            client_secret_expires_at,
            authorize,
            first_refresh_token,
            assertion_file,
            token_exchange,
            external_account: external,
            cache_key: CacheKey::default(),
        };
        PendingConfig {
            id,
            allowed_hosts,
            hosts_invalid,
            config: Some(config),
        }
    }

    fn id_and_description(&mut self, id: &str, description: Option<&str>) {
        if !valid_id(id) {
            self.error(Some(id), "id", "must match [a-z0-9][a-z0-9_.-]{0,127}");
        }
        if description.is_some_and(|text| text.chars().count() > MAX_DESCRIPTION_CHARS) {
            self.error(
                Some(id),
                "description",
                format!("longer than {MAX_DESCRIPTION_CHARS} characters"),
            );
        }
    }

    /// Where and how `raw` gets its tokens: endpoint, consent, credential, the grant's files
    /// and the client id, once a provider template without a secret (workload identity) has
    /// filled in what it implies.
    fn token_source(&mut self, id: &str, raw: &mut RawAuthConfig) -> TokenSource {
        let cid = Some(id);
        self.workload_identity_env(id, raw);
        let Ok(external) = self.external_account(id, raw) else {
            // A credential file that could not be used says where tokens would come from:
            // what is missing for lack of it goes unreported.
            return TokenSource::default();
        };
        let endpoint = self.endpoint(cid, raw);
        let authorize = self.authorize(cid, raw, endpoint.as_ref());
        let credential = self.credential(cid, raw);
        // Both are checked, so that every problem is reported.
        let assertion_file = self.assertion_file(cid, raw).ok();
        let client_id = if external.is_some() {
            // Google's STS takes no client authentication: the subject token says who asks.
            Some(String::new())
        } else {
            let var = azure_federated(raw).then_some(AZURE_CLIENT_ID);
            self.client_id(cid, raw.client_id.take(), var)
        };
        let grant_files = assertion_file
            .zip(self.token_exchange(cid, raw).ok())
            .map(|(assertion_file, exchange)| (assertion_file, exchange, external));
        TokenSource {
            endpoint,
            authorize,
            credential,
            grant_files,
            client_id,
        }
    }

    /// `client_id`; `var` is the environment variable that could have given it.
    fn client_id(&mut self, cid: Option<&str>, client_id: Option<String>, var: Option<&str>) -> Option<String> {
        match client_id {
            Some(client_id) if !client_id.is_empty() => Some(client_id),
            Some(_) => {
                self.error(cid, "client_id", "must not be empty");
                None
            }
            None => {
                self.error(cid, "client_id", format!("missing: set client_id{}", or_from_env(var)));
                None
            }
        }
    }

    /// `provider: microsoft` without a credential of its own authenticates with the pod's
    /// federated token (`federated_jwt`), and takes what the config leaves out from the
    /// variables Azure Workload Identity's webhook injects.
    fn workload_identity_env(&mut self, id: &str, raw: &mut RawAuthConfig) {
        if raw.provider != Some(Provider::Microsoft) {
            return;
        }
        if !raw.names_client_auth() {
            raw.client_auth = Some(ClientAuth::FederatedJwt);
        }
        if !azure_federated(raw) {
            return;
        }
        let mut from_env = |field: &str, var: &str| {
            let value = self.env.get(var).filter(|value| !value.is_empty())?.clone();
            self.from_env.insert((id.to_owned(), field.to_owned()), var.to_owned());
            Some(value)
        };
        if raw.client_id.is_none() {
            raw.client_id = from_env("client_id", AZURE_CLIENT_ID);
        }
        if raw.tenant.is_none() {
            raw.tenant = from_env("tenant", AZURE_TENANT_ID);
        }
        if raw.assertion_file.is_none() {
            raw.assertion_file = from_env("assertion_file", AZURE_FEDERATED_TOKEN_FILE).map(PathBuf::from);
        }
        if raw.authority_host.is_none() {
            raw.authority_host = from_env("authority_host", AZURE_AUTHORITY_HOST);
        }
    }

    /// `provider: google` without a secret: the `external_account` credential file
    /// (`credentials_file`, else `GOOGLE_APPLICATION_CREDENTIALS`) turns the config into a
    /// `token_exchange` at Google's STS, whose endpoint, audience and subject token come
    /// from the file. `Ok(None)` for every other config; `Err` when something is wrong (and
    /// reported).
    fn external_account(&mut self, id: &str, raw: &mut RawAuthConfig) -> Result<Option<ExternalAccount>, ()> {
        let cid = Some(id);
        let federated = raw.provider == Some(Provider::Google)
            && !raw.names_client_auth()
            && matches!(raw.grant, None | Some(Grant::TokenExchange));
        if !federated {
            if raw.credentials_file.is_some() {
                self.error(
                    cid,
                    "credentials_file",
                    "applies only to provider: google without a client secret (workload identity federation)",
                );
                return Err(());
            }
            return Ok(None);
        }
        let path = match raw.credentials_file.take() {
            Some(path) => Some(path),
            None => self
                .env
                .get(GOOGLE_APPLICATION_CREDENTIALS)
                .filter(|value| !value.is_empty())
                .map(|value| {
                    self.from_env.insert(
                        (id.to_owned(), "credentials_file".to_owned()),
                        GOOGLE_APPLICATION_CREDENTIALS.to_owned(),
                    );
                    PathBuf::from(value)
                }),
        };
        let Some(path) = path else {
            self.error(
                cid,
                "credentials_file",
                format!(
                    "missing: provider: google without a client secret reads an external_account credential file{}",
                    or_from_env(Some(GOOGLE_APPLICATION_CREDENTIALS))
                ),
            );
            return Err(());
        };
        let mut ok = true;
        let from_file = [
            ("client_id", raw.client_id.is_some()),
            ("token_url", raw.token_url.is_some()),
            ("issuer", raw.issuer.is_some()),
            ("discovery_url", raw.discovery_url.is_some()),
            ("subject_token_file", raw.subject_token_file.is_some()),
            ("subject_token_type", raw.subject_token_type.is_some()),
            ("requested_token_type", raw.requested_token_type.is_some()),
            ("audience", raw.audience.is_some()),
            ("resource", raw.resource.is_some()),
        ];
        for (field, _) in from_file.iter().filter(|(_, set)| *set) {
            self.error(
                cid,
                field,
                "does not apply to provider: google with a credentials file, which says where tokens come from",
            );
            ok = false;
        }
        let bytes = self.read_watched(&path).map_err(|err| {
            self.error(
                cid,
                "credentials_file",
                format!("cannot read {}: {err}", path.display()),
            );
        })?;
        let file = google::parse(&bytes).map_err(|(field, message)| {
            self.error(
                cid,
                "credentials_file",
                format!("{}: {field}: {message}", path.display()),
            );
        })?;
        if !ok {
            return Err(());
        }
        raw.provider = None;
        raw.grant = Some(Grant::TokenExchange);
        raw.client_auth = Some(ClientAuth::None);
        raw.token_url = Some(file.token_url.to_string());
        raw.audience = Some(file.audience);
        raw.subject_token_file = Some(file.subject_token_file);
        raw.subject_token_type = Some(file.subject_token_type);
        raw.requested_token_type = Some(ACCESS_TOKEN_TYPE.to_owned());
        if raw.scopes.is_none() {
            raw.scopes = Some(RawScopes::List(vec![GOOGLE_CLOUD_PLATFORM_SCOPE.to_owned()]));
        }
        Ok(Some(ExternalAccount {
            credentials_file: path,
            subject_token_field: file.subject_token_field,
            impersonation: file
                .impersonation
                .map(|(url, lifetime)| Impersonation { url, lifetime }),
        }))
    }

    /// `grant: authorization_code`'s fields, refused by the other grants: where the consent
    /// starts (`authorization_url`, unless discovery or the Microsoft template names it),
    /// where the browser comes back (`redirect_uri`), and `authorize_params`.
    fn authorize(
        &mut self,
        cid: Option<&str>,
        raw: &mut RawAuthConfig,
        endpoint: Option<&TokenEndpoint>,
    ) -> Option<Authorize> {
        let url = raw.authorization_url.take();
        let redirect_uri = raw.redirect_uri.take();
        let params = std::mem::take(&mut raw.authorize_params);
        if raw.grant() != Grant::AuthorizationCode {
            for (field, set) in [
                ("authorization_url", url.is_some()),
                ("redirect_uri", redirect_uri.is_some()),
                ("authorize_params", !params.is_empty()),
            ] {
                if set {
                    self.error(cid, field, "applies only to grant: authorization_code");
                }
            }
            return None;
        }
        let mut valid = true;
        let url = match (url, endpoint) {
            (Some(text), _) => {
                let url = self.url(cid, "authorization_url", &text);
                if url.as_ref().is_some_and(|url| url.fragment().is_some()) {
                    self.error(cid, "authorization_url", "must not have a fragment (RFC 6749 §3.1)");
                    return None;
                }
                valid &= url.is_some();
                url
            }
            (None, Some(TokenEndpoint::Url(token_url))) => {
                let template = microsoft_authorization_url(raw.provider, token_url);
                if template.is_none() {
                    self.error(
                        cid,
                        "authorization_url",
                        "missing: where the consent starts (or use issuer: and discovery names it)",
                    );
                    return None;
                }
                template
            }
            (None, _) => None,
        };
        let redirect_uri = redirect_uri.and_then(|text| {
            check_redirect_uri(&text)
                .map_err(|message| self.error(cid, "redirect_uri", message))
                .ok()
        });
        let mut checked = Vec::with_capacity(params.len());
        for (name, value) in params {
            let field = format!("authorize_params.{name}");
            if RESERVED_AUTHORIZE_PARAMS.contains(&name.as_str()) {
                self.error(cid, &field, "is set by bearerd itself and cannot be overridden");
                continue;
            }
            match value {
                Value::String(s) => checked.push((name, s)),
                Value::Number(n) => checked.push((name, n.to_string())),
                Value::Bool(b) => checked.push((name, b.to_string())),
                _ => self.error(cid, &field, "must be a string, number or boolean"),
            }
        }
        valid.then_some(Authorize {
            url,
            redirect_uri,
            params: checked,
        })
    }

    /// `refresh_token_file`: required by `grant: refresh_token`, refused by the others.
    fn first_refresh_token(
        &mut self,
        cid: Option<&str>,
        grant: Grant,
        file: Option<PathBuf>,
    ) -> Option<FirstRefreshToken> {
        match (grant, file) {
            (Grant::RefreshToken, None) => {
                self.error(
                    cid,
                    "refresh_token_file",
                    "missing: grant: refresh_token starts from the refresh token in this file",
                );
                None
            }
            (Grant::RefreshToken, Some(path)) => {
                let read = self
                    .read_watched(&path)
                    .map_err(|err| format!("cannot read {}: {err}", path.display()));
                match read.and_then(|bytes| secret_from_file(&path, bytes)) {
                    Ok(secret) => Some(FirstRefreshToken {
                        token: RefreshToken::new(secret.expose()),
                        path,
                    }),
                    Err(message) => {
                        self.error(cid, "refresh_token_file", message);
                        None
                    }
                }
            }
            (_, Some(_)) => {
                self.error(cid, "refresh_token_file", "applies only to grant: refresh_token");
                None
            }
            (_, None) => None,
        }
    }

    /// The credential `client_auth` needs, and no other: a secret, a signing key, a client
    /// certificate, or (`none`, a public client of a user grant) nothing at all.
    fn credential(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Option<Credential> {
        let method = raw.client_auth();
        if method == ClientAuth::None && raw.grant() == Grant::ClientCredentials {
            self.error(
                cid,
                "client_auth",
                "none is for public clients of the user grants (authorization_code, refresh_token) and for jwt_bearer and token_exchange, whose assertion or subject token proves who is asking",
            );
            return None;
        }
        if method == ClientAuth::FederatedJwt && raw.grant() == Grant::JwtBearer {
            self.error(
                cid,
                "client_auth",
                "federated_jwt would send jwt_bearer's assertion a second time: use none, or a method with its own credential",
            );
            return None;
        }
        let stray: [(&str, bool, bool); 5] = [
            ("client_secret", raw.client_secret.is_some(), method.uses_secret()),
            (
                "client_secret_file",
                raw.client_secret_file.is_some(),
                method.uses_secret(),
            ),
            (
                "private_key_file",
                raw.private_key_file.is_some(),
                method == ClientAuth::PrivateKeyJwt,
            ),
            (
                "client_cert_file",
                raw.client_cert_file.is_some(),
                method == ClientAuth::TlsClientAuth,
            ),
            (
                "client_key_file",
                raw.client_key_file.is_some(),
                method == ClientAuth::TlsClientAuth,
            ),
        ];
        let mut ok = true;
        for (field, set, expected) in stray {
            if set && !expected {
                self.error(
                    cid,
                    field,
                    format!("does not apply to client_auth: {}", method.as_str()),
                );
                ok = false;
            }
        }
        let credential = match method {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost => self
                .client_secret(cid, raw.client_secret.take(), raw.client_secret_file.take())
                .map(Credential::Secret),
            ClientAuth::ClientSecretJwt => self.hmac_secret(cid, raw).map(Credential::Secret),
            ClientAuth::PrivateKeyJwt => self.private_key(cid, raw).map(Credential::PrivateKey),
            ClientAuth::TlsClientAuth => self.client_certificate(cid, raw).map(Credential::Certificate),
            ClientAuth::FederatedJwt => Some(Credential::AssertionFile),
            ClientAuth::None => Some(Credential::None),
        };
        credential.filter(|_| ok)
    }

    /// `assertion_file`, where `federated_jwt` or `jwt_bearer` needs it and nowhere else:
    /// `Ok(None)` when it is not needed, `Err` when something is wrong (and reported). It is
    /// not read here: its issuer rotates it, so each token request reads it anew.
    fn assertion_file(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Result<Option<PathBuf>, ()> {
        let user = if raw.grant() == Grant::JwtBearer {
            Some("grant: jwt_bearer")
        } else if raw.client_auth() == ClientAuth::FederatedJwt {
            Some("client_auth: federated_jwt")
        } else {
            None
        };
        match (user, raw.assertion_file.take()) {
            (None, None) => Ok(None),
            (None, Some(_)) => {
                self.error(
                    cid,
                    "assertion_file",
                    "applies only to client_auth: federated_jwt and grant: jwt_bearer",
                );
                Err(())
            }
            (Some(user), None) => {
                let var = azure_federated(raw).then_some(AZURE_FEDERATED_TOKEN_FILE);
                self.error(
                    cid,
                    "assertion_file",
                    format!("missing: {user} sends the JWT this file holds{}", or_from_env(var)),
                );
                Err(())
            }
            (Some(_), Some(path)) if path.as_os_str().is_empty() => {
                self.error(cid, "assertion_file", "is empty: name the file holding the JWT");
                Err(())
            }
            (Some(_), Some(path)) => Ok(Some(path)),
        }
    }

    /// `grant: token_exchange`'s fields, where that grant needs them and nowhere else:
    /// `Ok(None)` for the other grants, `Err` when something is wrong (and reported). The
    /// subject token file is read at each token request, not here.
    fn token_exchange(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Result<Option<TokenExchange>, ()> {
        let file = raw.subject_token_file.take();
        let subject_type = raw.subject_token_type.take();
        let requested = raw.requested_token_type.take();
        let audience = raw.audience.take();
        let resource = raw.resource.take();
        if raw.grant() != Grant::TokenExchange {
            let set = [
                ("subject_token_file", file.is_some()),
                ("subject_token_type", subject_type.is_some()),
                ("requested_token_type", requested.is_some()),
                ("audience", audience.is_some()),
                ("resource", resource.is_some()),
            ];
            let mut ok = true;
            for (field, _) in set.iter().filter(|(_, set)| *set) {
                self.error(cid, field, "applies only to grant: token_exchange");
                ok = false;
            }
            return if ok { Ok(None) } else { Err(()) };
        }
        let mut ok = true;
        let file = match file {
            Some(path) if !path.as_os_str().is_empty() => Some(path),
            Some(_) => {
                self.error(
                    cid,
                    "subject_token_file",
                    "is empty: name the file holding the subject token",
                );
                None
            }
            None => {
                self.error(
                    cid,
                    "subject_token_file",
                    "missing: token_exchange sends the token this file holds",
                );
                None
            }
        };
        let mut token_type = |field: &str, value: Option<String>, required: bool| match value {
            Some(uri) if Url::parse(&uri).is_ok() => Some(uri),
            Some(_) => {
                self.error(
                    cid,
                    field,
                    "must be a token type URI such as urn:ietf:params:oauth:token-type:jwt (RFC 8693 §3)",
                );
                ok = false;
                None
            }
            None if required => {
                self.error(
                    cid,
                    field,
                    "missing: the type of the subject token, such as urn:ietf:params:oauth:token-type:jwt",
                );
                ok = false;
                None
            }
            None => None,
        };
        let subject_type = token_type("subject_token_type", subject_type, true);
        let requested = token_type("requested_token_type", requested, false);
        let resource = match resource {
            None => None,
            Some(text) => match Url::parse(&text) {
                Ok(url) if url.fragment().is_none() => Some(url),
                _ => {
                    self.error(
                        cid,
                        "resource",
                        "must be an absolute URI without a fragment (RFC 8693 §2.1)",
                    );
                    ok = false;
                    None
                }
            },
        };
        match (file, subject_type, ok) {
            (Some(subject_token_file), Some(subject_token_type), true) => Ok(Some(TokenExchange {
                subject_token_file,
                subject_token_type,
                requested_token_type: requested,
                audience,
                resource,
            })),
            _ => Err(()),
        }
    }

    /// The client secret of `client_secret_jwt`, long enough to be an HS256 key.
    fn hmac_secret(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Option<ClientSecret> {
        let field = if raw.client_secret_file.is_some() {
            "client_secret_file"
        } else {
            "client_secret"
        };
        let secret = self.client_secret(cid, raw.client_secret.take(), raw.client_secret_file.take())?;
        if secret.expose().len() < crate::assertion::MIN_HMAC_KEY_BYTES {
            self.error(
                cid,
                field,
                format!(
                    "client_secret_jwt signs with the secret as its HS256 key, which must be at least {} bytes (RFC 7518 §3.2)",
                    crate::assertion::MIN_HMAC_KEY_BYTES
                ),
            );
            return None;
        }
        Some(secret)
    }

    fn private_key(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Option<SigningKey> {
        let Some(path) = raw.private_key_file.take() else {
            self.error(cid, "private_key_file", "missing: private_key_jwt signs with this key");
            return None;
        };
        let pem = self
            .read_watched(&path)
            .map_err(|err| {
                self.error(
                    cid,
                    "private_key_file",
                    format!("cannot read {}: {err}", path.display()),
                );
            })
            .ok()?;
        SigningKey::from_pem(&pem, raw.signing_alg, raw.key_id.take())
            .map_err(|message| self.error(cid, "private_key_file", format!("{}: {message}", path.display())))
            .ok()
    }

    fn client_certificate(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Option<ClientCertificate> {
        let (cert_file, key_file) = match (raw.client_cert_file.take(), raw.client_key_file.take()) {
            (Some(cert_file), Some(key_file)) => (cert_file, key_file),
            (cert_file, _) => {
                let field = if cert_file.is_none() {
                    "client_cert_file"
                } else {
                    "client_key_file"
                };
                self.error(
                    cid,
                    field,
                    "missing: tls_client_auth needs client_cert_file and client_key_file",
                );
                return None;
            }
        };
        let mut read = |field: &str, path: &Path| {
            self.read_watched(path)
                .map_err(|err| self.error(cid, field, format!("cannot read {}: {err}", path.display())))
                .ok()
        };
        let cert = read("client_cert_file", &cert_file);
        let key = read("client_key_file", &key_file);
        ClientCertificate::from_pem(&cert_file, &cert?, &key_file, &key?)
            .map_err(|(field, message)| self.error(cid, field, message))
            .ok()
    }

    fn client_secret(
        &mut self,
        cid: Option<&str>,
        secret: Option<ClientSecret>,
        file: Option<PathBuf>,
    ) -> Option<ClientSecret> {
        match (secret, file) {
            (Some(_), Some(_)) => {
                self.error(
                    cid,
                    "client_secret",
                    "set client_secret or client_secret_file, not both",
                );
                None
            }
            (None, None) => {
                self.error(cid, "client_secret", "missing: set client_secret or client_secret_file");
                None
            }
            (Some(secret), None) => Some(secret),
            (None, Some(path)) => {
                let read = self
                    .read_watched(&path)
                    .map_err(|err| format!("cannot read {}: {err}", path.display()));
                match read.and_then(|bytes| secret_from_file(&path, bytes)) {
                    Ok(secret) => Some(secret),
                    Err(message) => {
                        self.error(cid, "client_secret_file", message);
                        None
                    }
                }
            }
        }
    }

    /// Reads a secret, key, certificate or refresh token file, and remembers it for the
    /// watcher.
    fn read_watched(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(path)?;
        self.watched.push(WatchedFile::new(path.to_owned(), &bytes));
        Ok(bytes)
    }

    fn secret_expiry(&mut self, cid: Option<&str>, raw: Option<RawTimestamp>) -> Option<SystemTime> {
        match raw? {
            RawTimestamp::UnixSeconds(secs) => Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            RawTimestamp::Text(text) => {
                let parsed = parse_timestamp(&text);
                if parsed.is_none() {
                    self.error(
                        cid,
                        "client_secret_expires_at",
                        format!(
                            "`{text}` is not a date (2027-06-30), an RFC 3339 time (2027-06-30T12:00:00Z) or Unix seconds"
                        ),
                    );
                }
                parsed
            }
        }
    }

    /// Exactly one of `token_url`, `issuer` and `provider`; `discovery_url` only with
    /// `issuer`, `tenant` only with `provider: microsoft`.
    fn endpoint(&mut self, cid: Option<&str>, raw: &mut RawAuthConfig) -> Option<TokenEndpoint> {
        let discovery_url = raw.discovery_url.take();
        let tenant = raw.tenant.take();
        let authority_host = raw.authority_host.take();
        for (field, set) in [
            ("tenant", tenant.is_some()),
            ("authority_host", authority_host.is_some()),
        ] {
            if set && raw.provider != Some(Provider::Microsoft) {
                self.error(cid, field, "applies only to provider: microsoft");
            }
        }
        if discovery_url.is_some() && raw.issuer.is_none() {
            self.error(
                cid,
                "discovery_url",
                "applies only with issuer: the document's issuer is checked against it",
            );
        }
        match (raw.token_url.take(), raw.issuer.take(), raw.provider) {
            (None, None, None) => {
                self.error(cid, "token_url", "missing: set token_url, issuer or provider");
                None
            }
            (Some(text), None, None) => self.url(cid, "token_url", &text).map(TokenEndpoint::Url),
            (None, Some(issuer), None) => {
                let issuer_url = self.url(cid, "issuer", &issuer)?;
                if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
                    self.error(
                        cid,
                        "issuer",
                        "must not have a query or fragment (OpenID Connect Discovery §2)",
                    );
                    return None;
                }
                let document = match discovery_url {
                    Some(text) => self.url(cid, "discovery_url", &text)?,
                    None => well_known(&issuer)
                        .map_err(|err| self.error(cid, "issuer", format!("not a valid URL: {err}")))
                        .ok()?,
                };
                Some(TokenEndpoint::Discovery { issuer, document })
            }
            (None, None, Some(Provider::Microsoft)) => {
                let authority = match authority_host {
                    Some(text) => self.authority_host(cid, &text),
                    None => Some(MICROSOFT_AUTHORITY.to_owned()),
                };
                let Some(tenant) = tenant else {
                    let var = azure_federated(raw).then_some(AZURE_TENANT_ID);
                    self.error(
                        cid,
                        "tenant",
                        format!(
                            "missing: provider: microsoft needs the directory (tenant) id or domain{}",
                            or_from_env(var)
                        ),
                    );
                    return None;
                };
                if let Err(message) = check_tenant(&tenant, raw.grant()) {
                    self.error(cid, "tenant", message);
                    return None;
                }
                let url = format!("{}/{tenant}/oauth2/v2.0/token", authority?);
                Url::parse(&url).ok().map(TokenEndpoint::Url)
            }
            (None, None, Some(Provider::Google)) => Some(TokenEndpoint::Discovery {
                issuer: GOOGLE_ISSUER.to_owned(),
                document: well_known(GOOGLE_ISSUER).ok()?,
            }),
            (token_url, _, provider) => {
                let field = if provider.is_some() { "provider" } else { "issuer" };
                let others = if token_url.is_some() && provider.is_some() {
                    "token_url"
                } else if provider.is_some() {
                    "issuer"
                } else {
                    "token_url"
                };
                self.error(
                    cid,
                    field,
                    format!("set only one of token_url, issuer and provider ({others} is set too)"),
                );
                None
            }
        }
    }

    /// `authority_host` (`AZURE_AUTHORITY_HOST`): an Entra ID cloud's login host, such as
    /// `https://login.microsoftonline.com/`, without its terminating `/`.
    fn authority_host(&mut self, cid: Option<&str>, text: &str) -> Option<String> {
        let url = self.url(cid, "authority_host", text)?;
        if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
            self.error(
                cid,
                "authority_host",
                "must be the login host alone, such as https://login.microsoftonline.com/",
            );
            return None;
        }
        Some(url.as_str().trim_end_matches('/').to_owned())
    }

    /// A token endpoint, issuer or discovery URL: valid, and `https://` unless loopback.
    fn url(&mut self, cid: Option<&str>, field: &str, text: &str) -> Option<Url> {
        let url = match Url::parse(text) {
            Ok(url) => url,
            Err(err) => {
                self.error(cid, field, format!("not a valid URL: {err}"));
                return None;
            }
        };
        match check_endpoint_url(&url) {
            Ok(()) => Some(url),
            Err(message) => {
                self.error(cid, field, message);
                None
            }
        }
    }

    fn scopes(&mut self, cid: Option<&str>, raw: Option<RawScopes>) -> Vec<String> {
        let scopes: Vec<String> = match raw {
            None => Vec::new(),
            Some(RawScopes::Text(text)) => text.split_whitespace().map(str::to_owned).collect(),
            Some(RawScopes::List(list)) => list,
        };
        if scopes.len() > MAX_SCOPES {
            self.error(
                cid,
                "scopes",
                format!("{} scopes; at most {MAX_SCOPES} are allowed", scopes.len()),
            );
        }
        for (i, scope) in scopes.iter().enumerate() {
            if scope.chars().count() > MAX_SCOPE_CHARS {
                self.error(
                    cid,
                    &format!("scopes[{i}]"),
                    format!("longer than {MAX_SCOPE_CHARS} characters"),
                );
            } else if scope.is_empty() || !scope.bytes().all(is_scope_char) {
                // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
                self.error(
                    cid,
                    &format!("scopes[{i}]"),
                    "not a valid scope token (RFC 6749 §3.3: printable ASCII, no space, `\"` or `\\`)",
                );
            }
        }
        scopes
    }

    fn extra_params(&mut self, cid: Option<&str>, raw: BTreeMap<String, Value>) -> Vec<(String, String)> {
        let mut params = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let field = format!("extra_params.{name}");
            if RESERVED_PARAMS.contains(&name.as_str()) {
                self.error(cid, &field, "is set by bearerd itself and cannot be overridden");
                continue;
            }
            match value {
                Value::String(s) => params.push((name, s)),
                Value::Number(n) => params.push((name, n.to_string())),
                Value::Bool(b) => params.push((name, b.to_string())),
                _ => self.error(cid, &field, "must be a string, number or boolean"),
            }
        }
        params
    }

    fn inject(&mut self, cid: Option<&str>, raw: Option<RawInject>) -> Inject {
        let default = Inject::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer".to_owned(),
        };
        let Some(raw) = raw else { return default };
        match (raw.header, raw.prefix, raw.query) {
            (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                self.error(cid, "inject", "set either header (with prefix) or query, not both");
                default
            }
            (None, None, Some(query)) if query.is_empty() => {
                self.error(cid, "inject.query", "must not be empty");
                default
            }
            (None, None, Some(query)) => Inject::Query { name: query },
            (header, prefix, None) => {
                let name = match header.as_deref().map(|h| HeaderName::from_bytes(h.as_bytes())) {
                    None => http::header::AUTHORIZATION,
                    Some(Ok(name))
                        if http1::names::hop_by_hop_bit_of(name.as_str().as_bytes()) != 0
                            || name == http::header::HOST =>
                    {
                        self.error(cid, "inject.header", format!("`{name}` cannot carry a token"));
                        return default;
                    }
                    Some(Ok(name)) => name,
                    Some(Err(_)) => {
                        self.error(cid, "inject.header", "not a valid HTTP header name");
                        return default;
                    }
                };
                let prefix = prefix.unwrap_or_else(|| "Bearer".to_owned());
                if http::HeaderValue::from_str(&prefix).is_err() {
                    self.error(cid, "inject.prefix", "not a valid header value");
                }
                Inject::Header { name, prefix }
            }
        }
    }

    fn duration(&mut self, cid: Option<&str>, field: &str, raw: Option<RawDuration>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(RawDuration::Seconds(secs)) => Duration::from_secs(secs),
            Some(RawDuration::Text(text)) => parse_duration(&text).unwrap_or_else(|| {
                self.error(
                    cid,
                    field,
                    format!("`{text}` is not a duration (like 500ms, 30s, 5m, 1h)"),
                );
                default
            }),
        }
    }

    fn socket_addr(&mut self, field: &str, var: &str, file: Option<&str>, default: &str) -> Option<SocketAddr> {
        let (text, origin) = match (self.env.get(var), file) {
            (Some(value), _) => (value.as_str(), format!("{field} (from {var})")),
            (None, Some(value)) => (value, field.to_owned()),
            (None, None) => (default, field.to_owned()),
        };
        if let Ok(addr) = text.parse() {
            Some(addr)
        } else {
            self.error(None, &origin, format!("`{text}` is not an address like 127.0.0.1:8080"));
            None
        }
    }

    fn route(
        &mut self,
        field: &str,
        raw: RawRoute,
        known: &HashSet<String>,
        intercept_on: bool,
    ) -> Option<PendingRoute> {
        let matcher = raw.matcher.unwrap_or_default();
        let auth_config = match raw.auth_config {
            Some(id) if known.contains(&id) => Some(id),
            Some(id) => {
                self.error(Some(&id), &format!("{field}.auth_config"), "names no auth config");
                None
            }
            None => {
                self.error(
                    None,
                    &format!("{field}.auth_config"),
                    "missing: a route names the auth config it uses",
                );
                None
            }
        };
        let cid = auth_config.as_deref();
        let host = matcher.host.as_deref().and_then(|host| {
            HostPattern::parse(host, false)
                .map_err(|m| self.error(cid, &format!("{field}.match.host"), m))
                .ok()
        });
        let path_prefix = matcher.path_prefix.unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            self.error(cid, &format!("{field}.match.path_prefix"), "must start with /");
        }
        let methods = matcher
            .methods
            .unwrap_or_default()
            .iter()
            .filter_map(|method| {
                Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        self.error(
                            cid,
                            &format!("{field}.match.methods"),
                            format!("`{method}` is not an HTTP method"),
                        );
                    })
                    .ok()
            })
            .collect();
        let kind = match (raw.upstream, raw.upstream_tls) {
            (Some(_), Some(_)) => {
                self.error(
                    cid,
                    &format!("{field}.upstream_tls"),
                    "applies to forward routes only; a gateway route's upstream URL names its scheme",
                );
                return None;
            }
            (Some(upstream), None) => match Url::parse(&upstream) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https") && url.host().is_some() && url.query().is_none() =>
                {
                    RouteKind::Gateway { upstream: url }
                }
                Ok(_) => {
                    self.error(
                        cid,
                        &format!("{field}.upstream"),
                        "must be an http:// or https:// base URL without a query",
                    );
                    return None;
                }
                Err(err) => {
                    self.error(cid, &format!("{field}.upstream"), format!("not a valid URL: {err}"));
                    return None;
                }
            },
            (None, tls) => RouteKind::Forward {
                upstream_tls: tls.unwrap_or(false),
                intercept: false,
            },
        };
        let kind = match (raw.intercept, kind) {
            (Some(true), RouteKind::Forward { upstream_tls, .. }) => {
                let intercept = self.intercept_route(cid, field, matcher.host.is_some(), intercept_on);
                RouteKind::Forward {
                    upstream_tls,
                    intercept,
                }
            }
            (Some(true), RouteKind::Gateway { .. }) => {
                self.error(
                    cid,
                    &format!("{field}.intercept"),
                    "applies to forward routes only: a gateway route is reached without CONNECT",
                );
                return None;
            }
            (_, kind) => kind,
        };
        Some(PendingRoute {
            host,
            path_prefix,
            methods,
            auth_config: auth_config?,
            kind,
        })
    }

    /// `tls.ca_file`, when it can be read.
    fn ca_file(&mut self, ca_file: Option<PathBuf>) -> Option<PathBuf> {
        if let Some(path) = &ca_file
            && let Err(err) = std::fs::metadata(path)
        {
            self.error(None, "tls.ca_file", format!("cannot read {}: {err}", path.display()));
        }
        ca_file
    }

    /// Whether a forward route's `intercept: true` can hold: it names the host whose
    /// `CONNECT`s are terminated, and `intercept:` says how.
    fn intercept_route(&mut self, cid: Option<&str>, field: &str, has_host: bool, intercept_on: bool) -> bool {
        let field = format!("{field}.intercept");
        if !has_host {
            self.error(
                cid,
                &field,
                "needs match.host: only CONNECTs to a named host (or *.suffix) are intercepted",
            );
        }
        if !intercept_on {
            self.error(
                cid,
                &field,
                "needs the top-level intercept: block (where the CA bundle goes, and which CA signs)",
            );
        }
        has_host && intercept_on
    }

    /// The `intercept:` block: where the CA bundle goes, the operator's CA if given, and
    /// the leaves' lifetime.
    fn intercept(&mut self, raw: RawIntercept) -> Option<Intercept> {
        let leaf_ttl = self.duration(None, "intercept.leaf_ttl", raw.leaf_ttl, Intercept::DEFAULT_LEAF_TTL);
        if !(Intercept::MIN_LEAF_TTL..=Intercept::MAX_LEAF_TTL).contains(&leaf_ttl) {
            self.error(
                None,
                "intercept.leaf_ttl",
                format!(
                    "must be between {}m and {} days",
                    Intercept::MIN_LEAF_TTL.as_secs() / 60,
                    Intercept::MAX_LEAF_TTL.as_secs() / 86_400
                ),
            );
        }
        let ca_bundle_out = match raw.ca_bundle_out {
            Some(path) if !path.as_os_str().is_empty() => Some(path),
            Some(_) => {
                self.error(None, "intercept.ca_bundle_out", "must not be empty");
                None
            }
            None => {
                self.error(
                    None,
                    "intercept.ca_bundle_out",
                    "missing: the file bearerd writes its CA (and the roots it trusts) to, for apps to trust",
                );
                None
            }
        };
        let operator_ca = match (raw.ca_cert_file, raw.ca_key_file) {
            (None, None) => Ok(None),
            (Some(cert_file), Some(key_file)) => self.operator_ca(cert_file, key_file).map(Some).ok_or(()),
            (cert_file, _) => {
                let (field, other) = if cert_file.is_none() {
                    ("intercept.ca_cert_file", "ca_key_file")
                } else {
                    ("intercept.ca_key_file", "ca_cert_file")
                };
                self.error(
                    None,
                    field,
                    format!("missing: {other} is set; an operator CA needs both ca_cert_file and ca_key_file"),
                );
                Err(())
            }
        };
        Some(Intercept {
            ca_bundle_out: ca_bundle_out?,
            operator_ca: operator_ca.ok()?,
            leaf_ttl,
        })
    }

    /// Both files are watched: a changed CA makes the reload warn that it takes effect at
    /// the next start, as any `intercept:` change does.
    fn operator_ca(&mut self, cert_file: PathBuf, key_file: PathBuf) -> Option<OperatorCa> {
        let read = |loader: &mut Self, field: &str, path: &Path| {
            loader
                .read_watched(path)
                .map_err(|err| loader.error(None, field, format!("cannot read {}: {err}", path.display())))
                .ok()
        };
        let cert = read(self, "intercept.ca_cert_file", &cert_file);
        let key = read(self, "intercept.ca_key_file", &key_file);
        OperatorCa::from_pem(cert_file, &cert?, key_file, &key?)
            .map_err(|(field, message)| self.error(None, &format!("intercept.{field}"), message))
            .ok()
    }

    /// Fills default `allowed_hosts` from the routes that name each config, and builds them.
    fn finish_auth_configs(&mut self, pending: Vec<PendingConfig>, routes: &[PendingRoute]) -> Vec<Arc<AuthConfig>> {
        let mut finished = Vec::with_capacity(pending.len());
        for config in pending {
            let allowed_hosts = config.allowed_hosts.unwrap_or_else(|| {
                let mut hosts: Vec<HostPattern> = Vec::new();
                for route in routes.iter().filter(|route| route.auth_config == config.id) {
                    let host = match &route.kind {
                        RouteKind::Gateway { upstream } => {
                            upstream.host_str().and_then(|h| HostPattern::parse(h, false).ok())
                        }
                        RouteKind::Forward { .. } => route.host.as_ref().map(HostPattern::without_port),
                    };
                    if let Some(host) = host.filter(|host| !hosts.contains(host)) {
                        hosts.push(host);
                    }
                }
                hosts
            });
            if allowed_hosts.is_empty() && !config.hosts_invalid {
                self.error(
                    Some(&config.id),
                    "allowed_hosts",
                    "no host may receive this token: set allowed_hosts, or name this config in a route with match.host or upstream",
                );
                continue;
            }
            if let Some(mut auth_config) = config.config {
                auth_config.allowed_hosts = allowed_hosts;
                auth_config.cache_key = auth_config.compute_cache_key();
                finished.push(Arc::new(auth_config));
            }
        }
        finished
    }
}

/// How an auth config gets its tokens; each part `None` when invalid (and reported).
#[derive(Default)]
struct TokenSource {
    endpoint: Option<TokenEndpoint>,
    authorize: Option<Authorize>,
    credential: Option<Credential>,
    /// `assertion_file`, `token_exchange`, and the external account that set the latter up.
    grant_files: Option<(Option<PathBuf>, Option<TokenExchange>, Option<ExternalAccount>)>,
    client_id: Option<String>,
}

/// An auth config whose own fields are checked, waiting for its default `allowed_hosts`.
struct PendingConfig {
    id: String,
    /// As configured; `None` takes the hosts of the routes naming this config.
    allowed_hosts: Option<Vec<HostPattern>>,
    /// `allowed_hosts` had entries but none was valid (each already reported).
    hosts_invalid: bool,
    /// `None` when a required part was invalid (already reported).
    config: Option<AuthConfig>,
}

fn push_field(field: &mut String, part: &str) {
    if !field.is_empty() && !part.starts_with('[') {
        field.push('.');
    }
    field.push_str(part);
}

/// The field named in serde's "unknown field `x`" / "missing field `x`" messages.
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}

fn secret_from_file(path: &Path, bytes: Vec<u8>) -> Result<ClientSecret, String> {
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    // Files written by `echo` end in a newline that is not part of the secret.
    let secret = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |s| s.strip_suffix('\r').unwrap_or(s));
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(ClientSecret::new(secret))
}

/// The routes, each naming its auth config by position (`by_id`); a route whose config
/// did not load is left out (its config's errors say why).
fn indexed_routes(routes: Vec<PendingRoute>, by_id: &HashMap<String, usize>) -> Vec<Route> {
    routes
        .into_iter()
        .filter_map(|route| {
            let auth_config = *by_id.get(&route.auth_config)?;
            Some(Route {
                host: route.host,
                path_prefix: route.path_prefix,
                methods: route.methods,
                auth_config,
                kind: route.kind,
            })
        })
        .collect()
}

/// Whether `raw` is Entra ID workload identity: `provider: microsoft` authenticating with
/// the federated token, so the webhook's variables fill what it leaves out.
fn azure_federated(raw: &RawAuthConfig) -> bool {
    raw.provider == Some(Provider::Microsoft) && raw.client_auth() == ClientAuth::FederatedJwt
}

/// The end of a "missing" message when environment variable `var` could have given the value.
fn or_from_env(var: Option<&str>) -> String {
    var.map(|var| format!(", or {var} in the environment"))
        .unwrap_or_default()
}

/// `provider: microsoft`'s authorization endpoint, beside the token endpoint it filled in.
fn microsoft_authorization_url(provider: Option<Provider>, token_url: &Url) -> Option<Url> {
    if provider != Some(Provider::Microsoft) {
        return None;
    }
    let path = token_url.path().strip_suffix("/token")?;
    let mut url = token_url.clone();
    url.set_path(&format!("{path}/authorize"));
    Some(url)
}

/// A `redirect_uri` must bring the browser back to the admin listener's `/callback`, which
/// answers loopback peers only: `http://` to a loopback host, path `/callback`.
fn check_redirect_uri(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("not a valid URL: {err}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() != "http"
        || !loopback
        || url.path() != "/callback"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(
            "must be http://127.0.0.1:PORT/callback (or localhost, or [::1]): the admin listener's /callback, which answers loopback peers only"
                .into(),
        );
    }
    Ok(url)
}

/// A hash of a configuration file's bytes (not for security: only to notice a change).
#[must_use]
pub fn text_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// `{issuer}/.well-known/openid-configuration`, any terminating `/` of the issuer removed
/// first (`OpenID` Connect Discovery §4.1).
fn well_known(issuer: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
}

/// An Entra ID tenant: a directory id (GUID) or a verified domain; a multi-tenant alias only
/// for a user grant (an app's own token comes from its own directory).
fn check_tenant(tenant: &str, grant: Grant) -> Result<(), String> {
    if !grant.is_user_grant()
        && ["common", "organizations", "consumers"]
            .iter()
            .any(|alias| tenant.eq_ignore_ascii_case(alias))
    {
        return Err(format!(
            "`{tenant}` cannot issue client-credentials tokens: name the directory (tenant id or domain)"
        ));
    }
    let valid = !tenant.is_empty()
        && tenant.len() <= 253
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err("must be a tenant id (GUID) or a domain such as contoso.onmicrosoft.com".into())
    }
}

/// A Redis key prefix: short, and free of spaces and glob characters, so `redis-cli --scan
/// --pattern '{prefix}:*'` finds exactly its keys.
fn valid_key_prefix(prefix: &str) -> bool {
    (1..=MAX_PREFIX_CHARS).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

fn valid_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    id.len() <= MAX_ID_CHARS
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
}
