//! Interop with an independently written OAuth 2.0 / `OpenID` Connect server:
//! panva/node-oidc-provider (OpenID-certified), installed from npm by `.ci/run`
//! (`npm ci --prefix tests/interop`). bearerd fetches real tokens from it, and the test asks
//! the provider itself (RFC 7662 introspection) whether the token bearerd injected is one it
//! issued to that client. The user grants are consented through the provider's own
//! authorization endpoint, redirects followed with a cookie jar as a browser would.
#[path = "support/binary.rs"]
mod binary;
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A secret that breaks naive Basic authentication: `:` `/` `+` `%` `=` `&` `?` and `@`.
const HARD_SECRET: &str = "p@ss:w0rd/+%=&?";
const POST_SECRET: &str = "post-secret-with space+plus";
/// The key of `client_secret_jwt`'s HS256: at least 32 bytes of printable ASCII (the provider
/// takes no other, RFC 6749 Appendix A.2), some that a form would escape.
const HMAC_SECRET: &str = "hmac-secret: 32+ bytes, with %, & and +";

/// The provider, on a free loopback port; stopped when dropped.
struct Provider {
    issuer: String,
    /// `https://localhost:PORT`, the RFC 8705 endpoints, when started with TLS.
    mtls: Option<String>,
    _child: tokio::process::Child,
}

/// The subject of the only certificate the `bearerd-mtls` client may present.
const MTLS_SUBJECT: &str = "bearerd-mtls";

impl Provider {
    async fn start() -> Self {
        Self::start_with_keys(None).await
    }

    /// With `key_dir`, the provider writes its generated client keys there (see server.mjs).
    async fn start_with_keys(key_dir: Option<&Path>) -> Self {
        Self::launch(key_dir, None).await
    }

    /// With 5-second access tokens, and the user-grant clients: `bearerd-user`
    /// (`client_secret_basic`), `bearerd-user-hmac` (`client_secret_jwt`) and
    /// `bearerd-public` (`none`), all native clients (any loopback port in `redirect_uri`,
    /// RFC 8252 §7.3) consented automatically.
    async fn start_for_users() -> Self {
        Self::launch_with(None, None, &[("INTEROP_ACCESS_TOKEN_TTL", "5")]).await
    }

    /// Also serving HTTPS with `ca`'s server certificate, with `tls_client_auth` enabled and
    /// a client `bearerd-mtls` registered for certificates with subject `CN=bearerd-mtls`.
    async fn start_with_mtls(ca: &TestCa) -> Self {
        Self::launch(None, Some(ca)).await
    }

    async fn launch(key_dir: Option<&Path>, tls: Option<&TestCa>) -> Self {
        Self::launch_with(key_dir, tls, &[]).await
    }

    async fn launch_with(key_dir: Option<&Path>, tls: Option<&TestCa>, env: &[(&str, &str)]) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the interop server is not installed: run `npm ci --prefix tests/interop` (the README's test command does)"
        );
        let mut clients = clients();
        let mut command = tokio::process::Command::new("node");
        command.envs(env.iter().copied());
        if let Some(key_dir) = key_dir {
            command.env("INTEROP_KEY_DIR", key_dir);
        }
        if let Some(ca) = tls {
            command
                .env("INTEROP_TLS_CERT", &ca.server_cert_pem)
                .env("INTEROP_TLS_KEY", &ca.server_key_pem)
                .env("INTEROP_TLS_CA", &ca.ca_pem);
            clients.as_array_mut().unwrap().push(serde_json::json!({
                "client_id": "bearerd-mtls",
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": format!("CN={MTLS_SUBJECT}"),
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "scope": "api.read",
            }));
        }
        let mut child = command
            .arg(dir.join("server.mjs"))
            .env("PORT", "0")
            .env("INTEROP_CLIENTS", clients.to_string())
            .stdin(Stdio::piped()) // the server exits when this closes
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for the interop tests");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(START, lines.next_line())
            .await
            .expect("the provider did not start")
            .unwrap()
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        Self {
            issuer: json["issuer"].as_str().unwrap().to_owned(),
            mtls: json["mtls"].as_str().map(str::to_owned),
            _child: child,
        }
    }

    /// RFC 7662 introspection, authenticated as the client that owns the token.
    async fn introspect(&self, token: &str, client_id: &str, secret: &str, basic: bool) -> serde_json::Value {
        let client = direct_client();
        let mut request = client.post(format!("{}/token/introspection", self.issuer));
        let mut form = vec![("token", token.to_owned())];
        if basic {
            // Encoded independently of bearerd's code: percent-encode everything.
            let id = utf8_percent_encode(client_id, NON_ALPHANUMERIC).to_string();
            let secret = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
            request = request.basic_auth(id, Some(secret));
        } else {
            form.push(("client_id", client_id.to_owned()));
            form.push(("client_secret", secret.to_owned()));
        }
        request.form(&form).send().await.unwrap().json().await.unwrap()
    }
}

