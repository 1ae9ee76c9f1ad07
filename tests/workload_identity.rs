//! Workload identity federation in the real binary, configured as a pod would configure it:
//! Entra ID from the variables Azure Workload Identity's webhook injects into the process
//! environment, Google from the credential file `GOOGLE_APPLICATION_CREDENTIALS` names. At
//! `trace`, neither the workload's tokens nor the tokens they are traded for appear in the
//! logs or in `/configs`.
mod support;

#[path = "support/binary.rs"]
mod binary;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use binary::Bearerd;
use support::*;

/// A projected service-account token for `audience`, valid for an hour.
fn projected_token(audience: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    format!(
        "{}.{}.c2lnbmF0dXJlLWZvci0{}",
        B64URL.encode(r#"{"alg":"RS256","kid":"cluster"}"#),
        B64URL.encode(format!(
            r#"{{"iss":"https://oidc.cluster.test","sub":"system:serviceaccount:billing:billing-app","aud":["{audience}"],"exp":{exp}}}"#
        )),
        audience.len()
    )
}

/// Google's STS and IAM Credentials API on loopback (answering `sts-federated-<n>` and
/// `sa-access-<n>`), and an `external_account` file in `dir` naming them and `token_file`.
async fn google(dir: &Path, token_file: &Path) -> (TokenServer, TokenServer, PathBuf) {
    let sts = TokenServer::with(Duration::ZERO, |n, _| {
        (
            200,
            "application/json",
            format!(
                r#"{{"access_token":"sts-federated-{n}","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3599}}"#
            ),
        )
    })
    .await;
    let iam = TokenServer::with(Duration::ZERO, |n, _| {
        let expire = bearerd::config::format_timestamp(SystemTime::now() + Duration::from_hours(1));
        (
            200,
            "application/json",
            format!(r#"{{"accessToken":"sa-access-{n}","expireTime":"{expire}"}}"#),
        )
    })
    .await;
    let credentials = dir.join("credentials.json");
    std::fs::write(
        &credentials,
        format!(
            r#"{{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"http://{}/v1/token","credential_source":{{"file":"{}"}},"service_account_impersonation_url":"http://{}/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken"}}"#,
            sts.addr,
            token_file.display(),
            iam.addr
        ),
    )
    .unwrap();
    (sts, iam, credentials)
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_and_google_federation_in_the_binary_never_show_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (azure_file, gcp_file) = (dir.path().join("azure-identity-token"), dir.path().join("gcp-token"));
    let (azure_jwt, gcp_jwt) = (
        projected_token("api://AzureADTokenExchange"),
        projected_token("https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"),
    );
    std::fs::write(&azure_file, &azure_jwt).unwrap();
    std::fs::write(&gcp_file, &gcp_jwt).unwrap();

    let entra = TokenServer::with(Duration::ZERO, |n, _| ok_token(&format!("entra-access-{n}"), 3600)).await;
    let (sts, iam, credentials) = google(dir.path(), &gcp_file).await;

    let config = "auth_configs:
  - id: graph
    provider: microsoft
    scopes: [https://graph.microsoft.com/.default]
    allowed_hosts: [127.0.0.1]
  - id: gcs
    provider: google
    allowed_hosts: [127.0.0.1]
";
    let authority = format!("http://{}/", entra.addr);
    let env = [
        ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("AZURE_TENANT_ID", "0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1"),
        ("AZURE_FEDERATED_TOKEN_FILE", azure_file.to_str().unwrap()),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("GOOGLE_APPLICATION_CREDENTIALS", credentials.to_str().unwrap()),
    ];
    let bearerd = Bearerd::start(config, "trace", &env);
    let echo = Echo::start().await;
    let proxy = proxied_client(bearerd.proxy.parse().unwrap());
    let url = format!("http://{}/x", echo.addr);
    for (id, token) in [("graph", "Bearer entra-access-1"), ("gcs", "Bearer sa-access-1")] {
        let seen = echoed(get_with_config(&proxy, &url, id).await).await;
        assert_eq!(seen.all("authorization"), [token], "{id}");
    }
    let entra_requests = entra.requests();
    assert_eq!(entra_requests.len(), 1);
    assert_eq!(
        entra_requests[0].path,
        "/0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1/oauth2/v2.0/token"
    );
    assert!(
        entra_requests[0]
            .body
            .contains("&client_id=11111111-2222-3333-4444-555555555555&"),
        "{}",
        entra_requests[0].body
    );
    assert_eq!((sts.count(), iam.count()), (1, 1));

    let (status, configs) = bearerd.admin_get("/configs").await;
    assert_eq!(status, 200);
    assert_listed(&configs);
    let logs = bearerd
        .logs_when("both request lines", |logs| {
            logs.matches(r#""message":"request""#).count() == 2
        })
        .await;
    for secret in [
        azure_jwt.as_str(),
        gcp_jwt.as_str(),
        "entra-access-",
        "sts-federated-",
        "sa-access-",
    ] {
        assert!(!logs.contains(secret), "`{secret}` appears in the trace logs");
        assert!(!configs.contains(secret), "`{secret}` appears in /configs");
    }
}

/// `/configs` shows the Entra config's client id from the environment and its method, and
/// the Google config as a token exchange with no client at all.
fn assert_listed(configs: &str) {
    let listed: serde_json::Value = serde_json::from_str(configs).unwrap();
    let by_id = |id: &str| {
        listed["auth_configs"]
            .as_array()
            .unwrap_or_else(|| panic!("{configs}"))
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {configs}"))
            .clone()
    };
    let (graph, gcs) = (by_id("graph"), by_id("gcs"));
    assert_eq!(
        (&graph["client_id"], &graph["client_auth"]),
        (&"11111111-2222-3333-4444-555555555555".into(), &"federated_jwt".into())
    );
    assert_eq!(
        (&gcs["grant"], &gcs["client_auth"]),
        (&"token_exchange".into(), &"none".into())
    );
    assert!(gcs["client_id"].is_null(), "{gcs}");
}
