//! Interop with an independently written OAuth 2.0 / `OpenID` Connect server:
//! panva/node-oidc-provider (OpenID-certified), installed from npm by `.ci/run`
//! (`npm ci --prefix tests/interop`). bearerd fetches real tokens from it, and the test asks
//! the provider itself (RFC 7662 introspection) whether the token bearerd injected is one it
//! issued to that client.
mod support;

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

    /// Also serving HTTPS with `ca`'s server certificate, with `tls_client_auth` enabled and
    /// a client `bearerd-mtls` registered for certificates with subject `CN=bearerd-mtls`.
    async fn start_with_mtls(ca: &TestCa) -> Self {
        Self::launch(None, Some(ca)).await
    }

    async fn launch(key_dir: Option<&Path>, tls: Option<&TestCa>) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the interop server is not installed: run `npm ci --prefix tests/interop` (the README's test command does)"
        );
        let clients = serde_json::json!([
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
                "client_id": "bearerd-jwt-ec",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks_from": "ec",
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "scope": "api.read",
            },
        ]);
        let mut clients = clients;
        let mut command = tokio::process::Command::new("node");
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
