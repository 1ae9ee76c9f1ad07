//! `bearerd check`: validate the configuration and, unless offline, resolve discovery and
//! fetch one token per auth config, like the "Connect" button of the products bearerd
//! replaces. One row per config; never a token.
//!
//! A user grant (`authorization_code`, `refresh_token`) is not refreshed: with rotation, a
//! refresh by `check` would spend the refresh token the running bearerd holds. Its row says
//! whether `state.file` (with `shared_cache:`, Redis) holds a refresh token, or that a
//! consent is required (which is not a failure: it is the state of a config nobody has
//! consented for yet).
//!
//! A config that sends a workload's token (`assertion_file`, `subject_token_file`) lists
//! each file under the table with what reading it found: readable, a JWT, when it expires.
//! Offline, a file no token request could use fails the check: in the pod, that is the
//! difference between a config that works and one that does not.
//!
//! With `shared_cache:`, a last line says whether its Redis answers a `PING` (never the
//! password); one that does not fails the check, though a running bearerd would serve
//! without it, fetching alone.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AuthConfig, Config, Grant, SharedCacheConfig, TokenEndpoint, endpoint_name, format_timestamp};
use crate::metrics::Metrics;
use crate::shared_cache::SharedCache;
use crate::state::{Record, StateStore, record_key};
use crate::token::{
    TokenClient, TokenError, TokenFileState, TokenResponse, entry_hash, holds_refresh_token, inspect_token_file,
    remedy, token_files,
};
use crate::{StartError, tls};

/// One config's result.
#[derive(Debug)]
pub struct Row {
    pub id: String,
    pub grant: &'static str,
    /// The token endpoint used (after discovery), or as configured when offline or failed.
    pub endpoint: String,
    pub result: Outcome,
    /// The files the config sends a workload's token from.
    pub files: Vec<FileRow>,
}

/// A file an assertion or subject token comes from, and what reading it found.
#[derive(Debug)]
pub struct FileRow {
    /// `assertion file` or `subject token file`.
    pub what: &'static str,
    pub path: String,
    /// What it holds (`readable JWT, expires at ...`), or why no token request could use
    /// it. Never the content.
    pub found: Result<String, String>,
}

#[derive(Debug)]
pub enum Outcome {
    /// A token came back: its lifetime and the scopes granted (when the provider said).
    Token {
        expires_in: Option<Duration>,
        scope: Option<String>,
    },
    Failed(String),
    /// `--offline`: the config is valid; nothing was contacted.
    Valid,
    /// A user grant that holds a refresh token (not used by `check`).
    Consented,
    /// A user grant with no refresh token the provider may honour: what to do about it.
    ConsentRequired(String),
}

impl Row {
    #[must_use]
    pub fn passed(&self) -> bool {
        !matches!(self.result, Outcome::Failed(_))
    }
}

/// Checks every auth config of `config`: offline, what loading validated and what its token
/// files hold now.
pub async fn check(config: &Config, offline: bool) -> Result<Vec<Row>, StartError> {
    let client = if offline {
        None
    } else {
        Some(TokenClient::new(Arc::new(tls::roots(config.ca_file.as_deref())?))?)
    };
    let mut rows = Vec::with_capacity(config.auth_configs.len());
    for auth_config in &config.auth_configs {
        let configured = auth_config.endpoint.to_string();
        let files = inspect_files(auth_config);
        let (endpoint, result) = match &client {
            None => match files.iter().find_map(|file| Some((file, file.found.as_ref().err()?))) {
                None => (configured, Outcome::Valid),
                Some((file, problem)) => {
                    let named = format!("{} {} {problem}", file.what, file.path);
                    (configured, Outcome::Failed(named))
                }
            },
            Some(client) => {
                let result = if auth_config.grant.is_user_grant() {
                    user_grant(client, config, auth_config).await
                } else {
                    match client.fetch(auth_config).await {
                        Ok(TokenResponse { expires_in, scope, .. }) => Outcome::Token { expires_in, scope },
                        Err(err) => Outcome::Failed(err.to_string()),
                    }
                };
                let endpoint = match &auth_config.endpoint {
                    TokenEndpoint::Url(_) => configured,
                    TokenEndpoint::Discovery { .. } => client
                        .discovered_endpoint(auth_config)
                        .map_or(configured, |url| endpoint_name(&url)),
                };
                (endpoint, result)
            }
        };
        rows.push(Row {
            id: auth_config.id.clone(),
            grant: auth_config.grant.as_str(),
            endpoint,
            result,
            files,
        });
    }
    Ok(rows)
}

/// Each token file of `auth_config`, read as the next token request would read it.
fn inspect_files(auth_config: &AuthConfig) -> Vec<FileRow> {
    token_files(auth_config)
        .into_iter()
        .map(|file| FileRow {
            what: file.what,
            path: file.path.display().to_string(),
            found: match inspect_token_file(file) {
                Ok(TokenFileState::Jwt { expires: Some(exp) }) => {
                    Ok(format!("readable JWT, expires at {}", format_timestamp(exp)))
                }
                Ok(TokenFileState::Jwt { expires: None }) => Ok("readable JWT, no exp".to_owned()),
                Ok(TokenFileState::Opaque) => Ok("readable (not a JWT type: sent as it is)".to_owned()),
                // The line names the file already: the problem alone follows it.
                Err(TokenError::Assertion { problem, .. }) => Err(problem),
                Err(err) => Err(err.to_string()),
            },
        })
        .collect()
}

