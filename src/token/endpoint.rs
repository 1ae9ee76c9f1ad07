//! The token endpoint: one HTTP request per fetch (RFC 6749 §4.4 client credentials, §6
//! refresh token, §4.1.3 authorization code), as a form or a JSON object, client
//! authentication (§2.3.1, RFC 7523 §2.2, RFC 8705 §2.1, or none), and strict reading of
//! the response (§5.1, §5.2).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header;
use serde::Deserialize;

use url::Url;

use super::answer::{TokenError, TokenResponse, content_type_of, read_body, transport_error};
use super::discovery::{self, Discovered, quote};
use super::{impersonation, jwt};
use crate::config::{
    AuthConfig, ClientAuth, Credential, ExternalAccount, GOOGLE_CLOUD_PLATFORM_SCOPE, Grant, JWT_BEARER_GRANT_TYPE,
    RequestBody, TOKEN_EXCHANGE_GRANT_TYPE, TokenEndpoint, endpoint_name, format_timestamp,
};
use crate::secret::{AccessToken, Assertion, AuthorizationCode, ClientSecret, RefreshToken};
use crate::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Assertion files larger than this are refused: a projected service-account token or a
/// JWT-SVID is a few KiB.
const MAX_ASSERTION_BYTES: u64 = 64 * 1024;

/// What a token request asks for: its `grant_type` and that grant's parameters.
#[derive(Clone, Copy, Debug)]
pub enum GrantRequest<'a> {
    /// RFC 6749 §4.4.2.
    ClientCredentials,
    /// RFC 7523 §2.1, with the JWT in the config's `assertion_file`.
    JwtBearer,
    /// RFC 8693 §2.1, with the token in the config's `subject_token_file`.
    TokenExchange,
    /// RFC 6749 §6, with the newest refresh token held.
    RefreshToken(&'a RefreshToken),
    /// RFC 6749 §4.1.3, with the PKCE verifier (RFC 7636 §4.5).
    AuthorizationCode {
        code: &'a AuthorizationCode,
        redirect_uri: &'a str,
        code_verifier: &'a str,
    },
}

impl GrantRequest<'_> {
    /// The request of a grant that acts without a user's consent (`client_credentials`,
    /// `jwt_bearer`); a user grant's requests carry what its consent gave.
    #[must_use]
    pub fn service(grant: Grant) -> Self {
        match grant {
            Grant::JwtBearer => Self::JwtBearer,
            Grant::TokenExchange => Self::TokenExchange,
            _ => Self::ClientCredentials,
        }
    }

    fn grant_type(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::JwtBearer => JWT_BEARER_GRANT_TYPE,
            Self::TokenExchange => TOKEN_EXCHANGE_GRANT_TYPE,
            Self::RefreshToken(_) => "refresh_token",
            Self::AuthorizationCode { .. } => "authorization_code",
        }
    }
}

/// Where an authorization code grant's consent starts, and what its response must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationServer {
    pub authorization_endpoint: Url,
    /// The issuer an `iss` response parameter must name (RFC 9207 §2.4), when known.
    pub issuer: Option<String>,
    /// The provider sends `iss` on every response: one without it is refused.
    pub iss_required: bool,
}

/// Sends token requests: the token endpoint ([`TokenClient`]), or a script in tests.
pub trait RequestToken: Send + Sync + 'static {
    /// One token request for `config`, asking for `grant`.
    fn request<'a>(
        &'a self,
        config: &'a AuthConfig,
        grant: GrantRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>>;

    /// Where `config`'s consent starts: `authorization_url`, or the discovery document's.
    fn authorization_server<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<AuthorizationServer, TokenError>> + Send + 'a>>;
}

impl RequestToken for TokenClient {
    fn request<'a>(
        &'a self,
        config: &'a AuthConfig,
        grant: GrantRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
        Box::pin(TokenClient::request(self, config, grant))
    }

    fn authorization_server<'a>(
        &'a self,
        config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<AuthorizationServer, TokenError>> + Send + 'a>> {
        Box::pin(TokenClient::authorization_server(self, config))
    }
}

/// Sends token requests: no redirects, bounded connect and total time.
pub struct TokenClient {
    http: reqwest::Client,
    roots: Arc<rustls::RootCertStore>,
    /// Clients presenting a certificate (`tls_client_auth`), by the config's cache key, each
    /// with the fingerprint of the certificate and key it presents.
    with_certificate: Mutex<HashMap<String, (u64, reqwest::Client)>>,
    /// Discovery documents read so far, by issuer and document URL.
    documents: Mutex<HashMap<String, Arc<Discovered>>>,
}

