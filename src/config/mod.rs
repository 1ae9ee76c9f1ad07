//! Configuration: YAML plus environment → a validated, typed [`Config`].
//!
//! Three stages, kept apart so each can be tested from a string:
//! 1. the document is parsed into `serde_yaml::Value`, `${VAR}` / `${VAR:-default}` are
//!    expanded, and `BEARERD_CONFIG__<ID>__<FIELD>` variables are merged in (environment wins);
//! 2. each part is deserialized into a raw struct with `deny_unknown_fields`;
//! 3. validation turns raw structs into runtime types (URLs parsed, durations parsed,
//!    secrets wrapped), collecting every problem before giving up.
//!
//! A file with any problem yields a [`LoadError`] listing all of them, each naming the file,
//! the auth config and the field. Nothing is half-loaded.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use serde::Deserialize;
use url::Url;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::assertion::{SigningAlg, SigningKey};
use crate::secret::{ClientSecret, RefreshToken, SealingKey};

/// The whole, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it came from, for messages.
    pub source: String,
    /// A hash of the text it was read from, so a watcher can tell a changed file.
    pub text_hash: u64,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub default_action: DefaultAction,
    pub connect: ConnectPolicy,
    /// Connect plus time until the upstream's response headers arrive.
    pub upstream_timeout: Duration,
    /// Requests in flight to upstreams at once (each HTTP/1.1 one holds a connection until
    /// its response body ends); more wait their turn within `upstream_timeout`.
    pub upstream_max_concurrency: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace: Duration,
    /// App connections served at once; more wait in the listener's accept queue. Read at
    /// start: a reload does not change it.
    pub max_connections: usize,
    /// Tokio worker threads; `None`: one per CPU the process may use (affinity and cgroup
    /// CPU limits counted).
    pub worker_threads: Option<usize>,
    /// How often the file is checked for changes; zero turns the check off (SIGHUP still
    /// reloads).
    pub config_watch_interval: Duration,
    /// Extra trusted roots (PEM) for upstreams and token endpoints.
    pub ca_file: Option<PathBuf>,
    /// TLS interception for `HTTPS_PROXY` clients; `None`: every `CONNECT` is a tunnel.
    /// Read at start: a reload does not change it.
    pub intercept: Option<Intercept>,
    /// Where the user grants keep their refresh tokens (`state:`). Read at start: a reload
    /// does not change it.
    pub state: Option<StateConfig>,
    /// The fleet-wide token cache on Redis (`shared_cache:`); `None`: this process caches
    /// alone. Read at start: a reload does not change it.
    pub shared_cache: Option<SharedCacheConfig>,
    /// The secret, key, certificate, refresh token and CA files the configuration was read
    /// from, as they were then: a watcher reloads when one of them changes, as it does for
    /// the file itself.
    pub watched_files: Vec<WatchedFile>,
    /// In file order.
    pub auth_configs: Vec<Arc<AuthConfig>>,
    /// In file order; the first match wins.
    pub routes: Vec<Route>,
    by_id: HashMap<String, usize>,
}

impl Config {
    /// The hosts of the `intercept: true` routes, each once, in file order.
    #[must_use]
    pub fn intercepted_hosts(&self) -> Vec<HostPattern> {
        let mut hosts: Vec<HostPattern> = Vec::new();
        for host in self.routes.iter().filter_map(Route::intercepted_host) {
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
        hosts
    }

    #[must_use]
    pub fn auth_config(&self, id: &str) -> Option<Arc<AuthConfig>> {
        self.position(id).map(|i| Arc::clone(&self.auth_configs[i]))
    }

    /// The position of auth config `id` in [`Config::auth_configs`].
    #[must_use]
    pub fn position(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Reads and validates `path`, with `env` as the environment.
    pub fn load(path: &Path, env: &Env) -> Result<Self, LoadError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| {
            LoadError(vec![ConfigError::new(
                &source,
                None,
                "(file)",
                format!("cannot read: {err}"),
            )])
        })?;
        Self::from_yaml(&source, &text, env)
    }

    /// Validates a YAML document; `source` names it in messages.
    pub fn from_yaml(source: &str, text: &str, env: &Env) -> Result<Self, LoadError> {
        load::from_yaml(source, text, env)
    }

    /// A digest of what this configuration was loaded from: the file's text and the bytes of
    /// every [`WatchedFile`].
    #[must_use]
    pub fn inputs_loaded(&self) -> u64 {
        inputs_digest(self.text_hash, self.watched_files.iter().map(|file| Some(file.hash)))
    }