/// Every client the provider knows, but the `tls_client_auth` one it gets with TLS.
fn clients() -> serde_json::Value {
    serde_json::json!([
        {
            "client_id": "bearerd-basic",
            "client_secret": HARD_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "api.read api.write",
        },
        {
            "client_id": "bearerd-post",
            "client_secret": POST_SECRET,
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "api.read",
        },
        {
            "client_id": "bearerd-hmac",
            "client_secret": HMAC_SECRET,
            "token_endpoint_auth_method": "client_secret_jwt",
            "token_endpoint_auth_signing_alg": "HS256",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "api.read",
        },
        {
            "client_id": "bearerd-jwt-rsa",
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_from": "rsa",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "api.read",
        },
        {
            "client_id": "bearerd-user",
            "client_secret": HARD_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "application_type": "native",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": ["http://127.0.0.1/callback"],
            "scope": "openid offline_access api.read",
        },
        {
            "client_id": "bearerd-user-hmac",
            "client_secret": HMAC_SECRET,
            "token_endpoint_auth_method": "client_secret_jwt",
            "token_endpoint_auth_signing_alg": "HS256",
            "application_type": "native",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": ["http://127.0.0.1/callback"],
            "scope": "openid offline_access api.read",
        },
        {
            "client_id": "bearerd-public",
            "token_endpoint_auth_method": "none",
            "application_type": "native",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": ["http://127.0.0.1/callback"],
            "scope": "openid offline_access api.read",
        },
        {
            "client_id": "bearerd-jwt-ec",
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_from": "ec",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "api.read",
        },
    ])
}

fn config(provider: &Provider, client_id: &str, secret: &str, auth: &str) -> String {
    format!(
        "auth_configs:\n  - id: interop\n    token_url: {}/token\n    client_id: {client_id}\n    client_secret: '{secret}'\n    client_auth: {auth}\n    scopes: [api.read]\n    allowed_hosts: [127.0.0.1]\n",
        provider.issuer
    )
}

async fn token_through_bearerd(yaml: &str, echo: &Echo) -> reqwest::Response {
    let bearerd = start_bearerd(yaml).await;
    proxied_client(bearerd.proxy_addr)
        .get(format!("http://{}/interop", echo.addr))
        .header("x-auth-config", "interop")
        .send()
        .await
        .unwrap()
}

async fn injected_token(yaml: &str, echo: &Echo) -> String {
    let seen = echoed(token_through_bearerd(yaml, echo).await).await;
    let authorization = seen.header("authorization").expect("no token injected").to_owned();
    authorization
        .strip_prefix("Bearer ")
        .expect("not a Bearer header")
        .to_owned()
}

#[tokio::test]
async fn client_secret_basic_with_a_secret_that_needs_encoding() {
    let provider = Provider::start().await;
    let echo = Echo::start().await;
    let token = injected_token(
        &config(&provider, "bearerd-basic", HARD_SECRET, "client_secret_basic"),
        &echo,
    )
    .await;
    let info = provider.introspect(&token, "bearerd-basic", HARD_SECRET, true).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "bearerd-basic", "{info}");
    assert_eq!(info["scope"], "api.read", "{info}");
    assert_eq!(info["token_type"], "Bearer", "{info}");
}

#[tokio::test]
async fn client_secret_post() {
    let provider = Provider::start().await;
    let echo = Echo::start().await;
    let token = injected_token(
        &config(&provider, "bearerd-post", POST_SECRET, "client_secret_post"),
        &echo,
    )
    .await;
    let info = provider.introspect(&token, "bearerd-post", POST_SECRET, false).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "bearerd-post", "{info}");
    assert_eq!(info["scope"], "api.read", "{info}");
}

