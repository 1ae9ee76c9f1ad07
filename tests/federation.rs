//! Workload identity federation end to end: a cluster issuer signs projected
//! service-account tokens into a volume laid out as the kubelet mounts it, bearerd reads
//! them through the proxy path, and an identity provider that trusts the issuer (its JWKS
//! read over HTTP) checks each one as Entra ID, Keycloak, Google's STS or a SPIFFE-federated
//! server would, for `client_auth: federated_jwt`, `grant: jwt_bearer` and
//! `grant: token_exchange`. The kubelet rotates the token; the provider sees the new one
//! at the next token request. A token the provider refuses is its error, then back-off.
#[path = "support/idp.rs"]
mod idp;
mod support;

use idp::{Alg, ClusterIssuer, Idp, IssuerKey, Trust};
use support::*;

const NAMESPACE: &str = "billing";
const ACCOUNT: &str = "api";
/// The audience the provider's federated credential expects (Keycloak: the realm; Entra:
/// `api://AzureADTokenExchange`).
const AUDIENCE: &str = "https://idp.test/realms/workloads";
const CLIENT_ID: &str = "billing-client";
/// A subject token that is no JWT; `check` must never print it.
const OPAQUE: &str = "opaque-subject-s3cr3t";

const FORM: &str = "application/x-www-form-urlencoded";
const ENC_ASSERTION_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
const ENC_JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
const ENC_TOKEN_EXCHANGE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
const ENC_JWT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";
const ENC_ACCESS_TOKEN_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";

/// An issuer signing with `alg`, and a provider trusting its tokens for the billing
/// service account and [`AUDIENCE`] on behalf of [`CLIENT_ID`].
async fn federation(alg: Alg) -> (ClusterIssuer, Idp) {
    let issuer = ClusterIssuer::start(alg).await;
    let idp = Idp::start(Trust {
        issuer: issuer.url.clone(),
        subject: idp::service_account(NAMESPACE, ACCOUNT),
        audience: AUDIENCE.to_owned(),
        client_id: CLIENT_ID.to_owned(),
    })
    .await;
    (issuer, idp)
}

/// The billing service account's token number `n`, valid for an hour.
fn projected(issuer: &ClusterIssuer, n: u32) -> String {
    issuer.token(NAMESPACE, ACCOUNT, AUDIENCE, idp::now() + 3600, n)
}

/// Auth config `id` at `idp`, with `how` (its grant and authentication lines).
fn auth_config(id: &str, idp: &Idp, how: &str) -> String {
    format!(
        "  - id: {id}\n    token_url: {}\n    client_id: {CLIENT_ID}\n{how}    backoff: {{ initial: 1h, max: 1h }}\n    allowed_hosts: [127.0.0.1]\n",
        idp.url()
    )
}

fn federated_jwt(file: &std::path::Path) -> String {
    format!(
        "    client_auth: federated_jwt\n    assertion_file: {}\n",
        file.display()
    )
}

fn jwt_bearer(file: &std::path::Path) -> String {
    format!(
        "    grant: jwt_bearer\n    client_auth: none\n    assertion_file: {}\n",
        file.display()
    )
}

fn token_exchange(file: &std::path::Path) -> String {
    format!(
        "    grant: token_exchange\n    client_auth: none\n    subject_token_file: {}\n    subject_token_type: urn:ietf:params:oauth:token-type:jwt\n    requested_token_type: urn:ietf:params:oauth:token-type:access_token\n",
        file.display()
    )
}

/// The exact token request each way sends with `jwt`.
fn federated_jwt_body(jwt: &str) -> String {
    format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_assertion_type={ENC_ASSERTION_TYPE}&client_assertion={jwt}"
    )
}

fn jwt_bearer_body(jwt: &str) -> String {
    format!("grant_type={ENC_JWT_BEARER}&assertion={jwt}&client_id={CLIENT_ID}")
}

fn token_exchange_body(jwt: &str) -> String {
    format!(
        "grant_type={ENC_TOKEN_EXCHANGE}&subject_token={jwt}&subject_token_type={ENC_JWT_TYPE}&requested_token_type={ENC_ACCESS_TOKEN_TYPE}&client_id={CLIENT_ID}"
    )
}

fn assert_request(request: &Recorded, body: &str) {
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/oauth2/token")
    );
    assert_eq!(request.header("content-type"), Some(FORM));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.bytes, body.as_bytes(), "\n got: {}\nwant: {body}", request.body);
}

