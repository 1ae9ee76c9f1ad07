//! The token request on the wire, byte for byte, as the recording token endpoint received
//! it: the form body and its JSON twin (`request_body: json`) for every client
//! authentication, `client_secret_jwt`'s HS256 assertion, and a public client (`none`), for
//! client credentials and for the user grants' refreshes and code exchanges alike.
mod support;

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use support::*;

const SECRET: &str = "p@ss:w0rd/+%=&?";
/// Long enough to key HS256 (32 bytes), with characters JSON and forms must escape.
const HMAC_SECRET: &str = "hmac \"secret\" \\ of 32+ bytes: é&=";
/// An extra parameter whose value JSON and forms must each escape their own way.
const TAG: &str = "a \"b\" \\ é&=+";

/// Auth config `id` at `tokens`, with scopes, extra params and `body` (a `request_body`
/// line or nothing), authenticating with `auth` (its YAML lines).
fn auth_config(id: &str, tokens: &TokenServer, body: &str, auth: &str) -> String {
    format!(
        "  - id: {id}\n    token_url: {}\n    client_id: billing-client\n{auth}    scopes: [a.read, b.write]\n    extra_params: {{ audience: \"https://api.test/\", tag: {} }}\n{body}    allowed_hosts: [127.0.0.1]\n",
        tokens.url(),
        serde_json::Value::from(TAG),
    )
}

/// Sends one request through bearerd with each config in `ids`, in order, and returns the
/// token request each one caused.
async fn token_requests(bearerd: &bearerd::Server, echo: &Echo, tokens: &TokenServer, ids: &[&str]) -> Vec<Recorded> {
    let proxy = proxied_client(bearerd.proxy_addr);
    for (i, id) in ids.iter().enumerate() {
        let seen = echoed(get_with_config(&proxy, &format!("http://{}/x", echo.addr), id).await).await;
        assert_eq!(seen.all("authorization"), [format!("Bearer tok-{}", i + 1)], "{id}");
    }
    let requests = tokens.requests();
    assert_eq!(requests.len(), ids.len());
    requests
}

/// bearerd with each of `configs` (id, `request_body` line or nothing, client authentication
/// lines) at one token endpoint, and the token request one request through each caused.
async fn requests_of(configs: &[(&str, &str, &str)]) -> (TokenServer, HashMap<String, Recorded>) {
    let tokens = TokenServer::start().await;
    let yaml: String = configs
        .iter()
        .map(|(id, body, auth)| auth_config(id, &tokens, body, auth))
        .collect();
    let requests = requests_at(&tokens, &format!("auth_configs:\n{yaml}"), configs).await;
    (tokens, requests)
}

/// As [`requests_of`], each config a `refresh_token` grant whose file holds
/// [`first_refresh_token`]: the requests are its first refresh.
async fn refreshes_of(configs: &[(&str, &str, &str)]) -> (TokenServer, HashMap<String, Recorded>) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start().await;
    let yaml: String = configs
        .iter()
        .map(|(id, body, auth)| {
            let file = dir.path().join(format!("{id}.refresh-token"));
            std::fs::write(&file, format!("{}\n", first_refresh_token(id))).unwrap();
            let grant = format!(
                "    grant: refresh_token\n    refresh_token_file: {}\n{auth}",
                file.display()
            );
            auth_config(id, &tokens, body, &grant)
        })
        .collect();
    let yaml = format!("{}auth_configs:\n{yaml}", state_block(dir.path()));
    let requests = requests_at(&tokens, &yaml, configs).await;
    (tokens, requests)
}

/// bearerd on `yaml`, and by config id the token request one request through each of
/// `configs` caused.
async fn requests_at(tokens: &TokenServer, yaml: &str, configs: &[(&str, &str, &str)]) -> HashMap<String, Recorded> {
    let echo = Echo::start().await;
    let bearerd = start_bearerd(yaml).await;
    let ids: Vec<&str> = configs.iter().map(|(id, ..)| *id).collect();
    let requests = token_requests(&bearerd, &echo, tokens, &ids).await;
    ids.iter().map(|id| (*id).to_owned()).zip(requests).collect()
}

/// The `state:` block of the user grants, with its key, in `dir`.
fn state_block(dir: &Path) -> String {
    std::fs::write(dir.join("state-key"), [7; 32]).unwrap();
    format!(
        "state: {{ file: {0}/state.json, key_file: {0}/state-key }}\n",
        dir.display()
    )
}

/// The refresh token config `id` starts from: characters a form escapes.
fn first_refresh_token(id: &str) -> String {
    format!("rt/{id}+=")
}

/// The fields of config `id`'s first refresh before the client authentication, as a form
/// (`FORM_COMMON` with the refresh token in place of client credentials).
fn refresh_form(id: &str) -> String {
    let rest = FORM_COMMON.strip_prefix("grant_type=client_credentials&").unwrap();
    format!("grant_type=refresh_token&refresh_token=rt%2F{id}%2B%3D&{rest}")
}