#[tokio::test]
async fn a_wrong_secret_is_the_providers_invalid_client_and_sends_nothing_upstream() {
    let provider = Provider::start().await;
    let echo = Echo::start().await;
    let response = token_through_bearerd(
        &config(&provider, "bearerd-basic", "wrong-secret", "client_secret_basic"),
        &echo,
    )
    .await;
    let error = bearerd_error(response).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    assert!(
        error
            .message
            .starts_with("no access token: the identity provider refused the token request (HTTP 401): invalid_client"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("wrong-secret"));
    assert_eq!(echo.requests(), 0);
}

#[tokio::test]
async fn a_scope_the_provider_knows_but_the_client_may_not_have_is_refused_by_name() {
    let provider = Provider::start().await;
    let echo = Echo::start().await;
    let yaml = config(&provider, "bearerd-post", POST_SECRET, "client_secret_post")
        .replace("[api.read]", "[api.read, api.write]");
    let error = bearerd_error(token_through_bearerd(&yaml, &echo).await).await;
    assert_eq!(error.code, "token_unavailable");
    assert!(error.message.contains("invalid_scope"), "{}", error.message);
}

#[tokio::test]
async fn client_secret_jwt_gets_a_token_the_provider_issued_to_that_client() {
    let provider = Provider::start().await;
    let echo = Echo::start().await;
    let token = injected_token(
        &config(&provider, "bearerd-hmac", HMAC_SECRET, "client_secret_jwt"),
        &echo,
    )
    .await;
    // The provider's introspection endpoint takes the client's own method: an HS256
    // assertion with the issuer as its audience.
    let assertion = bearerd::assertion::secret_assertion(
        &bearerd::secret::ClientSecret::new(HMAC_SECRET),
        "bearerd-hmac",
        &provider.issuer,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let info: serde_json::Value = direct_client()
        .post(format!("{}/token/introspection", provider.issuer))
        .form(&[
            ("token", token.as_str()),
            ("client_id", "bearerd-hmac"),
            ("client_assertion_type", bearerd::assertion::ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "bearerd-hmac", "{info}");
    assert_eq!(info["scope"], "api.read", "{info}");
}

#[tokio::test]
async fn client_secret_jwt_keyed_with_a_wrong_secret_is_invalid_client() {
    let provider = Provider::start().await;
    let echo = Echo::start().await;
    let wrong = "a-wrong-secret-that-is-32-bytes-long";
    let response = token_through_bearerd(&config(&provider, "bearerd-hmac", wrong, "client_secret_jwt"), &echo).await;
    let error = bearerd_error(response).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    assert!(
        error.message.contains("(HTTP 401): invalid_client"),
        "{}",
        error.message
    );
    assert!(!error.message.contains(wrong));
    assert_eq!(echo.requests(), 0);
}

/// A `private_key_jwt` config for `client_id`, signing with `key` as `alg`.
fn jwt_config(provider: &Provider, client_id: &str, key: &Path, alg: &str, kid: Option<&str>) -> String {
    format!(
        "auth_configs:\n  - id: interop\n    token_url: {}/token\n    client_id: {client_id}\n    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: {alg}\n{}    scopes: [api.read]\n    allowed_hosts: [127.0.0.1]\n",
        provider.issuer,
        key.display(),
        kid.map(|kid| format!("    key_id: {kid}\n")).unwrap_or_default()
    )
}

#[tokio::test]
async fn private_key_jwt_with_rs256_ps256_and_es256_keys_the_provider_generated() {
    let keys = tempfile::tempdir().unwrap();
    let provider = Provider::start_with_keys(Some(keys.path())).await;
    let echo = Echo::start().await;
    let cases = [
        ("bearerd-jwt-rsa", "rsa-pkcs1.pem", "RS256", Some("rsa-1")),
        ("bearerd-jwt-rsa", "rsa-pkcs8.pem", "PS256", None),
        ("bearerd-jwt-ec", "ec-sec1.pem", "ES256", Some("ec-1")),
    ];
    for (client_id, key, alg, kid) in cases {
        let yaml = jwt_config(&provider, client_id, &keys.path().join(key), alg, kid);
        let token = injected_token(&yaml, &echo).await;
        assert!(token.len() >= 20, "{alg}: {token}");
    }
    assert_eq!(echo.requests(), 3);
}

#[tokio::test]
async fn private_key_jwt_signed_with_another_key_is_invalid_client() {
    let keys = tempfile::tempdir().unwrap();
    let provider = Provider::start_with_keys(Some(keys.path())).await;
    let echo = Echo::start().await;
    // The EC client's registered key is the EC one; sign with the RSA key instead.
    let yaml = jwt_config(
        &provider,
        "bearerd-jwt-ec",
        &keys.path().join("rsa-pkcs8.pem"),
        "RS256",
        None,
    );
    let error = bearerd_error(token_through_bearerd(&yaml, &echo).await).await;
    assert_eq!(error.code, "token_unavailable");
    assert!(
        error.message.contains("(HTTP 401): invalid_client"),
        "{}",
        error.message
    );
    assert_eq!(echo.requests(), 0);
}

/// A `tls_client_auth` config that finds the provider's endpoints by discovery, presenting
/// a certificate for `subject` signed by `ca`.
fn mtls_config(provider: &Provider, ca: &TestCa, dir: &Path, subject: &str) -> String {
    let (cert, key, _) = ca.client_identity(subject);
    std::fs::write(dir.join("client.crt"), cert).unwrap();
    std::fs::write(dir.join("client.key"), key).unwrap();
    format!(
        "tls:\n  ca_file: {}\nauth_configs:\n  - id: interop\n    issuer: {}\n    client_id: bearerd-mtls\n    client_auth: tls_client_auth\n    client_cert_file: {}\n    client_key_file: {}\n    scopes: [api.read]\n    allowed_hosts: [127.0.0.1]\n",
        ca.write_ca(dir).display(),
        provider.issuer,
        dir.join("client.crt").display(),
        dir.join("client.key").display(),
    )
}

#[tokio::test]
async fn tls_client_auth_at_the_mtls_alias_the_discovery_document_names() {
    let ca = TestCa::new();
    let provider = Provider::start_with_mtls(&ca).await;
    let mtls = provider.mtls.clone().unwrap();
    let document: serde_json::Value = direct_client()
        .get(format!("{}/.well-known/openid-configuration", provider.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        document["mtls_endpoint_aliases"]["token_endpoint"],
        format!("{mtls}/token")
    );
    assert_eq!(document["token_endpoint"], format!("{}/token", provider.issuer));

    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let token = injected_token(&mtls_config(&provider, &ca, dir.path(), MTLS_SUBJECT), &echo).await;

    // Ask the provider, over its mTLS endpoint with the same certificate, whose token it is.
    // Another certificate for the same subject, from the same CA: the provider checks both.
    let (_, key, cert_der) = ca.client_identity(MTLS_SUBJECT);
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let roots = bearerd::tls::roots(Some(&dir.path().join("ca.pem"))).unwrap();
    let tls =
        bearerd::tls::client_config_with_certificate(std::sync::Arc::new(roots), vec![cert_der.into()], key).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let info: serde_json::Value = client
        .post(format!("{mtls}/token/introspection"))
        .form(&[("token", token.as_str()), ("client_id", "bearerd-mtls")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "bearerd-mtls", "{info}");
    assert_eq!(info["scope"], "api.read", "{info}");
}

#[tokio::test]
async fn tls_client_auth_with_a_certificate_for_another_subject_is_invalid_client() {
    let ca = TestCa::new();
    let provider = Provider::start_with_mtls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let yaml = mtls_config(&provider, &ca, dir.path(), "someone-else");
    let error = bearerd_error(token_through_bearerd(&yaml, &echo).await).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    assert!(
        error.message.contains("(HTTP 401): invalid_client"),
        "{}",
        error.message
    );
    assert_eq!(echo.requests(), 0);
}

// ---------------------------------------------------------------------------------------
// User grants: authorization_code with PKCE, refresh tokens rotated at every use

const STATE_KEY: &str = "8f6a1c0e9b7d3f2a5c4e6b8d0a2c4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d";

/// An `authorization_code` config `interop` for `client_id` (with `secret`, or a public
/// client), its discovery from the provider's issuer and its state in `dir`.
fn user_config(provider: &Provider, dir: &Path, client_id: &str, secret: Option<&str>) -> String {
    std::fs::write(dir.join("state-key"), format!("{STATE_KEY}\n")).unwrap();
    let keeper = format!(
        "state:\n  file: {0}/state.json\n  key_file: {0}/state-key\n",
        dir.display()
    );
    user_config_keeping(provider, &keeper, client_id, secret)
}

/// As [`user_config`], the refresh token kept where `keeper` (a `state:` or `shared_cache:`
/// block) says.
fn user_config_keeping(provider: &Provider, keeper: &str, client_id: &str, secret: Option<&str>) -> String {
    let auth = match secret {
        Some(secret) => format!("    client_secret: '{secret}'\n"),
        None => "    client_auth: none\n".to_owned(),
    };
    format!(
        "{keeper}auth_configs:\n  - id: interop\n    grant: authorization_code\n    issuer: {0}\n    client_id: {client_id}\n{auth}    scopes: [openid, offline_access, api.read]\n    authorize_params: {{ prompt: consent }}\n    allowed_hosts: [127.0.0.1]\n",
        provider.issuer
    )
}

/// The refresh token `dir`'s state file holds, read with the key.
fn state_refresh_token(dir: &Path) -> Option<String> {
    let key = bearerd::secret::SealingKey::parse(STATE_KEY.as_bytes()).unwrap();
    let records = bearerd::state::StateStore::read(&dir.join("state.json"), &key)
        .unwrap()
        .unwrap_or_default();
    records
        .values()
        .find_map(|record| record.refresh_token.as_ref().map(|t| t.expose().to_owned()))
}

/// A browser's consent: `GET /authorize/<id>` on `admin`, every redirect followed with
/// the cookies set so far, until bearerd's `/callback` answers. Its page.
async fn consent(admin: &str, id: &str) -> String {
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    let mut jar: HashMap<String, String> = HashMap::new();
    let mut url = url::Url::parse(&format!("http://{admin}/authorize/{id}")).unwrap();
    for _ in 0..10 {
        // Every cookie to every host and path: each side reads only its own names.
        let cookies: Vec<String> = jar.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let mut request = browser.get(url.clone());
        if !cookies.is_empty() {
            request = request.header("cookie", cookies.join("; "));
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
        if response.status().is_redirection() {
            url = url.join(response.headers()["location"].to_str().unwrap()).unwrap();
            continue;
        }
        let status = response.status().as_u16();
        let page = response.text().await.unwrap();
        assert_eq!((status, url.path()), (200, "/callback"), "{url}: {page}");
        return page;
    }
    panic!("the consent did not come back within 10 redirects");
}

impl Provider {
    /// What the provider's token endpoint did with `client_id`'s refresh tokens.
    async fn refreshes(&self, client_id: &str) -> (u64, u64, u64) {
        let json: serde_json::Value = direct_client()
            .get(format!("{}/test/refreshes?client_id={client_id}", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = |name: &str| json[name].as_u64().unwrap();
        (count("refreshed"), count("rotated"), count("refused"))
    }

    /// Whether the provider takes `token` (introspected as the confidential user client,
    /// which may introspect any client's tokens) as a live one of `client_id`'s, for the
    /// account that consented.
    async fn accepts(&self, token: &str, client_id: &str) -> bool {
        let info = self.introspect(token, "bearerd-user", HARD_SECRET, true).await;
        info["active"] == true && info["client_id"] == client_id && info["sub"] == "operator"
    }
}

/// One request through the bearerd binary at `proxy`: the token the upstream received, or
/// bearerd's error.
async fn token_via(proxy: &str, echo: &Echo) -> Result<String, BearerdError> {
    let response = proxied_client(proxy.parse().unwrap())
        .get(format!("http://{}/user", echo.addr))
        .header("x-auth-config", "interop")
        .send()
        .await
        .unwrap();
    if response.headers().contains_key("x-bearerd-error") {
        return Err(bearerd_error(response).await);
    }
    let seen = echoed(response).await;
    let header = seen.header("authorization").expect("no token injected");
    Ok(header.strip_prefix("Bearer ").unwrap().to_owned())
}

fn metric(exposition: &str, series: &str) -> Option<u64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One request every 100 ms for 30 s through `bearerd`, each checked with the provider;
/// every refresh must have rotated the refresh token. The access tokens used and the
/// refresh tokens kept, in order, and the number of refreshes.
async fn thirty_seconds_of_requests(
    provider: &Provider,
    bearerd: &binary::Bearerd,
    echo: &Echo,
    dir: &Path,
    consented: &str,
) -> (Vec<String>, Vec<String>, u64) {
    // 30 s of requests, one every 100 ms: each carries a token the provider takes as live.
    let mut access: Vec<String> = Vec::new();
    let mut refresh = vec![consented.to_owned()];
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let token = token_via(&bearerd.proxy, echo)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            provider.accepts(&token, "bearerd-user").await,
            "a token the provider does not take"
        );
        if access.last() != Some(&token) {
            access.push(token);
        }
        let kept = state_refresh_token(dir).unwrap();
        if refresh.last() != Some(&kept) {
            refresh.push(kept);
        }
    }
    // 5-second tokens for 30 s: at least six of them, each after the first from a refresh.
    assert!(access.len() >= 6, "{} access tokens", access.len());
    // bearerd counts a refresh once it has kept its refresh token; the provider, before.
    let success = r#"bearerd_token_requests_total{auth_config="interop",outcome="success"}"#;
    let deadline = tokio::time::Instant::now() + WAIT;
    let refreshed = loop {
        let (refreshed, rotated, refused) = provider.refreshes("bearerd-user").await;
        assert_eq!(
            (rotated, refused),
            (refreshed, 0),
            "every refresh rotated the refresh token"
        );
        let counted = metric(&bearerd.admin_get("/metrics").await.1, success);
        if counted == Some(refreshed) {
            break refreshed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bearerd counted {counted:?} refreshes, the provider {refreshed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        refreshed + 1 >= access.len() as u64,
        "{refreshed} refreshes for {} tokens",
        access.len()
    );
    // Each refresh token bearerd kept was a new one; the consent's is spent.
    let distinct: std::collections::HashSet<&String> = refresh.iter().collect();
    assert_eq!(distinct.len(), refresh.len());
    assert!(refresh.len() >= 6, "{} refresh tokens kept", refresh.len());
    let spent = provider.introspect(consented, "bearerd-user", HARD_SECRET, true).await;
    assert_eq!(spent["active"], false, "{spent}");

    (access, refresh, refreshed)
}

/// A second process on the state file of the `running` one reads its refresh token at
/// start; the running one rotates it before the second uses its copy: `invalid_grant`,
/// consent required, one token request however many requests. The second's logs, and the
/// refresh token it read.
async fn a_stale_copy_is_refused(
    provider: &Provider,
    running: &binary::Bearerd,
    yaml: &str,
    echo: &Echo,
    dir: &Path,
) -> (String, String) {
    // A second process on the same state file reads its refresh token now; the first one
    // rotates it before the second uses its copy: invalid_grant, consent required.
    let second = binary::Bearerd::start(yaml, "info", &[]);
    let loaded = state_refresh_token(dir).unwrap();
    eventually("the running bearerd to rotate the refresh token", || async {
        let _ = token_via(&running.proxy, echo).await.unwrap();
        state_refresh_token(dir).as_ref() != Some(&loaded)
    })
    .await;
    let (refreshed_now, _, _) = provider.refreshes("bearerd-user").await;
    let refusal = token_via(&second.proxy, echo).await.unwrap_err();
    assert_eq!((refusal.status, refusal.code.as_str()), (502, "token_unavailable"));
    assert!(
        refusal.message.starts_with(
            "no access token: auth config `interop` needs a new consent: open /authorize/interop on the admin listener (the identity provider refused its refresh token: invalid_grant"
        ),
        "{}",
        refusal.message
    );
    for _ in 0..20 {
        let later = token_via(&second.proxy, echo).await.unwrap_err();
        assert_eq!(
            later.message,
            "no access token: auth config `interop` needs a new consent: open /authorize/interop on the admin listener"
        );
    }
    assert_eq!(
        provider.refreshes("bearerd-user").await,
        (refreshed_now, refreshed_now, 1)
    );
    let exposition = second.admin_get("/metrics").await.1;
    assert_eq!(
        metric(&exposition, r#"bearerd_consent_required{auth_config="interop"}"#),
        Some(1)
    );
    let errors = r#"bearerd_token_requests_total{auth_config="interop",outcome="error"}"#;
    assert_eq!(
        metric(&exposition, errors),
        Some(1),
        "one token request, however many requests"
    );
    let configs: serde_json::Value = serde_json::from_str(&second.admin_get("/configs").await.1).unwrap();
    assert_eq!(configs["auth_configs"][0]["token"]["consent_required"], true);
    let logs = second
        .logs_when("the warning", |logs| logs.contains("needs a new consent"))
        .await;
    let warning = logs.lines().find(|line| line.contains("needs a new consent")).unwrap();
    assert!(warning.contains(r#""level":"WARN""#), "{warning}");

    (logs, loaded)
}

#[tokio::test]
async fn authorization_code_with_rotating_refresh_tokens_across_a_restart_and_a_second_process() {
    let provider = Provider::start_for_users().await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = user_config(&provider, dir.path(), "bearerd-user", Some(HARD_SECRET));
    let mut first = binary::Bearerd::start(&yaml, "info", &[]);
    let before = token_via(&first.proxy, &echo).await.unwrap_err();
    assert_eq!((before.status, before.code.as_str()), (502, "token_unavailable"));
    assert!(
        before
            .message
            .ends_with("open /authorize/interop on the admin listener"),
        "{}",
        before.message
    );

    let page = consent(&first.admin, "interop").await;
    assert!(page.contains("<h1>Connected: interop</h1>"), "{page}");
    assert!(page.contains("bearerd keeps the refresh token"), "{page}");
    let consented = state_refresh_token(dir.path()).expect("the consent's refresh token is kept");

    let (mut access, refresh, refreshed) =
        thirty_seconds_of_requests(&provider, &first, &echo, dir.path(), &consented).await;

    // A restart: the newest refresh token from the state file, no consent.
    first.signal("TERM");
    assert!(first.exit_status().await.success());
    let logs_before = first.logs();
    drop(first);
    let restarted = binary::Bearerd::start(&yaml, "info", &[]);
    for _ in 0..5 {
        let token = token_via(&restarted.proxy, &echo)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(provider.accepts(&token, "bearerd-user").await);
        access.push(token);
    }
    let (after_restart, _, refused) = provider.refreshes("bearerd-user").await;
    assert!(after_restart > refreshed, "the restart refreshed");
    assert_eq!(refused, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&restarted.admin_get("/configs").await.1).unwrap()["auth_configs"][0]
            ["token"]["consent_required"],
        false
    );

    let (logs, loaded) = a_stale_copy_is_refused(&provider, &restarted, &yaml, &echo, dir.path()).await;

    // No token or secret in any log.
    let all_logs = format!("{logs_before}{}{logs}", restarted.logs());
    for secret in access
        .iter()
        .chain(&refresh)
        .map(String::as_str)
        .chain([HARD_SECRET, loaded.as_str()])
    {
        assert!(!all_logs.contains(secret), "a secret in the logs");
    }
}

/// Two replicas of one `authorization_code` config keep its refresh token in Redis
/// (`shared_cache:`): one consent, given through either, serves both, and however the two
/// share the requests, every refresh token is spent exactly once. The provider revokes a
/// reused refresh token and counts it as refused, so two replicas rotating the same one
/// would fail this test.
#[tokio::test]
async fn two_replicas_share_one_consent_through_redis_and_spend_each_refresh_token_once() {
    let provider = Provider::start_for_users().await;
    let echo = Echo::start().await;
    let redis = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache_key = [0x5a_u8; 32];
    std::fs::write(dir.path().join("cache-key"), cache_key).unwrap();
    let keeper = format!(
        "shared_cache:\n  redis: {}\n  key_file: {}/cache-key\n  prefix: fleet\n",
        redis.url(),
        dir.path().display()
    );
    let yaml = user_config_keeping(&provider, &keeper, "bearerd-user", Some(HARD_SECRET));
    let replicas = [
        binary::Bearerd::start(&yaml, "info", &[]),
        binary::Bearerd::start(&yaml, "info", &[]),
    ];
    for replica in &replicas {
        let before = token_via(&replica.proxy, &echo).await.unwrap_err();
        assert_eq!((before.status, before.code.as_str()), (502, "token_unavailable"));
        assert!(
            before
                .message
                .ends_with("needs a new consent: open /authorize/interop on the admin listener"),
            "{}",
            before.message
        );
    }

    // The consent goes through the first replica; the second has none of its own.
    let page = consent(&replicas[0].admin, "interop").await;
    assert!(page.contains("<h1>Connected: interop</h1>"), "{page}");
    eventually("the second replica to serve with the fleet's consent", || async {
        token_via(&replicas[1].proxy, &echo).await.is_ok()
    })
    .await;

    // 30 s of 5-second tokens, a request through each replica every 100 ms, side by side.
    let mut access: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let (first, second) = tokio::join!(
            token_via(&replicas[0].proxy, &echo),
            token_via(&replicas[1].proxy, &echo)
        );
        for token in [first, second] {
            let token = token.unwrap_or_else(|e| panic!("{e:?}"));
            if !access.contains(&token) {
                assert!(
                    provider.accepts(&token, "bearerd-user").await,
                    "a token the provider does not take"
                );
                access.push(token);
            }
        }
    }
    assert!(access.len() >= 6, "{} access tokens", access.len());

    // Every refresh rotated its refresh token and none was refused (reused), and the two
    // replicas' own counts of refreshes add up to the provider's.
    let success = r#"bearerd_token_requests_total{auth_config="interop",outcome="success"}"#;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (refreshed, counted) = loop {
        let (refreshed, rotated, refused) = provider.refreshes("bearerd-user").await;
        assert_eq!((rotated, refused), (refreshed, 0), "every refresh rotated once");
        let mut counted = Vec::new();
        for replica in &replicas {
            counted.push(metric(&replica.admin_get("/metrics").await.1, success).unwrap_or(0));
        }
        if counted.iter().sum::<u64>() == refreshed {
            break (refreshed, counted);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replicas counted {counted:?} refreshes, the provider {refreshed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // One refresh per token for the pair (refresh-ahead: at most one more, in flight at
    // the end), not one per replica.
    assert!(
        refreshed + 1 >= access.len() as u64 && refreshed <= access.len() as u64,
        "{refreshed} refreshes for {} tokens ({counted:?} per replica)",
        access.len()
    );
    eprintln!(
        "{refreshed} refreshes for the pair ({counted:?} per replica), {} access tokens",
        access.len()
    );

    // Redis holds the grant's record sealed: it opens with the key into the newest refresh
    // token, which the provider takes, and no value holds it or an access token readable.
    let refresh_token = redis.grant_refresh_token("fleet", &cache_key);
    let live = provider
        .introspect(&refresh_token, "bearerd-user", HARD_SECRET, true)
        .await;
    assert_eq!(live["active"], true, "{live}");
    redis.assert_holds_none_of("fleet:", &[&access[..], std::slice::from_ref(&refresh_token)].concat());
    let logs: String = replicas.iter().map(binary::Bearerd::logs).collect();
    for secret in access
        .iter()
        .map(String::as_str)
        .chain([refresh_token.as_str(), HARD_SECRET])
    {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}

#[tokio::test]
async fn a_public_client_consents_with_pkce_alone_and_rotates_on_refresh() {
    let provider = Provider::start_for_users().await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bearerd = start_bearerd(&user_config(&provider, dir.path(), "bearerd-public", None)).await;
    let page = consent(&bearerd.admin_addr.to_string(), "interop").await;
    assert!(page.contains("<h1>Connected: interop</h1>"), "{page}");
    let proxy = bearerd.proxy_addr.to_string();
    let first = token_via(&proxy, &echo).await.unwrap();
    assert!(provider.accepts(&first, "bearerd-public").await);
    // The upstream refuses it: bearerd drops it and refreshes, as a public client.
    let response = proxied_client(bearerd.proxy_addr)
        .get(format!("http://{}/only/not-{first}", echo.addr))
        .header("x-auth-config", "interop")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let second = token_via(&proxy, &echo).await.unwrap();
    assert_ne!(first, second);
    assert!(provider.accepts(&second, "bearerd-public").await);
    assert_eq!(provider.refreshes("bearerd-public").await, (1, 1, 0));
}

#[tokio::test]
async fn client_secret_jwt_exchanges_the_code_and_refreshes_with_an_hs256_assertion() {
    let provider = Provider::start_for_users().await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = user_config(&provider, dir.path(), "bearerd-user-hmac", Some(HMAC_SECRET)).replace(
        "    client_secret:",
        "    client_auth: client_secret_jwt\n    client_secret:",
    );
    let bearerd = start_bearerd(&yaml).await;
    // The code exchange authenticates with the assertion: the provider takes no other way.
    let page = consent(&bearerd.admin_addr.to_string(), "interop").await;
    assert!(page.contains("<h1>Connected: interop</h1>"), "{page}");
    assert!(page.contains("bearerd keeps the refresh token"), "{page}");
    let proxy = bearerd.proxy_addr.to_string();
    let first = token_via(&proxy, &echo).await.unwrap();
    assert!(provider.accepts(&first, "bearerd-user-hmac").await);
    // The upstream refuses it: bearerd refreshes, with a fresh assertion, and the provider
    // rotates the refresh token.
    let response = proxied_client(bearerd.proxy_addr)
        .get(format!("http://{}/only/not-{first}", echo.addr))
        .header("x-auth-config", "interop")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let second = token_via(&proxy, &echo).await.unwrap();
    assert_ne!(first, second);
    assert!(provider.accepts(&second, "bearerd-user-hmac").await);
    assert_eq!(provider.refreshes("bearerd-user-hmac").await, (1, 1, 0));
}

/// A TLS resource server for `localhost` that takes a request only when its Bearer token is
/// one the provider says is live for `client_id` (RFC 7662 introspection with that client's
/// credentials): `200 accepted <client_id> <scope>`, else `401`. It knows nothing of bearerd.
struct ResourceServer {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ResourceServer {
    async fn start(ca: &TestCa, issuer: &str, client_id: &'static str, secret: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let introspection = format!("{issuer}/token/introspection");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, introspection) = (acceptor.clone(), introspection.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let introspection = introspection.clone();
                        async move {
                            let token = request
                                .headers()
                                .get("authorization")
                                .and_then(|value| value.to_str().ok())
                                .and_then(|value| value.strip_prefix("Bearer "))
                                .map(str::to_owned);
                            let verdict = match token {
                                Some(token) => direct_client()
                                    .post(&introspection)
                                    // RFC 6749 §2.3.1: form-encoded before Basic.
                                    .basic_auth(
                                        utf8_percent_encode(client_id, NON_ALPHANUMERIC),
                                        Some(utf8_percent_encode(secret, NON_ALPHANUMERIC)),
                                    )
                                    .form(&[("token", token)])
                                    .send()
                                    .await
                                    .unwrap()
                                    .json::<serde_json::Value>()
                                    .await
                                    .unwrap(),
                                None => serde_json::Value::Null,
                            };
                            let (status, body) = if verdict["active"] == true && verdict["client_id"] == client_id {
                                (
                                    200,
                                    format!("accepted {client_id} {}", verdict["scope"].as_str().unwrap_or("")),
                                )
                            } else {
                                (401, "invalid_token".to_owned())
                            };
                            let response = http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    // Both versions: its certificate's config offers h2 and http/1.1 by ALPN.
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// curl (`--fail` off) for `url` with `env`, no other proxy or CA variables: (status, body).
async fn curl(url: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (u16, String) {
    let args = [&["-sS", "--max-time", "10", "-w", "\n%{http_code}"], args, &[url]].concat();
    let stdout = curl_output(&args, env).await;
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_intercepted_https_call_carries_a_token_the_providers_resource_server_accepts() {
    let provider = Provider::start().await;
    let ca = TestCa::new();
    let api = ResourceServer::start(&ca, &provider.issuer, "bearerd-basic", HARD_SECRET).await;
    let url = format!("https://localhost:{}/invoices", api.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca-bundle.pem");
    let yaml = format!(
        "tls:\n  ca_file: {}\nintercept:\n  ca_bundle_out: {}\n{}routes:\n  - match: {{ host: localhost }}\n    auth_config: interop\n    intercept: true\n",
        ca.write_ca(dir.path()).display(),
        bundle.display(),
        config(&provider, "bearerd-basic", HARD_SECRET, "client_secret_basic").replace("[127.0.0.1]", "[localhost]"),
    );
    let bearerd = binary::Bearerd::start(&yaml, "info", &[]);

    // The resource server validates: called directly, with no token or a made-up one, it refuses.
    let upstream_ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca, &ca.ca_pem).unwrap();
    let direct = ["--cacert", upstream_ca.to_str().unwrap()];
    assert_eq!(curl(&url, &direct, &[]).await, (401, "invalid_token".to_owned()));
    let forged = [
        "--cacert",
        upstream_ca.to_str().unwrap(),
        "-H",
        "Authorization: Bearer forged",
    ];
    assert_eq!(curl(&url, &forged, &[]).await, (401, "invalid_token".to_owned()));

    // curl, unmodified, keeps its https:// URL: HTTPS_PROXY and CURL_CA_BUNDLE = the bundle
    // bearerd wrote. The provider's token reaches the resource server through the tunnel.
    let proxy = format!("http://{}", bearerd.proxy);
    let env = [
        ("HTTPS_PROXY", std::ffi::OsStr::new(&proxy)),
        ("https_proxy", std::ffi::OsStr::new(&proxy)),
        ("CURL_CA_BUNDLE", bundle.as_os_str()),
    ];
    for _ in 0..2 {
        assert_eq!(
            curl(&url, &[], &env).await,
            (200, "accepted bearerd-basic api.read".to_owned())
        );
    }
}
