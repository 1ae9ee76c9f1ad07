//! The configuration's shapes straight from serde: every field optional or defaulted,
//! unknown fields refused. Loading (`load`) turns them into the typed [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value;

use super::{ClientAuth, ConnectPolicy, DefaultAction, Grant, Provider, RequestBody, SigningAlg};
use crate::secret::ClientSecret;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTop {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    #[serde(default)]
    pub(super) default_action: DefaultAction,
    #[serde(default)]
    pub(super) connect: ConnectPolicy,
    pub(super) upstream_timeout: Option<RawDuration>,
    pub(super) upstream_max_concurrency: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) shutdown_grace: Option<RawDuration>,
    pub(super) config_watch_interval: Option<RawDuration>,
    pub(super) worker_threads: Option<usize>,
    pub(super) tls: Option<RawTls>,
    pub(super) intercept: Option<RawIntercept>,
    pub(super) state: Option<RawState>,
    pub(super) shared_cache: Option<RawSharedCache>,
    // Taken out of the document before this struct is read; listed so they are not "unknown".
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) auth_configs: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) routes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntercept {
    pub(super) ca_bundle_out: Option<PathBuf>,
    pub(super) ca_cert_file: Option<PathBuf>,
    pub(super) ca_key_file: Option<PathBuf>,
    pub(super) leaf_ttl: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSharedCache {
    pub(super) redis: Option<String>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthConfig {
    #[allow(dead_code)] // read from the Value before deserializing
    pub(super) id: Value,
    pub(super) description: Option<String>,
    /// `None`: a provider's default, else `client_credentials` (see [`RawAuthConfig::grant`]).
    pub(super) grant: Option<Grant>,
    pub(super) token_url: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) discovery_url: Option<String>,
    pub(super) provider: Option<Provider>,
    pub(super) tenant: Option<String>,
    pub(super) authority_host: Option<String>,
    pub(super) credentials_file: Option<PathBuf>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<ClientSecret>,
    pub(super) client_secret_file: Option<PathBuf>,
    /// `None`: a provider's default, else `client_secret_basic` (see
    /// [`RawAuthConfig::client_auth`]).
    pub(super) client_auth: Option<ClientAuth>,
    #[serde(default)]
    pub(super) request_body: RequestBody,
    pub(super) private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) signing_alg: SigningAlg,
    pub(super) key_id: Option<String>,
    pub(super) client_cert_file: Option<PathBuf>,
    pub(super) client_key_file: Option<PathBuf>,
    pub(super) scopes: Option<RawScopes>,
    #[serde(default)]
    pub(super) extra_params: BTreeMap<String, Value>,
    pub(super) inject: Option<RawInject>,
    pub(super) allowed_hosts: Option<Vec<String>>,
    pub(super) refresh_before: Option<RawDuration>,
    pub(super) expiry_skew: Option<RawDuration>,
    pub(super) default_ttl: Option<RawDuration>,
    pub(super) timeout: Option<RawDuration>,
    pub(super) backoff: Option<RawBackoff>,
    pub(super) retry_on_401: Option<bool>,
    pub(super) prefetch: Option<bool>,
    pub(super) client_secret_expires_at: Option<RawTimestamp>,
    pub(super) refresh_token_file: Option<PathBuf>,
    pub(super) assertion_file: Option<PathBuf>,
    pub(super) subject_token_file: Option<PathBuf>,
    pub(super) subject_token_type: Option<String>,
    pub(super) requested_token_type: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) resource: Option<String>,
    pub(super) authorization_url: Option<String>,
    pub(super) redirect_uri: Option<String>,
    #[serde(default)]
    pub(super) authorize_params: BTreeMap<String, Value>,
}

impl RawAuthConfig {
    /// The grant, as configured or defaulted.
    pub(super) fn grant(&self) -> Grant {
        self.grant.unwrap_or_default()
    }

    /// The client authentication, as configured or defaulted.
    pub(super) fn client_auth(&self) -> ClientAuth {
        self.client_auth.unwrap_or_default()
    }

    /// Whether the config names a credential of its own (secret, key or certificate), or
    /// a client authentication method: if not, a provider template may choose one.
    pub(super) fn names_client_auth(&self) -> bool {
        self.client_auth.is_some()
            || self.client_secret.is_some()
            || self.client_secret_file.is_some()
            || self.private_key_file.is_some()
            || self.client_cert_file.is_some()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawTimestamp {
    UnixSeconds(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub(super) initial: Option<RawDuration>,
    pub(super) max: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawScopes {
    List(Vec<String>),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) query: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(rename = "match")]
    pub(super) matcher: Option<RawMatch>,
    pub(super) auth_config: Option<String>,
    pub(super) upstream_tls: Option<bool>,
    pub(super) upstream: Option<String>,
    pub(super) intercept: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) methods: Option<Vec<String>>,
}