fn build_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("bearerd/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl TokenClient {
    pub fn new(roots: Arc<rustls::RootCertStore>) -> Result<Self, crate::StartError> {
        let http = build_client(tls::client_config(Arc::clone(&roots))?)?;
        Ok(Self {
            http,
            roots,
            with_certificate: Mutex::new(HashMap::new()),
            documents: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client for `config`: the shared one, or one presenting its certificate.
    fn client(&self, config: &AuthConfig, url: &Url) -> Result<reqwest::Client, TokenError> {
        let Credential::Certificate(certificate) = &config.credential else {
            return Ok(self.http.clone());
        };
        let mut clients = self.with_certificate.lock().unwrap_or_else(PoisonError::into_inner);
        // A rotated certificate (a reload keeps the cache key) needs a client of its own.
        if let Some((fingerprint, client)) = clients.get(config.cache_key().as_str())
            && *fingerprint == certificate.fingerprint()
        {
            return Ok(client.clone());
        }
        let invalid = |cause: String| TokenError::Transport {
            endpoint: endpoint_name(url),
            cause: format!("client certificate {}: {cause}", certificate.source),
        };
        let tls = tls::client_config_with_certificate(
            Arc::clone(&self.roots),
            certificate.chain.clone(),
            certificate.key.clone_key(),
        )
        .map_err(|err| invalid(err.to_string()))?;
        let client = build_client(tls).map_err(|err| invalid(err.to_string()))?;
        clients.insert(
            config.cache_key().as_str().to_owned(),
            (certificate.fingerprint(), client.clone()),
        );
        Ok(client)
    }

    /// Requests a token for `config`'s grant when it needs no consent (client credentials,
    /// jwt-bearer; see [`TokenClient::request`]).
    pub async fn fetch(&self, config: &AuthConfig) -> Result<TokenResponse, TokenError> {
        self.request(config, GrantRequest::service(config.grant)).await
    }

    /// Requests a token for `config` with `grant`, from its token URL or the endpoint
    /// discovery names.
    ///
    /// A discovery document is read once and kept. When a token request to the endpoint it
    /// named cannot connect or gets a 404, the document is read again, and the request is
    /// sent once more if the endpoint has moved (a request that got no answer, or a 404,
    /// spent no refresh token or code).
    ///
    /// An external account that impersonates a service account trades the token it got
    /// for that account's (the second hop), within what is left of `timeout`.
    pub async fn request(&self, config: &AuthConfig, grant: GrantRequest<'_>) -> Result<TokenResponse, TokenError> {
        let started = tokio::time::Instant::now();
        let response = self.request_at_endpoint(config, grant).await?;
        let Some(impersonation) = config.external_account.as_ref().and_then(|e| e.impersonation.as_ref()) else {
            return Ok(response);
        };
        let left = config.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(TokenError::Timeout {
                endpoint: endpoint_name(&impersonation.url),
                timeout: config.timeout,
            });
        }
        impersonation::generate_access_token(&self.http, config, impersonation, &response.access_token, left).await
    }

    /// The token request itself, at the token URL or the endpoint discovery names.
    async fn request_at_endpoint(
        &self,
        config: &AuthConfig,
        grant: GrantRequest<'_>,
    ) -> Result<TokenResponse, TokenError> {
        let (issuer, document) = match &config.endpoint {
            TokenEndpoint::Url(url) => return self.request_token(config, url, grant).await,
            TokenEndpoint::Discovery { issuer, document } => (issuer, document),
        };
        let key = config.endpoint.cache_key();
        let cached = self.documents().get(&key).cloned();
        let just_read = cached.is_none();
        let discovered = match cached {
            Some(discovered) => discovered,
            None => self.discover(config, issuer, document, &key).await?,
        };
        let url = discovered.token_endpoint(config.client_auth);
        match self.request_token(config, url, grant).await {
            Err(err) if err.endpoint_gone() => {
                self.documents().remove(&key);
                if just_read {
                    return Err(err);
                }
                let again = self.discover(config, issuer, document, &key).await?;
                let moved = again.token_endpoint(config.client_auth);
                if moved == url {
                    return Err(err);
                }
                tracing::info!(
                    auth_config = %config.id,
                    token_endpoint = %endpoint_name(moved),
                    "the discovery document names a new token endpoint; retrying there"
                );
                self.request_token(config, moved, grant).await
            }
            result => result,
        }
    }

    /// Where `config`'s consent starts: its `authorization_url` (or template's), else the
    /// `authorization_endpoint` of its discovery document (read now if not yet).
    pub async fn authorization_server(&self, config: &AuthConfig) -> Result<AuthorizationServer, TokenError> {
        let configured = config.authorize.as_ref().and_then(|authorize| authorize.url.clone());
        let (issuer, document, configured) = match (&config.endpoint, configured) {
            (TokenEndpoint::Url(_), None) => {
                return Err(TokenError::Invalid(format!(
                    "auth config `{}` names no authorization endpoint",
                    config.id
                )));
            }
            (TokenEndpoint::Url(_), Some(url)) => {
                return Ok(AuthorizationServer {
                    authorization_endpoint: url,
                    issuer: None,
                    iss_required: false,
                });
            }
            (TokenEndpoint::Discovery { issuer, document }, configured) => (issuer, document, configured),
        };
        let key = config.endpoint.cache_key();
        let cached = self.documents().get(&key).cloned();
        let discovered = match cached {
            Some(discovered) => discovered,
            None => self.discover(config, issuer, document, &key).await?,
        };
        let authorization_endpoint = match (configured, &discovered.authorization_endpoint) {
            (Some(url), _) => url,
            (None, Some(url)) => url.clone(),
            (None, None) => {
                return Err(TokenError::Discovery {
                    document: endpoint_name(document),
                    problem: "it has no authorization_endpoint".into(),
                });
            }
        };
        Ok(AuthorizationServer {
            authorization_endpoint,
            issuer: Some(issuer.clone()),
            iss_required: discovered.iss_parameter_supported,
        })
    }

    /// The token endpoint the discovery document read for `config` names, if one was read.
    #[must_use]
    pub fn discovered_endpoint(&self, config: &AuthConfig) -> Option<Url> {
        if !matches!(config.endpoint, TokenEndpoint::Discovery { .. }) {
            return None;
        }
        let documents = self.documents();
        let discovered = documents.get(&config.endpoint.cache_key())?;
        Some(discovered.token_endpoint(config.client_auth).clone())
    }

    fn documents(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Discovered>>> {
        self.documents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the discovery document and keeps it.
    async fn discover(
        &self,
        config: &AuthConfig,
        issuer: &str,
        document: &Url,
        key: &str,
    ) -> Result<Arc<Discovered>, TokenError> {
        let failed = |problem: String| TokenError::Discovery {
            document: endpoint_name(document),
            problem,
        };
        let request = self
            .http
            .get(document.clone())
            .timeout(config.timeout)
            .header(header::ACCEPT, "application/json");
        let response = request
            .send()
            .await
            .map_err(|err| failed(transport_cause(err, config)))?;
        let status = response.status().as_u16();
        if status != 200 {
            let redirect = if (300..400).contains(&status) {
                "; redirects are not followed"
            } else {
                ""
            };
            return Err(failed(format!("it answered HTTP {status}{redirect}")));
        }
        let body = read_body(response).await.map_err(|err| {
            failed(err.map_or_else(
                || "the document is larger than 1 MiB".to_owned(),
                |err| transport_cause(err, config),
            ))
        })?;
        let discovered = Arc::new(discovery::parse_document(issuer, &body).map_err(failed)?);
        tracing::info!(
            auth_config = %config.id,
            issuer,
            token_endpoint = %endpoint_name(discovered.token_endpoint(config.client_auth)),
            "read the OpenID Connect discovery document"
        );
        self.documents().insert(key.to_owned(), Arc::clone(&discovered));
        Ok(discovered)
    }

    /// One token request to `url`.
    async fn request_token(
        &self,
        config: &AuthConfig,
        url: &Url,
        grant: GrantRequest<'_>,
    ) -> Result<TokenResponse, TokenError> {
        let endpoint = endpoint_name(url);
        // Read before anything is sent: a file that holds no usable token stops the request.
        let grant_token = grant_token(config, grant)?;
        let mut params = grant_params(config, grant, grant_token.as_ref());
        let scope = match &config.external_account {
            // The STS token serves only to impersonate: the scopes are the second hop's.
            Some(ExternalAccount {
                impersonation: Some(_), ..
            }) => GOOGLE_CLOUD_PLATFORM_SCOPE.to_owned(),
            _ => config.scopes.join(" "),
        };
        // On a refresh too (RFC 6749 §6 allows it; Entra ID needs it); the code's scopes
        // were settled by the consent.
        if !scope.is_empty() && !matches!(grant, GrantRequest::AuthorizationCode { .. }) {
            params.push(("scope", &scope));
        }
        for (name, value) in &config.extra_params {
            params.push((name, value));
        }
        let mut request = self.client(config, url)?.post(url.clone()).timeout(config.timeout);
        let assertion = client_assertion(config, url)?;
        match (config.client_auth, &config.credential, &assertion) {
            (ClientAuth::ClientSecretBasic, Credential::Secret(secret), _) => {
                request = request.header(header::AUTHORIZATION, basic_auth(&config.client_id, secret));
            }
            (ClientAuth::ClientSecretPost, Credential::Secret(secret), _) => {
                params.push(("client_id", &config.client_id));
                params.push(("client_secret", secret.expose()));
            }
            (
                ClientAuth::ClientSecretJwt | ClientAuth::PrivateKeyJwt | ClientAuth::FederatedJwt,
                _,
                Some(assertion),
            ) => {
                params.push(("client_id", &config.client_id));
                params.push(("client_assertion_type", crate::assertion::ASSERTION_TYPE));
                params.push(("client_assertion", assertion.expose()));
            }
            // Google's STS: the subject token alone says who asks.
            (ClientAuth::None, Credential::None, _) if config.external_account.is_some() => {}
            (ClientAuth::TlsClientAuth, Credential::Certificate(_), _) | (ClientAuth::None, Credential::None, _) => {
                params.push(("client_id", &config.client_id));
            }
            _ => {
                return Err(TokenError::Invalid(
                    "client_auth does not match the configured credential".into(),
                ));
            }
        }
        let (content_type, body) = encode_body(config.request_body, &params);
        let request = request
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, content_type)
            .body(body);

        let transport = |err: reqwest::Error| transport_error(err, &endpoint, config.timeout);
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let content_type = content_type_of(&response);
        let mut body = read_body(response)
            .await
            .map_err(|err| err.map_or(TokenError::TooLarge, transport))?;
        if !(200..300).contains(&status) {
            // Only a refusal is quoted in errors; a success's tokens are kept as they came.
            body = without_sent_tokens(&body, grant_token.iter().chain(&assertion));
        }
        let response = parse_response(status, &content_type, &body, config.credential.secret())?;
        if let (GrantRequest::TokenExchange, Some(exchange)) = (grant, &config.token_exchange) {
            check_issued_token_type(
                &body,
                exchange.requested_token_type.as_deref(),
                config.credential.secret(),
            )?;
        }
        Ok(response)
    }
}

/// The token a grant sends from a file: `jwt_bearer`'s assertion, `token_exchange`'s subject
/// token; `None` for the other grants.
fn grant_token(config: &AuthConfig, grant: GrantRequest<'_>) -> Result<Option<Assertion>, TokenError> {
    match (grant, &config.token_exchange) {
        (GrantRequest::JwtBearer, _) => read_assertion(config).map(Some),
        (GrantRequest::TokenExchange, Some(exchange)) => {
            let field = config
                .external_account
                .as_ref()
                .and_then(|external| external.subject_token_field.as_deref());
            read_subject_token(&exchange.subject_token_file, field, exchange.subject_is_jwt()).map(Some)
        }
        (GrantRequest::TokenExchange, None) => Err(TokenError::Invalid(format!(
            "auth config `{}` has no subject_token_file",
            config.id
        ))),
        _ => Ok(None),
    }
}

/// `grant_type` and the grant's own parameters, `token` being what [`grant_token`] read.
fn grant_params<'a>(
    config: &'a AuthConfig,
    grant: GrantRequest<'a>,
    token: Option<&'a Assertion>,
) -> Vec<(&'static str, &'a str)> {
    let mut params: Vec<(&str, &str)> = vec![("grant_type", grant.grant_type())];
    let token = token.map_or("", Assertion::expose);
    match grant {
        GrantRequest::ClientCredentials => {}
        GrantRequest::JwtBearer => params.push(("assertion", token)),
        GrantRequest::TokenExchange => {
            params.push(("subject_token", token));
            if let Some(exchange) = &config.token_exchange {
                params.push(("subject_token_type", &exchange.subject_token_type));
                let optional = [
                    ("requested_token_type", exchange.requested_token_type.as_deref()),
                    ("audience", exchange.audience.as_deref()),
                    ("resource", exchange.resource.as_ref().map(Url::as_str)),
                ];
                params.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value?))));
            }
        }
        GrantRequest::RefreshToken(refresh_token) => params.push(("refresh_token", refresh_token.expose())),
        GrantRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => params.extend([
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier),
        ]),
    }
    params
}

