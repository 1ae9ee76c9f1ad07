//! `OpenID` Connect discovery through the proxy: an identity provider on loopback serves a
//! discovery document (which a test may change) and a token endpoint, and records every
//! request, so each test can assert exactly which documents and tokens bearerd asked for.
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// A provider: `GET <document_path>` answers the current document; `POST /oauth2/token`
/// answers `<prefix>-<n>` tokens, or 404 once `gone` is set.
struct Idp {
    server: TokenServer,
    document: Arc<Mutex<String>>,
    gone: Arc<AtomicBool>,
}

impl Idp {
    async fn start(prefix: &'static str, document_path: &'static str) -> Self {
        let document = Arc::new(Mutex::new(String::new()));
        let gone = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(AtomicUsize::new(0));
        let (doc, is_gone) = (Arc::clone(&document), Arc::clone(&gone));
        let server = TokenServer::with(Duration::ZERO, move |_, request| {
            match (request.method.as_str(), request.path.as_str()) {
                ("GET", path) if path == document_path => (200, "application/json", doc.lock().unwrap().clone()),
                ("POST", "/oauth2/token") if !is_gone.load(Ordering::SeqCst) => {
                    let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
                    ok_token(&format!("{prefix}-{n}"), 3600)
                }
                _ => (404, "text/plain", "not found".to_owned()),
            }
        })
        .await;
        Self { server, document, gone }
    }

