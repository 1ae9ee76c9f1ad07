//! The user grants against a recording token endpoint: `refresh_token` from its file, each
//! rotated refresh token kept in the sealed `state.file` across restarts, and
//! `invalid_grant` turning into `consent_required` (502, `/configs`, the metric) without
//! further token requests.
mod support;

use std::path::Path;

use bearerd::config::{Config, Env};
use bearerd::secret::RefreshToken;
use bearerd::secret::SealingKey;
use bearerd::state::{Record, StateStore};
use support::*;

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A `refresh_token` config `crm` (`client_secret_basic`) whose file holds `first`, with
/// its state in `dir`.
fn crm(dir: &Path, tokens: &TokenServer, first: &str) -> String {
    std::fs::write(dir.join("state-key"), format!("{KEY_HEX}\n")).unwrap();
    std::fs::write(dir.join("refresh-token"), format!("{first}\n")).unwrap();
    format!(
        "state:\n  file: {0}/state.json\n  key_file: {0}/state-key\nauth_configs:\n  - id: crm\n    grant: refresh_token\n    refresh_token_file: {0}/refresh-token\n    token_url: {1}\n    client_id: crm-client\n    client_secret: crm-secret\n    scopes: [contacts.read]\n    allowed_hosts: [127.0.0.1]\n",
        dir.display(),
        tokens.url()
    )
}

/// The refresh token the state file holds, read from the disk with the key.
fn on_disk(dir: &Path) -> Vec<Option<String>> {
    let key = SealingKey::parse(KEY_HEX.as_bytes()).unwrap();
    let records = StateStore::read(&dir.join("state.json"), &key).unwrap().unwrap();
    records
        .values()
        .map(|record| record.refresh_token.as_ref().map(|t| t.expose().to_owned()))
        .collect()
}

fn form_of(request: &Recorded) -> Vec<(String, String)> {
    form_urlencoded::parse(request.body.as_bytes()).into_owned().collect()
}

async fn through(bearerd: &bearerd::Server, echo: &Echo, path: &str) -> reqwest::Response {
    get_with_config(
        &proxied_client(bearerd.proxy_addr),
        &format!("http://{}{path}", echo.addr),
        "crm",
    )
    .await
}