/// The client assertion: the signed JWT of `client_secret_jwt` and `private_key_jwt`, made
/// for this request to `url`, or `federated_jwt`'s as its file holds it now; `None` for the
/// other methods.
fn client_assertion(config: &AuthConfig, url: &Url) -> Result<Option<Assertion>, TokenError> {
    let now = SystemTime::now();
    let signed = match (config.client_auth, &config.credential) {
        (ClientAuth::FederatedJwt, Credential::AssertionFile) => return read_assertion(config).map(Some),
        (ClientAuth::ClientSecretJwt, Credential::Secret(secret)) => {
            crate::assertion::secret_assertion(secret, &config.client_id, url.as_str(), now)
        }
        (ClientAuth::PrivateKeyJwt, Credential::PrivateKey(key)) => key.assertion(&config.client_id, url.as_str(), now),
        _ => return Ok(None),
    };
    signed
        .map(|jwt| Some(Assertion::new(jwt)))
        .map_err(|err| TokenError::Invalid(err.to_string()))
}

/// The JWT in `config`'s `assertion_file` as the file holds it now (its issuer rotates it),
/// whitespace trimmed. A file that cannot be read, is empty, holds no JWT or one whose `exp`
/// has passed is an error naming the file: sending it would only earn a refusal.
fn read_assertion(config: &AuthConfig) -> Result<Assertion, TokenError> {
    let Some(path) = &config.assertion_file else {
        return Err(TokenError::Invalid(format!(
            "auth config `{}` has no assertion_file",
            config.id
        )));
    };
    read_token_file("assertion file", path, true)
}

