//! The authorization code grant's consent (RFC 6749 §4.1, with PKCE S256 always, RFC 7636),
//! on the admin listener:
//! - `GET /authorize/<id>` answers 302 to the provider's authorization endpoint, with a fresh
//!   `state` (256 random bits, single use, 10 minutes) bound to the browser by an `HttpOnly`
//!   cookie, and the `code_challenge` of a PKCE verifier kept here;
//! - `GET /callback` checks `state` and that cookie, the provider's `error` (§4.1.2.1) and
//!   `iss` (RFC 9207), exchanges the code, keeps the refresh token in `state.file`, and
//!   answers a page that says which config is now connected (never a token).
//!
//! Both answer loopback peers only, and only under a loopback `Host` (a web page whose name
//! is rebound to 127.0.0.1 sends its own name): whoever completes a consent decides whose
//! access the sidecar carries, so an operator reaches them through `kubectl port-forward`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::time::Instant;
use url::Url;

use crate::config::{AuthConfig, CacheKey, Config, Grant};
use crate::secret::AuthorizationCode;
use crate::state::sha256_hex;
use crate::token::{AuthorizationServer, Grants, Sent, TokenCache};

/// How long a started consent may take.
const LIFETIME: Duration = Duration::from_mins(10);
/// Consents started and not finished, at most; past it the oldest is forgotten, so a loop
/// on `/authorize` cannot grow memory.
const MAX_PENDING: usize = 64;
const COOKIE_PREFIX: &str = "bearerd_consent_";

type Page = Response<Full<Bytes>>;

/// The consents started and not yet finished, and what finishing one needs.
pub struct Consents {
    grants: Arc<Grants>,
    /// The admin listener, whose `/callback` is the default `redirect_uri`.
    admin: SocketAddr,
    /// By `state`.
    pending: Mutex<HashMap<String, Pending>>,
}

/// A consent sent to the provider, waiting for the browser to come back.
struct Pending {
    auth_config: String,
    /// The config's token-shaping fields when the consent started: a config changed since
    /// is not given a code asked for under the old one.
    cache_key: CacheKey,
    code_verifier: String,
    redirect_uri: String,
    /// The value of the cookie that binds the consent to the browser that started it.
    browser: String,
    expires: Instant,
    server: AuthorizationServer,
}

impl Consents {
    #[must_use]
    pub fn new(grants: Arc<Grants>, admin: SocketAddr) -> Self {
        Self {
            grants,
            admin,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The answer to `request` (from `peer`) when its path is `/authorize/<id>` or
    /// `/callback`; `None` for any other path.
    pub async fn answer<B>(
        &self,
        request: &Request<B>,
        peer: SocketAddr,
        config: &Config,
        tokens: &TokenCache,
    ) -> Option<Page> {
        let path = request.uri().path();
        let id = path.strip_prefix("/authorize/");
        if id.is_none() && path != "/callback" {
            return None;
        }
        if let Err(refusal) = loopback_only(request, peer) {
            tracing::warn!(%peer, path, "consent path refused: {refusal}");
            return Some(page(StatusCode::FORBIDDEN, "Not from here", &[refusal]));
        }
        if request.method() != Method::GET {
            return Some(page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                &["Use GET.".into()],
            ));
        }
        Some(match id {
            Some(id) => self.authorize(config, id).await,
            None => {
                self.callback(request.uri().query(), request.headers(), config, tokens)
                    .await
            }
        })
    }

    /// `GET /authorize/<id>`: the browser goes to the provider with a fresh `state`.
    async fn authorize(&self, config: &Config, id: &str) -> Page {
        let Some(auth_config) = config.auth_config(id).filter(|c| c.grant == Grant::AuthorizationCode) else {
            return page(
                StatusCode::NOT_FOUND,
                "No such consent",
                &[format!(
                    "There is no auth config `{id}` with grant: authorization_code. /configs lists the auth configs in force."
                )],
            );
        };
        let server = match self.grants.authorization_server(&auth_config).await {
            Ok(server) => server,
            Err(err) => {
                tracing::warn!(auth_config = id, "cannot start a consent: {err}");
                return page(
                    StatusCode::BAD_GATEWAY,
                    "The consent cannot start",
                    &[format!("Where the consent of `{id}` starts is not known: {err}")],
                );
            }
        };
        let (state, code_verifier, browser) = (random_text(), random_text(), random_text());
        let redirect_uri = self.redirect_uri(&auth_config);
        let location = authorization_request(&auth_config, &server, &redirect_uri, &state, &code_verifier);
        let cookie = format!(
            "{}={browser}; Path=/callback; Max-Age={}; HttpOnly; SameSite=Lax",
            cookie_name(&state),
            LIFETIME.as_secs()
        );
        self.remember(
            state,
            Pending {
                auth_config: auth_config.id.clone(),
                cache_key: auth_config.cache_key().clone(),
                code_verifier,
                redirect_uri,
                browser,
                expires: Instant::now() + LIFETIME,
                server,
            },
        );
        tracing::info!(
            auth_config = id,
            "consent started: the browser goes to the authorization endpoint"
        );
        let mut response = page(
            StatusCode::FOUND,
            "To the identity provider",
            &["Your browser continues at the identity provider.".into()],
        );
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(location.as_str()) {
            headers.insert(header::LOCATION, location);
        }
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            headers.insert(header::SET_COOKIE, cookie);
        }
        response
    }