async fn configs(bearerd: &bearerd::Server) -> serde_json::Value {
    let (status, body) = get_text(&format!("http://{}/configs", bearerd.admin_addr)).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn refresh_token_requests_are_exact_and_each_rotation_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::with(std::time::Duration::ZERO, rotating).await;
    let echo = Echo::start().await;
    let yaml = crm(dir.path(), &tokens, "rt-from-file");
    let bearerd = start_bearerd(&yaml).await;
    let seen = echoed(through(&bearerd, &echo, "/x").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at1"));
    // The upstream refuses at1: the replay refreshes with the rotated rt1.
    let seen = echoed(through(&bearerd, &echo, "/only/at2").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at2"));

    let requests = tokens.requests();
    assert_eq!(requests.len(), 2);
    for (request, sent) in requests.iter().zip(["rt-from-file", "rt1"]) {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/oauth2/token")
        );
        assert_eq!(
            request.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            request.header("authorization"),
            Some("Basic Y3JtLWNsaWVudDpjcm0tc2VjcmV0")
        );
        assert_eq!(
            request.body,
            format!("grant_type=refresh_token&refresh_token={sent}&scope=contacts.read")
        );
    }
    assert_eq!(on_disk(dir.path()), [Some("rt2".to_owned())]);
    let raw = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(!raw.contains("rt2") && !raw.contains("rt-from-file"), "{raw}");

    // A restart with the same file and state: the newest refresh token, no new consent.
    drop(bearerd);
    let bearerd = start_bearerd(&yaml).await;
    let seen = echoed(through(&bearerd, &echo, "/x").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at3"));
    assert_eq!(
        form_of(&tokens.requests()[2])[1],
        ("refresh_token".into(), "rt2".into())
    );
    assert_eq!(on_disk(dir.path()), [Some("rt3".to_owned())]);
    assert_eq!(
        configs(&bearerd).await["auth_configs"][0]["token"]["consent_required"],
        false
    );
    assert!(
        metrics(&bearerd)
            .await
            .contains("bearerd_consent_required{auth_config=\"crm\"} 0\n")
    );
}

#[tokio::test]
async fn invalid_grant_is_consent_required_until_a_new_refresh_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::with(std::time::Duration::ZERO, |n, recorded| {
        if form_of(recorded).contains(&("refresh_token".into(), "rt-revoked".into())) {
            invalid_grant()
        } else {
            rotating(n, recorded)
        }
    })
    .await;
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&crm(dir.path(), &tokens, "rt-revoked")).await;
    let expected = format!(
        "no access token: auth config `crm` needs a new consent: put a new refresh token in refresh_token_file ({}/refresh-token)",
        dir.path().display()
    );
    let first = bearerd_error(through(&bearerd, &echo, "/x").await).await;
    assert_eq!((first.status, first.code.as_str()), (502, "token_unavailable"));
    assert_eq!(first.header.as_deref(), Some("token_unavailable"));
    assert_eq!(first.auth_config.as_deref(), Some("crm"));
    assert_eq!(
        first.message,
        format!(
            "{expected} (the identity provider refused its refresh token: invalid_grant: refresh token already used)"
        )
    );
    // Later requests fail at once, with no token request and no back-off wait.
    for _ in 0..20 {
        let later = bearerd_error(through(&bearerd, &echo, "/x").await).await;
        assert_eq!((later.status, later.message.as_str()), (502, expected.as_str()));
    }
    assert_eq!(tokens.count(), 1);
    assert_eq!(echo.requests(), 0);
    let json = configs(&bearerd).await;
    let crm_json = &json["auth_configs"][0];
    assert_eq!(crm_json["grant"], "refresh_token");
    assert_eq!(crm_json["token"]["consent_required"], true);
    assert_eq!(
        crm_json["refresh_token_file"],
        format!("{}/refresh-token", dir.path().display())
    );
    let exposition = metrics(&bearerd).await;
    assert!(
        exposition.contains("bearerd_consent_required{auth_config=\"crm\"} 1\n"),
        "{exposition}"
    );
    assert!(
        exposition.contains("bearerd_token_requests_total{auth_config=\"crm\",outcome=\"error\"} 1\n"),
        "{exposition}"
    );
    assert_eq!(on_disk(dir.path()), [None]);

    // A restart with the same file: still spent, still no token request.
    drop(bearerd);
    let yaml = crm(dir.path(), &tokens, "rt-revoked");
    let bearerd = start_bearerd(&yaml).await;
    assert!(
        metrics(&bearerd)
            .await
            .contains("bearerd_consent_required{auth_config=\"crm\"} 1\n")
    );
    let again = bearerd_error(through(&bearerd, &echo, "/x").await).await;
    assert_eq!(again.message, expected);
    assert_eq!(tokens.count(), 1);

    // A new token in the file (a Secret updated), then a reload: the new consent.
    let yaml = crm(dir.path(), &tokens, "rt-granted-again");
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{yaml}")).unwrap();
    bearerd.reload(&path, &Env::new()).unwrap();
    assert!(
        metrics(&bearerd)
            .await
            .contains("bearerd_consent_required{auth_config=\"crm\"} 0\n")
    );
    assert_eq!(
        configs(&bearerd).await["auth_configs"][0]["token"]["consent_required"],
        false
    );
    let seen = echoed(through(&bearerd, &echo, "/x").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at2"));
    assert_eq!(
        form_of(&tokens.requests()[1])[1],
        ("refresh_token".into(), "rt-granted-again".into())
    );
    assert_eq!(on_disk(dir.path()), [Some("rt2".to_owned())]);
    // Nothing the admin listener shows holds a token.
    let shown = format!("{}{}", configs(&bearerd).await, metrics(&bearerd).await);
    for secret in ["rt-revoked", "rt-granted-again", "rt2", "at2", "crm-secret"] {
        assert!(!shown.contains(secret), "{secret} shown");
    }
}

#[tokio::test]
async fn a_state_file_bearerd_cannot_open_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start().await;
    let yaml = crm(dir.path(), &tokens, "rt");
    std::fs::write(
        dir.path().join("state.json"),
        "{\"bearerd_state\":1,\"alg\":\"A256GCM\"",
    )
    .unwrap();
    let config = Config::from_yaml(
        "test.yaml",
        &format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{yaml}"),
        &Env::new(),
    )
    .unwrap();
    let error = bearerd::Server::start(config).await.err().unwrap().to_string();
    assert_eq!(
        error,
        format!(
            "state.file {}/state.json is not a complete bearerd state file (it is not complete JSON: cut short?); it was not read",
            dir.path().display()
        )
    );
}