/// Through bearerd with config `id`: a request the provider's token `token` must reach
/// the upstream with (`/only/<token>` answers 401 to any other, so a stale token is
/// dropped, a new one fetched and the request replayed).
async fn through(bearerd: &bearerd::Server, echo: &Echo, id: &str, token: &str) {
    let proxy = proxied_client(bearerd.proxy_addr);
    let response = get_with_config(&proxy, &format!("http://{}/only/{token}", echo.addr), id).await;
    assert_eq!(response.status(), 200, "{id}");
    assert_eq!(echoed(response).await.all("authorization"), [format!("Bearer {token}")]);
}

/// The kubelet's rotation, for one way of sending the token (`how` for the file, `body`
/// for the JWT): the provider accepts the first token, the kubelet swaps in the next (a new
/// JWT signed by the issuer), and the next token request carries it.
async fn rotation(alg: Alg, how: fn(&std::path::Path) -> String, body: fn(&str) -> String) {
    let (issuer, idp) = federation(alg).await;
    let (first, second) = (projected(&issuer, 1), projected(&issuer, 2));
    let mut volume = Mounted::new(&[("token", first.as_bytes())]);
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!(
        "auth_configs:\n{}",
        auth_config("fed", &idp, &how(&volume.path("token")))
    ))
    .await;
    through(&bearerd, &echo, "fed", "federated-1").await;

    volume.update(&[("token", second.as_bytes())]);
    through(&bearerd, &echo, "fed", "federated-2").await;
    let requests = idp.tokens.requests();
    assert_eq!(requests.len(), 2);
    assert_request(&requests[0], &body(&first));
    assert_request(&requests[1], &body(&second));
}

#[tokio::test]
async fn federated_client_authentication_sends_the_rotated_service_account_token() {
    rotation(Alg::RS256, federated_jwt, federated_jwt_body).await;
}

#[tokio::test]
async fn a_jwt_bearer_grant_sends_the_rotated_jwt_svid() {
    rotation(Alg::ES256, jwt_bearer, jwt_bearer_body).await;
}

#[tokio::test]
async fn a_token_exchange_trades_the_rotated_subject_token() {
    rotation(Alg::RS256, token_exchange, token_exchange_body).await;
}

#[tokio::test]
async fn a_token_the_provider_refuses_is_its_error_then_back_off() {
    let (issuer, idp) = federation(Alg::ES256).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, jwt: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{jwt}\n")).unwrap();
        path
    };
    let claims = issuer.claims(NAMESPACE, ACCOUNT, AUDIENCE, idp::now() + 3600, 1);
    // Signed by a key the issuer never published, under the issuer's name and key id.
    let forged = IssuerKey::generate(Alg::ES256, issuer.kid()).sign(&claims);
    let wrong_audience = issuer.token(NAMESPACE, ACCOUNT, "api://AzureADTokenExchange", idp::now() + 3600, 1);
    let other_account = issuer.token(NAMESPACE, "batch", AUDIENCE, idp::now() + 3600, 1);
    let expired = issuer.token(NAMESPACE, ACCOUNT, AUDIENCE, 1_000_000_000, 1);
    let configs = [
        auth_config("forged", &idp, &federated_jwt(&write("forged", &forged))),
        auth_config("audience", &idp, &jwt_bearer(&write("audience", &wrong_audience))),
        auth_config("account", &idp, &token_exchange(&write("account", &other_account))),
        auth_config("expired", &idp, &federated_jwt(&write("expired", &expired))),
    ];
    let echo = Echo::start().await;
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", configs.concat())).await;
    let proxy = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);
    let expired_file = dir.path().join("expired").display().to_string();
    for (id, sent, problem) in [
        (
            "forged",
            1,
            "the identity provider refused the token request (HTTP 401): invalid_client: signature verification failed"
                .to_owned(),
        ),
        (
            "audience",
            2,
            format!(
                "the identity provider refused the token request (HTTP 400): invalid_grant: aud [\"api://AzureADTokenExchange\"] does not include {AUDIENCE}"
            ),
        ),
        (
            "account",
            3,
            "the identity provider refused the token request (HTTP 400): invalid_request: sub \"system:serviceaccount:billing:batch\" matches no federated credential"
                .to_owned(),
        ),
        (
            "expired",
            3,
            format!(
                "assertion file {expired_file} holds an assertion that expired at 2001-09-09T01:46:40Z: whatever writes the file has stopped renewing it"
            ),
        ),
    ] {
        let error = bearerd_error(get_with_config(&proxy, &url, id).await).await;
        assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"), "{id}");
        assert!(error.message.contains(&problem), "{id}: {}", error.message);
        assert_eq!(idp.tokens.count(), sent, "{id}: an expired assertion is never sent");
        for jwt in [&forged, &wrong_audience, &other_account, &expired] {
            for part in jwt.split('.') {
                assert!(!error.message.contains(part), "{id}: {}", error.message);
            }
        }

        // Back-off: the next request is not sent, even though nothing changed.
        let error = bearerd_error(get_with_config(&proxy, &url, id).await).await;
        assert_eq!((error.status, error.code.as_str()), (503, "token_backoff"), "{id}");
        assert_eq!(idp.tokens.count(), sent, "{id}");
    }
}