/// RFC 8693 §2.2.1: `issued_token_type` is required, and must be what was asked for.
fn check_issued_token_type(
    body: &[u8],
    requested: Option<&str>,
    secret: Option<&ClientSecret>,
) -> Result<(), TokenError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (json.get("issued_token_type"), requested) {
        (None | Some(serde_json::Value::Null), _) => {
            Err(TokenError::Invalid("no issued_token_type (RFC 8693 §2.2.1)".into()))
        }
        (Some(serde_json::Value::String(issued)), Some(requested)) if issued != requested => {
            Err(TokenError::Invalid(format!(
                "issued_token_type `{}` is not the requested_token_type `{requested}`",
                quote(issued, secret)
            )))
        }
        (Some(serde_json::Value::String(_)), _) => Ok(()),
        (Some(_), _) => Err(TokenError::Invalid("issued_token_type is not a string".into())),
    }
}

/// The subject token in `path`: the whole file, or (an external account's JSON format)
/// its member `field`. With `jwt`, it must be a JWT whose `exp` (if any) has not passed.
fn read_subject_token(path: &std::path::Path, field: Option<&str>, jwt: bool) -> Result<Assertion, TokenError> {
    const WHAT: &str = "subject token file";
    let Some(field) = field else {
        return read_token_file(WHAT, path, jwt);
    };
    let text = read_token_file(WHAT, path, false)?;
    let token = match serde_json::from_str::<serde_json::Value>(text.expose()) {
        Ok(serde_json::Value::Object(mut members)) => match members.remove(field) {
            Some(serde_json::Value::String(token)) => Assertion::new(token.trim()),
            _ => {
                return Err(file_problem(
                    WHAT,
                    path,
                    format!("has no string member `{field}` (credential_source.format)"),
                ));
            }
        },
        _ => return Err(file_problem(WHAT, path, "is not a JSON object".into())),
    };
    if token.expose().is_empty() {
        return Err(file_problem(WHAT, path, format!("has an empty `{field}`")));
    }
    if jwt {
        check_jwt(WHAT, path, token.expose())?;
    }
    Ok(token)
}