    /// `GET /callback`: the provider's answer, checked, and the code exchanged.
    async fn callback(&self, query: Option<&str>, headers: &HeaderMap, config: &Config, tokens: &TokenCache) -> Page {
        let refused = |why: String| {
            tracing::warn!("consent callback refused: {why}");
            page(StatusCode::BAD_REQUEST, "The consent did not complete", &[why])
        };
        let params = match Params::parse(query.unwrap_or_default()) {
            Ok(params) => params,
            Err(why) => return refused(why),
        };
        let Some(state) = params.get("state") else {
            return refused("The response has no state: start the consent at /authorize/<id>.".into());
        };
        let pending = match self.take(state, headers) {
            Ok(pending) => pending,
            Err(why) => return refused(why),
        };
        let id = pending.auth_config.clone();
        let mut response = self
            .finish(&params, pending, config, tokens)
            .await
            .unwrap_or_else(|refused| refused);
        // The state is spent: its cookie goes too.
        let spent = format!(
            "{}=; Path=/callback; Max-Age=0; HttpOnly; SameSite=Lax",
            cookie_name(state)
        );
        if let Ok(spent) = HeaderValue::from_str(&spent) {
            response.headers_mut().insert(header::SET_COOKIE, spent);
        }
        tracing::debug!(auth_config = %id, status = response.status().as_u16(), "consent callback answered");
        response
    }

    /// The checks after the state's, then the exchange.
    async fn finish(
        &self,
        params: &Params,
        pending: Pending,
        config: &Config,
        tokens: &TokenCache,
    ) -> Result<Page, Page> {
        let id = pending.auth_config.as_str();
        let refused = |why: String| {
            tracing::warn!(auth_config = id, "consent callback refused: {why}");
            page(StatusCode::BAD_REQUEST, "The consent did not complete", &[why])
        };
        check_issuer(params.get("iss"), &pending.server).map_err(refused)?;
        if let Some(error) = params.get("error") {
            let error = shown(error);
            let description = params
                .get("error_description")
                .map(|d| format!(": {}", shown(d)))
                .unwrap_or_default();
            return Err(refused(format!(
                "The identity provider did not grant the consent of `{id}`: {error}{description}. Nothing was exchanged; start again at /authorize/{id}."
            )));
        }
        let Some(code) = params.get("code") else {
            return Err(refused("The response has neither a code nor an error.".into()));
        };
        let Some(auth_config) = config.auth_config(id).filter(|c| *c.cache_key() == pending.cache_key) else {
            return Err(refused(format!(
                "The auth config `{id}` changed (or went) since this consent started; start again at /authorize/{id}."
            )));
        };
        let sent = Sent::now();
        let code = AuthorizationCode::new(code);
        let consented = self
            .grants
            .exchange(&auth_config, &code, &pending.redirect_uri, &pending.code_verifier)
            .await
            .map_err(|err| {
                tracing::warn!(auth_config = id, "consent failed: {err}");
                page(
                    StatusCode::BAD_GATEWAY,
                    "The consent did not complete",
                    &[format!("The code exchange of `{id}` failed: {err}")],
                )
            })?;
        let kept = consented.refresh_token_kept;
        let scope = consented.response.scope.clone();
        if let Err(err) = tokens.install(&auth_config, consented.response, sent) {
            tracing::warn!(auth_config = id, "the consent's access token is not usable: {err}");
        }
        tracing::info!(auth_config = id, refresh_token = kept, "consent completed");
        Ok(connected(&auth_config, kept, scope.as_deref()))
    }