    /// `http://127.0.0.1:PORT`, the issuer this provider's own documents name.
    fn issuer(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    fn publish(&self, issuer: &str, token_endpoint: &str) {
        *self.document.lock().unwrap() = serde_json::json!({
            "issuer": issuer,
            "token_endpoint": token_endpoint,
            "jwks_uri": format!("{}/jwks", self.issuer()),
            "grant_types_supported": ["client_credentials"],
        })
        .to_string();
    }

    /// Every request, as `METHOD path`.
    fn log(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

fn discovery_config(id: &str, endpoint: &str) -> String {
    format!(
        "  - id: {id}\n{endpoint}    client_id: {id}-client\n    client_secret: {id}-secret\n    allowed_hosts: [127.0.0.1]\n"
    )
}

async fn token_seen(bearerd: &bearerd::Server, echo: &Echo, path: &str, config: &str) -> String {
    let response = get_with_config(
        &proxied_client(bearerd.proxy_addr),
        &format!("http://{}{path}", echo.addr),
        config,
    )
    .await;
    assert_eq!(response.status(), 200, "{path} via {config}");
    echoed(response).await.header("authorization").unwrap().to_owned()
}

#[tokio::test]
async fn the_issuers_document_names_the_token_endpoint_and_is_read_once() {
    let idp = Idp::start("idp", WELL_KNOWN).await;
    idp.publish(&idp.issuer(), &format!("{}/oauth2/token", idp.issuer()));
    let echo = Echo::start().await;
    let issuer = format!("    issuer: {}\n", idp.issuer());
    let yaml = format!(
        "auth_configs:\n{}{}",
        discovery_config("a", &issuer),
        discovery_config("b", &issuer)
    );
    let bearerd = start_bearerd(&yaml).await;

    assert_eq!(token_seen(&bearerd, &echo, "/x", "a").await, "Bearer idp-1");
    assert_eq!(token_seen(&bearerd, &echo, "/x", "b").await, "Bearer idp-2");
    assert_eq!(token_seen(&bearerd, &echo, "/x", "a").await, "Bearer idp-1");
    assert_eq!(
        idp.log(),
        [
            format!("GET {WELL_KNOWN}"),
            "POST /oauth2/token".to_owned(),
            "POST /oauth2/token".to_owned()
        ]
    );
    let requests = idp.server.requests();
    // The document request carries no credential; the token requests carry each config's.
    assert_eq!(requests[0].header("accept"), Some("application/json"));
    assert_eq!(requests[0].header("authorization"), None);
    assert_eq!(
        requests[2].header("authorization"),
        Some("Basic Yi1jbGllbnQ6Yi1zZWNyZXQ=") // b-client:b-secret
    );
}

#[tokio::test]
async fn discovery_url_reads_a_document_kept_elsewhere() {
    let idp = Idp::start("idp", "/meta/openid.json").await;
    // The configured issuer need not be where the document lives; it must be what it says.
    idp.publish(
        "https://login.example.test/tenant-a",
        &format!("{}/oauth2/token", idp.issuer()),
    );
    let echo = Echo::start().await;
    let endpoint = format!(
        "    issuer: https://login.example.test/tenant-a\n    discovery_url: {}/meta/openid.json\n",
        idp.issuer()
    );
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", discovery_config("a", &endpoint))).await;
    assert_eq!(token_seen(&bearerd, &echo, "/x", "a").await, "Bearer idp-1");
    assert_eq!(idp.log(), ["GET /meta/openid.json", "POST /oauth2/token"]);
}

#[tokio::test]
async fn a_document_naming_another_issuer_is_refused_before_any_token_request() {
    let idp = Idp::start("idp", WELL_KNOWN).await;
    let impostor = format!("{}/other", idp.issuer());
    idp.publish(&impostor, &format!("{}/oauth2/token", idp.issuer()));
    let echo = Echo::start().await;
    let endpoint = format!("    issuer: {}\n", idp.issuer());
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", discovery_config("a", &endpoint))).await;
    let client = proxied_client(bearerd.proxy_addr);
    let url = format!("http://{}/x", echo.addr);

    let error = bearerd_error(get_with_config(&client, &url, "a").await).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    assert_eq!(
        error.message,
        format!(
            "no access token: OpenID Connect discovery at {0}{WELL_KNOWN} failed: its issuer `{impostor}` is not the configured issuer `{0}`",
            idp.issuer()
        )
    );
    // A failed discovery is a failed fetch: the next request is backed off.
    let error = bearerd_error(get_with_config(&client, &url, "a").await).await;
    assert_eq!((error.status, error.code.as_str()), (503, "token_backoff"));
    assert_eq!(idp.log(), [format!("GET {WELL_KNOWN}")]);
    assert_eq!(echo.requests(), 0);
}

/// How the old token endpoint goes away.
#[derive(Clone, Copy, Debug)]
enum Gone {
    /// It answers 404.
    NotFound,
    /// Nothing listens any more: connections are refused.
    Refused,
}

/// The provider moves its token endpoint from `old` to `new` and says so in its document.
/// bearerd's cached document still names `old`; when the next token request there fails,
/// it reads the document again and sends the request to `new`.
async fn moved_token_endpoint(gone: Gone) {
    let idp = Idp::start("unused", WELL_KNOWN).await;
    let old = Idp::start("old", "/none").await;
    let new = Idp::start("new", "/none").await;
    idp.publish(&idp.issuer(), &format!("{}/oauth2/token", old.issuer()));
    let echo = Echo::start().await;
    let endpoint = format!("    issuer: {}\n", idp.issuer());
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", discovery_config("a", &endpoint))).await;
    assert_eq!(token_seen(&bearerd, &echo, "/x", "a").await, "Bearer old-1");

    idp.publish(&idp.issuer(), &format!("{}/oauth2/token", new.issuer()));
    let old_log = match gone {
        Gone::NotFound => {
            old.gone.store(true, Ordering::SeqCst);
            Some(old)
        }
        Gone::Refused => {
            drop(old);
            None
        }
    };
    // The upstream refuses old-1, so bearerd fetches a new token, and replays.
    assert_eq!(token_seen(&bearerd, &echo, "/only/new-1", "a").await, "Bearer new-1");

    let document = format!("GET {WELL_KNOWN}");
    assert_eq!(idp.log(), [document.clone(), document], "{gone:?}");
    if let Some(old) = old_log {
        assert_eq!(old.log(), ["POST /oauth2/token", "POST /oauth2/token"], "{gone:?}");
    }
    assert_eq!(new.log(), ["POST /oauth2/token"], "{gone:?}");
    assert!(
        metrics(&bearerd)
            .await
            .contains("bearerd_upstream_retries_total{auth_config=\"a\"} 1"),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_token_endpoint_answering_404_is_found_again_through_the_document() {
    moved_token_endpoint(Gone::NotFound).await;
}

#[tokio::test]
async fn a_token_endpoint_refusing_connections_is_found_again_through_the_document() {
    moved_token_endpoint(Gone::Refused).await;
}

#[tokio::test]
async fn a_404_from_an_endpoint_the_document_still_names_is_reported() {
    let idp = Idp::start("idp", WELL_KNOWN).await;
    idp.publish(&idp.issuer(), &format!("{}/oauth2/token", idp.issuer()));
    let echo = Echo::start().await;
    let endpoint = format!("    issuer: {}\n", idp.issuer());
    let bearerd = start_bearerd(&format!("auth_configs:\n{}", discovery_config("a", &endpoint))).await;
    assert_eq!(token_seen(&bearerd, &echo, "/x", "a").await, "Bearer idp-1");

    idp.gone.store(true, Ordering::SeqCst);
    let response = get_with_config(
        &proxied_client(bearerd.proxy_addr),
        &format!("http://{}/only/other", echo.addr),
        "a",
    )
    .await;
    let error = bearerd_error(response).await;
    assert_eq!((error.status, error.code.as_str()), (502, "token_unavailable"));
    assert_eq!(
        error.message,
        "no access token: token endpoint answered HTTP 404 (text/plain) without an OAuth error"
    );
    let document = format!("GET {WELL_KNOWN}");
    let token = "POST /oauth2/token".to_owned();
    assert_eq!(idp.log(), [document.clone(), token.clone(), token, document]);
}

#[tokio::test]
async fn bearerd_check_resolves_discovery_and_shows_the_endpoint_it_found() {
    let idp = Idp::start("idp", WELL_KNOWN).await;
    idp.publish(&idp.issuer(), &format!("{}/oauth2/token", idp.issuer()));
    let endpoint = format!("    issuer: {}\n", idp.issuer());
    let yaml = format!("auth_configs:\n{}", discovery_config("a", &endpoint));
    let config = bearerd::config::Config::from_yaml("test.yaml", &yaml, &bearerd::config::Env::new()).unwrap();
    let rows = bearerd::check::check(&config, false).await.unwrap();
    assert!(rows[0].passed(), "{rows:?}");
    assert_eq!(rows[0].endpoint, format!("{}/oauth2/token", idp.issuer()));
    let table = bearerd::check::table(&rows);
    assert!(!table.contains("idp-1"), "{table}");
    assert_eq!(
        idp.log(),
        [format!("GET {WELL_KNOWN}"), "POST /oauth2/token".to_owned()]
    );

    let offline = bearerd::check::check(&config, true).await.unwrap();
    assert_eq!(offline[0].endpoint, format!("issuer {}", idp.issuer()));
    assert_eq!(idp.log().len(), 2);
}