fn file_problem(what: &'static str, path: &std::path::Path, problem: String) -> TokenError {
    TokenError::Assertion {
        what,
        file: path.display().to_string(),
        problem,
    }
}

/// `token` must be a JWT whose `exp` (if any) has not passed.
fn check_jwt(what: &'static str, path: &std::path::Path, token: &str) -> Result<(), TokenError> {
    let expiry = jwt::assertion_expiry(token).map_err(|err| file_problem(what, path, err.to_string()))?;
    if let Some(exp) = expiry
        && exp <= SystemTime::now()
    {
        return Err(file_problem(
            what,
            path,
            format!(
                "holds an assertion that expired at {}: whatever writes the file has stopped renewing it",
                format_timestamp(exp)
            ),
        ));
    }
    Ok(())
}

/// The token in `path` as it is now, whitespace trimmed; `what` names the file in errors.
/// With `jwt`, it must be a JWT whose `exp` (if any) has not passed.
fn read_token_file(what: &'static str, path: &std::path::Path, jwt: bool) -> Result<Assertion, TokenError> {
    let problem = |problem: String| file_problem(what, path, problem);
    let size = std::fs::metadata(path)
        .map_err(|err| problem(format!("cannot be read: {err}")))?
        .len();
    if size > MAX_ASSERTION_BYTES {
        return Err(problem(format!("is larger than {MAX_ASSERTION_BYTES} bytes")));
    }
    // Read on the runtime's thread: a small file, on the tmpfs a projected volume lives on.
    let bytes = std::fs::read(path).map_err(|err| problem(format!("cannot be read: {err}")))?;
    let text = String::from_utf8(bytes).map_err(|_| problem(jwt::NotAJwt.to_string()))?;
    let text = Assertion::new(text);
    let trimmed = text.expose().trim();
    if trimmed.is_empty() {
        return Err(problem("is empty".into()));
    }
    if jwt {
        check_jwt(what, path, trimmed)?;
    }
    Ok(Assertion::new(trimmed))
}

/// Who `config`'s workload token files say the workload is, read as the next token request
/// would read them: for a JWT its issuer, subject and audience (a rotation keeps them), for
/// an opaque token the token itself; empty for a config without such files. Two processes
/// share a token only when this is the same for both, since pods reading one path may hold
/// different service accounts' tokens. It names a shared token through a keyed digest
/// only, never as it is.
pub(crate) fn workload_identity(config: &AuthConfig) -> Result<Vec<u8>, TokenError> {
    let mut identity = Vec::new();
    for file in token_files(config) {
        let token = read_token_file(file.what, file.path, file.jwt)?;
        match jwt::identity(token.expose()) {
            Some(claims) => identity.extend_from_slice(claims.as_bytes()),
            None => identity.extend_from_slice(token.expose().as_bytes()),
        }
        identity.push(0x1e);
    }
    Ok(identity)
}

/// A file a config sends a workload's token from at every token request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenFile<'a> {
    /// `assertion file` or `subject token file`, as errors name it.
    pub what: &'static str,
    pub path: &'a std::path::Path,
    /// Whether it must hold a JWT (assertions, JWT subject tokens).
    pub jwt: bool,
}