/// Whether the shared cache's Redis answers: `None` without `shared_cache:` or offline,
/// else the line to print and whether it passed.
pub async fn shared_cache(config: &Config, offline: bool) -> Option<(String, bool)> {
    let shared = config.shared_cache.as_ref().filter(|_| !offline)?;
    Some(match ping(config, shared).await {
        Ok(()) => (format!("shared_cache: {} answers", shared.redis), true),
        Err(err) => (format!("shared_cache: FAILED: {err}"), false),
    })
}

/// `PING` to the shared cache's Redis, trusting (over TLS) the roots a running bearerd
/// trusts.
async fn ping(config: &Config, shared: &SharedCacheConfig) -> Result<(), String> {
    let cache = connect(config, shared)?;
    cache.ping().await.map_err(|err| crate::chain(&err))
}

/// The shared cache's Redis, trusting (over TLS) the roots a running bearerd trusts.
fn connect(config: &Config, shared: &SharedCacheConfig) -> Result<SharedCache, String> {
    let roots = tls::load_roots(config.ca_file.as_deref()).map_err(|err| crate::chain(&err))?;
    SharedCache::new(shared, &roots.certificates, Arc::new(Metrics::new())).map_err(|err| crate::chain(&err))
}

/// A user grant, without spending anything: its consent's start (`authorization_code`: the
/// authorization endpoint, through discovery when configured so) and its record in
/// `state.file`.
async fn user_grant(client: &TokenClient, config: &Config, auth_config: &AuthConfig) -> Outcome {
    if auth_config.grant == Grant::AuthorizationCode
        && let Err(err) = client.authorization_server(auth_config).await
    {
        return Outcome::Failed(err.to_string());
    }
    let record = match (&config.shared_cache, &config.state) {
        (Some(shared), _) => match fleet_record(config, shared, auth_config).await {
            Ok(record) => record,
            Err(err) => return Outcome::Failed(err),
        },
        (None, Some(state)) => match StateStore::read(&state.file, &state.key) {
            Ok(records) => records.unwrap_or_default().remove(&record_key(auth_config)),
            Err(err) => return Outcome::Failed(err.to_string()),
        },
        (None, None) => return Outcome::Failed("no state: block".into()),
    };
    if holds_refresh_token(auth_config, record.as_ref()) {
        Outcome::Consented
    } else {
        Outcome::ConsentRequired(remedy(auth_config))
    }
}

/// The user grant's record in the fleet's Redis, read as a refresh would read it.
async fn fleet_record(
    config: &Config,
    shared: &SharedCacheConfig,
    auth_config: &AuthConfig,
) -> Result<Option<Record>, String> {
    let cache = connect(config, shared)?;
    let hash = entry_hash(&cache, auth_config).map_err(|err| err.to_string())?;
    let read = cache.read_grant(&hash).await.map_err(|err| crate::chain(&err))?;
    Ok(read.map(|(record, _)| record))
}

/// The rows as an aligned table with a header.
#[must_use]
pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            let (result, expires_in, detail) = match &row.result {
                Outcome::Token { expires_in, scope } => (
                    "ok",
                    expires_in.map_or_else(|| "-".to_owned(), |d| format!("{}s", d.as_secs())),
                    scope.clone().unwrap_or_else(|| "(scopes not stated)".to_owned()),
                ),
                Outcome::Failed(error) => ("FAILED", "-".to_owned(), error.clone()),
                Outcome::Valid => ("valid", "-".to_owned(), "offline: nothing contacted".to_owned()),
                Outcome::Consented => (
                    "consented",
                    "-".to_owned(),
                    "a refresh token is held (check does not use it: a refresh could spend the running bearerd's)"
                        .to_owned(),
                ),
                Outcome::ConsentRequired(remedy) => ("consent_required", "-".to_owned(), remedy.clone()),
            };
            [
                row.id.clone(),
                row.grant.to_owned(),
                row.endpoint.clone(),
                result.to_owned(),
                expires_in,
                detail,
            ]
        })
        .collect();
    let header = ["ID", "GRANT", "ENDPOINT", "RESULT", "EXPIRES_IN", "SCOPES / ERROR"];
    let mut out = aligned(header, cells);
    let files: Vec<[String; 4]> = rows
        .iter()
        .flat_map(|row| {
            row.files.iter().map(|file| {
                let found = match &file.found {
                    Ok(found) => found.clone(),
                    Err(problem) => format!("FAILED: {problem}"),
                };
                [row.id.clone(), file.what.to_owned(), file.path.clone(), found]
            })
        })
        .collect();
    if !files.is_empty() {
        out.push('\n');
        out.push_str(&aligned(["ID", "TOKEN FROM", "FILE", "FOUND"], files));
    }
    out
}

/// `cells` under `header`, each column as wide as its widest cell.
fn aligned<const N: usize>(header: [&str; N], cells: Vec<[String; N]>) -> String {
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(str::to_owned)).chain(cells) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                let _ = writeln!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
    }
    out
}