    /// The same digest over what is on disk now, `text` being the file's text as just read.
    /// It equals [`Config::inputs_loaded`] until the file or a watched file changes (or a
    /// watched file can no longer be read).
    #[must_use]
    pub fn inputs_now(&self, text: &[u8]) -> u64 {
        inputs_digest(text_hash(text), self.watched_files.iter().map(WatchedFile::hash_now))
    }
}

fn inputs_digest(text_hash: u64, files: impl Iterator<Item = Option<u64>>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text_hash.hash(&mut hasher);
    files.for_each(|file| file.hash(&mut hasher));
    hasher.finish()
}

/// `state:`: the sealed file that keeps the user grants' refresh tokens across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    pub file: PathBuf,
    pub key_file: PathBuf,
    /// The content of `key_file`, read at load.
    pub key: SealingKey,
}

/// `shared_cache:`: where the fleet shares its tokens, and the key that seals them there.
#[derive(Debug)]
pub struct SharedCacheConfig {
    pub redis: RedisUrl,
    pub key_file: PathBuf,
    /// The content of `key_file`, read at load.
    pub key: SealingKey,
    /// Starts every key name, so several fleets can share one Redis.
    pub prefix: String,
}

impl SharedCacheConfig {
    /// The key prefix when `prefix:` is not set.
    pub const DEFAULT_PREFIX: &'static str = "bearerd";
}

/// A `redis://` or `rediss://` URL. It may carry an ACL user's password, so it is shown
/// (`Debug`, `Display`) without one.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(Url);

impl RedisUrl {
    /// `text` when it is a Redis URL bearerd can connect to; the error never repeats the
    /// password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|err| format!("not a URL: {err}"))?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(format!(
                "must start with redis:// or rediss://, not {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("names no host".into());
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err("its path must be empty or a database number".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("takes no query or fragment".into());
        }
        Ok(Self(url))
    }

    /// The URL with its password, for the one place that connects.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the connection is TLS (`rediss://`).
    #[must_use]
    pub fn tls(&self) -> bool {
        self.0.scheme() == "rediss"
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        write!(f, "{}://", url.scheme())?;
        match (url.username(), url.password()) {
            (user, Some(_)) => write!(f, "{user}:[redacted]@")?,
            ("", None) => {}
            (user, None) => write!(f, "{user}@")?,
        }
        write!(f, "{}", url.host_str().unwrap_or_default())?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// One auth config: how to get a token and where it may go.
#[derive(Debug)]
pub struct AuthConfig {
    pub id: String,
    pub description: Option<String>,
    pub grant: Grant,
    /// Where token requests go: a fixed URL, or the one `OpenID` Connect discovery names.
    pub endpoint: TokenEndpoint,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// What proves the client's identity; its kind matches `client_auth`.
    pub credential: Credential,
    /// How the token request's parameters are encoded.
    pub request_body: RequestBody,
    pub scopes: Vec<String>,
    pub extra_params: Vec<(String, String)>,
    pub inject: Inject,
    pub allowed_hosts: Vec<HostPattern>,
    pub refresh_before: Duration,
    /// A token counts as expired this long before its lifetime (or its JWT `exp`) ends, at
    /// most half the lifetime.
    pub expiry_skew: Duration,
    pub default_ttl: Duration,
    /// The whole token request.
    pub timeout: Duration,
    /// Back-off after failed token requests: `initial` doubling to `max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// On an upstream 401: drop the token, fetch a new one, replay the request once.
    pub retry_on_401: bool,
    /// Fetch a token at start-up and after a reload; `/readyz` waits for it.
    pub prefetch: bool,
    /// When the client secret expires (`client_secret_expires_at`), for a metric and a warning.
    pub client_secret_expires_at: Option<SystemTime>,
    /// `grant: authorization_code` only.
    pub authorize: Option<Authorize>,
    /// `grant: refresh_token` only.
    pub first_refresh_token: Option<FirstRefreshToken>,
    /// `assertion_file` (`client_auth: federated_jwt` or `grant: jwt_bearer`): the JWT the
    /// workload presents, read again at every token request, since its issuer (the kubelet,
    /// a SPIFFE agent) rotates it.
    pub assertion_file: Option<PathBuf>,
    /// `grant: token_exchange` only.
    pub token_exchange: Option<TokenExchange>,
    /// `provider: google` without a secret: the `external_account` credential file it was
    /// read from, and the service account its STS token is traded for.
    pub external_account: Option<ExternalAccount>,
    /// Everything that shapes the token, so a changed config never reuses an old token.
    cache_key: CacheKey,
}

/// An auth config's token cache key: the id and every field that shapes its token, joined,
/// with its hash worked out once, at load. The text is long (token URL, client id, scopes)
/// and the cache looks it up on every request; its `Hash` gives the hasher that one number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheKey {
    text: Arc<str>,
    hash: u64,
}

