//! The YAML files shipped in `config/` load, and say what they claim to.
use std::path::Path;

use bearerd::config::{ClientAuth, Config, Env, Grant, RequestBody, TokenEndpoint};

fn load(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
    Config::load(&path, &Env::new()).unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn the_default_config_loads_without_any_environment() {
    let config = load("bearerd.yaml");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    let billing = config.auth_config("billing").unwrap();
    assert_eq!(billing.endpoint.to_string(), "http://127.0.0.1:9999/oauth2/token");
    let hosts: Vec<String> = billing.allowed_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.billing.example.com"]);
    assert_eq!(config.routes.len(), 2);
}

#[test]
fn the_reference_loads_and_shows_the_defaults() {
    let config = load("reference.yaml");
    let billing = config.auth_config("billing").unwrap();
    assert_eq!(billing.refresh_before.as_secs(), 60);
    assert_eq!(billing.expiry_skew.as_secs(), 5);
    assert_eq!(billing.default_ttl.as_secs(), 300);
    assert_eq!(billing.timeout.as_secs(), 10);
    assert_eq!(config.upstream_timeout.as_secs(), 60);
    assert_eq!(billing.scopes, ["invoices.read", "invoices.write"]);
    assert_eq!(billing.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(billing.request_body, RequestBody::Form);
}

#[test]
fn the_microsoft_example_fills_the_tenants_v2_token_endpoint() {
    let config = load("examples/microsoft.yaml");
    let graph = config.auth_config("graph").unwrap();
    assert_eq!(
        graph.endpoint,
        TokenEndpoint::Url(
            "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"
                .parse()
                .unwrap()
        )
    );
    assert_eq!(graph.scopes, ["https://graph.microsoft.com/.default"]);
    let hosts: Vec<String> = graph.allowed_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["graph.microsoft.com"]);
}

#[test]
fn the_google_example_discovers_googles_endpoint() {
    let config = load("examples/google.yaml");
    let google = config.auth_config("google").unwrap();
    assert_eq!(
        google.endpoint,
        TokenEndpoint::Discovery {
            issuer: "https://accounts.google.com".into(),
            document: "https://accounts.google.com/.well-known/openid-configuration"
                .parse()
                .unwrap(),
        }
    );
    let hosts: Vec<String> = google.allowed_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["*.googleapis.com"]);
}

#[test]
fn the_references_intercept_block_and_route_flag_load_once_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut uncommented = 0;
    let text: String = text
        .lines()
        .map(|line| {
            let enabled = [
                "# intercept:",
                "  # ca_bundle_out:",
                "  # leaf_ttl:",
                "    # intercept: true",
            ]
            .iter()
            .any(|start| line.starts_with(start));
            if enabled {
                uncommented += 1;
                format!("{}\n", line.replacen("# ", "", 1))
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(uncommented, 4);
    let config = Config::from_yaml("reference.yaml", &text, &Env::new()).unwrap_or_else(|err| panic!("{err}"));
    let intercept = config.intercept.as_ref().unwrap();
    assert_eq!(intercept.ca_bundle_out, Path::new("/var/run/bearerd/ca-bundle.pem"));
    assert_eq!(intercept.leaf_ttl.as_secs(), 24 * 3600);
    assert!(intercept.operator_ca.is_none());
    let hosts: Vec<String> = config.intercepted_hosts().iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.billing.example.com"]);
}

#[test]
fn the_references_shared_cache_block_loads_once_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cache-key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut uncommented = 0;
    let mut enabled = String::new();
    for line in text.lines() {
        let shared = ["# shared_cache:", "#   redis:", "#   prefix:"];
        if shared.iter().any(|start| line.starts_with(start)) {
            uncommented += 1;
            enabled.push_str(&line.replacen("# ", "", 1));
        } else if line.starts_with("#   key_file: /var/run/secrets/bearerd/cache-key") {
            uncommented += 1;
            enabled.push_str("  key_file: ");
            enabled.push_str(&key_file.display().to_string());
        } else {
            enabled.push_str(line);
        }
        enabled.push('\n');
    }
    assert_eq!(uncommented, 4);
    let env: Env = [("BEARERD_REDIS_URL".to_owned(), "redis://cache.internal:6379".to_owned())].into();
    let config = Config::from_yaml("reference.yaml", &enabled, &env).unwrap_or_else(|err| panic!("{err}"));
    let shared = config.shared_cache.as_ref().unwrap();
    assert_eq!(shared.redis.expose(), "redis://cache.internal:6379");
    assert_eq!(shared.prefix, "bearerd");
    assert_eq!(shared.key.expose(), &[0xab; 32]);
}

#[test]
fn the_user_grants_example_has_a_consent_and_a_refresh_token_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), [7; 32]).unwrap();
    std::fs::write(dir.path().join("rt"), "rt-from-file\n").unwrap();
    let env: Env = [
        ("STATE_KEY_FILE", dir.path().join("key")),
        ("CRM_REFRESH_TOKEN_FILE", dir.path().join("rt")),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_owned(), path.display().to_string()))
    .collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/user-grants.yaml");
    let config = Config::load(&path, &env).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.state.as_ref().unwrap().key.expose(), &[7; 32]);
    let gmail = config.auth_config("gmail").unwrap();
    assert_eq!(gmail.grant, Grant::AuthorizationCode);
    let authorize = gmail.authorize.as_ref().unwrap();
    assert_eq!(authorize.url, None, "Google's discovery document names it");
    assert_eq!(
        authorize.params,
        [
            ("access_type".to_owned(), "offline".to_owned()),
            ("prompt".to_owned(), "consent".to_owned())
        ]
    );
    let crm = config.auth_config("crm").unwrap();
    assert_eq!(crm.grant, Grant::RefreshToken);
    assert_eq!(crm.first_refresh_token.as_ref().unwrap().token.expose(), "rt-from-file");
}