/// The same as JSON members (`JSON_COMMON`'s twin).
fn refresh_json(id: &str) -> String {
    let rest = JSON_COMMON
        .strip_prefix(r#""grant_type":"client_credentials","#)
        .unwrap();
    format!(r#""grant_type":"refresh_token","refresh_token":"rt/{id}+=",{rest}"#)
}

/// The request's body, as bytes, exactly; and its framing and content type.
fn assert_body(request: &Recorded, content_type: &str, body: &str) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/oauth2/token");
    assert_eq!(request.header("content-type"), Some(content_type));
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.header("content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(request.bytes, body.as_bytes(), "\n got: {}\nwant: {body}", request.body);
}

const JSON_BODY: &str = "    request_body: json\n";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const FORM_COMMON: &str = "grant_type=client_credentials&scope=a.read+b.write&audience=https%3A%2F%2Fapi.test%2F&tag=a+%22b%22+%5C+%C3%A9%26%3D%2B";
const JSON_COMMON: &str = r#""grant_type":"client_credentials","scope":"a.read b.write","audience":"https://api.test/","tag":"a \"b\" \\ é&=+""#;

#[tokio::test]
async fn client_secret_basic_and_post_as_a_form_or_as_json() {
    let basic = format!("    client_secret: '{SECRET}'\n");
    let post = format!("    client_auth: client_secret_post\n    client_secret: '{SECRET}'\n");
    let (_tokens, requests) = requests_of(&[
        ("basic-form", "", &basic),
        ("basic-json", JSON_BODY, &basic),
        ("post-form", "", &post),
        ("post-json", JSON_BODY, &post),
    ])
    .await;

    // client_secret_basic: the same fields either way, the secret only in the header.
    let basic_header = bearerd::token::basic_auth("billing-client", &bearerd::secret::ClientSecret::new(SECRET));
    assert_body(&requests["basic-form"], FORM, FORM_COMMON);
    assert_body(&requests["basic-json"], JSON, &format!("{{{JSON_COMMON}}}"));
    for id in ["basic-form", "basic-json"] {
        assert_eq!(
            requests[id].header("authorization"),
            Some(basic_header.as_str()),
            "{id}"
        );
    }

    // client_secret_post: client_id and client_secret after the common fields.
    assert_body(
        &requests["post-form"],
        FORM,
        &format!("{FORM_COMMON}&client_id=billing-client&client_secret=p%40ss%3Aw0rd%2F%2B%25%3D%26%3F"),
    );
    assert_body(
        &requests["post-json"],
        JSON,
        &format!(r#"{{{JSON_COMMON},"client_id":"billing-client","client_secret":"p@ss:w0rd/+%=&?"}}"#),
    );
    for id in ["post-form", "post-json"] {
        assert_eq!(requests[id].header("authorization"), None, "{id}");
    }
}

#[tokio::test]
async fn client_secret_jwt_and_private_key_jwt_as_a_form_or_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let hmac_auth = format!(
        "    client_auth: client_secret_jwt\n    client_secret: {}\n",
        serde_json::Value::from(HMAC_SECRET)
    );
    let jwt = format!(
        "    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: ES256\n",
        key.display()
    );
    let (tokens, requests) = requests_of(&[
        ("hmac-form", "", &hmac_auth),
        ("hmac-json", JSON_BODY, &hmac_auth),
        ("jwt-form", "", &jwt),
        ("jwt-json", JSON_BODY, &jwt),
    ])
    .await;

    for (id, alg) in [("hmac", "HS256"), ("jwt", "ES256")] {
        assert_assertions(&requests, id, alg, &tokens.url(), FORM_COMMON, JSON_COMMON);
    }
}

/// Config `<id>-form`'s and `<id>-json`'s requests: `form_common` (or `json_common`), then
/// `client_id`, the assertion type and a fresh `alg` assertion for `audience`, and no
/// Authorization header.
fn assert_assertions(
    requests: &HashMap<String, Recorded>,
    id: &str,
    alg: &str,
    audience: &str,
    form_common: &str,
    json_common: &str,
) {
    let form = &requests[&format!("{id}-form")];
    let assertion = form
        .body
        .rsplit_once("&client_assertion=")
        .map(|(_, jwt)| jwt.to_owned())
        .unwrap();
    assert_body(
        form,
        FORM,
        &format!(
            "{form_common}&client_id=billing-client&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
        ),
    );
    let json = &requests[&format!("{id}-json")];
    let body: serde_json::Value = serde_json::from_slice(&json.bytes).unwrap();
    let json_assertion = body["client_assertion"].as_str().unwrap().to_owned();
    assert_body(
        json,
        JSON,
        &format!(
            r#"{{{json_common},"client_id":"billing-client","client_assertion_type":"{ASSERTION_TYPE}","client_assertion":"{json_assertion}"}}"#
        ),
    );
    assert_ne!(assertion, json_assertion, "{id}: one assertion per request");
    for jwt in [&assertion, &json_assertion] {
        assert_assertion(jwt, alg, audience);
    }
    for request in [form, json] {
        assert_eq!(request.header("authorization"), None, "{id}");
    }
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `jwt` is a client assertion of billing-client's for `audience`, signed with `alg`; an
/// HS256 one is keyed with the client secret's bytes.
fn assert_assertion(jwt: &str, alg: &str, audience: &str) {
    let (header, claims) = jwt_parts(jwt);
    assert_eq!(header["alg"], alg);
    assert_eq!(claims["iss"], "billing-client");
    assert_eq!(claims["sub"], "billing-client");
    assert_eq!(claims["aud"], audience);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 300, "{claims}");
    if alg == "HS256" {
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, HMAC_SECRET.as_bytes());
        hmac::verify(&key, input.as_bytes(), &B64URL.decode(signature).unwrap()).expect("HS256 with the client secret");
    }
}

#[tokio::test]
async fn a_public_client_sends_its_client_id_alone() {
    // A public client is one of a user grant (loading refuses `none` with client
    // credentials): its refresh, as a form and as JSON.
    let public = "    client_auth: none\n";
    let (_tokens, requests) = refreshes_of(&[("public-form", "", public), ("public-json", JSON_BODY, public)]).await;
    assert_body(
        &requests["public-form"],
        FORM,
        &format!("{}&client_id=billing-client", refresh_form("public-form")),
    );
    assert_body(
        &requests["public-json"],
        JSON,
        &format!(r#"{{{},"client_id":"billing-client"}}"#, refresh_json("public-json")),
    );
    for id in ["public-form", "public-json"] {
        assert_eq!(requests[id].header("authorization"), None, "{id}");
    }
}

#[tokio::test]
async fn tls_client_auth_sends_client_id_as_a_form_or_as_json_with_its_certificate() {
    let ca = TestCa::new();
    let tokens = TokenServer::with_tls(ca.mtls_server_config()).await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_der) = ca.client_identity("bearerd-client");
    std::fs::write(dir.path().join("client.crt"), cert).unwrap();
    std::fs::write(dir.path().join("client.key"), key).unwrap();
    let mtls = format!(
        "    client_auth: tls_client_auth\n    client_cert_file: {}\n    client_key_file: {}\n",
        dir.path().join("client.crt").display(),
        dir.path().join("client.key").display()
    );
    let yaml = [("mtls-form", ""), ("mtls-json", "    request_body: json\n")]
        .iter()
        .map(|(id, body)| auth_config(id, &tokens, body, &mtls).replace(&tokens.url(), &tokens.https_url()))
        .collect::<String>();
    let bearerd = start_bearerd(&format!(
        "tls: {{ ca_file: {} }}\nauth_configs:\n{yaml}",
        ca.write_ca(dir.path()).display()
    ))
    .await;
    let requests = token_requests(&bearerd, &echo, &tokens, &["mtls-form", "mtls-json"]).await;
    assert_body(&requests[0], FORM, &format!("{FORM_COMMON}&client_id=billing-client"));
    assert_body(
        &requests[1],
        JSON,
        &format!(r#"{{{JSON_COMMON},"client_id":"billing-client"}}"#),
    );
    for request in &requests {
        assert_eq!(request.client_certificate.as_deref(), Some(cert_der.as_slice()));
        assert_eq!(request.header("authorization"), None);
    }
}

/// A JWT's header and claims, decoded.
fn jwt_parts(jwt: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = jwt.split('.');
    let mut decode = || serde_json::from_slice(&B64URL.decode(parts.next().unwrap()).unwrap()).unwrap();
    (decode(), decode())
}

#[tokio::test]
async fn a_refresh_authenticates_every_way_as_a_form_or_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let basic = format!("    client_secret: '{SECRET}'\n");
    let post = format!("    client_auth: client_secret_post\n    client_secret: '{SECRET}'\n");
    let hmac_auth = format!(
        "    client_auth: client_secret_jwt\n    client_secret: {}\n",
        serde_json::Value::from(HMAC_SECRET)
    );
    let jwt = format!(
        "    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: ES256\n",
        key.display()
    );
    let (tokens, requests) = refreshes_of(&[
        ("basic-form", "", &basic),
        ("basic-json", JSON_BODY, &basic),
        ("post-form", "", &post),
        ("post-json", JSON_BODY, &post),
        ("hmac-form", "", &hmac_auth),
        ("hmac-json", JSON_BODY, &hmac_auth),
        ("jwt-form", "", &jwt),
        ("jwt-json", JSON_BODY, &jwt),
    ])
    .await;

    // The refresh token's fields where client credentials have none, then the same
    // authentication as theirs.
    let basic_header = bearerd::token::basic_auth("billing-client", &bearerd::secret::ClientSecret::new(SECRET));
    assert_body(&requests["basic-form"], FORM, &refresh_form("basic-form"));
    assert_body(
        &requests["basic-json"],
        JSON,
        &format!("{{{}}}", refresh_json("basic-json")),
    );
    for id in ["basic-form", "basic-json"] {
        assert_eq!(
            requests[id].header("authorization"),
            Some(basic_header.as_str()),
            "{id}"
        );
    }
    assert_body(
        &requests["post-form"],
        FORM,
        &format!(
            "{}&client_id=billing-client&client_secret=p%40ss%3Aw0rd%2F%2B%25%3D%26%3F",
            refresh_form("post-form")
        ),
    );
    assert_body(
        &requests["post-json"],
        JSON,
        &format!(
            r#"{{{},"client_id":"billing-client","client_secret":"p@ss:w0rd/+%=&?"}}"#,
            refresh_json("post-json")
        ),
    );
    for id in ["post-form", "post-json"] {
        assert_eq!(requests[id].header("authorization"), None, "{id}");
    }
    for (id, alg) in [("hmac", "HS256"), ("jwt", "ES256")] {
        assert_assertions(
            &requests,
            id,
            alg,
            &tokens.url(),
            &refresh_form(&format!("{id}-form")),
            &refresh_json(&format!("{id}-json")),
        );
    }
}

#[tokio::test]
async fn a_consents_code_exchange_and_its_refresh_go_as_json_with_client_secret_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::with(std::time::Duration::ZERO, rotating).await;
    let echo = Echo::start().await;
    let auth = format!(
        "    grant: authorization_code\n    authorization_url: http://{}/authorize\n    client_auth: client_secret_jwt\n    client_secret: {}\n",
        tokens.addr,
        serde_json::Value::from(HMAC_SECRET)
    );
    let yaml = format!(
        "{}auth_configs:\n{}",
        state_block(dir.path()),
        auth_config("mail", &tokens, JSON_BODY, &auth)
    );
    let bearerd = start_bearerd(&yaml).await;
    let admin = bearerd.admin_addr;

    // The consent: bearerd sends the browser to the provider, which sends it back with a code.
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    let started = browser
        .get(format!("http://{admin}/authorize/mail"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 302);
    let location = url::Url::parse(started.headers()["location"].to_str().unwrap()).unwrap();
    let cookie = started.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let state = location
        .query_pairs()
        .find_map(|(name, value)| (name == "state").then(|| value.into_owned()))
        .unwrap();
    let back = browser
        .get(format!("http://{admin}/callback?code=the-code&state={state}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert!(back.text().await.unwrap().contains("<h1>Connected: mail</h1>"));

    // The exchange: code, redirect_uri and code_verifier (no scope: the consent settled it),
    // the extra params, then the HS256 assertion; a JSON object, no Authorization header.
    let exchange = &tokens.requests()[0];
    let body: serde_json::Value = serde_json::from_slice(&exchange.bytes).unwrap();
    let (verifier, assertion) = (&body["code_verifier"], &body["client_assertion"]);
    let (verifier, assertion) = (verifier.as_str().unwrap(), assertion.as_str().unwrap());
    let extra = JSON_COMMON
        .strip_prefix(r#""grant_type":"client_credentials","scope":"a.read b.write","#)
        .unwrap();
    assert_body(
        exchange,
        JSON,
        &format!(
            r#"{{"grant_type":"authorization_code","code":"the-code","redirect_uri":"http://127.0.0.1:{}/callback","code_verifier":"{verifier}",{extra},"client_id":"billing-client","client_assertion_type":"{ASSERTION_TYPE}","client_assertion":"{assertion}"}}"#,
            admin.port()
        ),
    );
    assert_eq!(exchange.header("authorization"), None);
    assert_assertion(assertion, "HS256", &tokens.url());

    // The upstream refuses the consent's access token: the refresh sends the consent's
    // refresh token the same way.
    let proxy = proxied_client(bearerd.proxy_addr);
    let seen = echoed(get_with_config(&proxy, &format!("http://{}/only/at2", echo.addr), "mail").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at2"));
    let requests = tokens.requests();
    assert_eq!(requests.len(), 2);
    let refresh = &requests[1];
    let body: serde_json::Value = serde_json::from_slice(&refresh.bytes).unwrap();
    let second = body["client_assertion"].as_str().unwrap();
    let rest = JSON_COMMON
        .strip_prefix(r#""grant_type":"client_credentials","#)
        .unwrap();
    assert_body(
        refresh,
        JSON,
        &format!(
            r#"{{"grant_type":"refresh_token","refresh_token":"rt1",{rest},"client_id":"billing-client","client_assertion_type":"{ASSERTION_TYPE}","client_assertion":"{second}"}}"#
        ),
    );
    assert_eq!(refresh.header("authorization"), None);
    assert_assertion(second, "HS256", &tokens.url());
    assert_ne!(assertion, second, "a fresh assertion per request");
}

/// A workload's JWT as a kubelet projects it, telling rotations apart by `n`; it expires at
/// `exp`. bearerd only sends it: the signature is never checked on its side.
fn workload_jwt(n: u32, exp: u64) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl-{n}",
        B64URL.encode(r#"{"alg":"RS256","kid":"cluster-1"}"#),
        B64URL.encode(format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:billing:api","aud":["api://AzureADTokenExchange"],"exp":{exp}}}"#
        ))
    )
}

/// An hour from now, as `exp`.
fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

const JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
const CLIENT_ASSERTION_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

#[tokio::test]
async fn federated_jwt_sends_the_files_jwt_trimmed_as_a_form_or_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let jwt = workload_jwt(1, in_an_hour());
    std::fs::write(&file, format!("\n  {jwt}\n\n")).unwrap();
    let auth = format!(
        "    client_auth: federated_jwt\n    assertion_file: {}\n",
        file.display()
    );
    let (_tokens, requests) = requests_of(&[("fed-form", "", &auth), ("fed-json", JSON_BODY, &auth)]).await;
    assert_body(
        &requests["fed-form"],
        FORM,
        &format!(
            "{FORM_COMMON}&client_id=billing-client&client_assertion_type={CLIENT_ASSERTION_TYPE}&client_assertion={jwt}"
        ),
    );
    assert_body(
        &requests["fed-json"],
        JSON,
        &format!(
            r#"{{{JSON_COMMON},"client_id":"billing-client","client_assertion_type":"{ASSERTION_TYPE}","client_assertion":"{jwt}"}}"#
        ),
    );
    for id in ["fed-form", "fed-json"] {
        assert_eq!(requests[id].header("authorization"), None, "{id}");
    }
}

#[tokio::test]
async fn jwt_bearer_sends_the_files_jwt_as_the_grant_with_any_client_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svid.jwt");
    let jwt = workload_jwt(1, in_an_hour());
    std::fs::write(&file, format!("{jwt}\n")).unwrap();
    let grant = |auth: &str| format!("    grant: jwt_bearer\n    assertion_file: {}\n{auth}", file.display());
    let none = grant("    client_auth: none\n");
    let basic = grant(&format!("    client_secret: '{SECRET}'\n"));
    let post = grant(&format!(
        "    client_auth: client_secret_post\n    client_secret: '{SECRET}'\n"
    ));
    let (_tokens, requests) = requests_of(&[
        ("none-form", "", &none),
        ("none-json", JSON_BODY, &none),
        ("basic-form", "", &basic),
        ("post-json", JSON_BODY, &post),
    ])
    .await;

    // RFC 7523 §2.1: the assertion right after grant_type, then the common fields.
    let form_rest = FORM_COMMON.strip_prefix("grant_type=client_credentials&").unwrap();
    let form = format!("grant_type={JWT_BEARER}&assertion={jwt}&{form_rest}");
    let json_rest = JSON_COMMON
        .strip_prefix(r#""grant_type":"client_credentials","#)
        .unwrap();
    let json = format!(r#""grant_type":"urn:ietf:params:oauth:grant-type:jwt-bearer","assertion":"{jwt}",{json_rest}"#);
    assert_body(
        &requests["none-form"],
        FORM,
        &format!("{form}&client_id=billing-client"),
    );
    assert_body(
        &requests["none-json"],
        JSON,
        &format!(r#"{{{json},"client_id":"billing-client"}}"#),
    );
    assert_body(&requests["basic-form"], FORM, &form);
    assert_eq!(
        requests["basic-form"].header("authorization"),
        Some(bearerd::token::basic_auth("billing-client", &bearerd::secret::ClientSecret::new(SECRET)).as_str())
    );
    assert_body(
        &requests["post-json"],
        JSON,
        &format!(r#"{{{json},"client_id":"billing-client","client_secret":"p@ss:w0rd/+%=&?"}}"#),
    );
    for id in ["none-form", "none-json", "post-json"] {
        assert_eq!(requests[id].header("authorization"), None, "{id}");
    }
}

#[tokio::test]
async fn a_rotated_assertion_file_is_read_again_at_the_next_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let (fed_file, bearer_file) = (dir.path().join("fed-token"), dir.path().join("bearer-token"));
    let (old, new) = (workload_jwt(1, in_an_hour()), workload_jwt(2, in_an_hour() + 60));
    std::fs::write(&fed_file, &old).unwrap();
    std::fs::write(&bearer_file, &old).unwrap();
    let tokens = TokenServer::start().await;
    let fed = auth_config(
        "fed",
        &tokens,
        "",
        &format!(
            "    client_auth: federated_jwt\n    assertion_file: {}\n",
            fed_file.display()
        ),
    );
    let bearer = auth_config(
        "bearer",
        &tokens,
        "",
        &format!(
            "    grant: jwt_bearer\n    client_auth: none\n    assertion_file: {}\n",
            bearer_file.display()
        ),
    );
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("auth_configs:\n{fed}{bearer}")).await;
    token_requests(&bearerd, &echo, &tokens, &["fed", "bearer"]).await;

    // The kubelet writes the next token; a 401 upstream makes bearerd fetch a new one, which
    // carries the new JWT.
    std::fs::write(&fed_file, format!("{new}\n")).unwrap();
    std::fs::write(&bearer_file, format!("{new}\n")).unwrap();
    let proxy = proxied_client(bearerd.proxy_addr);
    for (id, token) in [("fed", "tok-3"), ("bearer", "tok-4")] {
        let response = get_with_config(&proxy, &format!("http://{}/only/{token}", echo.addr), id).await;
        assert_eq!(response.status(), 200, "{id}");
    }
    let requests = tokens.requests();
    assert_eq!(requests.len(), 4);
    let fed_form = |jwt: &str| {
        format!(
            "{FORM_COMMON}&client_id=billing-client&client_assertion_type={CLIENT_ASSERTION_TYPE}&client_assertion={jwt}"
        )
    };
    let form_rest = FORM_COMMON.strip_prefix("grant_type=client_credentials&").unwrap();
    let bearer_form =
        |jwt: &str| format!("grant_type={JWT_BEARER}&assertion={jwt}&{form_rest}&client_id=billing-client");
    assert_body(&requests[0], FORM, &fed_form(&old));
    assert_body(&requests[1], FORM, &bearer_form(&old));
    assert_body(&requests[2], FORM, &fed_form(&new));
    assert_body(&requests[3], FORM, &bearer_form(&new));
}

#[tokio::test]
async fn an_assertion_file_that_holds_no_usable_jwt_stops_the_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("empty"), " \n").unwrap();
    std::fs::write(path("opaque"), "opaque-not-a-jwt-s3cr3t\n").unwrap();
    // Expired on 2001-09-09T01:46:40Z.
    let expired = workload_jwt(1, 1_000_000_000);
    std::fs::write(path("expired"), &expired).unwrap();
    let tokens = TokenServer::start().await;
    let configs: String = [
        ("empty", "client_auth: federated_jwt"),
        ("opaque", "client_auth: federated_jwt"),
        ("missing", "grant: jwt_bearer\n    client_auth: none"),
        ("expired", "grant: jwt_bearer\n    client_auth: none"),
    ]
    .iter()
    .map(|(id, how)| {
        auth_config(
            id,
            &tokens,
            "    backoff: { initial: 1h, max: 1h }\n",
            &format!("    {how}\n    assertion_file: {}\n", path(id).display()),
        )
    })
    .collect();
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("auth_configs:\n{configs}")).await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    for (id, problem) in [
        ("empty", "is empty".to_owned()),
        (
            "opaque",
            "does not hold a JWT (three base64url parts, the first two JSON objects)".to_owned(),
        ),
        ("missing", "cannot be read: ".to_owned()),
        (
            "expired",
            "holds an assertion that expired at 2001-09-09T01:46:40Z: whatever writes the file has stopped renewing it"
                .to_owned(),
        ),
    ] {
        let error = bearerd_error(get_with_config(&proxy, &url, id).await).await;
        assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"), "{id}");
        let named = format!("assertion file {} {problem}", path(id).display());
        assert!(error.message.contains(&named), "{id}: {}", error.message);
        for content in ["opaque-not-a-jwt-s3cr3t", &expired] {
            assert!(!error.message.contains(content), "{id}: {}", error.message);
        }
    }
    assert_eq!(tokens.count(), 0, "nothing is sent for an unusable assertion");

    // Back-off applies: a file fixed now is read once the back-off ends, not before.
    std::fs::write(path("empty"), workload_jwt(2, in_an_hour())).unwrap();
    let error = bearerd_error(get_with_config(&proxy, &url, "empty").await).await;
    assert_eq!((error.status, error.code.as_str()), (503, "token_backoff"));
    assert_eq!(tokens.count(), 0);
}

const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

#[tokio::test]
async fn token_exchange_sends_the_subject_token_and_checks_the_issued_token_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subject-token");
    let jwt = workload_jwt(1, in_an_hour());
    std::fs::write(&file, format!("{jwt}\n")).unwrap();
    // Requests 1 and 2 get what they asked for; 3 asked for an ID token; 4's answer has no
    // issued_token_type.
    let tokens = TokenServer::with(std::time::Duration::ZERO, |n, _| {
        let issued = if n == 4 {
            String::new()
        } else {
            format!(r#","issued_token_type":"{ACCESS_TOKEN_TYPE}""#)
        };
        (
            200,
            "application/json",
            format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":3600{issued}}}"#),
        )
    })
    .await;
    let exchange = |requested: &str| {
        format!(
            "    grant: token_exchange\n    client_auth: none\n    subject_token_file: {}\n    subject_token_type: urn:ietf:params:oauth:token-type:jwt\n    requested_token_type: {requested}\n    audience: //iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k\n    resource: https://api.test/v1\n",
            file.display()
        )
    };
    let configs = [
        auth_config("form", &tokens, "", &exchange(ACCESS_TOKEN_TYPE)),
        auth_config("json", &tokens, JSON_BODY, &exchange(ACCESS_TOKEN_TYPE)),
        auth_config(
            "idtoken",
            &tokens,
            "",
            &exchange("urn:ietf:params:oauth:token-type:id_token"),
        ),
        auth_config("untyped", &tokens, "", &exchange(ACCESS_TOKEN_TYPE)),
    ];
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", configs.concat())).await;
    token_requests(&bearerd, &echo, &tokens, &["form", "json"]).await;
    let requests = tokens.requests();
    let form_rest = FORM_COMMON.strip_prefix("grant_type=client_credentials&").unwrap();
    assert_body(
        &requests[0],
        FORM,
        &format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={jwt}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&audience=%2F%2Fiam.googleapis.com%2Fprojects%2F1%2Flocations%2Fglobal%2FworkloadIdentityPools%2Fp%2Fproviders%2Fk&resource=https%3A%2F%2Fapi.test%2Fv1&{form_rest}&client_id=billing-client"
        ),
    );
    let json_rest = JSON_COMMON
        .strip_prefix(r#""grant_type":"client_credentials","#)
        .unwrap();
    assert_body(
        &requests[1],
        JSON,
        &format!(
            r#"{{"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","subject_token":"{jwt}","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","requested_token_type":"{ACCESS_TOKEN_TYPE}","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k","resource":"https://api.test/v1",{json_rest},"client_id":"billing-client"}}"#
        ),
    );

    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    for (id, problem) in [
        (
            "idtoken",
            format!(
                "token response is invalid: issued_token_type `{ACCESS_TOKEN_TYPE}` is not the requested_token_type `urn:ietf:params:oauth:token-type:id_token`"
            ),
        ),
        (
            "untyped",
            "token response is invalid: no issued_token_type (RFC 8693 §2.2.1)".to_owned(),
        ),
    ] {
        let error = bearerd_error(get_with_config(&proxy, &url, id).await).await;
        assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"), "{id}");
        assert!(error.message.contains(&problem), "{id}: {}", error.message);
        assert!(!error.message.contains(&jwt), "{id}");
    }
    assert_eq!(tokens.count(), 4);
}

#[tokio::test]
async fn a_subject_token_file_is_read_at_each_request_and_checked_as_its_type_says() {
    let dir = tempfile::tempdir().unwrap();
    let (jwt_file, opaque_file) = (dir.path().join("jwt"), dir.path().join("opaque"));
    std::fs::write(&jwt_file, "\n").unwrap();
    // An access token need not be a JWT: it is sent as the file holds it, trimmed.
    std::fs::write(&opaque_file, " opaque-access-token\n").unwrap();
    let tokens = TokenServer::with(std::time::Duration::ZERO, |n, _| {
        (
            200,
            "application/json",
            format!(r#"{{"access_token":"tok-{n}","issued_token_type":"{ACCESS_TOKEN_TYPE}"}}"#),
        )
    })
    .await;
    let exchange = |file: &Path, kind: &str| {
        format!(
            "    grant: token_exchange\n    client_auth: none\n    subject_token_file: {}\n    subject_token_type: urn:ietf:params:oauth:token-type:{kind}\n    backoff: {{ initial: 1h, max: 1h }}\n",
            file.display()
        )
    };
    let configs = [
        auth_config("opaque", &tokens, "", &exchange(&opaque_file, "access_token")),
        auth_config("jwt", &tokens, "", &exchange(&jwt_file, "jwt")),
    ];
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", configs.concat())).await;
    token_requests(&bearerd, &echo, &tokens, &["opaque"]).await;
    let form_rest = FORM_COMMON.strip_prefix("grant_type=client_credentials&").unwrap();
    assert_body(
        &tokens.requests()[0],
        FORM,
        &format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=opaque-access-token&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&{form_rest}&client_id=billing-client"
        ),
    );

    let proxy = proxied_client(bearerd.proxy_addr);
    let error = bearerd_error(get_with_config(&proxy, &format!("http://{}/x", echo.addr), "jwt").await).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    let named = format!("subject token file {} is empty", jwt_file.display());
    assert!(error.message.contains(&named), "{}", error.message);
    assert_eq!(tokens.count(), 1, "nothing is sent for an empty subject token file");
}

/// The environment Azure Workload Identity's webhook gives a labelled pod, its authority
/// host being `tokens`.
fn azure_webhook_env(tokens: &TokenServer, token_file: &Path) -> bearerd::config::Env {
    [
        ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("AZURE_TENANT_ID", "0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1"),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AZURE_AUTHORITY_HOST", &format!("http://{}/", tokens.addr)),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

#[tokio::test]
async fn entra_workload_identity_sends_the_federated_token_to_the_authority_hosts_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook_file, vault_file) = (dir.path().join("azure-identity-token"), dir.path().join("vault-token"));
    let (jwt, vault_jwt) = (workload_jwt(1, in_an_hour()), workload_jwt(2, in_an_hour()));
    std::fs::write(&webhook_file, format!("{jwt}\n")).unwrap();
    std::fs::write(&vault_file, &vault_jwt).unwrap();
    let tokens = TokenServer::start().await;
    // Two federated identities in one pod: the webhook's, and one with its own client id,
    // token file and directory.
    let yaml = format!(
        "auth_configs:
  - id: graph
    provider: microsoft
    scopes: [https://graph.microsoft.com/.default]
    allowed_hosts: [127.0.0.1]
  - id: vault
    provider: microsoft
    client_id: 99999999-0000-0000-0000-000000000000
    tenant: contoso.onmicrosoft.com
    assertion_file: {}
    scopes: [https://vault.azure.net/.default]
    allowed_hosts: [127.0.0.1]
",
        vault_file.display()
    );
    let echo = Echo::start().await;
    let bearerd = start_bearerd_env(&yaml, &azure_webhook_env(&tokens, &webhook_file)).await;
    let requests = token_requests(&bearerd, &echo, &tokens, &["graph", "vault"]).await;
    let expected = [
        (
            "/0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1/oauth2/v2.0/token",
            format!(
                "grant_type=client_credentials&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_id=11111111-2222-3333-4444-555555555555&client_assertion_type={CLIENT_ASSERTION_TYPE}&client_assertion={jwt}"
            ),
        ),
        (
            "/contoso.onmicrosoft.com/oauth2/v2.0/token",
            format!(
                "grant_type=client_credentials&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_id=99999999-0000-0000-0000-000000000000&client_assertion_type={CLIENT_ASSERTION_TYPE}&client_assertion={vault_jwt}"
            ),
        ),
    ];
    for (request, (path, body)) in requests.iter().zip(expected) {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", path));
        assert_eq!(request.header("content-type"), Some(FORM));
        assert_eq!(request.header("authorization"), None, "no secret, no Basic");
        assert_eq!(request.bytes, body.as_bytes(), "\n got: {}\nwant: {body}", request.body);
    }
}

/// A Google STS on loopback answering `sts-<n>` tokens, as it documents its response.
async fn google_sts() -> TokenServer {
    TokenServer::with(std::time::Duration::ZERO, |n, _| {
        (
            200,
            "application/json",
            format!(
                r#"{{"access_token":"sts-{n}","issued_token_type":"{ACCESS_TOKEN_TYPE}","token_type":"Bearer","expires_in":3599}}"#
            ),
        )
    })
    .await
}

/// An IAM Credentials API on loopback whose `generateAccessToken` answers `sa-<n>` tokens,
/// valid for an hour.
async fn google_iam() -> TokenServer {
    TokenServer::with(std::time::Duration::ZERO, |n, _| {
        let expire =
            bearerd::config::format_timestamp(std::time::SystemTime::now() + std::time::Duration::from_hours(1));
        (
            200,
            "application/json",
            format!(r#"{{"accessToken":"sa-{n}","expireTime":"{expire}"}}"#),
        )
    })
    .await
}

const GOOGLE_AUDIENCE: &str =
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/cluster/providers/k8s";
const GOOGLE_AUDIENCE_FORM: &str = "%2F%2Fiam.googleapis.com%2Fprojects%2F123%2Flocations%2Fglobal%2FworkloadIdentityPools%2Fcluster%2Fproviders%2Fk8s";
const IMPERSONATE_PATH: &str = "/v1/projects/-/serviceAccounts/reader@proj.iam.gserviceaccount.com:generateAccessToken";

/// An `external_account` credential file in `dir` named `name`: the STS at `sts`, the
/// workload's token in `token_file` (in `format`), and `extra` members.
fn credential_file(dir: &Path, name: &str, sts: &TokenServer, token_file: &Path, format: &str, extra: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"{{"type":"external_account","audience":"{GOOGLE_AUDIENCE}","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"http://{}/v1/token","credential_source":{{"file":"{}","format":{format}}}{extra}}}"#,
            sts.addr,
            token_file.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn google_workload_identity_federation_exchanges_at_the_sts_then_impersonates() {
    let dir = tempfile::tempdir().unwrap();
    let (token_file, json_file) = (dir.path().join("gcp-token"), dir.path().join("gcp-token.json"));
    let (jwt, json_jwt) = (workload_jwt(1, in_an_hour()), workload_jwt(2, in_an_hour()));
    std::fs::write(&token_file, format!("{jwt}\n")).unwrap();
    std::fs::write(&json_file, format!(r#"{{"id_token":"{json_jwt}","other":"x"}}"#)).unwrap();
    let (sts, iam) = (google_sts().await, google_iam().await);
    let impersonating = credential_file(
        dir.path(),
        "impersonating.json",
        &sts,
        &token_file,
        r#"{"type":"text"}"#,
        &format!(
            r#","service_account_impersonation_url":"http://{}{IMPERSONATE_PATH}","service_account_impersonation":{{"token_lifetime_seconds":1800}}"#,
            iam.addr
        ),
    );
    let direct = credential_file(
        dir.path(),
        "direct.json",
        &sts,
        &json_file,
        r#"{"type":"json","subject_token_field_name":"id_token"}"#,
        "",
    );
    // `bq` names its file; `gcs` takes GOOGLE_APPLICATION_CREDENTIALS, as Google's libraries do.
    let yaml = format!(
        "auth_configs:
  - id: bq
    provider: google
    credentials_file: {impersonating}
    scopes: [https://www.googleapis.com/auth/bigquery, https://www.googleapis.com/auth/devstorage.read_only]
    allowed_hosts: [127.0.0.1]
  - id: gcs
    provider: google
    allowed_hosts: [127.0.0.1]
"
    );
    let env = [("GOOGLE_APPLICATION_CREDENTIALS".to_owned(), direct)].into();
    let bearerd = start_bearerd_env(&yaml, &env).await;
    let echo = Echo::start().await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    // The service account's token, and the STS token where there is no second hop, are
    // what the upstream receives.
    let seen = echoed(get_with_config(&proxy, &url, "bq").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer sa-1"]);
    let seen = echoed(get_with_config(&proxy, &url, "gcs").await).await;
    assert_eq!(seen.all("authorization"), ["Bearer sts-2"]);

    let exchanges = sts.requests();
    assert_eq!(exchanges.len(), 2);
    let sts_body = |subject: &str| {
        format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={subject}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&audience={GOOGLE_AUDIENCE_FORM}&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
        )
    };
    // The impersonating config's STS token is for cloud-platform (its scopes are the second
    // hop's); the other's scope is the default.
    for (request, subject) in exchanges.iter().zip([&jwt, &json_jwt]) {
        let body = sts_body(subject);
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/token"));
        assert_eq!(request.header("content-type"), Some(FORM));
        assert_eq!(request.header("authorization"), None, "no client authentication");
        assert_eq!(request.bytes, body.as_bytes(), "\n got: {}\nwant: {body}", request.body);
    }

    let impersonations = iam.requests();
    assert_eq!(impersonations.len(), 1);
    let request = &impersonations[0];
    let body = r#"{"scope":["https://www.googleapis.com/auth/bigquery","https://www.googleapis.com/auth/devstorage.read_only"],"lifetime":"1800s"}"#;
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", IMPERSONATE_PATH)
    );
    assert_eq!(request.header("authorization"), Some("Bearer sts-1"));
    assert_eq!(request.header("content-type"), Some(JSON));
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.bytes, body.as_bytes(), "\n got: {}\nwant: {body}", request.body);
}

#[tokio::test]
async fn a_malformed_answer_from_either_google_hop_is_token_unavailable_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gcp-token");
    let jwt = workload_jwt(1, in_an_hour());
    std::fs::write(&token_file, &jwt).unwrap();
    // The STS answers its first request without an access token, then well; the IAM API
    // answers a token without its expiry, then a refusal.
    let sts = TokenServer::with(std::time::Duration::ZERO, |n, _| {
        let token = if n == 1 {
            String::new()
        } else {
            format!(r#""access_token":"sts-{n}","#)
        };
        (
            200,
            "application/json",
            format!(r#"{{{token}"issued_token_type":"{ACCESS_TOKEN_TYPE}","expires_in":3599}}"#),
        )
    })
    .await;
    let iam = TokenServer::with(std::time::Duration::ZERO, |n, _| match n {
        1 => (200, "application/json", r#"{"accessToken":"sa-leaked"}"#.to_owned()),
        _ => (
            403,
            "application/json",
            r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource","status":"PERMISSION_DENIED"}}"#.to_owned(),
        ),
    })
    .await;
    let file = credential_file(
        dir.path(),
        "credentials.json",
        &sts,
        &token_file,
        r#"{"type":"text"}"#,
        &format!(
            r#","service_account_impersonation_url":"http://{}{IMPERSONATE_PATH}""#,
            iam.addr
        ),
    );
    // One config per answer, so that no back-off stands between them.
    let config = |i: u32| {
        format!("  - id: bq{i}\n    provider: google\n    credentials_file: {file}\n    allowed_hosts: [127.0.0.1]\n")
    };
    let yaml = format!("auth_configs:\n{}{}{}", config(1), config(2), config(3));
    let bearerd = start_bearerd(&yaml).await;
    let echo = Echo::start().await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    let expected = [
        "token response is invalid: no access_token",
        "token response is invalid: the service account impersonation response has no expireTime",
        "the identity provider refused the token request (HTTP 403): service account impersonation: PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied on resource",
    ];
    for (i, problem) in expected.iter().enumerate() {
        let error = bearerd_error(get_with_config(&proxy, &url, &format!("bq{}", i + 1)).await).await;
        assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"), "{i}");
        assert!(error.message.contains(problem), "{i}: {}", error.message);
        for token in ["sts-", "sa-leaked", jwt.as_str()] {
            assert!(!error.message.contains(token), "{i}: {}", error.message);
        }
    }
    assert_eq!((sts.count(), iam.count()), (3, 2));
}