impl CacheKey {
    #[must_use]
    pub fn new(text: &str) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        Self {
            text: text.into(),
            hash: hasher.finish(),
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl AuthConfig {
    /// The token cache key: the id plus every field that shapes the token.
    #[must_use]
    pub fn cache_key(&self) -> &CacheKey {
        &self.cache_key
    }

    fn compute_cache_key(&self) -> CacheKey {
        CacheKey::new(&format!("{}\u{1f}{}", self.id, self.token_shape()))
    }

    /// Every field that shapes the token except the id and the credential, joined: two
    /// configs whose shapes and credentials are equal get the same token from a provider,
    /// whatever they are called (the shared cache's key hashes it).
    #[must_use]
    pub fn token_shape(&self) -> String {
        let params: Vec<String> = self.extra_params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let consent = self
            .authorize
            .as_ref()
            .map(Authorize::token_shaping)
            .unwrap_or_default();
        // The path, not the content: a rotated assertion names the same workload.
        let assertion_file = self
            .assertion_file
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default();
        let exchange = self
            .token_exchange
            .as_ref()
            .map(TokenExchange::token_shaping)
            .unwrap_or_default();
        let external = self
            .external_account
            .as_ref()
            .map(ExternalAccount::token_shaping)
            .unwrap_or_default();
        let parts = [
            self.grant.as_str(),
            &self.endpoint.cache_key(),
            &self.client_id,
            self.client_auth.as_str(),
            self.request_body.as_str(),
            &self.scopes.join(" "),
            &params.join("&"),
            &consent,
            &assertion_file,
            &exchange,
            &external,
        ];
        parts.join("\u{1f}")
    }
}

/// Where token requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEndpoint {
    /// `token_url:`, or a provider template that names the endpoint.
    Url(Url),
    /// `issuer:` (or a provider template): the `token_endpoint` of the `OpenID` Connect
    /// discovery document at `document`, whose `issuer` must equal `issuer` exactly.
    Discovery { issuer: String, document: Url },
}

impl TokenEndpoint {
    /// Identifies the endpoint: its URL, or the issuer and discovery document (the key of
    /// the token client's document cache, and part of a config's token cache key).
    pub(crate) fn cache_key(&self) -> String {
        match self {
            Self::Url(url) => url.to_string(),
            Self::Discovery { issuer, document } => format!("{issuer} {document}"),
        }
    }
}

impl fmt::Display for TokenEndpoint {
    /// The endpoint as shown in messages and admin output: no query, no user info.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => f.write_str(&endpoint_name(url)),
            Self::Discovery { issuer, .. } => write!(f, "issuer {issuer}"),
        }
    }
}

/// A URL as shown in messages: scheme, host, port and path; never a query or user info.
#[must_use]
pub fn endpoint_name(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// Token endpoints, issuers and discovery documents must be `https://`; `http://` is
/// allowed for loopback hosts, for development.
pub fn check_endpoint_url(url: &Url) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https:// (http:// is allowed only for loopback, for development)".into()),
        other => Err(format!("scheme `{other}` is not https")),
    }
}

/// Templates for identity providers whose endpoints are well known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Provider {
    /// Microsoft Entra ID (v2.0 endpoints), for the directory named by `tenant:`.
    Microsoft,
    /// Google, through its discovery document.
    Google,
}