/// An `authorization_code` config `mail` for a public client (`client_auth: none`) whose
/// consent starts at the token server's host.
fn mail(dir: &Path, tokens: &TokenServer) -> String {
    std::fs::write(dir.join("state-key"), format!("{KEY_HEX}\n")).unwrap();
    format!(
        "state:\n  file: {0}/state.json\n  key_file: {0}/state-key\nauth_configs:\n  - id: mail\n    grant: authorization_code\n    token_url: {1}\n    authorization_url: http://{2}/authorize\n    client_id: mail-client\n    client_auth: none\n    scopes: [mail.read, offline_access]\n    authorize_params: {{ prompt: consent }}\n    allowed_hosts: [127.0.0.1]\n",
        dir.display(),
        tokens.url(),
        tokens.addr
    )
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_consent_over_http_exchanges_the_code_with_pkce_and_connects_the_config() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::with(std::time::Duration::ZERO, rotating).await;
    let echo = Echo::start().await;
    let yaml = mail(dir.path(), &tokens);
    let bearerd = start_bearerd(&yaml).await;
    let admin = bearerd.admin_addr;
    let before = bearerd_error(through_as(&bearerd, &echo, "/x", "mail").await).await;
    assert_eq!(
        (before.status, before.message.as_str()),
        (
            502,
            "no access token: auth config `mail` needs a new consent: open /authorize/mail on the admin listener"
        )
    );
    assert_consent_required(&bearerd, "mail", true).await;

    let browser = no_redirects();
    let (location, cookie) = start_consent(&browser, admin).await;
    let param = |name: &str| {
        location
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(location.path(), "/authorize");
    let redirect_uri = format!("http://127.0.0.1:{}/callback", admin.port());
    assert_eq!(param("redirect_uri").as_deref(), Some(redirect_uri.as_str()));
    assert_eq!(param("client_id").as_deref(), Some("mail-client"));
    assert_eq!(param("scope").as_deref(), Some("mail.read offline_access"));
    assert_eq!(param("prompt").as_deref(), Some("consent"));
    let state = param("state").unwrap();
    let challenge = param("code_challenge").unwrap();

    // The provider sends the browser back with a code.
    let back = browser
        .get(format!("http://{admin}/callback?code=the-code&state={state}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.headers()["content-type"], "text/html; charset=utf-8");
    let page = back.text().await.unwrap();
    assert!(page.contains("<h1>Connected: mail</h1>"), "{page}");
    assert!(
        !page.contains("at1") && !page.contains("rt1") && !page.contains("the-code"),
        "{page}"
    );

    let exchange = &tokens.requests()[0];
    assert_eq!(exchange.header("authorization"), None, "a public client");
    let form = form_of(exchange);
    let verifier = form.iter().find(|(k, _)| k == "code_verifier").unwrap().1.clone();
    assert_eq!(
        exchange.body,
        format!(
            "grant_type=authorization_code&code=the-code&redirect_uri={}&code_verifier={verifier}&client_id=mail-client",
            form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect::<String>()
        )
    );
    let hashed = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hashed),
        challenge
    );

    // Connected: the exchange's access token is used, with no other token request.
    let seen = echoed(through_as(&bearerd, &echo, "/x", "mail").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at1"));
    assert_eq!(tokens.count(), 1);
    assert_eq!(on_disk(dir.path()), [Some("rt1".to_owned())]);
    assert_consent_required(&bearerd, "mail", false).await;
    assert_eq!(
        configs(&bearerd).await["auth_configs"][0]["authorize"]["path"],
        "/authorize/mail"
    );
    // The state is spent.
    let replay = browser
        .get(format!("http://{admin}/callback?code=the-code&state={state}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(tokens.count(), 1);

    // A restart carries on with the refresh token, no consent.
    drop(bearerd);
    let bearerd = start_bearerd(&yaml).await;
    let seen = echoed(through_as(&bearerd, &echo, "/x", "mail").await).await;
    assert_eq!(seen.header("authorization"), Some("Bearer at2"));
    assert_eq!(
        tokens.requests()[1].body,
        "grant_type=refresh_token&refresh_token=rt1&scope=mail.read+offline_access&client_id=mail-client"
    );
}

/// `/configs` and the metric agree on whether config `id` (the first) needs a consent.
async fn assert_consent_required(bearerd: &bearerd::Server, id: &str, required: bool) {
    let json = configs(bearerd).await;
    assert_eq!(json["auth_configs"][0]["id"], id);
    assert_eq!(json["auth_configs"][0]["token"]["consent_required"], required);
    let series = format!(
        "bearerd_consent_required{{auth_config=\"{id}\"}} {}\n",
        u8::from(required)
    );
    let exposition = metrics(bearerd).await;
    assert!(exposition.contains(&series), "{exposition}");
}

/// `GET /authorize/mail` as a browser: where it is sent, and the cookie it gets.
async fn start_consent(browser: &reqwest::Client, admin: std::net::SocketAddr) -> (url::Url, String) {
    let started = browser
        .get(format!("http://{admin}/authorize/mail"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 302);
    let location = url::Url::parse(started.headers()["location"].to_str().unwrap()).unwrap();
    let set_cookie = started.headers()["set-cookie"].to_str().unwrap();
    (location, set_cookie.split(';').next().unwrap().to_owned())
}

async fn through_as(bearerd: &bearerd::Server, echo: &Echo, path: &str, config: &str) -> reqwest::Response {
    get_with_config(
        &proxied_client(bearerd.proxy_addr),
        &format!("http://{}{path}", echo.addr),
        config,
    )
    .await
}

/// `bearerd check` on `yaml`: exit code and standard output.
fn check(dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The cells of `config`'s row in a check table.
fn row(table: &str, config: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|line| line.starts_with(&format!("{config} ")))
        .unwrap_or_else(|| panic!("no row for {config}:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_shows_consent_required_without_failing_and_never_spends_a_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::with(std::time::Duration::ZERO, rotating).await;
    let crm_yaml = crm(dir.path(), &tokens, "rt-from-file");
    let mail_config = mail(dir.path(), &tokens);
    let mail_entry = &mail_config[mail_config.find("  - id: mail").unwrap()..];
    let billing = format!(
        "  - id: billing\n    token_url: {}\n    client_id: b\n    client_secret: s\n    allowed_hosts: [127.0.0.1]\n",
        tokens.url()
    );
    let yaml = format!("{crm_yaml}{mail_entry}{billing}");
    let (code, table) = check(dir.path(), &yaml);
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(row(&table, "billing")[3], "ok");
    assert_eq!(
        row(&table, "mail")[1..],
        [
            "authorization_code",
            &tokens.url(),
            "consent_required",
            "-",
            "open /authorize/mail on the admin listener"
        ]
    );
    assert_eq!(row(&table, "crm")[3], "consented", "the file's token, not yet used");
    assert_eq!(
        tokens.count(),
        1,
        "only billing's token request: no refresh token spent"
    );
    assert!(!dir.path().join("state.json").exists(), "check writes nothing");

    // The file's token used and refused: consent required, named by its remedy.
    let config = Config::from_yaml("t", &yaml, &Env::new()).unwrap();
    let crm_config = config.auth_config("crm").unwrap();
    let mail_auth = config.auth_config("mail").unwrap();
    let store = StateStore::open(config.state.as_ref().unwrap()).unwrap();
    let seed = bearerd::state::sha256_hex(b"rt-from-file");
    let key = bearerd::state::record_key;
    store
        .put(&key(&crm_config), Some(Record::new("crm", None, Some(seed))))
        .unwrap();
    store
        .put(
            &key(&mail_auth),
            Some(Record::new("mail", Some(RefreshToken::new("rt-consented")), None)),
        )
        .unwrap();
    let (code, table) = check(dir.path(), &yaml);
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(row(&table, "crm")[3..5], ["consent_required", "-"]);
    assert!(
        row(&table, "crm")[5].starts_with("put a new refresh token in refresh_token_file ("),
        "{table}"
    );
    assert_eq!(row(&table, "mail")[3], "consented");
    assert!(
        !table.contains("rt-consented") && !table.contains("rt-from-file"),
        "{table}"
    );

    // A state file sealed with another key fails the user grants, and the check.
    std::fs::write(dir.path().join("state-key"), "ff".repeat(32)).unwrap();
    let (code, table) = check(dir.path(), &yaml);
    assert_eq!(code, Some(1), "{table}");
    for config in ["crm", "mail"] {
        let cells = row(&table, config);
        assert_eq!(cells[3], "FAILED");
        assert!(cells[5].contains("cannot be opened with state.key_file"), "{table}");
    }
    assert_eq!(row(&table, "billing")[3], "ok");
    assert_eq!(tokens.count(), 3);
}