/// What a [`TokenFile`] holds now, as far as bearerd may say: never its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFileState {
    /// A JWT, with its `exp` when it has one (not passed: that is an error).
    Jwt { expires: Option<SystemTime> },
    /// A token sent as it is (a subject token whose type is not a JWT).
    Opaque,
}

/// The files `config` reads its assertion or subject token from.
#[must_use]
pub fn token_files(config: &AuthConfig) -> Vec<TokenFile<'_>> {
    let assertion = config.assertion_file.as_deref().map(|path| TokenFile {
        what: "assertion file",
        path,
        jwt: true,
    });
    let subject = config.token_exchange.as_ref().map(|exchange| TokenFile {
        what: "subject token file",
        path: &exchange.subject_token_file,
        jwt: exchange.subject_is_jwt(),
    });
    assertion.into_iter().chain(subject).collect()
}

/// Reads `file` as a token request would, to say whether one could use it now: the same
/// error a token request would meet, naming the file and never its content.
pub fn inspect_token_file(file: TokenFile<'_>) -> Result<TokenFileState, TokenError> {
    let token = read_token_file(file.what, file.path, file.jwt)?;
    if !file.jwt {
        return Ok(TokenFileState::Opaque);
    }
    let expires = jwt::assertion_expiry(token.expose()).map_err(|err| TokenError::Assertion {
        what: file.what,
        file: file.path.display().to_string(),
        problem: err.to_string(),
    })?;
    Ok(TokenFileState::Jwt { expires })
}

/// Shorter runs are not replaced: they would shred the message and guard nothing.
const MIN_REDACTED_CHARS: usize = 8;

/// `body` with each token this request sent (an assertion, a subject token), and each of a
/// JWT's three parts, replaced by `[redacted]`: a provider that quotes what it refused in
/// its `error_description` must not put a workload's credential into bearerd's errors and
/// logs. A JWT's characters need no JSON escaping, so they appear in the body as sent.
fn without_sent_tokens<'a>(body: &[u8], sent: impl Iterator<Item = &'a Assertion>) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for token in sent.map(Assertion::expose) {
        for run in std::iter::once(token).chain(token.split('.')) {
            if run.len() >= MIN_REDACTED_CHARS {
                text = text.replace(run, "[redacted]");
            }
        }
    }
    text.into_bytes()
}

/// The token request's parameters as a body of `kind`, and its content type. JSON holds the
/// same fields as the form, in the same order, as one object of strings.
fn encode_body(kind: RequestBody, params: &[(&str, &str)]) -> (&'static str, String) {
    match kind {
        RequestBody::Form => {
            let form = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish();
            ("application/x-www-form-urlencoded", form)
        }
        RequestBody::Json => {
            let mut json = String::from("{");
            for (i, (name, value)) in params.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                // A JSON string value displays as its quoted, escaped text.
                json.push_str(&serde_json::Value::from(*name).to_string());
                json.push(':');
                json.push_str(&serde_json::Value::from(*value).to_string());
            }
            json.push('}');
            ("application/json", json)
        }
    }
}

/// Why a request failed, for messages: a timeout, or the error chain without the URL.
fn transport_cause(err: reqwest::Error, config: &AuthConfig) -> String {
    if err.is_timeout() {
        format!("timed out after {:?}", config.timeout)
    } else {
        crate::chain(&err.without_url())
    }
}

/// RFC 6749 §2.3.1: client id and secret are each form-urlencoded, then joined and base64'd.
#[must_use]
pub fn basic_auth(client_id: &str, secret: &ClientSecret) -> String {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
    format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<serde_json::Value>,
    token_type: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
    refresh_token: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<serde_json::Value>,
    error_description: Option<serde_json::Value>,
}