    /// The `redirect_uri` of `config`: as configured, or the admin listener's `/callback` on
    /// the loopback address an operator's port-forward reaches.
    fn redirect_uri(&self, config: &AuthConfig) -> String {
        if let Some(uri) = config.authorize.as_ref().and_then(|a| a.redirect_uri.as_ref()) {
            return uri.to_string();
        }
        let port = self.admin.port();
        match self.admin.ip() {
            IpAddr::V6(ip) if ip.is_loopback() => format!("http://[::1]:{port}/callback"),
            _ => format!("http://127.0.0.1:{port}/callback"),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        // Each change is one insert or remove.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, state: String, consent: Pending) {
        let mut pending = self.pending();
        let now = Instant::now();
        pending.retain(|_, p| p.expires > now);
        while pending.len() >= MAX_PENDING {
            let oldest = pending
                .iter()
                .min_by_key(|(_, p)| p.expires)
                .map(|(state, _)| state.clone());
            oldest.map(|state| pending.remove(&state));
        }
        pending.insert(state, consent);
    }

    /// The consent `state` names, taken (a state is good once) when it has not expired and
    /// the browser carries its cookie.
    fn take(&self, state: &str, headers: &HeaderMap) -> Result<Pending, String> {
        let mut pending = self.pending();
        let Some(consent) = pending.get(state) else {
            return Err(
                "This state is unknown or already used (a consent is good once, and a restart forgets those under way): start again at /authorize/<id>."
                    .into(),
            );
        };
        let id = consent.auth_config.clone();
        if consent.expires <= Instant::now() {
            pending.remove(state);
            return Err(format!(
                "This consent started more than {} minutes ago and expired: start again at /authorize/{id}.",
                LIFETIME.as_secs() / 60
            ));
        }
        let carried = cookie(headers, &cookie_name(state));
        let same = carried.is_some_and(|value| {
            aws_lc_rs::constant_time::verify_slices_are_equal(value.as_bytes(), consent.browser.as_bytes()).is_ok()
        });
        if !same {
            return Err(format!(
                "This browser did not start this consent (its cookie is missing or another's): start again at /authorize/{id} in the browser that finishes it."
            ));
        }
        pending
            .remove(state)
            .ok_or_else(|| "This state was just used.".to_owned())
    }
}

/// The provider's authorization endpoint with the request's parameters added (RFC 6749
/// §4.1.1, RFC 7636 §4.3), then `authorize_params`.
fn authorization_request(
    config: &AuthConfig,
    server: &AuthorizationServer,
    redirect_uri: &str,
    state: &str,
    code_verifier: &str,
) -> Url {
    let challenge = B64URL.encode(digest(&SHA256, code_verifier.as_bytes()));
    let mut url = server.authorization_endpoint.clone();
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &config.client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !config.scopes.is_empty() {
            query.append_pair("scope", &config.scopes.join(" "));
        }
        query
            .append_pair("state", state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        for (name, value) in config.authorize.iter().flat_map(|a| &a.params) {
            query.append_pair(name, value);
        }
    }
    url
}

/// RFC 9207 §2.4: an `iss` must name the issuer the consent was sent to, and a provider that
/// says it always sends one must have.
fn check_issuer(iss: Option<&str>, server: &AuthorizationServer) -> Result<(), String> {
    match (iss, &server.issuer) {
        (Some(iss), Some(issuer)) if iss != issuer => Err(format!(
            "The response names issuer `{}`, not `{issuer}` where this consent was sent (a mix-up, RFC 9207); nothing was exchanged.",
            shown(iss)
        )),
        (None, Some(issuer)) if server.iss_required => Err(format!(
            "The response has no iss, which {issuer} always sends (RFC 9207); nothing was exchanged."
        )),
        _ => Ok(()),
    }
}

/// 256 random bits, base64url: a `state`, a PKCE verifier (43 characters, RFC 7636 §4.1), a
/// cookie value.
fn random_text() -> String {
    let mut bytes = [0_u8; 32];
    // The system's random source failing leaves nothing safe to do.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source");
    B64URL.encode(bytes)
}

/// The cookie of one consent, named after its state, so consents started in several tabs,
/// or at several bearerds behind port-forwards (cookies ignore ports), do not overwrite
/// each other's.
fn cookie_name(state: &str) -> String {
    format!("{COOKIE_PREFIX}{}", &sha256_hex(state.as_bytes())[..16])
}

/// The value of cookie `name`, from any `Cookie` header (HTTP/2 sends one per cookie).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Refuses any peer but loopback, and any `Host` but a loopback one.
fn loopback_only<B>(request: &Request<B>, peer: SocketAddr) -> Result<(), String> {
    if !peer.ip().to_canonical().is_loopback() {
        return Err(format!(
            "{} answers only on loopback (reach it with kubectl port-forward to the admin port); this request came from {}.",
            request.uri().path(),
            peer.ip()
        ));
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default();
    if loopback_host(host) {
        Ok(())
    } else {
        Err("Open it as localhost, 127.0.0.1 or [::1]: another host name is refused.".into())
    }
}

/// `localhost` or a loopback address, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.parse::<http::uri::Authority>() {
        Ok(authority) => authority.host().to_owned(),
        Err(_) => return false,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A callback's query: each parameter at most once (RFC 6749 §3.1).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Result<Self, String> {
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if params.iter().any(|(seen, _)| *seen == name) {
                return Err(format!("The response has `{}` more than once.", shown(&name)));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The page of a completed consent: which config is connected, and what that means.
fn connected(config: &AuthConfig, refresh_token_kept: bool, scope: Option<&str>) -> Page {
    let id = &config.id;
    let named = config
        .description
        .as_deref()
        .map_or_else(|| format!("`{id}`"), |d| format!("`{id}` ({d})"));
    let mut paragraphs = vec![format!(
        "The auth config {named} is connected: its requests now carry the access of the account that consented."
    )];
    if let Some(scope) = scope {
        paragraphs.push(format!("Scopes granted: {scope}."));
    }
    paragraphs.push(if refresh_token_kept {
        "bearerd keeps the refresh token, sealed, in its state file and renews access tokens by itself, across restarts too. You can close this tab.".to_owned()
    } else {
        format!(
            "The identity provider returned no refresh token: requests work until this access token expires, and then need a new consent at /authorize/{id}. Providers give one for the offline_access scope, or (Google) access_type=offline with prompt=consent in authorize_params."
        )
    });
    page(StatusCode::OK, &format!("Connected: {id}"), &paragraphs)
}

/// A small HTML page, everything in it escaped, that no browser caches, frames, or sends
/// its address (which may hold a code) on to anyone.
fn page(status: StatusCode, title: &str, paragraphs: &[String]) -> Page {
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>bearerd: {0}</title></head>\n<body><h1>{0}</h1>\n",
        escape(title)
    );
    for paragraph in paragraphs {
        html.push_str("<p>");
        html.push_str(&escape(paragraph));
        html.push_str("</p>\n");
    }
    html.push_str("</body></html>\n");
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Text from the query (the provider's words, or anyone's) as repeated on a page or in a
/// log line: printable and bounded.
fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// Text made safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::Path;
    use std::pin::Pin;

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::config::{Env, StateConfig};
    use crate::metrics::Metrics;
    use crate::secret::{AccessToken, RefreshToken, SealingKey};
    use crate::state::{StateStore, record_key};
    use crate::token::{GrantRequest, RequestToken, TokenError, TokenResponse};

    const ISSUER: &str = "https://idp.test";

    /// One code exchange the scripted endpoint received.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Exchange {
        code: String,
        redirect_uri: String,
        code_verifier: String,
    }

    /// A provider whose token endpoint records code exchanges and answers `at<n>` /
    /// `rt<n>`, or refuses every refresh (`invalid_grant`), and whose consent starts at
    /// `https://idp.test/authorize?tenant=t`.
    #[derive(Default)]
    struct Provider {
        exchanges: Mutex<Vec<Exchange>>,
        refreshes: Mutex<usize>,
        iss_required: bool,
    }

    impl RequestToken for Provider {
        fn request<'a>(
            &'a self,
            _config: &'a AuthConfig,
            grant: GrantRequest<'a>,
        ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
            Box::pin(async move {
                let n = match grant {
                    GrantRequest::AuthorizationCode {
                        code,
                        redirect_uri,
                        code_verifier,
                    } => {
                        let mut exchanges = self.exchanges.lock().unwrap();
                        exchanges.push(Exchange {
                            code: code.expose().to_owned(),
                            redirect_uri: redirect_uri.to_owned(),
                            code_verifier: code_verifier.to_owned(),
                        });
                        exchanges.len()
                    }
                    GrantRequest::RefreshToken(_) => {
                        *self.refreshes.lock().unwrap() += 1;
                        return Err(TokenError::Refused {
                            status: 400,
                            error: "invalid_grant".into(),
                            description: None,
                        });
                    }
                    GrantRequest::ClientCredentials | GrantRequest::JwtBearer | GrantRequest::TokenExchange => {
                        unreachable!()
                    }
                };
                Ok(TokenResponse {
                    access_token: AccessToken::new(format!("at{n}")),
                    expires_in: Some(Duration::from_secs(3600)),
                    scope: Some("api.read".into()),
                    refresh_token: Some(RefreshToken::new(format!("rt{n}"))),
                })
            })
        }

        fn authorization_server<'a>(
            &'a self,
            _config: &'a AuthConfig,
        ) -> Pin<Box<dyn Future<Output = Result<AuthorizationServer, TokenError>> + Send + 'a>> {
            Box::pin(async move {
                Ok(AuthorizationServer {
                    authorization_endpoint: Url::parse("https://idp.test/authorize?tenant=t").unwrap(),
                    issuer: Some(ISSUER.into()),
                    iss_required: self.iss_required,
                })
            })
        }
    }

    struct World {
        _dir: tempfile::TempDir,
        dir: std::path::PathBuf,
        provider: Arc<Provider>,
        config: Config,
        tokens: TokenCache,
        consents: Consents,
        metrics: Arc<Metrics>,
    }

    const ADMIN: &str = "127.0.0.1:9090";

    fn world(iss_required: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        std::fs::write(path.join("key"), [3; 32]).unwrap();
        let yaml = format!(
            "state: {{ file: {0}/state.json, key_file: {0}/key }}\nauth_configs:\n  - id: mail\n    description: Mail <API>\n    grant: authorization_code\n    issuer: {ISSUER}\n    client_id: mail-client\n    client_auth: none\n    scopes: [openid, offline_access, mail.read]\n    authorize_params: {{ prompt: consent, login_hint: \"a b&c\" }}\n    allowed_hosts: [h.test]\n  - id: app\n    token_url: https://idp.test/token\n    client_id: app\n    client_secret: s\n    allowed_hosts: [h.test]\n",
            path.display()
        );
        let config = Config::from_yaml("t", &yaml, &Env::new()).unwrap();
        let state = StateStore::open(&StateConfig {
            file: path.join("state.json"),
            key_file: path.join("key"),
            key: SealingKey::parse(&[3; 32]).unwrap(),
        })
        .unwrap();
        let provider = Arc::new(Provider {
            iss_required,
            ..Provider::default()
        });
        let metrics = Arc::new(Metrics::new());
        let endpoint: Arc<dyn RequestToken> = Arc::clone(&provider) as _;
        let grants = Arc::new(Grants::new(endpoint, Some(Arc::new(state)), Arc::clone(&metrics)));
        grants.publish(&config.auth_configs);
        World {
            _dir: dir,
            dir: path,
            provider,
            config,
            tokens: TokenCache::new(Arc::clone(&grants), Arc::clone(&metrics)),
            consents: Consents::new(grants, ADMIN.parse().unwrap()),
            metrics,
        }
    }

    /// What a page said: status, headers, body.
    struct Seen {
        status: u16,
        headers: HeaderMap,
        body: String,
    }

    impl World {
        async fn get_from(&self, peer: &str, host: &str, target: &str, cookie: Option<&str>) -> Seen {
            let mut request = Request::get(target).header(header::HOST, host);
            if let Some(cookie) = cookie {
                request = request.header(header::COOKIE, cookie);
            }
            let request = request.body(()).unwrap();
            let response = self
                .consents
                .answer(&request, peer.parse().unwrap(), &self.config, &self.tokens)
                .await
                .expect("a consent path");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Seen {
                status,
                headers,
                body: String::from_utf8(body.to_vec()).unwrap(),
            }
        }

        async fn get(&self, target: &str, cookie: Option<&str>) -> Seen {
            self.get_from("127.0.0.1:50000", "127.0.0.1:9090", target, cookie).await
        }

        /// Starts the consent of `mail`: the state, and the cookie the browser got.
        async fn start(&self) -> (String, String, Url) {
            let seen = self.get("/authorize/mail", None).await;
            assert_eq!(seen.status, 302, "{}", seen.body);
            let location = Url::parse(seen.headers[header::LOCATION].to_str().unwrap()).unwrap();
            let state = location
                .query_pairs()
                .find(|(k, _)| k == "state")
                .unwrap()
                .1
                .into_owned();
            let set_cookie = seen.headers[header::SET_COOKIE].to_str().unwrap();
            let cookie = set_cookie.split(';').next().unwrap().to_owned();
            (state, cookie, location)
        }

        fn exchanges(&self) -> Vec<Exchange> {
            self.provider.exchanges.lock().unwrap().clone()
        }

        fn consent_gauge(&self) -> i64 {
            self.metrics.consent_required.with_label_values(&["mail"]).get()
        }
    }

    fn on_disk(dir: &Path, config: &AuthConfig) -> Option<String> {
        let records = StateStore::read(&dir.join("state.json"), &SealingKey::parse(&[3; 32]).unwrap())
            .unwrap()
            .unwrap();
        records
            .get(&record_key(config))
            .and_then(|r| r.refresh_token.as_ref().map(|t| t.expose().to_owned()))
    }

    #[tokio::test(start_paused = true)]
    async fn authorize_redirects_with_pkce_a_fresh_state_and_a_cookie() {
        let world = world(false);
        let (state, cookie, location) = world.start().await;
        let query: Vec<(String, String)> = location.query_pairs().into_owned().collect();
        let names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "tenant",
                "response_type",
                "client_id",
                "redirect_uri",
                "scope",
                "state",
                "code_challenge",
                "code_challenge_method",
                "login_hint",
                "prompt"
            ]
        );
        let value = |name: &str| query.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert_eq!(
            location.as_str().split('?').next().unwrap(),
            "https://idp.test/authorize"
        );
        assert_eq!(value("response_type"), "code");
        assert_eq!(value("client_id"), "mail-client");
        assert_eq!(value("redirect_uri"), "http://127.0.0.1:9090/callback");
        assert_eq!(value("scope"), "openid offline_access mail.read");
        assert_eq!(value("code_challenge_method"), "S256");
        assert_eq!(value("login_hint"), "a b&c");
        assert_eq!(value("prompt"), "consent");
        // 256 random bits each, and never the same twice.
        assert_eq!(B64URL.decode(&state).unwrap().len(), 32);
        let challenge = value("code_challenge");
        assert_eq!(B64URL.decode(&challenge).unwrap().len(), 32);
        let (again, other_cookie, other) = world.start().await;
        assert_ne!(state, again);
        assert_ne!(cookie, other_cookie);
        assert_ne!(
            other.query_pairs().find(|(k, _)| k == "code_challenge").unwrap().1,
            challenge
        );
        // The cookie: named after its state, HttpOnly, for /callback, 10 minutes.
        let seen = world.get("/authorize/mail", None).await;
        let set_cookie = seen.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(set_cookie.starts_with(COOKIE_PREFIX), "{set_cookie}");
        assert!(
            set_cookie.ends_with("; Path=/callback; Max-Age=600; HttpOnly; SameSite=Lax"),
            "{set_cookie}"
        );
        assert_eq!(seen.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(seen.headers[header::REFERRER_POLICY], "no-referrer");
        assert!(world.exchanges().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_callback_exchanges_the_code_once_and_connects_the_config() {
        let world = world(true);
        let mail = world.config.auth_config("mail").unwrap();
        assert_eq!(world.consent_gauge(), 1, "no consent yet");
        let failure = world.tokens.get(&mail).await.unwrap_err().to_string();
        assert_eq!(
            failure,
            "auth config `mail` needs a new consent: open /authorize/mail on the admin listener"
        );
        let (state, cookie, location) = world.start().await;
        let target = format!(
            "/callback?code=the-code&state={state}&iss={}",
            ISSUER.replace(':', "%3A")
        );
        let seen = world.get(&target, Some(&format!("other=1; {cookie}"))).await;
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert!(seen.body.contains("<h1>Connected: mail</h1>"), "{}", seen.body);
        assert!(
            seen.body
                .contains("The auth config `mail` (Mail &lt;API&gt;) is connected"),
            "{}",
            seen.body
        );
        assert!(seen.body.contains("Scopes granted: api.read."), "{}", seen.body);
        for secret in ["the-code", "at1", "rt1"] {
            assert!(!seen.body.contains(secret), "{secret} on the page");
        }
        assert!(seen.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
        // The exchange: the code, the same redirect_uri, and the verifier of the challenge.
        let exchanges = world.exchanges();
        assert_eq!(exchanges.len(), 1);
        assert_eq!(exchanges[0].code, "the-code");
        assert_eq!(exchanges[0].redirect_uri, "http://127.0.0.1:9090/callback");
        let challenge = location.query_pairs().find(|(k, _)| k == "code_challenge").unwrap().1;
        assert_eq!(
            B64URL.encode(digest(&SHA256, exchanges[0].code_verifier.as_bytes())),
            challenge
        );
        assert_eq!(exchanges[0].code_verifier.len(), 43);
        // Kept, connected, and the access token in use without another token request.
        assert_eq!(on_disk(&world.dir, &mail).as_deref(), Some("rt1"));
        assert_eq!(world.consent_gauge(), 0);
        let (token, _) = world.tokens.get(&mail).await.unwrap();
        assert_eq!(token.token.expose(), "at1");
        assert!(!world.tokens.state(&mail).consent_required);

        // The same state again: refused, nothing exchanged.
        let replay = world.get(&target, Some(&cookie)).await;
        assert_eq!(replay.status, 400);
        assert!(
            replay.body.contains("This state is unknown or already used"),
            "{}",
            replay.body
        );
        assert_eq!(world.exchanges().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_consent_clears_consent_required() {
        let world = world(false);
        let mail = world.config.auth_config("mail").unwrap();
        let (state, cookie, _) = world.start().await;
        assert_eq!(
            world
                .get(&format!("/callback?code=c1&state={state}"), Some(&cookie))
                .await
                .status,
            200
        );
        // The token expires; its refresh is refused: consent required.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let failure = world.tokens.get(&mail).await.unwrap_err().to_string();
        assert!(failure.contains("needs a new consent"), "{failure}");
        assert_eq!(world.consent_gauge(), 1);
        assert_eq!(on_disk(&world.dir, &mail), None);
        assert_eq!(*world.provider.refreshes.lock().unwrap(), 1);
        // A consent: connected again, the back-off of the refusal forgotten.
        let (state, cookie, _) = world.start().await;
        assert_eq!(
            world
                .get(&format!("/callback?code=c2&state={state}"), Some(&cookie))
                .await
                .status,
            200
        );
        assert_eq!(world.consent_gauge(), 0);
        assert_eq!(world.tokens.get(&mail).await.unwrap().0.token.expose(), "at2");
        assert_eq!(on_disk(&world.dir, &mail).as_deref(), Some("rt2"));
        assert_eq!(world.tokens.state(&mail).failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_foreign_and_cookieless_states_exchange_nothing() {
        let world = world(false);
        let (state, cookie, _) = world.start().await;
        let target = format!("/callback?code=c&state={state}");
        // Without the cookie, or with another browser's: refused, and the consent stays
        // for the browser that started it.
        for sent in [None, Some(format!("{}=forged", cookie.split('=').next().unwrap()))] {
            let seen = world.get(&target, sent.as_deref()).await;
            assert_eq!(seen.status, 400);
            assert!(
                seen.body.contains("This browser did not start this consent"),
                "{}",
                seen.body
            );
        }
        // A state nobody issued.
        let seen = world.get("/callback?code=c&state=made-up", Some(&cookie)).await;
        assert_eq!(seen.status, 400);
        assert!(seen.body.contains("unknown or already used"));
        // Ten minutes later: expired.
        tokio::time::advance(LIFETIME).await;
        let seen = world.get(&target, Some(&cookie)).await;
        assert_eq!(seen.status, 400);
        assert!(
            seen.body
                .contains("This consent started more than 10 minutes ago and expired: start again at /authorize/mail."),
            "{}",
            seen.body
        );
        // One second short of it is still good.
        let (state, cookie, _) = world.start().await;
        tokio::time::advance(Duration::from_secs(599)).await;
        let seen = world
            .get(&format!("/callback?code=late&state={state}"), Some(&cookie))
            .await;
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(world.exchanges().len(), 1);
        assert_eq!(world.exchanges()[0].code, "late");
    }

    #[tokio::test(start_paused = true)]
    async fn provider_errors_and_issuer_mix_ups_are_shown_escaped_and_exchange_nothing() {
        let world = world(true);
        let cases = [
            (
                "error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&iss=https%3A%2F%2Fidp.test",
                "The identity provider did not grant the consent of `mail`: access_denied: &lt;script&gt;alert(1)&lt;/script&gt;. Nothing was exchanged",
            ),
            (
                "code=c&iss=https%3A%2F%2Fevil.test",
                "The response names issuer `https://evil.test`, not `https://idp.test` where this consent was sent (a mix-up, RFC 9207)",
            ),
            (
                "code=c",
                "The response has no iss, which https://idp.test always sends (RFC 9207)",
            ),
            (
                "iss=https%3A%2F%2Fidp.test",
                "The response has neither a code nor an error.",
            ),
        ];
        for (query, expected) in cases {
            let (state, cookie, _) = world.start().await;
            let seen = world
                .get(&format!("/callback?{query}&state={state}"), Some(&cookie))
                .await;
            assert_eq!(seen.status, 400, "{query}");
            assert!(seen.body.contains(expected), "{query}: {}", seen.body);
            assert!(!seen.body.contains("<script>"));
            // Spent all the same.
            let again = world
                .get(&format!("/callback?{query}&state={state}"), Some(&cookie))
                .await;
            assert!(again.body.contains("unknown or already used"), "{}", again.body);
        }
        let (state, cookie, _) = world.start().await;
        let seen = world
            .get(&format!("/callback?code=a&code=b&state={state}"), Some(&cookie))
            .await;
        assert_eq!(seen.status, 400);
        assert!(seen.body.contains("The response has `code` more than once."));
        let seen = world.get("/callback?code=c", None).await;
        assert_eq!(seen.status, 400);
        assert!(seen.body.contains("The response has no state"));
        assert!(world.exchanges().is_empty());
        assert_eq!(world.consent_gauge(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn only_loopback_peers_and_hosts_and_only_authorization_code_configs() {
        let world = world(false);
        let (state, cookie, _) = world.start().await;
        let callback = format!("/callback?code=c&state={state}");
        for (peer, host) in [
            ("192.0.2.7:41000", "127.0.0.1:9090"),
            ("10.1.2.3:41000", "localhost:9090"),
            ("[2001:db8::1]:41000", "[::1]:9090"),
            ("127.0.0.1:41000", "evil.example:9090"),
            ("127.0.0.1:41000", "10.0.0.1:9090"),
        ] {
            for target in ["/authorize/mail", callback.as_str()] {
                let seen = world.get_from(peer, host, target, Some(&cookie)).await;
                assert_eq!(seen.status, 403, "{peer} {host} {target}");
                assert!(seen.headers.get(header::LOCATION).is_none());
                assert!(seen.headers.get(header::SET_COOKIE).is_none());
            }
        }
        let seen = world
            .get_from("192.0.2.7:41000", "127.0.0.1:9090", "/authorize/mail", None)
            .await;
        assert!(seen.body.contains("answers only on loopback"), "{}", seen.body);
        assert!(world.exchanges().is_empty());
        // IPv6 and IPv4-mapped loopback, localhost: the consent completes.
        for (peer, host) in [
            ("[::ffff:127.0.0.1]:41000", "localhost:9090"),
            ("[::1]:41000", "[::1]:9090"),
        ] {
            let seen = world.get_from(peer, host, "/authorize/mail", None).await;
            assert_eq!(seen.status, 302, "{peer}");
        }
        assert_eq!(
            world
                .get_from("[::1]:1", "LOCALHOST", &callback, Some(&cookie))
                .await
                .status,
            200
        );

        for (target, shown) in [
            (
                "/authorize/app",
                "There is no auth config `app` with grant: authorization_code.",
            ),
            ("/authorize/nope", "There is no auth config `nope`"),
            ("/authorize/%3Cb%3E", "There is no auth config `%3Cb%3E`"),
        ] {
            let seen = world.get(target, None).await;
            assert_eq!(seen.status, 404, "{target}");
            assert!(seen.body.contains(shown), "{}", seen.body);
            assert_eq!(seen.headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        }
        let request = Request::post("/authorize/mail")
            .header(header::HOST, "127.0.0.1")
            .body(())
            .unwrap();
        let response = world
            .consents
            .answer(&request, "127.0.0.1:1".parse().unwrap(), &world.config, &world.tokens)
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
        let other = Request::get("/metrics").body(()).unwrap();
        assert!(
            world
                .consents
                .answer(&other, "127.0.0.1:1".parse().unwrap(), &world.config, &world.tokens)
                .await
                .is_none()
        );
    }

    #[test]
    fn escaping_and_hosts() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        for host in [
            "localhost",
            "localhost:9090",
            "127.0.0.1",
            "127.8.9.1:1",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com:9090",
            "10.0.0.1",
            "[::2]:9090",
            "127.0.0.1.nip.io",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