/// Entra ID's authority host in the public cloud; sovereign clouds have their own
/// (`authority_host`, or `AZURE_AUTHORITY_HOST` for workload identity).
const MICROSOFT_AUTHORITY: &str = "https://login.microsoftonline.com";
const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The scope of a Google STS token, and of an external account's tokens when the config
/// names none: the IAM policy, not the scope, decides what the token may do.
pub const GOOGLE_CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// `provider: google` without a secret: Google's workload identity federation, as the
/// `external_account` credential file (`credentials_file`, or `GOOGLE_APPLICATION_CREDENTIALS`)
/// describes it. The STS exchange is a `token_exchange` grant (endpoint, audience, subject
/// token file and type from the file); this holds the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAccount {
    /// Where it was read from, for messages.
    pub credentials_file: PathBuf,
    /// `credential_source.format.subject_token_field_name`: the subject token file holds a
    /// JSON object and the token is this member of it; `None`: the file is the token.
    pub subject_token_field: Option<String>,
    /// `service_account_impersonation_url`: the second hop, which trades the STS token for
    /// the service account's access token.
    pub impersonation: Option<Impersonation>,
}

/// The IAM Credentials `generateAccessToken` call of an external account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impersonation {
    pub url: Url,
    /// `service_account_impersonation.token_lifetime_seconds`, asked for as `lifetime`.
    pub lifetime: Duration,
}

impl ExternalAccount {
    /// The part of the token cache key it decides: whose token the second hop asks for.
    fn token_shaping(&self) -> String {
        let field = self.subject_token_field.as_deref().unwrap_or_default();
        match &self.impersonation {
            Some(impersonation) => format!("{field} {} {}", impersonation.url, impersonation.lifetime.as_secs()),
            None => field.to_owned(),
        }
    }
}

/// How the client obtains its tokens (RFC 6749 §4, §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// §4.4: the client acts for itself.
    #[default]
    ClientCredentials,
    /// §4.1: an operator's consent in a browser (`/authorize/<id>` on the admin listener)
    /// gives the client a refresh token, with which it then acts for that user.
    AuthorizationCode,
    /// §6: the client acts for a user whose consent gave it a refresh token, starting from
    /// `refresh_token_file`.
    RefreshToken,
    /// RFC 7523 §2.1: the JWT in `assertion_file` is the grant; the workload acts as itself.
    JwtBearer,
    /// RFC 8693: the token in `subject_token_file` is traded for one the provider issues.
    TokenExchange,
}

impl Grant {
    /// The grant's name, as configured and as `grant_type` (they are the same words).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::JwtBearer => "jwt_bearer",
            Self::TokenExchange => "token_exchange",
        }
    }

    /// The `grant_type` a token request sends.
    #[must_use]
    pub fn grant_type(self) -> &'static str {
        match self {
            Self::JwtBearer => JWT_BEARER_GRANT_TYPE,
            Self::TokenExchange => TOKEN_EXCHANGE_GRANT_TYPE,
            other => other.as_str(),
        }
    }

    /// Whether tokens are a user's, through a refresh token kept in `state.file`.
    #[must_use]
    pub fn is_user_grant(self) -> bool {
        matches!(self, Self::AuthorizationCode | Self::RefreshToken)
    }
}

/// The `grant_type` of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The `grant_type` of RFC 8693 §2.1.
pub const TOKEN_EXCHANGE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// `grant: token_exchange` (RFC 8693 §2.1): what is traded, and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenExchange {
    /// Holds the subject token, read again at every token request (its issuer rotates it).
    pub subject_token_file: PathBuf,
    /// `subject_token_type`: a token type URI such as `urn:ietf:params:oauth:token-type:jwt`.
    pub subject_token_type: String,
    /// `requested_token_type`; the response's `issued_token_type` must equal it.
    pub requested_token_type: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<Url>,
}

impl TokenExchange {
    /// Whether the subject token must be a JWT: it is checked like an assertion then.
    #[must_use]
    pub fn subject_is_jwt(&self) -> bool {
        matches!(
            self.subject_token_type.as_str(),
            "urn:ietf:params:oauth:token-type:jwt" | "urn:ietf:params:oauth:token-type:id_token"
        )
    }

    /// The part of the token cache key it decides: the file's path (not its content), the
    /// types, audience and resource.
    fn token_shaping(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.subject_token_file.display(),
            self.subject_token_type,
            self.requested_token_type.as_deref().unwrap_or_default(),
            self.audience.as_deref().unwrap_or_default(),
            self.resource.as_ref().map(Url::as_str).unwrap_or_default()
        )
    }
}

/// `grant: authorization_code`: where the consent starts and where it comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorize {
    /// `authorization_url`, or the one a provider template names; `None`: the
    /// `authorization_endpoint` of the discovery document.
    pub url: Option<Url>,
    /// `redirect_uri`; `None`: the admin listener's `/callback` on loopback.
    pub redirect_uri: Option<Url>,
    /// `authorize_params`, added to the authorization request.
    pub params: Vec<(String, String)>,
}