/// Reads a token endpoint response (RFC 6749 §5.1 success, §5.2 error).
pub fn parse_response(
    status: u16,
    content_type: &str,
    body: &[u8],
    secret: Option<&ClientSecret>,
) -> Result<TokenResponse, TokenError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let error: Option<ErrorBody> = json.and_then(|json| serde_json::from_value(json).ok());
        return match error.and_then(|e| Some((e.error?.as_str()?.to_owned(), e.error_description))) {
            Some((error, description)) => Err(TokenError::Refused {
                status,
                error: quote(&error, secret),
                description: description
                    .as_ref()
                    .and_then(serde_json::Value::as_str)
                    .map(|d| quote(d, secret)),
            }),
            None => Err(TokenError::BadStatus {
                status,
                content_type: quote(content_type, secret),
            }),
        };
    }
    let Some(json) = json else {
        return Err(TokenError::NotJson {
            status,
            content_type: quote(content_type, secret),
        });
    };
    let body: SuccessBody =
        serde_json::from_value(json).map_err(|_| TokenError::Invalid("expected a JSON object".into()))?;
    let access_token = match body.access_token {
        Some(serde_json::Value::String(token)) if !token.is_empty() => AccessToken::new(token),
        Some(serde_json::Value::String(_)) => return Err(TokenError::Invalid("access_token is empty".into())),
        Some(_) => return Err(TokenError::Invalid("access_token is not a string".into())),
        None => return Err(TokenError::Invalid("no access_token".into())),
    };
    match &body.token_type {
        None => {}
        Some(serde_json::Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(serde_json::Value::String(kind)) => {
            return Err(TokenError::Invalid(format!(
                "token_type `{}` is not Bearer",
                quote(kind, secret)
            )));
        }
        Some(_) => return Err(TokenError::Invalid("token_type is not a string".into())),
    }
    let expires_in = match &body.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(seconds(n.as_f64())?),
        Some(serde_json::Value::String(s)) => Some(seconds(s.trim().parse::<f64>().ok())?),
        Some(_) => return Err(TokenError::Invalid("expires_in is not a number".into())),
    };
    let scope = body
        .scope
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .map(|s| quote(s, secret));
    // An empty one is read as none: nothing to keep, and no reason to refuse the access token.
    let refresh_token = match body.refresh_token {
        Some(serde_json::Value::String(token)) if !token.is_empty() => Some(RefreshToken::new(token)),
        None | Some(serde_json::Value::Null | serde_json::Value::String(_)) => None,
        Some(_) => return Err(TokenError::Invalid("refresh_token is not a string".into())),
    };
    Ok(TokenResponse {
        access_token,
        expires_in,
        scope,
        refresh_token,
    })
}