/// The provider itself, spoken to directly: it refuses each flaw a real one refuses, so the
/// tests above prove what they claim.
#[tokio::test]
async fn the_test_provider_checks_signature_issuer_subject_audience_and_expiry() {
    let (issuer, idp) = federation(Alg::RS256).await;
    let other_issuer = ClusterIssuer::start(Alg::RS256).await;
    let later = idp::now() + 3600;
    let good = issuer.claims(NAMESPACE, ACCOUNT, AUDIENCE, later, 1);
    let mut foreign = good.clone();
    foreign["iss"] = other_issuer.url.clone().into();
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases = [
        ("valid", issuer.sign(&good), None),
        (
            "forged",
            IssuerKey::generate(Alg::RS256, issuer.kid()).sign(&good),
            Some("signature verification failed".to_owned()),
        ),
        (
            "unknown kid",
            other_issuer.sign(&good),
            Some("no key of the trusted issuer has this kid".to_owned()),
        ),
        (
            "algorithm",
            IssuerKey::generate(Alg::ES256, issuer.kid()).sign(&good),
            Some("the algorithm does not match the issuer's key".to_owned()),
        ),
        (
            "iss",
            issuer.sign(&foreign),
            Some(format!("iss \"{}\" is not trusted", other_issuer.url)),
        ),
        (
            "sub",
            issuer.token(NAMESPACE, "batch", AUDIENCE, later, 1),
            Some("sub \"system:serviceaccount:billing:batch\" matches no federated credential".to_owned()),
        ),
        (
            "aud",
            issuer.token(NAMESPACE, ACCOUNT, "other", later, 1),
            Some("aud [\"other\"] does not include https://idp.test/realms/workloads".to_owned()),
        ),
        (
            "exp",
            issuer.token(NAMESPACE, ACCOUNT, AUDIENCE, idp::now() - 1, 1),
            Some("the assertion has expired".to_owned()),
        ),
        (
            "no exp",
            issuer.sign(&no_exp),
            Some("the assertion has no exp".to_owned()),
        ),
    ];
    for (case, jwt, refusal) in cases {
        for (status, error, form) in each_way(&jwt) {
            let (answered, body) = ask(&idp, &form).await;
            match &refusal {
                None => {
                    assert_eq!(answered, 200, "{case} {form:?}: {body}");
                    assert_eq!(body["token_type"], "Bearer");
                }
                Some(description) => {
                    assert_eq!(answered, status, "{case} {form:?}");
                    assert_eq!(body["error"], error, "{case}");
                    assert_eq!(body["error_description"], description.as_str(), "{case}");
                }
            }
        }
    }
}

/// A token request's form fields.
type Form<'a> = Vec<(&'static str, &'a str)>;

/// `jwt` sent each way, with the refusal's status and error each way gets.
fn each_way(jwt: &str) -> [(u16, &'static str, Form<'_>); 3] {
    [
        (
            401,
            "invalid_client",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_assertion_type", idp::CLIENT_ASSERTION_TYPE),
                ("client_assertion", jwt),
            ],
        ),
        (
            400,
            "invalid_grant",
            vec![("grant_type", idp::JWT_BEARER), ("assertion", jwt)],
        ),
        (
            400,
            "invalid_request",
            vec![
                ("grant_type", idp::TOKEN_EXCHANGE),
                ("subject_token", jwt),
                ("subject_token_type", idp::JWT_TOKEN_TYPE),
            ],
        ),
    ]
}