impl Authorize {
    /// The part of the token cache key the consent decides: where it starts and what it
    /// asks for beyond the scopes (an `audience` or `resource` changes whose token the
    /// refresh token brings). `redirect_uri` only says where the browser comes back.
    fn token_shaping(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let url = self.url.as_ref().map(Url::as_str).unwrap_or_default();
        format!("{url} {}", params.join("&"))
    }
}

/// `refresh_token_file`: the first refresh token of a `refresh_token` config, read at load.
/// Later ones come from `state.file`; a file whose content changes starts the config anew.
#[derive(Debug)]
pub struct FirstRefreshToken {
    pub path: PathBuf,
    pub token: RefreshToken,
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    /// RFC 7523 §2.2 with `OpenID` Connect Core §9: a JWT signed (HS256) with the client secret.
    ClientSecretJwt,
    /// RFC 7523 §2.2: a JWT signed with the client's private key.
    PrivateKeyJwt,
    /// RFC 8705 §2.1: the client's certificate on the TLS connection.
    TlsClientAuth,
    /// Workload identity federation: the JWT in `assertion_file` (a projected service-account
    /// token) as the RFC 7523 §2.2 client assertion, with `client_id`; no secret in the pod.
    FederatedJwt,
    /// A public client (RFC 6749 §2.1) of a user grant, or a `jwt_bearer` client whose
    /// assertion is its proof: only `client_id` in the body, no credential.
    None,
}

impl ClientAuth {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
            Self::FederatedJwt => "federated_jwt",
            Self::None => "none",
        }
    }

    /// Whether this method authenticates with the client secret.
    #[must_use]
    pub fn uses_secret(self) -> bool {
        matches!(
            self,
            Self::ClientSecretBasic | Self::ClientSecretPost | Self::ClientSecretJwt
        )
    }
}

/// How a token request's parameters travel: the form RFC 6749 §4.4.2 names, or the same
/// fields as one JSON object of strings, for providers that take only JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestBody {
    /// `application/x-www-form-urlencoded`.
    #[default]
    Form,
    /// `application/json`.
    Json,
}

impl RequestBody {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Form => "form",
            Self::Json => "json",
        }
    }
}

/// The client's proof of identity. Every variant redacts its secret part in `Debug`.
#[derive(Debug)]
pub enum Credential {
    Secret(ClientSecret),
    PrivateKey(SigningKey),
    Certificate(ClientCertificate),
    /// `federated_jwt`'s: the assertion in the config's `assertion_file`, read when sent.
    AssertionFile,
    /// A public client's (`client_auth: none`): nothing but its client id.
    None,
}

impl Credential {
    /// The client secret, for the methods that send one.
    #[must_use]
    pub fn secret(&self) -> Option<&ClientSecret> {
        match self {
            Self::Secret(secret) => Some(secret),
            _ => None,
        }
    }
}

/// A client certificate chain and its private key (PEM files), for `tls_client_auth`.
pub struct ClientCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where they came from, for messages.
    pub source: String,
    /// Tells this certificate and key from others (a hash of both files' bytes, never shown),
    /// so a TLS client built for them is not reused once they are rotated.
    fingerprint: u64,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("source", &self.source)
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// From the bytes of `cert_file` (PEM certificates) and `key_file` (a PEM private key).
    fn from_pem(cert_file: &Path, cert: &[u8], key_file: &Path, key: &[u8]) -> Result<Self, (&'static str, String)> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|err| {
                (
                    "client_cert_file",
                    format!("cannot read {}: {err}", cert_file.display()),
                )
            })?;
        if chain.is_empty() {
            return Err((
                "client_cert_file",
                format!("no PEM certificate in {}", cert_file.display()),
            ));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|err| {
            (
                "client_key_file",
                format!("cannot read a PEM private key from {}: {err}", key_file.display()),
            )
        })?;
        let source = format!("{} + {}", cert_file.display(), key_file.display());
        let fingerprint = text_hash(&[cert, key].concat());
        Ok(Self {
            chain,
            key: key_der,
            source,
            fingerprint,
        })
    }

    /// Differs between two certificates or keys read from different bytes.
    #[must_use]
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// `intercept:`: how bearerd terminates the TLS of `CONNECT`s to intercepted hosts.
#[derive(Debug, PartialEq, Eq)]
pub struct Intercept {
    /// Written at start: bearerd's CA, then every root it trusts, for apps to trust.
    pub ca_bundle_out: PathBuf,
    /// The operator's CA (`ca_cert_file` + `ca_key_file`); `None`: bearerd generates one.
    pub operator_ca: Option<OperatorCa>,
    /// The lifetime of each leaf certificate bearerd mints.
    pub leaf_ttl: Duration,
}

