//! The YAML files shipped in `config/` load, and say what they claim to.
use std::path::Path;

use bearerd::config::{Config, Env};

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
    assert_eq!(billing.default_ttl.as_secs(), 300);
    assert_eq!(billing.timeout.as_secs(), 10);
    assert_eq!(config.upstream_timeout.as_secs(), 60);
    assert_eq!(billing.scopes, ["invoices.read", "invoices.write"]);
}