/// A token request with `form` straight to `idp`: the status and the JSON answer.
async fn ask(idp: &Idp, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let response = direct_client().post(idp.url()).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_test_provider_binds_a_token_to_its_client_and_names_what_it_exchanged() {
    let (issuer, idp) = federation(Alg::ES256).await;
    let valid = projected(&issuer, 1);
    let (status, body) = ask(
        &idp,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "someone-else"),
            ("client_assertion_type", idp::CLIENT_ASSERTION_TYPE),
            ("client_assertion", &valid),
        ],
    )
    .await;
    assert_eq!((status, &body["error"]), (401, &"invalid_client".into()));
    assert_eq!(body["error_description"], "client_id is not billing-client");
    let (status, exchanged) = ask(
        &idp,
        &[
            ("grant_type", idp::TOKEN_EXCHANGE),
            ("subject_token", &valid),
            ("subject_token_type", idp::JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(exchanged["access_token"], "federated-2");
    assert_eq!(exchanged["issued_token_type"], idp::ACCESS_TOKEN_TYPE);
}

/// `bearerd check` (the binary) on `config`, with `args`: exit code, stdout, stderr.
fn check(config: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A table line's cells (separated by two or more spaces).
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The token-file table `check` prints after its blank line, as cells.
fn file_table(stdout: &str) -> Vec<Vec<String>> {
    let (_, files) = stdout
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no file table: {stdout}"));
    files.lines().map(cells).collect()
}

/// What `check` says of a JWT expiring at `exp`.
fn expires_at(exp: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
    format!("readable JWT, expires at {}", bearerd::config::format_timestamp(at))
}

/// A provider, and token files in a directory: `token` (the billing account's, for an
/// hour), `forged` (signed by a key the issuer never published), `expired`, `opaque` and
/// `not-a-jwt` (both [`OPAQUE`]).
struct Files {
    /// Serves its keys while the test runs.
    _issuer: ClusterIssuer,
    idp: Idp,
    dir: tempfile::TempDir,
    exp: u64,
    tokens: [String; 3],
}

impl Files {
    async fn new() -> Self {
        let (issuer, idp) = federation(Alg::ES256).await;
        let dir = tempfile::tempdir().unwrap();
        let exp = idp::now() + 3600;
        let tokens = [
            issuer.token(NAMESPACE, ACCOUNT, AUDIENCE, exp, 1),
            IssuerKey::generate(Alg::ES256, issuer.kid()).sign(&issuer.claims(NAMESPACE, ACCOUNT, AUDIENCE, exp, 2)),
            issuer.token(NAMESPACE, ACCOUNT, AUDIENCE, 1_000_000_000, 3),
        ];
        let [projected, forged, expired] = &tokens;
        for (name, content) in [
            ("token", projected.as_str()),
            ("forged", forged),
            ("expired", expired),
            ("opaque", OPAQUE),
            ("not-a-jwt", OPAQUE),
        ] {
            std::fs::write(dir.path().join(name), format!("{content}\n")).unwrap();
        }
        Self {
            _issuer: issuer,
            idp,
            dir,
            exp,
            tokens,
        }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    /// Three configs the provider accepts, all reading `token`.
    fn working(&self) -> String {
        [
            auth_config("fed", &self.idp, &federated_jwt(&self.file("token"))),
            auth_config("svid", &self.idp, &jwt_bearer(&self.file("token"))),
            auth_config("exchange", &self.idp, &token_exchange(&self.file("token"))),
        ]
        .concat()
    }

    /// The file table's header and the lines of [`Files::working`].
    fn working_files(&self) -> Vec<Vec<String>> {
        let found = expires_at(self.exp);
        [
            ["ID", "TOKEN FROM", "FILE", "FOUND"].map(str::to_owned),
            ["fed", "assertion file", &self.path("token"), &found].map(str::to_owned),
            ["svid", "assertion file", &self.path("token"), &found].map(str::to_owned),
            ["exchange", "subject token file", &self.path("token"), &found].map(str::to_owned),
        ]
        .map(Vec::from)
        .to_vec()
    }

    /// `check` printed no token's payload or signature (the header is the issuer's `alg`
    /// and `kid`, the same in every token it signs) and not the opaque token.
    fn assert_never_printed(&self, printed: &str) {
        for jwt in &self.tokens {
            for part in jwt.split('.').skip(1) {
                assert!(!printed.contains(part), "a token's part in:\n{printed}");
            }
        }
        assert!(!printed.contains(OPAQUE), "{printed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_offline_lists_each_token_file_with_what_reading_it_found() {
    let files = Files::new().await;
    let opaque_exchange = format!(
        "    grant: token_exchange\n    client_auth: none\n    subject_token_file: {}\n    subject_token_type: urn:ietf:params:oauth:token-type:access_token\n",
        files.path("opaque")
    );
    let config = format!(
        "auth_configs:\n{}{}",
        files.working(),
        auth_config("opaque", &files.idp, &opaque_exchange)
    );
    let (code, stdout, stderr) = check(&config, &["--offline"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let mut expected = files.working_files();
    expected.push(vec![
        "opaque".into(),
        "subject token file".into(),
        files.path("opaque"),
        "readable (not a JWT type: sent as it is)".into(),
    ]);
    assert_eq!(file_table(&stdout), expected, "{stdout}");
    assert_eq!(stdout.matches("offline: nothing contacted").count(), 4, "{stdout}");
    assert_eq!(files.idp.tokens.count(), 0);
    files.assert_never_printed(&format!("{stdout}{stderr}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_offline_fails_a_token_file_no_token_request_could_use_and_says_why() {
    let files = Files::new().await;
    let idp = &files.idp;
    let broken = [
        auth_config("stale", idp, &federated_jwt(&files.file("expired"))),
        auth_config("missing", idp, &jwt_bearer(&files.file("missing"))),
        auth_config("garbled", idp, &token_exchange(&files.file("not-a-jwt"))),
    ]
    .concat();
    let (code, stdout, stderr) = check(&format!("auth_configs:\n{broken}"), &["--offline"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let expired =
        "holds an assertion that expired at 2001-09-09T01:46:40Z: whatever writes the file has stopped renewing it";
    let not_a_jwt = "does not hold a JWT (three base64url parts, the first two JSON objects)";
    let lines: Vec<&str> = stdout.lines().collect();
    let table = file_table(&stdout);
    for (line, id, grant, what, name, problem) in [
        (1, "stale", "client_credentials", "assertion file", "expired", expired),
        (
            2,
            "missing",
            "jwt_bearer",
            "assertion file",
            "missing",
            "cannot be read: ",
        ),
        (
            3,
            "garbled",
            "token_exchange",
            "subject token file",
            "not-a-jwt",
            not_a_jwt,
        ),
    ] {
        let row = cells(lines[line]);
        assert_eq!(row[..5], [id, grant, &idp.url(), "FAILED", "-"][..], "{stdout}");
        let named = format!("{what} {} {problem}", files.path(name));
        assert!(row[5].starts_with(&named), "{id}: {stdout}");
        assert_eq!(table[line][..3], [id, what, &files.path(name)][..], "{stdout}");
        assert!(table[line][3].starts_with(&format!("FAILED: {problem}")), "{stdout}");
    }
    assert_eq!(idp.tokens.count(), 0);
    files.assert_never_printed(&format!("{stdout}{stderr}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_online_lists_the_files_and_a_forged_token_is_the_providers_refusal() {
    let files = Files::new().await;
    let config = format!(
        "auth_configs:\n{}{}",
        files.working(),
        auth_config("forged", &files.idp, &federated_jwt(&files.file("forged")))
    );
    let (code, stdout, stderr) = check(&config, &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, id) in [(1, "fed"), (2, "svid"), (3, "exchange")] {
        assert_eq!(cells(lines[line])[3..5], ["ok", "3600s"][..], "{id}: {stdout}");
    }
    assert!(
        lines[4].contains(
            "the identity provider refused the token request (HTTP 401): invalid_client: signature verification failed"
        ),
        "{stdout}"
    );
    // Bearerd reads a forged token as well as the real one: only the provider can tell.
    let mut expected = files.working_files();
    expected.push(vec![
        "forged".into(),
        "assertion file".into(),
        files.path("forged"),
        expires_at(files.exp),
    ]);
    assert_eq!(file_table(&stdout), expected, "{stdout}");
    assert_eq!(files.idp.tokens.count(), 4);
    files.assert_never_printed(&format!("{stdout}{stderr}"));
}