impl Intercept {
    /// `leaf_ttl` when not set.
    pub const DEFAULT_LEAF_TTL: Duration = Duration::from_hours(24);
    /// Shorter leaves would be renewed every few minutes.
    pub const MIN_LEAF_TTL: Duration = Duration::from_mins(10);
    /// The longest lifetime clients accept for a TLS server certificate (398 days, Apple's
    /// limit), less a day of margin.
    pub const MAX_LEAF_TTL: Duration = Duration::from_hours(397 * 24);
}

/// An operator's CA, read from `ca_cert_file` and `ca_key_file` (PEM). Whether the key
/// belongs to the certificate is checked when the interception starts. `Debug` shows the
/// files, never the key.
#[derive(PartialEq, Eq)]
pub struct OperatorCa {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA certificate first, then any certificates above it, sent with every leaf.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for OperatorCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorCa")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl OperatorCa {
    /// From the bytes of `cert_file` (PEM certificates, the CA first) and `key_file` (a PEM
    /// private key). An error names the field and the file, never the key's bytes.
    fn from_pem(
        cert_file: PathBuf,
        cert: &[u8],
        key_file: PathBuf,
        key: &[u8],
    ) -> Result<Self, (&'static str, String)> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|err| ("ca_cert_file", format!("cannot read {}: {err}", cert_file.display())))?;
        if chain.is_empty() {
            return Err(("ca_cert_file", format!("no PEM certificate in {}", cert_file.display())));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|err| {
            (
                "ca_key_file",
                format!("cannot read a PEM private key from {}: {err}", key_file.display()),
            )
        })?;
        Ok(Self {
            cert_file,
            key_file,
            chain,
            key,
        })
    }
}

/// A file the configuration was read from (client secret, private key, certificate, first
/// refresh token, state key, interception CA), and a hash of the bytes read from it, so a
/// watcher can tell when it changed. `Debug` shows the path only: the hash is of a secret.
#[derive(Clone)]
pub struct WatchedFile {
    pub path: PathBuf,
    hash: u64,
}

impl WatchedFile {
    fn new(path: PathBuf, bytes: &[u8]) -> Self {
        Self {
            path,
            hash: text_hash(bytes),
        }
    }

    /// Whether `path` now holds other bytes than were read, or cannot be read.
    #[must_use]
    pub fn changed(&self) -> bool {
        self.hash_now() != Some(self.hash)
    }

    /// A hash of what `path` holds now; `None` when it cannot be read.
    fn hash_now(&self) -> Option<u64> {
        std::fs::read(&self.path).ok().map(|bytes| text_hash(&bytes))
    }
}

impl fmt::Debug for WatchedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Where the token goes on the forwarded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inject {
    /// `name: prefix token` (or the bare token when `prefix` is empty).
    Header { name: HeaderName, prefix: String },
    /// `?name=token`, added to any existing query.
    Query { name: String },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    #[default]
    Passthrough,
    Deny,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectPolicy {
    #[default]
    Allow,
    Deny,
}

/// One problem with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub config_id: Option<String>,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(source: &str, config_id: Option<&str>, field: &str, message: impl Into<String>) -> Self {
        Self {
            source: source.to_owned(),
            config_id: config_id.map(str::to_owned),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.config_id {
            Some(id) => write!(
                f,
                "{}: auth config `{id}`: {}: {}",
                self.source, self.field, self.message
            ),
            None => write!(f, "{}: {}: {}", self.source, self.field, self.message),
        }
    }
}

/// Every problem found in one load.
#[derive(Debug)]
pub struct LoadError(pub Vec<ConfigError>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({} problem{})",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

mod env;
mod google;
mod load;
mod raw;
mod route;
#[cfg(test)]
mod tests;
mod time;

pub use env::Env;
pub use load::text_hash;
pub use route::{HostPattern, Route, RouteKind, host_and_port};
pub use time::{format_timestamp, parse_duration, parse_timestamp};