fn seconds(value: Option<f64>) -> Result<Duration, TokenError> {
    match value {
        Some(secs) if secs.is_finite() && (0.0..1e10).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(TokenError::Invalid(
            "expires_in is not a non-negative number of seconds".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workloads_identity_survives_its_files_rotation_and_differs_between_workloads() {
        use base64::Engine as _;
        let jwt = |claims: &str| {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.c2ln", b64.encode(r#"{"alg":"RS256"}"#), b64.encode(claims))
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let yaml = format!(
            "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_auth: federated_jwt\n    assertion_file: {}\n    allowed_hosts: [h.test]\n",
            file.display()
        );
        let config = crate::config::Config::from_yaml("t", &yaml, &crate::config::Env::new())
            .unwrap()
            .auth_config("a")
            .unwrap();
        let identity = |claims: &str| {
            std::fs::write(&file, jwt(claims)).unwrap();
            workload_identity(&config).unwrap()
        };
        let first = identity(r#"{"iss":"https://k8s","sub":"system:serviceaccount:a:b","aud":"x","exp":4102444800}"#);
        let rotated = identity(r#"{"iss":"https://k8s","sub":"system:serviceaccount:a:b","aud":"x","exp":4102448400}"#);
        let other = identity(r#"{"iss":"https://k8s","sub":"system:serviceaccount:a:c","aud":"x","exp":4102444800}"#);
        assert_eq!(first, rotated);
        assert_ne!(first, other);
        std::fs::remove_file(&file).unwrap();
        assert!(
            workload_identity(&config).is_err(),
            "an unreadable file names no workload"
        );
    }

    fn secret() -> ClientSecret {
        ClientSecret::new("p@ss:w0rd/+%=&?")
    }

    fn parse(status: u16, body: &str) -> Result<TokenResponse, TokenError> {
        parse_response(status, "application/json", body.as_bytes(), Some(&secret()))
    }

    #[test]
    fn a_refusal_quoting_the_sent_assertion_or_a_part_of_it_is_redacted_before_parsing() {
        let jwt = Assertion::new("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLW9mLXRoZS1jbHVzdGVy");
        let subject = Assertion::new("opaque-subject-token");
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"refused {} (payload eyJzdWIiOiJzeXN0ZW0ifQ, signature c2lnbmF0dXJlLW9mLXRoZS1jbHVzdGVy) and opaque-subject-token; short ab.cd kept"}}"#,
            jwt.expose()
        );
        let redacted = without_sent_tokens(body.as_bytes(), [&jwt, &subject].into_iter());
        let err = parse_response(400, "application/json", &redacted, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the identity provider refused the token request (HTTP 400): invalid_grant: refused [redacted] (payload [redacted], signature [redacted]) and [redacted]; short ab.cd kept"
        );
    }

    #[test]
    fn basic_auth_form_encodes_each_part_first() {
        // id "client:1" -> client%3A1, secret -> p%40ss%3Aw0rd%2F%2B%25%3D%26%3F
        let value = basic_auth("client:1", &secret());
        let decoded = BASE64.decode(value.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "client%3A1:p%40ss%3Aw0rd%2F%2B%25%3D%26%3F"
        );
        let spaced = basic_auth("a b", &ClientSecret::new("é"));
        let decoded = BASE64.decode(spaced.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "a+b:%C3%A9");
    }

    #[test]
    fn success_with_numeric_or_string_expiry() {
        let ok = parse(
            200,
            r#"{"access_token":"abc","token_type":"bearer","expires_in":3600,"scope":"a b"}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "abc");
        assert_eq!(ok.expires_in, Some(Duration::from_hours(1)));
        assert_eq!(ok.scope.as_deref(), Some("a b"));
        let ok = parse(200, r#"{"access_token":"abc","expires_in":"120"}"#).unwrap();
        assert_eq!(ok.expires_in, Some(Duration::from_mins(2)));
        let ok = parse(200, r#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(ok.expires_in, None);
        assert!(ok.refresh_token.is_none());
    }

    #[test]
    fn a_refresh_token_in_the_response_is_kept_and_checked() {
        let ok = parse(200, r#"{"access_token":"abc","refresh_token":"rt-2","expires_in":5}"#).unwrap();
        assert_eq!(ok.refresh_token.unwrap().expose(), "rt-2");
        for absent in [
            r#"{"access_token":"a","refresh_token":null}"#,
            r#"{"access_token":"a","refresh_token":""}"#,
        ] {
            assert!(parse(200, absent).unwrap().refresh_token.is_none(), "{absent}");
        }
        assert_eq!(
            parse(200, r#"{"access_token":"a","refresh_token":7}"#)
                .unwrap_err()
                .to_string(),
            "token response is invalid: refresh_token is not a string"
        );
    }

    #[test]
    fn malformed_successes_say_what_is_wrong() {
        let cases = [
            (
                r#"{"token_type":"Bearer"}"#,
                "token response is invalid: no access_token",
            ),
            (
                r#"{"access_token":42}"#,
                "token response is invalid: access_token is not a string",
            ),
            (
                r#"{"access_token":""}"#,
                "token response is invalid: access_token is empty",
            ),
            (
                r#"{"access_token":"a","token_type":"DPoP"}"#,
                "token response is invalid: token_type `DPoP` is not Bearer",
            ),
            (
                r#"{"access_token":"a","expires_in":"soon"}"#,
                "token response is invalid: expires_in is not a non-negative number of seconds",
            ),
            (
                r#"{"access_token":"a","expires_in":-5}"#,
                "token response is invalid: expires_in is not a non-negative number of seconds",
            ),
            (
                r#"{"access_token":"a","expires_in":[1]}"#,
                "token response is invalid: expires_in is not a number",
            ),
            ("[1,2]", "token response is invalid: expected a JSON object"),
        ];
        for (body, message) in cases {
            assert_eq!(parse(200, body).unwrap_err().to_string(), message, "{body}");
        }
        let html = parse_response(200, "text/html", b"<html>", Some(&secret())).unwrap_err();
        assert_eq!(
            html.to_string(),
            "token endpoint answered HTTP 200 with content type text/html, not JSON"
        );
    }

    #[test]
    fn oauth_errors_carry_the_providers_words_but_never_the_secret() {
        let err = parse(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret p@ss:w0rd/+%=&? for client"}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "the identity provider refused the token request (HTTP 401): invalid_client: bad secret [redacted] for client"
        );
        let err = parse(400, r#"{"error":"invalid_scope"}"#).unwrap_err().to_string();
        assert_eq!(
            err,
            "the identity provider refused the token request (HTTP 400): invalid_scope"
        );
        let err = parse_response(503, "text/html", b"<h1>down</h1>", Some(&secret()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "token endpoint answered HTTP 503 (text/html) without an OAuth error"
        );
        let err = parse_response(302, "text/html", b"", Some(&secret()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "token endpoint answered HTTP 302 (text/html) without an OAuth error; redirects are not followed"
        );
    }

    #[test]
    fn a_json_subject_token_file_gives_its_member_or_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        // No `exp`: a JWT that does not say when it expires is sent as it is.
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.c2lnbmF0dXJl";
        std::fs::write(&path, format!(r#"{{"id_token":" {jwt} ","other":"secret-other"}}"#)).unwrap();
        let token = read_subject_token(&path, Some("id_token"), true).unwrap();
        assert_eq!(token.expose(), jwt);
        let file = path.display();
        for (content, field, problem) in [
            (
                r#"{"other":"secret-other"}"#.to_owned(),
                "id_token",
                format!("subject token file {file} has no string member `id_token` (credential_source.format)"),
            ),
            (
                r#"{"id_token":7}"#.to_owned(),
                "id_token",
                format!("subject token file {file} has no string member `id_token` (credential_source.format)"),
            ),
            (
                "secret-plain-text".to_owned(),
                "id_token",
                format!("subject token file {file} is not a JSON object"),
            ),
            (
                r#"{"id_token":"  "}"#.to_owned(),
                "id_token",
                format!("subject token file {file} has an empty `id_token`"),
            ),
            (
                r#"{"id_token":"secret-not-a-jwt"}"#.to_owned(),
                "id_token",
                format!("subject token file {file} "),
            ),
        ] {
            std::fs::write(&path, &content).unwrap();
            let message = read_subject_token(&path, Some(field), true).unwrap_err().to_string();
            assert!(message.starts_with(&problem), "{message}");
            assert!(!message.contains("secret-"), "{message}");
        }
    }
}
