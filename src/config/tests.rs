use std::collections::HashSet;

use http::Method;

use super::env::expand_vars;
use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn load(yaml: &str) -> Result<Config, LoadError> {
    Config::from_yaml("test.yaml", yaml, &Env::new())
}

fn errors(yaml: &str, environment: &Env) -> Vec<String> {
    match Config::from_yaml("test.yaml", yaml, environment) {
        Ok(_) => panic!("expected the config to be refused"),
        Err(err) => err.0.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = r#"
listen: 127.0.0.1:18080
admin_listen: 127.0.0.1:19090
default_action: deny
connect: deny
upstream_timeout: 15s
auth_configs:
  - id: billing
    description: Billing API
    grant: client_credentials
    token_url: https://idp.test/oauth2/token
    client_id: ${BILLING_ID}
    client_secret: "${BILLING_SECRET}"
    client_auth: client_secret_post
    scopes: [invoices.read, invoices.write]
    extra_params: { audience: "https://api.billing.test", resource: 42 }
    inject: { header: X-Api-Token, prefix: "" }
    allowed_hosts: [api.billing.test, "*.billing.test", "10.0.0.1:8443"]
    refresh_before: 90s
    default_ttl: 10m
    timeout: 1500ms
  - id: crm
    token_url: http://127.0.0.1:9999/token
    client_id: crm-client
    client_secret: ${CRM_SECRET:-fallback}
    scopes: "a b  c"
    inject: { query: access_token }
routes:
  - match: { host: api.crm.test, path_prefix: /v1/, methods: [get, POST] }
    auth_config: crm
    upstream_tls: true
  - match: { path_prefix: /billing/ }
    auth_config: billing
    upstream: https://api.billing.test/base
"#;

#[test]
fn a_full_file_loads_into_typed_config() {
    let config = Config::from_yaml(
        "f.yaml",
        FULL,
        &env(&[("BILLING_ID", "billing-client"), ("BILLING_SECRET", "s3cr3t")]),
    )
    .unwrap();
    assert_eq!(config.listen, "127.0.0.1:18080".parse().unwrap());
    assert_eq!(config.admin_listen, "127.0.0.1:19090".parse().unwrap());
    assert_eq!(config.default_action, DefaultAction::Deny);
    assert_eq!(config.connect, ConnectPolicy::Deny);
    assert_eq!(config.upstream_timeout, Duration::from_secs(15));

    let billing = config.auth_config("billing").unwrap();
    assert_eq!(billing.description.as_deref(), Some("Billing API"));
    assert_eq!(billing.endpoint.to_string(), "https://idp.test/oauth2/token");
    assert_eq!(billing.client_id, "billing-client");
    assert_eq!(billing.credential.secret().unwrap().expose(), "s3cr3t");
    assert_eq!(billing.client_auth, ClientAuth::ClientSecretPost);
    assert_eq!(billing.scopes, ["invoices.read", "invoices.write"]);
    assert_eq!(
        billing.extra_params,
        [
            ("audience".to_owned(), "https://api.billing.test".to_owned()),
            ("resource".to_owned(), "42".to_owned())
        ]
    );
    assert_eq!(
        billing.inject,
        Inject::Header {
            name: HeaderName::from_static("x-api-token"),
            prefix: String::new()
        }
    );
    let hosts: Vec<String> = billing.allowed_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.billing.test", "*.billing.test", "10.0.0.1:8443"]);
    assert_eq!(billing.refresh_before, Duration::from_secs(90));
    assert_eq!(billing.default_ttl, Duration::from_mins(10));
    assert_eq!(billing.timeout, Duration::from_millis(1500));

    let crm = config.auth_config("crm").unwrap();
    assert_eq!(crm.credential.secret().unwrap().expose(), "fallback");
    assert_eq!(crm.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(crm.scopes, ["a", "b", "c"]);
    assert_eq!(
        crm.inject,
        Inject::Query {
            name: "access_token".into()
        }
    );
    assert_eq!(crm.refresh_before, Duration::from_mins(1));
    assert_eq!(crm.default_ttl, Duration::from_mins(5));
    assert_eq!(crm.timeout, Duration::from_secs(10));
    // Default allowed hosts: the hosts of the routes naming the config.
    let hosts: Vec<String> = crm.allowed_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.crm.test"]);

    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].methods, [Method::GET, Method::POST]);
    assert!(matches!(
        config.routes[0].kind,
        RouteKind::Forward {
            upstream_tls: true,
            intercept: false
        }
    ));
    assert!(
        matches!(&config.routes[1].kind, RouteKind::Gateway { upstream } if upstream.as_str() == "https://api.billing.test/base")
    );
    assert_eq!(config.routes[1].path_prefix, "/billing/");
    assert!(config.auth_config("nope").is_none());
}

#[test]
fn defaults_apply_to_an_empty_file() {
    let config = load("").unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.default_action, DefaultAction::Passthrough);
    assert_eq!(config.connect, ConnectPolicy::Allow);
    assert!(config.auth_configs.is_empty());
}

#[test]
fn listen_addresses_come_from_the_environment_first() {
    let environment = env(&[
        ("BEARERD_LISTEN", "0.0.0.0:7000"),
        ("BEARERD_ADMIN_LISTEN", "[::1]:7001"),
    ]);
    let config = Config::from_yaml("t", "listen: 127.0.0.1:1\n", &environment).unwrap();
    assert_eq!(config.listen, "0.0.0.0:7000".parse().unwrap());
    assert_eq!(config.admin_listen, "[::1]:7001".parse().unwrap());
    let errors = errors("", &env(&[("BEARERD_LISTEN", "nowhere")]));
    assert_eq!(
        errors,
        ["test.yaml: listen (from BEARERD_LISTEN): `nowhere` is not an address like 127.0.0.1:8080"]
    );
}

#[test]
fn environment_only_configs_and_overrides() {
    let environment = env(&[
        ("BEARERD_CONFIG__PAYMENTS__TOKEN_URL", "https://idp.test/token"),
        ("BEARERD_CONFIG__PAYMENTS__CLIENT_ID", "pay"),
        ("BEARERD_CONFIG__PAYMENTS__CLIENT_SECRET", "${NOT_EXPANDED}"),
        ("BEARERD_CONFIG__PAYMENTS__CLIENT_AUTH", "client_secret_post"),
        ("BEARERD_CONFIG__PAYMENTS__SCOPES", "pay.read pay.write"),
        ("BEARERD_CONFIG__PAYMENTS__ALLOWED_HOSTS", "api.pay.test, *.pay.test"),
        ("BEARERD_CONFIG__PAYMENTS__INJECT_HEADER", "X-Token"),
        ("BEARERD_CONFIG__PAYMENTS__INJECT_PREFIX", "Token"),
        ("BEARERD_CONFIG__PAYMENTS__EXTRA_PARAMS__AUDIENCE", "pay-api"),
        ("BEARERD_CONFIG__CRM__CLIENT_ID", "from-env"),
    ]);
    let config = Config::from_yaml("f.yaml", FULL, &{
        let mut e = environment;
        e.insert("BILLING_ID".into(), "b".into());
        e.insert("BILLING_SECRET".into(), "s".into());
        e
    })
    .unwrap();
    let payments = config.auth_config("payments").unwrap();
    assert_eq!(payments.endpoint.to_string(), "https://idp.test/token");
    assert_eq!(payments.client_id, "pay");
    assert_eq!(
        payments.credential.secret().unwrap().expose(),
        "${NOT_EXPANDED}",
        "environment values are taken literally"
    );
    assert_eq!(payments.client_auth, ClientAuth::ClientSecretPost);
    assert_eq!(payments.scopes, ["pay.read", "pay.write"]);
    let hosts: Vec<String> = payments.allowed_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.pay.test", "*.pay.test"]);
    assert_eq!(
        payments.inject,
        Inject::Header {
            name: HeaderName::from_static("x-token"),
            prefix: "Token".into()
        }
    );
    assert_eq!(payments.extra_params, [("audience".to_owned(), "pay-api".to_owned())]);
    // Environment wins over the file.
    assert_eq!(config.auth_config("crm").unwrap().client_id, "from-env");
}

#[test]
fn every_problem_is_reported_with_file_config_and_field() {
    let yaml = r#"
auth_configs:
  - id: billing
    token_url: http://idp.example.com/token
    client_id: ""
    client_secret: x
    client_secret_file: /nonexistent
    allowed_hosts: [api.test]
  - id: billing
    token_url: https://idp.test/token
    client_id: a
    client_secret: b
    allowed_hosts: [api.test]
  - id: crm
    token_url: https://idp.test/token
    tokne_url: https://typo.test
  - id: NotValid
    token_url: https://idp.test/token
    client_id: a
    client_secret: ${UNSET_SECRET}
    allowed_hosts: [api.test]
  - id: files
    token_url: https://idp.test/token
    client_id: a
    client_secret_file: /nonexistent/secret
    allowed_hosts: ["bad host"]
    scopes: ["ok", "sp ace"]
    extra_params: { grant_type: password }
    refresh_before: soon
  - id: lonely
    token_url: ftp://idp.test/token
    client_id: a
  - id: both
    token_url: https://idp.test/token
    client_id: a
    client_secret: b
    inject: { header: Authorization, query: t }
    allowed_hosts: [api.test]
routes:
  - match: { host: api.test }
    auth_config: ghost
  - match: { path_prefix: nope }
    auth_config: both
    upstream: https://api.test
    upstream_tls: true
"#;
    let got = errors(yaml, &Env::new());
    let expected = [
        "test.yaml: auth config `NotValid`: client_secret: environment variable UNSET_SECRET is not set (write ${UNSET_SECRET:-default} for a default)",
        "test.yaml: auth config `billing`: token_url: must be https:// (http:// is allowed only for loopback, for development)",
        "test.yaml: auth config `billing`: client_id: must not be empty",
        "test.yaml: auth config `billing`: client_secret: set client_secret or client_secret_file, not both",
        "test.yaml: auth config `billing`: id: duplicate id: each auth config id must be unique",
        "test.yaml: auth config `crm`: tokne_url: unknown field `tokne_url`, expected one of `id`, `description`, ",
        "test.yaml: auth config `NotValid`: id: must match [a-z0-9][a-z0-9_.-]{0,127}",
        "test.yaml: auth config `files`: client_secret_file: cannot read /nonexistent/secret: No such file or directory (os error 2)",
        "test.yaml: auth config `files`: scopes[1]: not a valid scope token (RFC 6749 §3.3: printable ASCII, no space, `\"` or `\\`)",
        "test.yaml: auth config `files`: extra_params.grant_type: is set by bearerd itself and cannot be overridden",
        "test.yaml: auth config `files`: allowed_hosts[0]: `bad host` is not a valid host name or IP address",
        "test.yaml: auth config `files`: refresh_before: `soon` is not a duration (like 500ms, 30s, 5m, 1h)",
        "test.yaml: auth config `lonely`: token_url: scheme `ftp` is not https",
        "test.yaml: auth config `lonely`: client_secret: missing: set client_secret or client_secret_file",
        "test.yaml: auth config `both`: inject: set either header (with prefix) or query, not both",
        "test.yaml: auth config `ghost`: routes[0].auth_config: names no auth config",
        "test.yaml: auth config `both`: routes[1].match.path_prefix: must start with /",
        "test.yaml: auth config `both`: routes[1].upstream_tls: applies to forward routes only; a gateway route's upstream URL names its scheme",
        "test.yaml: auth config `lonely`: allowed_hosts: no host may receive this token: set allowed_hosts, or name this config in a route with match.host or upstream",
    ];
    // Each expected line is a whole message, or (for serde's list of fields) its start.
    for line in &expected {
        assert!(
            got.iter().any(|g| g.starts_with(line)),
            "missing: {line}\n got:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), expected.len(), "got:\n{}", got.join("\n"));
}

#[test]
fn fields_set_from_the_environment_say_so() {
    let environment = env(&[
        ("BEARERD_CONFIG__X__TOKEN_URL", "http://idp.example.com/t"),
        ("BEARERD_CONFIG__X__TOKNE", "1"),
    ]);
    let got = errors("", &environment);
    assert!(
        got.iter().any(|e| e
            .starts_with("test.yaml: auth config `x`: tokne (from BEARERD_CONFIG__X__TOKNE): unknown field `tokne`")),
        "{got:?}"
    );
}

#[test]
fn limits_are_enforced() {
    let many: Vec<String> = (0..501).map(|i| format!("s{i}")).collect();
    let long_scope = "s".repeat(251);
    let yaml = format!(
        "auth_configs:\n  - id: a\n    description: \"{}\"\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    scopes: [{}]\n  - id: b\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    scopes: [{long_scope}]\n  - id: {}\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n",
        "d".repeat(1025),
        many.join(", "),
        "i".repeat(129),
    );
    let got = errors(&yaml, &Env::new());
    assert!(
        got.contains(&"test.yaml: auth config `a`: description: longer than 1024 characters".to_owned()),
        "{got:?}"
    );
    assert!(
        got.contains(&"test.yaml: auth config `a`: scopes: 501 scopes; at most 500 are allowed".to_owned()),
        "{got:?}"
    );
    assert!(
        got.contains(&"test.yaml: auth config `b`: scopes[0]: longer than 250 characters".to_owned()),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.ends_with("id: must match [a-z0-9][a-z0-9_.-]{0,127}")),
        "{got:?}"
    );
    assert_eq!(got.len(), 4, "{got:?}");

    // Exactly at the limits is fine.
    let ok: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
    let yaml = format!(
        "auth_configs:\n  - id: a\n    description: \"{}\"\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    scopes: [{}, {}]\n",
        "d".repeat(1024),
        ok[..499].join(", "),
        "s".repeat(250),
    );
    assert_eq!(load(&yaml).unwrap().auth_config("a").unwrap().scopes.len(), 500);
}

#[test]
fn secret_files_and_loopback_token_urls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "from-file\n").unwrap();
    let yaml = format!(
        "auth_configs:\n  - id: a\n    token_url: http://localhost:8080/t\n    client_id: c\n    client_secret_file: {}\n    allowed_hosts: [h.test]\n  - id: b\n    token_url: http://[::1]:1/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n",
        path.display()
    );
    let config = load(&yaml).unwrap();
    assert_eq!(
        config.auth_config("a").unwrap().credential.secret().unwrap().expose(),
        "from-file"
    );
    assert!(config.auth_config("b").is_some());
}

#[test]
fn syntax_errors_and_unknown_top_level_fields() {
    let got = errors("listen: [unclosed\n", &Env::new());
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("test.yaml: (document): not valid YAML:"), "{got:?}");
    let got = errors("lisen: 127.0.0.1:1\n", &Env::new());
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("test.yaml: lisen: unknown field `lisen`"), "{got:?}");
    let got = errors("tls: { ca_file: /nonexistent/ca.pem }\n", &Env::new());
    assert!(
        got[0].starts_with("test.yaml: tls.ca_file: cannot read /nonexistent/ca.pem"),
        "{got:?}"
    );
}

#[test]
fn debug_output_never_shows_the_secret() {
    let config = Config::from_yaml(
        "f.yaml",
        FULL,
        &env(&[("BILLING_ID", "id"), ("BILLING_SECRET", "hunter2-very-secret")]),
    )
    .unwrap();
    let shown = format!("{config:?} {config:#?}");
    assert!(!shown.contains("hunter2-very-secret"));
    assert!(shown.contains("ClientSecret([redacted])"));
}

#[test]
fn variable_expansion() {
    let e = env(&[("A", "1"), ("EMPTY", "")]);
    assert_eq!(expand_vars("x${A}y", &e).unwrap(), "x1y");
    assert_eq!(expand_vars("${B:-dflt}", &e).unwrap(), "dflt");
    assert_eq!(expand_vars("${EMPTY:-dflt}", &e).unwrap(), "");
    assert_eq!(expand_vars("cost $5 $${A}", &e).unwrap(), "cost $5 ${A}");
    assert!(expand_vars("${A", &e).is_err());
    assert!(expand_vars("${}", &e).is_err());
    assert!(expand_vars("${B}", &e).unwrap_err().contains("B is not set"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("2h"), Some(Duration::from_hours(2)));
    for bad in ["", "s", "10x", "1.5s", "-1s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn each_client_auth_takes_its_own_credential_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let base = "    token_url: https://idp.test/t\n    client_id: c\n    allowed_hosts: [h.test]\n";
    let yaml = format!(
        "auth_configs:
  - id: jwt
{base}    client_auth: private_key_jwt
    private_key_file: {key}
    signing_alg: ES256
    key_id: k1
  - id: jwt-wrong-alg
{base}    client_auth: private_key_jwt
    private_key_file: {key}
  - id: jwt-with-secret
{base}    client_auth: private_key_jwt
    private_key_file: {key}
    signing_alg: ES256
    client_secret: s
  - id: jwt-no-key
{base}    client_auth: private_key_jwt
  - id: mtls-half
{base}    client_auth: tls_client_auth
    client_cert_file: /nonexistent/cert.pem
  - id: basic-with-key
{base}    client_secret: s
    private_key_file: {key}
",
        key = key.display()
    );
    let got = errors(&yaml, &Env::new());
    let key = key.display();
    let expected = [
        format!("test.yaml: auth config `jwt-wrong-alg`: private_key_file: {key}: not a usable RS256 key"),
        "test.yaml: auth config `jwt-with-secret`: client_secret: does not apply to client_auth: private_key_jwt".to_owned(),
        "test.yaml: auth config `jwt-no-key`: private_key_file: missing: private_key_jwt signs with this key".to_owned(),
        "test.yaml: auth config `mtls-half`: client_key_file: missing: tls_client_auth needs client_cert_file and client_key_file".to_owned(),
        "test.yaml: auth config `basic-with-key`: private_key_file: does not apply to client_auth: client_secret_basic".to_owned(),
    ];
    for line in &expected {
        assert!(
            got.iter().any(|g| g.starts_with(line.as_str())),
            "missing: {line}\n got:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), expected.len(), "got:\n{}", got.join("\n"));

    let ok = format!(
        "auth_configs:\n  - id: jwt\n{base}    client_auth: private_key_jwt\n    private_key_file: {key}\n    signing_alg: ES256\n    key_id: k1\n"
    );
    let config = load(&ok).unwrap();
    let jwt = config.auth_config("jwt").unwrap();
    assert!(matches!(&jwt.credential, Credential::PrivateKey(k) if k.alg() == SigningAlg::ES256));
    assert!(!format!("{jwt:?}").contains("PRIVATE KEY"));
}

/// One auth config with `endpoint` (indented YAML lines) in place of `token_url`.
fn with_endpoint(endpoint: &str) -> String {
    format!("auth_configs:\n  - id: e\n{endpoint}    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n")
}

fn endpoint_of(yaml: &str, environment: &Env) -> TokenEndpoint {
    let config = Config::from_yaml("test.yaml", yaml, environment).unwrap();
    config.auth_config("e").unwrap().endpoint.clone()
}

fn discovery(issuer: &str, document: &str) -> TokenEndpoint {
    TokenEndpoint::Discovery {
        issuer: issuer.to_owned(),
        document: Url::parse(document).unwrap(),
    }
}

#[test]
fn token_url_issuer_discovery_url_and_provider_templates() {
    let none = Env::new();
    assert_eq!(
        endpoint_of(&with_endpoint("    token_url: https://idp.test/t?x=1\n"), &none),
        TokenEndpoint::Url(Url::parse("https://idp.test/t?x=1").unwrap())
    );
    // The issuer is kept exactly as written (it is compared exactly); a terminating `/`
    // is dropped only to build the well-known URL.
    assert_eq!(
        endpoint_of(&with_endpoint("    issuer: https://idp.test/realms/a/\n"), &none),
        discovery(
            "https://idp.test/realms/a/",
            "https://idp.test/realms/a/.well-known/openid-configuration"
        )
    );
    assert_eq!(
        endpoint_of(&with_endpoint("    issuer: http://127.0.0.1:8080\n"), &none),
        discovery(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/.well-known/openid-configuration"
        )
    );
    assert_eq!(
        endpoint_of(
            &with_endpoint("    issuer: https://idp.test\n    discovery_url: https://meta.idp.test/oidc.json\n"),
            &none
        ),
        discovery("https://idp.test", "https://meta.idp.test/oidc.json")
    );
    assert_eq!(
        endpoint_of(
            &with_endpoint("    provider: microsoft\n    tenant: 0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1\n"),
            &none
        ),
        TokenEndpoint::Url(
            Url::parse("https://login.microsoftonline.com/0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1/oauth2/v2.0/token")
                .unwrap()
        )
    );
    assert_eq!(
        endpoint_of(
            &with_endpoint("    provider: microsoft\n    tenant: contoso.onmicrosoft.com\n"),
            &none
        ),
        TokenEndpoint::Url(
            Url::parse("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token").unwrap()
        )
    );
    assert_eq!(
        endpoint_of(&with_endpoint("    provider: google\n"), &none),
        discovery(
            "https://accounts.google.com",
            "https://accounts.google.com/.well-known/openid-configuration"
        )
    );
}

#[test]
fn an_endpoint_from_the_environment_replaces_the_files() {
    let yaml = with_endpoint("    token_url: https://idp.test/t\n");
    let issuer = env(&[("BEARERD_CONFIG__E__ISSUER", "https://login.test/x")]);
    assert_eq!(
        endpoint_of(&yaml, &issuer),
        discovery(
            "https://login.test/x",
            "https://login.test/x/.well-known/openid-configuration"
        )
    );
    let yaml = with_endpoint("    provider: microsoft\n    tenant: contoso.test\n");
    let token_url = env(&[("BEARERD_CONFIG__E__TOKEN_URL", "https://idp.test/t")]);
    assert_eq!(
        endpoint_of(&yaml, &token_url),
        TokenEndpoint::Url(Url::parse("https://idp.test/t").unwrap())
    );
    let tenant = env(&[("BEARERD_CONFIG__E__TENANT", "fabrikam.test")]);
    assert_eq!(
        endpoint_of(&yaml, &tenant),
        TokenEndpoint::Url(Url::parse("https://login.microsoftonline.com/fabrikam.test/oauth2/v2.0/token").unwrap())
    );
    // Two endpoints from the environment are still two endpoints.
    let both = env(&[
        ("BEARERD_CONFIG__E__ISSUER", "https://login.test/x"),
        ("BEARERD_CONFIG__E__TOKEN_URL", "https://idp.test/t"),
    ]);
    assert_eq!(
        errors(&yaml, &both),
        [
            "test.yaml: auth config `e`: issuer (from BEARERD_CONFIG__E__ISSUER): set only one of token_url, issuer and provider (token_url is set too)"
        ]
    );
}

#[test]
fn endpoint_rules_name_the_field() {
    let cases = [
        ("", "token_url: missing: set token_url, issuer or provider"),
        (
            "    token_url: https://idp.test/t\n    issuer: https://idp.test\n",
            "issuer: set only one of token_url, issuer and provider (token_url is set too)",
        ),
        (
            "    issuer: https://idp.test\n    provider: google\n",
            "provider: set only one of token_url, issuer and provider (issuer is set too)",
        ),
        (
            "    issuer: http://idp.test\n",
            "issuer: must be https:// (http:// is allowed only for loopback, for development)",
        ),
        (
            "    issuer: https://idp.test/?tenant=a\n",
            "issuer: must not have a query or fragment (OpenID Connect Discovery §2)",
        ),
        (
            "    issuer: idp.test\n",
            "issuer: not a valid URL: relative URL without a base",
        ),
        (
            "    issuer: https://idp.test\n    discovery_url: ftp://idp.test/d\n",
            "discovery_url: scheme `ftp` is not https",
        ),
        (
            "    token_url: https://idp.test/t\n    discovery_url: https://idp.test/d\n",
            "discovery_url: applies only with issuer: the document's issuer is checked against it",
        ),
        (
            "    provider: microsoft\n",
            "tenant: missing: provider: microsoft needs the directory (tenant) id or domain",
        ),
        (
            "    provider: microsoft\n    tenant: common\n",
            "tenant: `common` cannot issue client-credentials tokens: name the directory (tenant id or domain)",
        ),
        (
            "    provider: microsoft\n    tenant: a/b\n",
            "tenant: must be a tenant id (GUID) or a domain such as contoso.onmicrosoft.com",
        ),
        (
            "    provider: google\n    tenant: x\n",
            "tenant: applies only to provider: microsoft",
        ),
        (
            "    provider: okta\n",
            "provider: unknown variant `okta`, expected `microsoft` or `google`",
        ),
    ];
    for (endpoint, error) in cases {
        let got = errors(&with_endpoint(endpoint), &Env::new());
        assert_eq!(got, [format!("test.yaml: auth config `e`: {error}")], "{endpoint}");
    }
}

#[test]
fn timestamps_for_client_secret_expires_at() {
    let at = |text: &str| parse_timestamp(text).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs());
    // Reference values from `date -u -d ... +%s`.
    assert_eq!(at("1970-01-01"), Some(0));
    assert_eq!(at("2027-06-30"), Some(1_814_313_600));
    assert_eq!(at("2024-02-29"), Some(1_709_164_800));
    assert_eq!(at("2027-06-30T12:34:56Z"), Some(1_814_358_896));
    assert_eq!(at("2027-06-30T12:34:56.789Z"), Some(1_814_358_896));
    assert_eq!(at("2027-06-30T14:34:56+02:00"), Some(1_814_358_896));
    assert_eq!(at("2027-06-30T07:04:56-05:30"), Some(1_814_358_896));
    assert_eq!(at("1814313600"), Some(1_814_313_600));
    for bad in [
        "2027-6-30",
        "2027-02-29",
        "2027-13-01",
        "2027-06-31",
        "30/06/2027",
        "2027-06-30T25:00:00Z",
        "2027-06-30T12:00Z",
        "2027-06-30T12:00:00",
        "soon",
        "",
    ] {
        assert_eq!(at(bad), None, "{bad}");
    }
    let yaml = with_endpoint("    token_url: https://idp.test/t\n    client_secret_expires_at: 2027-06-31\n");
    assert_eq!(
        errors(&yaml, &Env::new()),
        [
            "test.yaml: auth config `e`: client_secret_expires_at: `2027-06-31` is not a date (2027-06-30), an RFC 3339 time (2027-06-30T12:00:00Z) or Unix seconds"
        ]
    );
    let yaml = with_endpoint(
        "    token_url: https://idp.test/t\n    client_secret_expires_at: 1814313600\n    prefetch: true\n",
    );
    let config = load(&yaml).unwrap();
    let e = config.auth_config("e").unwrap();
    assert_eq!(e.client_secret_expires_at, parse_timestamp("2027-06-30"));
    assert!(e.prefetch);
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.worker_threads, None);
    assert_eq!(config.upstream_max_concurrency, 256);
    let pinned = load(&format!("worker_threads: 3\n{yaml}")).unwrap();
    assert_eq!(pinned.worker_threads, Some(3));
    assert_eq!(
        load(&format!("worker_threads: 0\n{yaml}")).unwrap().worker_threads,
        None
    );
}

#[test]
fn expiry_skew_reads_like_the_other_durations_and_the_environment_wins() {
    let yaml = |skew: &str| {
        format!(
            "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n{skew}"
        )
    };
    let skew = |yaml: &str, environment: &Env| {
        Config::from_yaml("test.yaml", yaml, environment)
            .unwrap()
            .auth_config("a")
            .unwrap()
            .expiry_skew
    };
    assert_eq!(skew(&yaml(""), &Env::new()), Duration::from_secs(5));
    assert_eq!(
        skew(&yaml("    expiry_skew: 750ms\n"), &Env::new()),
        Duration::from_millis(750)
    );
    assert_eq!(skew(&yaml("    expiry_skew: 0\n"), &Env::new()), Duration::ZERO);
    let from_env = env(&[("BEARERD_CONFIG__A__EXPIRY_SKEW", "1m30s")]);
    assert_eq!(skew(&yaml("    expiry_skew: 2s\n"), &from_env), Duration::from_secs(90));
    assert_eq!(
        errors(&yaml("    expiry_skew: soon\n"), &Env::new()),
        ["test.yaml: auth config `a`: expiry_skew: `soon` is not a duration (like 500ms, 30s, 5m, 1h)"]
    );
    assert_eq!(
        errors(&yaml(""), &env(&[("BEARERD_CONFIG__A__EXPIRY_SKEW", "-1s")])),
        [
            "test.yaml: auth config `a`: expiry_skew (from BEARERD_CONFIG__A__EXPIRY_SKEW): `-1s` is not a duration (like 500ms, 30s, 5m, 1h)"
        ]
    );
}

#[test]
fn request_body_client_secret_jwt_and_none_load() {
    // A public client is one of a user grant, which keeps its refresh token in state.file.
    let dir = tempfile::tempdir().unwrap();
    let state_key = dir.path().join("state-key");
    std::fs::write(&state_key, [1; 32]).unwrap();
    let state = format!(
        "state: {{ file: {}/s.json, key_file: {} }}\n",
        dir.path().display(),
        state_key.display()
    );
    let base = "    token_url: https://idp.test/t\n    client_id: c\n    allowed_hosts: [h.test]\n";
    let yaml = format!(
        "{state}auth_configs:
  - id: form
{base}    client_secret: s
  - id: json
{base}    client_secret: s
    request_body: json
  - id: hmac
{base}    client_auth: client_secret_jwt
    client_secret: a-secret-of-exactly-32-bytes-xyz
  - id: public
{base}    grant: authorization_code
    authorization_url: https://idp.test/authorize
    client_auth: none
    request_body: json
"
    );
    let config = load(&yaml).unwrap();
    let get = |id| config.auth_config(id).unwrap();
    assert_eq!(get("form").request_body, RequestBody::Form);
    assert_eq!(get("json").request_body, RequestBody::Json);
    let hmac = get("hmac");
    assert_eq!(hmac.client_auth, ClientAuth::ClientSecretJwt);
    assert_eq!(
        hmac.credential.secret().unwrap().expose(),
        "a-secret-of-exactly-32-bytes-xyz"
    );
    let public = get("public");
    assert_eq!(public.client_auth, ClientAuth::None);
    assert!(matches!(public.credential, Credential::None));
    // No secret file among them: the only file read is the state's key.
    let watched: Vec<&Path> = config.watched_files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(watched, [&state_key]);

    // Each of them shapes the token: none shares a cache key with the plain form config.
    let keys: HashSet<&str> = ["form", "json", "hmac", "public"]
        .iter()
        .map(|id| config.auth_configs[config.position(id).unwrap()].cache_key().as_str())
        .collect();
    assert_eq!(keys.len(), 4);
    let same_but_json = load(&yaml.replacen("  - id: form\n", "  - id: form\n    request_body: json\n", 1)).unwrap();
    assert_ne!(
        same_but_json.auth_config("form").unwrap().cache_key(),
        get("form").cache_key()
    );
    assert!(
        get("json").cache_key().as_str().contains("\u{1f}json\u{1f}"),
        "{}",
        get("json").cache_key().as_str()
    );

    // From the environment too.
    let environment = env(&[
        ("BEARERD_CONFIG__PUB__TOKEN_URL", "https://idp.test/t"),
        ("BEARERD_CONFIG__PUB__CLIENT_ID", "c"),
        ("BEARERD_CONFIG__PUB__GRANT", "authorization_code"),
        ("BEARERD_CONFIG__PUB__AUTHORIZATION_URL", "https://idp.test/authorize"),
        ("BEARERD_CONFIG__PUB__CLIENT_AUTH", "none"),
        ("BEARERD_CONFIG__PUB__REQUEST_BODY", "json"),
        ("BEARERD_CONFIG__PUB__ALLOWED_HOSTS", "h.test"),
    ]);
    let config = Config::from_yaml("test.yaml", &state, &environment).unwrap();
    let public = config.auth_config("pub").unwrap();
    assert_eq!(
        (public.client_auth, public.request_body),
        (ClientAuth::None, RequestBody::Json)
    );
}

#[test]
fn the_state_block_reads_its_key_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("state-key");
    std::fs::write(&key_file, format!("{}\n", "0f".repeat(32))).unwrap();
    let yaml = |key_file: &Path| {
        format!(
            "state:\n  file: /var/lib/bearerd/state.json\n  key_file: {}\n",
            key_file.display()
        )
    };
    let config = load(&yaml(&key_file)).unwrap();
    let state = config.state.unwrap();
    assert_eq!(state.file, Path::new("/var/lib/bearerd/state.json"));
    assert_eq!(state.key_file, key_file);
    assert_eq!(state.key.expose(), &[0x0f; 32]);
    assert!(load("").unwrap().state.is_none());

    std::fs::write(&key_file, "too short\n").unwrap();
    assert_eq!(
        errors(&yaml(&key_file), &Env::new()),
        [format!(
            "test.yaml: state.key_file: {}: must hold a 256-bit key: 32 raw bytes, or 64 hex or 44 base64 characters (it has 10 bytes)",
            key_file.display()
        )]
    );
    let missing = dir.path().join("missing");
    let got = errors(&yaml(&missing), &Env::new());
    assert!(
        got[0].starts_with(&format!(
            "test.yaml: state.key_file: {}: cannot read: ",
            missing.display()
        )),
        "{got:?}"
    );
    assert_eq!(
        errors("state: { key_file: /k }\n", &Env::new())[0],
        "test.yaml: state.file: missing: where the sealed state is written"
    );
    assert_eq!(
        errors("state: { file: /s }\n", &Env::new()),
        ["test.yaml: state.key_file: missing: the key the state is sealed with"]
    );
    let got = errors("state: { file: /s, key_file: /k, key: x }\n", &Env::new());
    assert!(
        got[0].starts_with("test.yaml: state.key: unknown field `key`"),
        "{got:?}"
    );
}

#[test]
fn the_shared_cache_block_reads_its_url_key_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cache-key");
    std::fs::write(&key_file, [9; 32]).unwrap();
    let env = Env::from([(
        "BEARERD_REDIS_URL".to_owned(),
        "rediss://bearerd:pa55w0rd@redis.internal:6380/2".to_owned(),
    )]);
    let yaml = format!(
        "shared_cache:\n  redis: ${{BEARERD_REDIS_URL}}\n  key_file: {}\n  prefix: fleet-a\n",
        key_file.display()
    );
    let config = Config::from_yaml("test.yaml", &yaml, &env).unwrap();
    let shared = config.shared_cache.unwrap();
    assert_eq!(shared.redis.expose(), "rediss://bearerd:pa55w0rd@redis.internal:6380/2");
    assert!(shared.redis.tls());
    assert_eq!(shared.key.expose(), &[9; 32]);
    assert_eq!(shared.key_file, key_file);
    assert_eq!(shared.prefix, "fleet-a");
    // Shown without its password, wherever it is printed.
    assert_eq!(
        shared.redis.to_string(),
        "rediss://bearerd:[redacted]@redis.internal:6380/2"
    );
    assert!(!format!("{shared:?}").contains("pa55w0rd"), "{shared:?}");
    assert!(load("").unwrap().shared_cache.is_none());

    let plain = format!(
        "shared_cache: {{ redis: redis://127.0.0.1:6379, key_file: {} }}\n",
        key_file.display()
    );
    let shared = load(&plain).unwrap().shared_cache.unwrap();
    assert_eq!(shared.prefix, "bearerd");
    assert!(!shared.redis.tls());
}

#[test]
fn a_bad_shared_cache_block_names_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cache-key");
    std::fs::write(&key_file, "not a key\n").unwrap();
    let k = key_file.display();
    assert_eq!(
        errors(
            &format!("shared_cache: {{ redis: http://redis:6379, key_file: {k}, prefix: 'a b' }}\n"),
            &Env::new()
        ),
        [
            "test.yaml: shared_cache.redis: must start with redis:// or rediss://, not http://".to_owned(),
            r#"test.yaml: shared_cache.prefix: must be 1 to 64 letters, digits or _ . - : (found "a b")"#.to_owned(),
            format!(
                "test.yaml: shared_cache.key_file: {k}: must hold a 256-bit key: 32 raw bytes, or 64 hex or 44 base64 characters (it has 10 bytes)"
            ),
        ]
    );
    assert_eq!(
        errors("shared_cache: { key_file: /k }\n", &Env::new())[0],
        "test.yaml: shared_cache.redis: missing: the redis:// or rediss:// URL of the shared cache"
    );
    assert_eq!(
        errors("shared_cache: { redis: 'redis://' }\n", &Env::new()),
        [
            "test.yaml: shared_cache.redis: names no host",
            "test.yaml: shared_cache.key_file: missing: the key every value in Redis is sealed with"
        ]
    );
    let secret_url = "shared_cache: { redis: 'redis://u:hunter2@redis/x', key_file: /k }\n";
    let got = errors(secret_url, &Env::new());
    assert_eq!(
        got[0],
        "test.yaml: shared_cache.redis: its path must be empty or a database number"
    );
    assert!(got.iter().all(|line| !line.contains("hunter2")), "{got:?}");
    let got = errors(
        "shared_cache: { redis: 'redis://h', key_file: /k, timeout: 1s }\n",
        &Env::new(),
    );
    assert!(
        got[0].starts_with("test.yaml: shared_cache.timeout: unknown field `timeout`"),
        "{got:?}"
    );
}

#[test]
fn bad_request_body_client_secret_jwt_and_none_settings_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let short = dir.path().join("short-secret");
    std::fs::write(&short, "only-31-bytes-of-client-secret\n").unwrap();
    std::fs::write(dir.path().join("state-key"), [1; 32]).unwrap();
    let base = "    token_url: https://idp.test/t\n    client_id: c\n    allowed_hosts: [h.test]\n";
    // `none` is for a user grant's public client (refused for client_credentials).
    let public =
        "    grant: authorization_code\n    authorization_url: https://idp.test/authorize\n    client_auth: none\n";
    let yaml = format!(
        "state: {{ file: {dir}/s.json, key_file: {dir}/state-key }}
auth_configs:
  - id: xml
{base}    client_secret: s
    request_body: xml
  - id: typo
{base}    client_auth: client_secret_jws
    client_secret: s
  - id: none-with-secret
{base}{public}    client_secret: s
  - id: none-with-key
{base}{public}    private_key_file: {key}
  - id: hmac-short
{base}    client_auth: client_secret_jwt
    client_secret: short
  - id: hmac-short-file
{base}    client_auth: client_secret_jwt
    client_secret_file: {short}
  - id: hmac-missing
{base}    client_auth: client_secret_jwt
  - id: hmac-with-key
{base}    client_auth: client_secret_jwt
    client_secret: a-secret-of-exactly-32-bytes-xyz
    private_key_file: {key}
",
        dir = dir.path().display(),
        key = key.display(),
        short = short.display()
    );
    let got = errors(&yaml, &Env::new());
    let expected = [
        "test.yaml: auth config `xml`: request_body: unknown variant `xml`, expected `form` or `json`".to_owned(),
        "test.yaml: auth config `typo`: client_auth: unknown variant `client_secret_jws`, expected one of `client_secret_basic`, `client_secret_post`, `client_secret_jwt`, `private_key_jwt`, `tls_client_auth`, `federated_jwt`, `none`".to_owned(),
        "test.yaml: auth config `none-with-secret`: client_secret: does not apply to client_auth: none".to_owned(),
        "test.yaml: auth config `none-with-key`: private_key_file: does not apply to client_auth: none".to_owned(),
        "test.yaml: auth config `hmac-short`: client_secret: client_secret_jwt signs with the secret as its HS256 key, which must be at least 32 bytes (RFC 7518 §3.2)".to_owned(),
        "test.yaml: auth config `hmac-short-file`: client_secret_file: client_secret_jwt signs with the secret as its HS256 key, which must be at least 32 bytes (RFC 7518 §3.2)".to_owned(),
        "test.yaml: auth config `hmac-missing`: client_secret: missing: set client_secret or client_secret_file".to_owned(),
        "test.yaml: auth config `hmac-with-key`: private_key_file: does not apply to client_auth: client_secret_jwt".to_owned(),
    ];
    assert_eq!(got, expected, "got:\n{}", got.join("\n"));
    // The secret's value never appears in a message.
    assert!(!got.iter().any(|g| g.contains("only-31-bytes")), "{got:?}");

    let environment = env(&[
        ("BEARERD_CONFIG__E__TOKEN_URL", "https://idp.test/t"),
        ("BEARERD_CONFIG__E__CLIENT_ID", "c"),
        ("BEARERD_CONFIG__E__CLIENT_SECRET", "s"),
        ("BEARERD_CONFIG__E__REQUEST_BODY", "yaml"),
        ("BEARERD_CONFIG__E__ALLOWED_HOSTS", "h.test"),
    ]);
    assert_eq!(
        errors("", &environment),
        [
            "test.yaml: auth config `e`: request_body (from BEARERD_CONFIG__E__REQUEST_BODY): unknown variant `yaml`, expected `form` or `json`"
        ]
    );
}

#[test]
fn the_secret_key_and_certificate_files_read_are_watched() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "first\n").unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let identity = rcgen::generate_simple_self_signed(vec!["client.test".to_owned()]).unwrap();
    let (cert, cert_key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&cert, identity.cert.pem()).unwrap();
    std::fs::write(&cert_key, identity.signing_key.serialize_pem()).unwrap();
    let base = "    token_url: https://idp.test/t\n    client_id: c\n    allowed_hosts: [h.test]\n";
    let yaml = format!(
        "auth_configs:\n  - id: a\n{base}    client_secret_file: {}\n  - id: b\n{base}    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: ES256\n  - id: c\n{base}    client_auth: tls_client_auth\n    client_cert_file: {}\n    client_key_file: {}\n",
        secret.display(),
        key.display(),
        cert.display(),
        cert_key.display()
    );
    let config = load(&yaml).unwrap();
    let paths: Vec<&Path> = config.watched_files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(paths, [&secret, &key, &cert, &cert_key]);
    assert!(config.watched_files.iter().all(|f| !f.changed()));
    let text = yaml.as_bytes();
    assert_eq!(config.inputs_now(text), config.inputs_loaded());
    // The Debug output names the file, never the hash of a secret.
    let shown = format!("{:?}", config.watched_files[0]);
    assert_eq!(shown, format!("WatchedFile {{ path: {secret:?}, .. }}"));

    // A new secret, the same bytes again, an unreadable file, a changed config text.
    std::fs::write(&secret, "second\n").unwrap();
    assert!(config.watched_files[0].changed());
    let rotated = config.inputs_now(text);
    assert_ne!(rotated, config.inputs_loaded());
    std::fs::write(&secret, "first\n").unwrap();
    assert_eq!(config.inputs_now(text), config.inputs_loaded());
    std::fs::remove_file(&secret).unwrap();
    assert!(config.watched_files[0].changed());
    let gone = config.inputs_now(text);
    assert!(gone != config.inputs_loaded() && gone != rotated);
    std::fs::write(&secret, "first\n").unwrap();
    assert_ne!(config.inputs_now(b"other text"), config.inputs_loaded());
}

const INTERCEPT_CONFIGS: &str =
    "auth_configs:\n  - id: api\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n";

#[test]
fn intercept_block_and_route_flags_load() {
    let yaml = format!(
        "intercept:\n  ca_bundle_out: /run/bearerd/ca-bundle.pem\n{INTERCEPT_CONFIGS}routes:\n  - match: {{ host: api.test }}\n    auth_config: api\n    upstream_tls: true\n    intercept: true\n  - match: {{ host: \"*.api.test\", path_prefix: /v1/ }}\n    auth_config: api\n    intercept: true\n  - match: {{ host: api.test, path_prefix: /v2/ }}\n    auth_config: api\n    intercept: true\n  - match: {{ host: 10.0.0.7 }}\n    auth_config: api\n    intercept: false\n"
    );
    let config = load(&yaml).unwrap();
    let intercept = config.intercept.as_ref().unwrap();
    assert_eq!(intercept.ca_bundle_out, Path::new("/run/bearerd/ca-bundle.pem"));
    assert_eq!(intercept.leaf_ttl, Duration::from_hours(24));
    assert!(intercept.operator_ca.is_none());
    let flags: Vec<bool> = config
        .routes
        .iter()
        .map(|route| matches!(route.kind, RouteKind::Forward { intercept: true, .. }))
        .collect();
    assert_eq!(flags, [true, true, true, false]);
    assert!(matches!(
        config.routes[0].kind,
        RouteKind::Forward {
            upstream_tls: true,
            intercept: true
        }
    ));
    // Each host once, in file order; a route without intercept contributes none.
    let hosts: Vec<String> = config.intercepted_hosts().iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.test", "*.api.test"]);

    // Without the block: off, and no route intercepts.
    let plain = load(&format!(
        "{INTERCEPT_CONFIGS}routes:\n  - match: {{ host: api.test }}\n    auth_config: api\n"
    ))
    .unwrap();
    assert!(plain.intercept.is_none());
    assert!(plain.intercepted_hosts().is_empty());
}

#[test]
fn an_operator_ca_is_read_from_its_files_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let yaml = format!(
        "intercept:\n  ca_bundle_out: {}\n  ca_cert_file: {}\n  ca_key_file: {}\n  leaf_ttl: 2h\n{INTERCEPT_CONFIGS}    allowed_hosts: [api.test]\n",
        dir.path().join("bundle.pem").display(),
        cert_file.display(),
        key_file.display()
    );
    let config = load(&yaml).unwrap();
    let intercept = config.intercept.as_ref().unwrap();
    assert_eq!(intercept.leaf_ttl, Duration::from_hours(2));
    let operator = intercept.operator_ca.as_ref().unwrap();
    assert_eq!(operator.chain, [cert.der().clone()]);
    assert_eq!(operator.key.secret_der(), key.serialize_der());
    let shown = format!("{config:?}");
    let key_pem = key.serialize_pem();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(shown.contains("key: \"[redacted]\""), "{shown}");
    assert!(!shown.contains(key_body), "{shown}");
    assert!(!shown.contains(&format!("{:?}", key.serialize_der())), "{shown}");
}

#[test]
fn intercept_problems_name_the_field_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.key");
    let yaml = format!(
        "intercept:\n  ca_cert_file: {}\n  ca_key_file: {}\n  leaf_ttl: 5m\n  wildcard: true\n{INTERCEPT_CONFIGS}    allowed_hosts: [api.test]\nroutes:\n  - match: {{ path_prefix: /api/ }}\n    auth_config: api\n    upstream: https://api.test\n    intercept: true\n  - match: {{ path_prefix: /v1/ }}\n    auth_config: api\n    intercept: true\n",
        not_pem.display(),
        missing.display()
    );
    // An unknown field stops the block before its other fields are looked at.
    assert_eq!(
        errors(&yaml, &Env::new()),
        [
            "test.yaml: intercept.wildcard: unknown field `wildcard`, expected one of `ca_bundle_out`, `ca_cert_file`, `ca_key_file`, `leaf_ttl`".to_owned(),
            "test.yaml: auth config `api`: routes[0].intercept: applies to forward routes only: a gateway route is reached without CONNECT".to_owned(),
            "test.yaml: auth config `api`: routes[1].intercept: needs match.host: only CONNECTs to a named host (or *.suffix) are intercepted".to_owned(),
        ]
    );
    let yaml = yaml.replace("  wildcard: true\n", "");
    assert_eq!(
        errors(&yaml, &Env::new()),
        [
            "test.yaml: auth config `api`: routes[0].intercept: applies to forward routes only: a gateway route is reached without CONNECT".to_owned(),
            "test.yaml: auth config `api`: routes[1].intercept: needs match.host: only CONNECTs to a named host (or *.suffix) are intercepted".to_owned(),
            "test.yaml: intercept.leaf_ttl: must be between 10m and 397 days".to_owned(),
            "test.yaml: intercept.ca_bundle_out: missing: the file bearerd writes its CA (and the roots it trusts) to, for apps to trust".to_owned(),
            format!(
                "test.yaml: intercept.ca_key_file: cannot read {}: No such file or directory (os error 2)",
                missing.display()
            ),
        ]
    );
    let half = format!(
        "intercept:\n  ca_bundle_out: b.pem\n  ca_key_file: {}\n  leaf_ttl: 9600h\n{INTERCEPT_CONFIGS}    allowed_hosts: [api.test]\n",
        missing.display()
    );
    assert_eq!(
        errors(&half, &Env::new()),
        [
            "test.yaml: intercept.leaf_ttl: must be between 10m and 397 days".to_owned(),
            "test.yaml: intercept.ca_cert_file: missing: ca_key_file is set; an operator CA needs both ca_cert_file and ca_key_file".to_owned(),
        ]
    );
    let bad_pem = format!(
        "intercept:\n  ca_bundle_out: b.pem\n  ca_cert_file: {0}\n  ca_key_file: {0}\n{INTERCEPT_CONFIGS}    allowed_hosts: [api.test]\n",
        not_pem.display()
    );
    assert_eq!(
        errors(&bad_pem, &Env::new()),
        [format!(
            "test.yaml: intercept.ca_cert_file: no PEM certificate in {}",
            not_pem.display()
        )]
    );
    // A route may intercept only when the block says how.
    let off = format!(
        "{INTERCEPT_CONFIGS}routes:\n  - match: {{ host: api.test }}\n    auth_config: api\n    intercept: true\n"
    );
    assert_eq!(
        errors(&off, &Env::new()),
        [
            "test.yaml: auth config `api`: routes[0].intercept: needs the top-level intercept: block (where the CA bundle goes, and which CA signs)"
        ]
    );
}

#[test]
fn the_refresh_token_grant_starts_from_its_file_and_needs_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), [1; 32]).unwrap();
    std::fs::write(dir.path().join("rt"), "rt-first\n").unwrap();
    let state = format!(
        "state: {{ file: {0}/s.json, key_file: {0}/key }}\n",
        dir.path().display()
    );
    let crm = |fields: &str| {
        format!(
            "auth_configs:\n  - id: crm\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n{fields}"
        )
    };
    let file = format!("    refresh_token_file: {}/rt\n", dir.path().display());
    let config = load(&format!("{state}{}", crm(&format!("    grant: refresh_token\n{file}")))).unwrap();
    let crm_config = config.auth_config("crm").unwrap();
    assert_eq!(crm_config.grant, Grant::RefreshToken);
    assert!(crm_config.grant.is_user_grant());
    let first = crm_config.first_refresh_token.as_ref().unwrap();
    assert_eq!(first.token.expose(), "rt-first");
    assert_eq!(first.path, dir.path().join("rt"));
    assert!(!format!("{crm_config:?}").contains("rt-first"));

    assert_eq!(
        errors(&format!("{state}{}", crm("    grant: refresh_token\n")), &Env::new()),
        [
            "test.yaml: auth config `crm`: refresh_token_file: missing: grant: refresh_token starts from the refresh token in this file"
        ]
    );
    assert_eq!(
        errors(&format!("{state}{}", crm(&file)), &Env::new()),
        ["test.yaml: auth config `crm`: refresh_token_file: applies only to grant: refresh_token"]
    );
    assert_eq!(
        errors(&crm(&format!("    grant: refresh_token\n{file}")), &Env::new()),
        [
            "test.yaml: auth config `crm`: grant: refresh_token keeps its refresh token in state.file: add a state: block (file, key_file), or a shared_cache: block to keep it in Redis"
        ]
    );
    std::fs::write(dir.path().join("rt"), "\n").unwrap();
    let got = errors(
        &format!("{state}{}", crm(&format!("    grant: refresh_token\n{file}"))),
        &Env::new(),
    );
    assert_eq!(
        got,
        [format!(
            "test.yaml: auth config `crm`: refresh_token_file: {}/rt is empty",
            dir.path().display()
        )]
    );
    for reserved in ["refresh_token", "code", "redirect_uri", "code_verifier"] {
        let got = errors(&crm(&format!("    extra_params: {{ {reserved}: x }}\n")), &Env::new());
        assert_eq!(
            got,
            [format!(
                "test.yaml: auth config `crm`: extra_params.{reserved}: is set by bearerd itself and cannot be overridden"
            )]
        );
    }
}

#[test]
fn the_authorization_code_grant_and_public_clients() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), [1; 32]).unwrap();
    let state = format!(
        "state: {{ file: {0}/s.json, key_file: {0}/key }}\n",
        dir.path().display()
    );
    let mail = |fields: &str| {
        format!(
            "{state}auth_configs:\n  - id: mail\n    grant: authorization_code\n    client_id: c\n    allowed_hosts: [h.test]\n{fields}"
        )
    };
    let config = load(&mail(
        "    issuer: https://idp.test\n    client_auth: none\n    redirect_uri: http://localhost:19090/callback\n    authorize_params: { prompt: consent, max_age: 0, x: true }\n",
    ))
    .unwrap();
    let mail_config = config.auth_config("mail").unwrap();
    assert_eq!(mail_config.grant, Grant::AuthorizationCode);
    assert_eq!(mail_config.client_auth, ClientAuth::None);
    assert!(matches!(mail_config.credential, Credential::None));
    let authorize = mail_config.authorize.as_ref().unwrap();
    assert_eq!(authorize.url, None, "from discovery");
    assert_eq!(
        authorize.redirect_uri.as_ref().unwrap().as_str(),
        "http://localhost:19090/callback"
    );
    assert_eq!(
        authorize.params,
        [
            ("max_age".to_owned(), "0".to_owned()),
            ("prompt".to_owned(), "consent".to_owned()),
            ("x".to_owned(), "true".to_owned())
        ]
    );
    // A token URL needs its authorization URL; the Microsoft template has both.
    let config = load(&mail(
        "    token_url: https://idp.test/token\n    authorization_url: https://idp.test/authorize?tenant=t\n    client_secret: s\n",
    ))
    .unwrap();
    let authorize = config.auth_config("mail").unwrap().authorize.clone().unwrap();
    assert_eq!(authorize.url.unwrap().as_str(), "https://idp.test/authorize?tenant=t");
    assert_eq!(authorize.redirect_uri, None);
    let config = load(&mail(
        "    provider: microsoft\n    tenant: organizations\n    client_secret: s\n",
    ))
    .unwrap();
    let authorize = config.auth_config("mail").unwrap().authorize.clone().unwrap();
    assert_eq!(
        authorize.url.unwrap().as_str(),
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize"
    );
}

#[test]
fn authorization_code_fields_are_checked_and_refused_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), [1; 32]).unwrap();
    let state = format!(
        "state: {{ file: {0}/s.json, key_file: {0}/key }}\n",
        dir.path().display()
    );
    let mail = |fields: &str| {
        format!(
            "{state}auth_configs:\n  - id: mail\n    grant: authorization_code\n    client_id: c\n    allowed_hosts: [h.test]\n{fields}"
        )
    };
    let refused = [
        (
            mail("    token_url: https://idp.test/token\n    client_secret: s\n"),
            "authorization_url: missing: where the consent starts (or use issuer: and discovery names it)",
        ),
        (
            mail("    issuer: https://idp.test\n    client_secret: s\n    authorization_url: http://idp.test/a\n"),
            "authorization_url: must be https:// (http:// is allowed only for loopback, for development)",
        ),
        (
            mail("    issuer: https://idp.test\n    client_secret: s\n    authorization_url: https://idp.test/a#x\n"),
            "authorization_url: must not have a fragment (RFC 6749 §3.1)",
        ),
        (
            mail(
                "    issuer: https://idp.test\n    client_secret: s\n    redirect_uri: https://app.example.com/callback\n",
            ),
            "redirect_uri: must be http://127.0.0.1:PORT/callback (or localhost, or [::1]): the admin listener's /callback, which answers loopback peers only",
        ),
        (
            mail("    issuer: https://idp.test\n    client_secret: s\n    redirect_uri: http://127.0.0.1:9090/cb\n"),
            "redirect_uri: must be http://127.0.0.1:PORT/callback",
        ),
        (
            mail("    issuer: https://idp.test\n    client_secret: s\n    authorize_params: { state: x }\n"),
            "authorize_params.state: is set by bearerd itself and cannot be overridden",
        ),
        (
            mail(
                "    issuer: https://idp.test\n    client_secret: s\n    authorize_params: { response_mode: form_post }\n",
            ),
            "authorize_params.response_mode: is set by bearerd itself and cannot be overridden",
        ),
        (
            mail("    issuer: https://idp.test\n    client_auth: none\n    client_secret: s\n"),
            "client_secret: does not apply to client_auth: none",
        ),
        (
            "auth_configs:\n  - id: mail\n    token_url: https://idp.test/t\n    client_id: c\n    client_auth: none\n    allowed_hosts: [h.test]\n".to_owned(),
            "client_auth: none is for public clients of the user grants (authorization_code, refresh_token) and for jwt_bearer and token_exchange, whose assertion or subject token proves who is asking",
        ),
        (
            "auth_configs:\n  - id: mail\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    redirect_uri: http://127.0.0.1:1/callback\n    authorize_params: { a: b }\n".to_owned(),
            "redirect_uri: applies only to grant: authorization_code",
        ),
    ];
    for (yaml, expected) in refused {
        let got = errors(&yaml, &Env::new());
        assert!(
            got.iter()
                .any(|e| e.starts_with(&format!("test.yaml: auth config `mail`: {expected}"))),
            "{expected}\n{got:?}"
        );
    }
    // From the environment.
    let environment = env(&[("BEARERD_CONFIG__MAIL__AUTHORIZE_PARAMS__PROMPT", "select_account")]);
    let config = Config::from_yaml(
        "t",
        &mail("    issuer: https://idp.test\n    client_secret: s\n"),
        &environment,
    )
    .unwrap();
    assert_eq!(
        config.auth_config("mail").unwrap().authorize.as_ref().unwrap().params,
        [("prompt".to_owned(), "select_account".to_owned())]
    );
}

#[test]
fn the_refresh_token_file_and_the_state_key_are_watched_too() {
    let dir = tempfile::tempdir().unwrap();
    let (state_key, refresh_token) = (dir.path().join("state-key"), dir.path().join("rt"));
    std::fs::write(&state_key, [1; 32]).unwrap();
    std::fs::write(&refresh_token, "rt-first\n").unwrap();
    let yaml = format!(
        "state: {{ file: {}/s.json, key_file: {} }}\nauth_configs:\n  - id: crm\n    grant: refresh_token\n    refresh_token_file: {}\n    token_url: https://idp.test/t\n    client_id: c\n    client_auth: none\n    allowed_hosts: [h.test]\n",
        dir.path().display(),
        state_key.display(),
        refresh_token.display()
    );
    let config = load(&yaml).unwrap();
    let paths: Vec<&Path> = config.watched_files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(paths, [&refresh_token, &state_key]);
    assert_eq!(config.inputs_now(yaml.as_bytes()), config.inputs_loaded());
    // A Secret updated with a new refresh token: the watcher sees it.
    std::fs::write(&refresh_token, "rt-second\n").unwrap();
    assert!(config.watched_files[0].changed());
    assert!(!config.watched_files[1].changed());
    assert_ne!(config.inputs_now(yaml.as_bytes()), config.inputs_loaded());
    assert!(!format!("{:?}", config.watched_files).contains("rt-"));
    // A refresh token file that cannot be read names its field, as a secret file does.
    std::fs::remove_file(&refresh_token).unwrap();
    let got = errors(&yaml, &Env::new());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!(
            "test.yaml: auth config `crm`: refresh_token_file: cannot read {}: ",
            refresh_token.display()
        )),
        "{got:?}"
    );
}

#[test]
fn the_token_cache_key_covers_the_fields_of_both_kinds_of_token_request() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), [1; 32]).unwrap();
    let key_of = |fields: &str| {
        let yaml = format!(
            "state: {{ file: {0}/s.json, key_file: {0}/key }}\nauth_configs:\n  - id: mail\n    grant: authorization_code\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: a-secret-of-exactly-32-bytes-xyz\n    allowed_hosts: [h.test]\n{fields}",
            dir.path().display()
        );
        load(&yaml).unwrap().auth_config("mail").unwrap().cache_key().clone()
    };
    let base = key_of("    authorization_url: https://idp.test/authorize\n");
    assert_eq!(base, key_of("    authorization_url: https://idp.test/authorize\n"));
    // Each of these changes whose token (and refresh token) the config holds.
    for changed in [
        "    authorization_url: https://idp.test/authorize\n    request_body: json\n",
        "    authorization_url: https://idp.test/authorize\n    client_auth: client_secret_jwt\n",
        "    authorization_url: https://idp.test/authorize\n    authorize_params: { audience: https://api.test }\n",
        "    authorization_url: https://idp.test/authorize?tenant=other\n",
        "    authorization_url: https://idp.test/authorize\n    extra_params: { resource: https://api.test }\n",
        "    authorization_url: https://idp.test/authorize\n    scopes: [offline_access]\n",
    ] {
        assert_ne!(key_of(changed), base, "{changed}");
    }
    // Where the browser comes back does not.
    assert_eq!(
        key_of("    authorization_url: https://idp.test/authorize\n    redirect_uri: http://localhost:9191/callback\n"),
        base
    );
}

#[test]
fn the_operator_ca_files_are_watched_and_a_new_ca_differs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    let (cert_file, key_file) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let (first_cert, first_key) = ca("first");
    std::fs::write(&cert_file, &first_cert).unwrap();
    std::fs::write(&key_file, &first_key).unwrap();
    let yaml = format!(
        "intercept:\n  ca_bundle_out: {}\n  ca_cert_file: {}\n  ca_key_file: {}\n{INTERCEPT_CONFIGS}    allowed_hosts: [api.test]\n",
        dir.path().join("bundle.pem").display(),
        cert_file.display(),
        key_file.display()
    );
    let config = load(&yaml).unwrap();
    let paths: Vec<&Path> = config.watched_files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(paths, [&cert_file, &key_file]);
    assert_eq!(config.inputs_now(yaml.as_bytes()), config.inputs_loaded());
    assert!(!format!("{:?}", config.watched_files).contains("PRIVATE KEY"));

    // A new CA in the Secret: the watcher sees both files change, and the configuration it
    // reloads differs in `intercept` (which the reload only warns about).
    let (second_cert, second_key) = ca("second");
    std::fs::write(&cert_file, &second_cert).unwrap();
    std::fs::write(&key_file, &second_key).unwrap();
    assert!(config.watched_files.iter().all(WatchedFile::changed));
    assert_ne!(config.inputs_now(yaml.as_bytes()), config.inputs_loaded());
    let reloaded = load(&yaml).unwrap();
    assert_ne!(reloaded.intercept, config.intercept);
    assert_eq!(load(&yaml).unwrap().intercept, reloaded.intercept);
}

/// Auth config `wl` at a token URL, with `fields` (grant, client authentication, files).
fn workload(fields: &str) -> String {
    format!(
        "auth_configs:\n  - id: wl\n    token_url: https://idp.test/t\n    client_id: wl-client\n    allowed_hosts: [h.test]\n{fields}"
    )
}

#[test]
fn federated_jwt_and_jwt_bearer_take_an_assertion_file_read_at_each_request() {
    // The file need not exist yet: it is read at every token request, not at load.
    let federated = load(&workload(
        "    client_auth: federated_jwt\n    assertion_file: /var/run/secrets/azure/tokens/azure-identity-token\n",
    ))
    .unwrap();
    let wl = federated.auth_config("wl").unwrap();
    assert_eq!(wl.client_auth, ClientAuth::FederatedJwt);
    assert!(matches!(wl.credential, Credential::AssertionFile));
    assert_eq!(wl.grant, Grant::ClientCredentials);
    assert_eq!(
        wl.assertion_file.as_deref(),
        Some(Path::new("/var/run/secrets/azure/tokens/azure-identity-token"))
    );
    assert!(
        federated.watched_files.is_empty(),
        "a rotated assertion is no reason to reload"
    );

    for (auth, expected) in [
        ("", ClientAuth::ClientSecretBasic),
        ("    client_auth: none\n", ClientAuth::None),
    ] {
        let secret = if auth.is_empty() { "    client_secret: s\n" } else { "" };
        let bearer = load(&workload(&format!(
            "    grant: jwt_bearer\n    assertion_file: /run/spire/svid.jwt\n{auth}{secret}"
        )))
        .unwrap();
        let wl = bearer.auth_config("wl").unwrap();
        assert_eq!(wl.grant, Grant::JwtBearer);
        assert!(!wl.grant.is_user_grant(), "jwt_bearer needs no consent and no state");
        assert_eq!(wl.grant.grant_type(), "urn:ietf:params:oauth:grant-type:jwt-bearer");
        assert_eq!(wl.client_auth, expected);
        assert_eq!(wl.assertion_file.as_deref(), Some(Path::new("/run/spire/svid.jwt")));
    }
}

#[test]
fn assertion_file_problems_name_the_field() {
    let refused = [
        (
            workload("    client_auth: federated_jwt\n"),
            "assertion_file: missing: client_auth: federated_jwt sends the JWT this file holds",
        ),
        (
            workload("    grant: jwt_bearer\n    client_auth: none\n"),
            "assertion_file: missing: grant: jwt_bearer sends the JWT this file holds",
        ),
        (
            workload("    client_auth: federated_jwt\n    assertion_file: /t\n    client_secret: s\n"),
            "client_secret: does not apply to client_auth: federated_jwt",
        ),
        (
            workload("    client_auth: federated_jwt\n    assertion_file: /t\n    private_key_file: /k.pem\n"),
            "private_key_file: does not apply to client_auth: federated_jwt",
        ),
        (
            workload("    client_auth: federated_jwt\n    assertion_file: ''\n"),
            "assertion_file: is empty: name the file holding the JWT",
        ),
        (
            workload("    client_secret: s\n    assertion_file: /t\n"),
            "assertion_file: applies only to client_auth: federated_jwt and grant: jwt_bearer",
        ),
        (
            workload("    grant: jwt_bearer\n    client_auth: federated_jwt\n    assertion_file: /t\n"),
            "client_auth: federated_jwt would send jwt_bearer's assertion a second time: use none, or a method with its own credential",
        ),
        (
            workload("    client_auth: none\n"),
            "client_auth: none is for public clients of the user grants (authorization_code, refresh_token) and for jwt_bearer and token_exchange",
        ),
    ];
    for (yaml, expected) in refused {
        let got = errors(&yaml, &Env::new());
        assert!(
            got.iter()
                .any(|e| e.starts_with(&format!("test.yaml: auth config `wl`: {expected}"))),
            "{expected}\n{got:?}"
        );
    }
    // From the environment, as every field.
    let environment = env(&[("BEARERD_CONFIG__WL__ASSERTION_FILE", "/from/env")]);
    let config = Config::from_yaml("t", &workload("    client_auth: federated_jwt\n"), &environment).unwrap();
    assert_eq!(
        config.auth_config("wl").unwrap().assertion_file.as_deref(),
        Some(Path::new("/from/env"))
    );
}

#[test]
fn the_token_cache_key_covers_the_assertion_files_path_grant_and_method() {
    let key_of = |fields: &str| {
        load(&workload(fields))
            .unwrap()
            .auth_config("wl")
            .unwrap()
            .cache_key()
            .clone()
    };
    let base = key_of("    client_auth: federated_jwt\n    assertion_file: /a/token\n");
    assert_eq!(
        base,
        key_of("    client_auth: federated_jwt\n    assertion_file: /a/token\n")
    );
    for changed in [
        "    client_auth: federated_jwt\n    assertion_file: /b/token\n",
        "    grant: jwt_bearer\n    client_auth: none\n    assertion_file: /a/token\n",
        "    grant: jwt_bearer\n    client_secret: s\n    assertion_file: /a/token\n",
    ] {
        assert_ne!(key_of(changed), base, "{changed}");
    }
}

#[test]
fn token_exchange_takes_its_subject_token_file_and_types() {
    let config = load(&workload(
        "    grant: token_exchange\n    client_auth: none\n    subject_token_file: /var/run/secrets/tokens/gcp\n    subject_token_type: urn:ietf:params:oauth:token-type:jwt\n    requested_token_type: urn:ietf:params:oauth:token-type:access_token\n    audience: //iam.googleapis.com/x\n    resource: https://api.test/v1\n",
    ))
    .unwrap();
    let wl = config.auth_config("wl").unwrap();
    assert_eq!(wl.grant.grant_type(), "urn:ietf:params:oauth:grant-type:token-exchange");
    assert!(!wl.grant.is_user_grant());
    let exchange = wl.token_exchange.as_ref().unwrap();
    assert_eq!(exchange.subject_token_file, Path::new("/var/run/secrets/tokens/gcp"));
    assert!(exchange.subject_is_jwt());
    assert_eq!(
        exchange.requested_token_type.as_deref(),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(exchange.audience.as_deref(), Some("//iam.googleapis.com/x"));
    assert_eq!(exchange.resource.as_ref().unwrap().as_str(), "https://api.test/v1");

    let base = "    grant: token_exchange\n    client_auth: none\n";
    let refused = [
        (
            workload(&format!(
                "{base}    subject_token_type: urn:ietf:params:oauth:token-type:jwt\n"
            )),
            "subject_token_file: missing: token_exchange sends the token this file holds",
        ),
        (
            workload(&format!("{base}    subject_token_file: /t\n")),
            "subject_token_type: missing: the type of the subject token",
        ),
        (
            workload(&format!(
                "{base}    subject_token_file: /t\n    subject_token_type: jwt\n"
            )),
            "subject_token_type: must be a token type URI",
        ),
        (
            workload(&format!(
                "{base}    subject_token_file: /t\n    subject_token_type: urn:x:jwt\n    resource: https://api.test/#f\n"
            )),
            "resource: must be an absolute URI without a fragment (RFC 8693 §2.1)",
        ),
        (
            workload("    client_secret: s\n    audience: a\n"),
            "audience: applies only to grant: token_exchange",
        ),
        (
            workload("    client_secret: s\n    subject_token_file: /t\n"),
            "subject_token_file: applies only to grant: token_exchange",
        ),
    ];
    for (yaml, expected) in refused {
        let got = errors(&yaml, &Env::new());
        assert!(
            got.iter()
                .any(|e| e.starts_with(&format!("test.yaml: auth config `wl`: {expected}"))),
            "{expected}\n{got:?}"
        );
    }
    // The cache key has the file's path and what is asked for.
    let key_of = |fields: &str| {
        load(&workload(&format!("{base}    subject_token_type: urn:x:jwt\n{fields}")))
            .unwrap()
            .auth_config("wl")
            .unwrap()
            .cache_key()
            .clone()
    };
    let key = key_of("    subject_token_file: /a\n");
    assert_eq!(key, key_of("    subject_token_file: /a\n"));
    for changed in [
        "    subject_token_file: /b\n",
        "    subject_token_file: /a\n    audience: x\n",
        "    subject_token_file: /a\n    resource: https://r.test/\n",
        "    subject_token_file: /a\n    requested_token_type: urn:x:y\n",
    ] {
        assert_ne!(key_of(changed), key, "{changed}");
    }
}

/// What Azure Workload Identity's webhook injects into a labelled pod.
fn azure_env(authority: &str) -> Env {
    env(&[
        ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("AZURE_TENANT_ID", "0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1"),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_AUTHORITY_HOST", authority),
    ])
}

#[test]
fn provider_microsoft_without_a_secret_is_workload_identity_from_the_webhooks_variables() {
    let yaml = "auth_configs:
  - id: graph
    provider: microsoft
    scopes: [https://graph.microsoft.com/.default]
    allowed_hosts: [graph.microsoft.com]
  - id: vault
    provider: microsoft
    client_id: 99999999-0000-0000-0000-000000000000
    assertion_file: /var/run/secrets/vault/token
    allowed_hosts: [vault.azure.net]
  - id: other-tenant
    provider: microsoft
    tenant: contoso.onmicrosoft.com
    authority_host: https://login.microsoftonline.us/
    allowed_hosts: [graph.microsoft.us]
  - id: with-secret
    provider: microsoft
    tenant: contoso.onmicrosoft.com
    client_id: secret-client
    client_secret: s
    allowed_hosts: [h.test]
";
    let config = Config::from_yaml("test.yaml", yaml, &azure_env("https://login.microsoftonline.com/")).unwrap();
    let token_url = |id: &str| match &config.auth_config(id).unwrap().endpoint {
        TokenEndpoint::Url(url) => url.to_string(),
        other @ TokenEndpoint::Discovery { .. } => panic!("{other:?}"),
    };
    let graph = config.auth_config("graph").unwrap();
    assert_eq!(graph.client_auth, ClientAuth::FederatedJwt);
    assert!(matches!(graph.credential, Credential::AssertionFile));
    assert_eq!(graph.client_id, "11111111-2222-3333-4444-555555555555");
    assert_eq!(
        graph.assertion_file.as_deref(),
        Some(Path::new("/var/run/secrets/azure/tokens/azure-identity-token"))
    );
    assert_eq!(
        token_url("graph"),
        "https://login.microsoftonline.com/0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1/oauth2/v2.0/token"
    );
    // A second federated identity in the same pod: its own client id and token file.
    let vault = config.auth_config("vault").unwrap();
    assert_eq!(vault.client_id, "99999999-0000-0000-0000-000000000000");
    assert_eq!(
        vault.assertion_file.as_deref(),
        Some(Path::new("/var/run/secrets/vault/token"))
    );
    assert_ne!(vault.cache_key(), graph.cache_key());
    assert_eq!(
        token_url("other-tenant"),
        "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    // A secret keeps the old way: client_secret_basic, nothing from the webhook.
    let with_secret = config.auth_config("with-secret").unwrap();
    assert_eq!(with_secret.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(with_secret.assertion_file, None);
    assert_eq!(
        token_url("with-secret"),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    // Without the webhook's variables, a secret is still what the config needs.
    let refused = errors(
        "auth_configs:\n  - id: s\n    provider: microsoft\n    tenant: t.test\n    client_id: c\n    client_auth: client_secret_post\n    allowed_hosts: [h.test]\n",
        &azure_env("https://login.microsoftonline.com/"),
    );
    assert_eq!(
        refused,
        ["test.yaml: auth config `s`: client_secret: missing: set client_secret or client_secret_file"]
    );
}

#[test]
fn microsoft_workload_identity_without_its_variables_names_each_missing_field() {
    let yaml = "auth_configs:\n  - id: graph\n    provider: microsoft\n    allowed_hosts: [h.test]\n";
    assert_eq!(
        errors(yaml, &Env::new()),
        [
            "test.yaml: auth config `graph`: tenant: missing: provider: microsoft needs the directory (tenant) id or domain, or AZURE_TENANT_ID in the environment",
            "test.yaml: auth config `graph`: assertion_file: missing: client_auth: federated_jwt sends the JWT this file holds, or AZURE_FEDERATED_TOKEN_FILE in the environment",
            "test.yaml: auth config `graph`: client_id: missing: set client_id, or AZURE_CLIENT_ID in the environment",
        ]
    );
    assert_eq!(
        errors(yaml, &azure_env("http://login.example.test/")),
        [
            "test.yaml: auth config `graph`: authority_host (from AZURE_AUTHORITY_HOST): must be https:// (http:// is allowed only for loopback, for development)"
        ]
    );
    assert_eq!(
        errors(yaml, &azure_env("https://login.example.test/tenant?x=1")),
        [
            "test.yaml: auth config `graph`: authority_host (from AZURE_AUTHORITY_HOST): must be the login host alone, such as https://login.microsoftonline.com/"
        ]
    );
    let mut bad_tenant = azure_env("https://login.microsoftonline.com/");
    bad_tenant.insert("AZURE_TENANT_ID".into(), "common".into());
    assert_eq!(
        errors(yaml, &bad_tenant),
        [
            "test.yaml: auth config `graph`: tenant (from AZURE_TENANT_ID): `common` cannot issue client-credentials tokens: name the directory (tenant id or domain)"
        ]
    );
    assert_eq!(
        errors(
            "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    authority_host: https://login.microsoftonline.com/\n    allowed_hosts: [h.test]\n",
            &Env::new()
        ),
        ["test.yaml: auth config `a`: authority_host: applies only to provider: microsoft"]
    );
}

/// Google's documented `external_account` file, with `extra` members, its token file at
/// `/var/run/secrets/tokens/gcp-token`.
fn external_account(extra: &str) -> String {
    format!(
        r#"{{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/k8s","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token","credential_source":{{"file":"/var/run/secrets/tokens/gcp-token","format":{{"type":"text"}}}}{extra}}}"#
    )
}

#[test]
fn provider_google_without_a_secret_reads_an_external_account_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, external_account("")).unwrap();
    let impersonating = dir.path().join("impersonating.json");
    std::fs::write(
        &impersonating,
        external_account(
            r#","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken""#,
        ),
    )
    .unwrap();
    let yaml = format!(
        "auth_configs:\n  - id: gcs\n    provider: google\n    allowed_hosts: [storage.googleapis.com]\n  - id: bq\n    provider: google\n    credentials_file: {}\n    scopes: [https://www.googleapis.com/auth/bigquery]\n    allowed_hosts: [bigquery.googleapis.com]\n",
        impersonating.display()
    );
    let environment = env(&[("GOOGLE_APPLICATION_CREDENTIALS", plain.to_str().unwrap())]);
    let config = Config::from_yaml("test.yaml", &yaml, &environment).unwrap();
    let gcs = config.auth_config("gcs").unwrap();
    assert_eq!(gcs.grant, Grant::TokenExchange);
    assert_eq!(gcs.client_auth, ClientAuth::None);
    assert_eq!(
        gcs.endpoint,
        TokenEndpoint::Url(Url::parse("https://sts.googleapis.com/v1/token").unwrap())
    );
    assert_eq!(
        gcs.token_exchange,
        Some(TokenExchange {
            subject_token_file: "/var/run/secrets/tokens/gcp-token".into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            requested_token_type: Some("urn:ietf:params:oauth:token-type:access_token".into()),
            audience: Some(
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/k8s".into()
            ),
            resource: None,
        })
    );
    assert_eq!(gcs.scopes, ["https://www.googleapis.com/auth/cloud-platform"]);
    assert_eq!(
        gcs.external_account,
        Some(ExternalAccount {
            credentials_file: plain.clone(),
            subject_token_field: None,
            impersonation: None,
        })
    );
    let bq = config.auth_config("bq").unwrap();
    assert_eq!(bq.scopes, ["https://www.googleapis.com/auth/bigquery"]);
    let impersonation = bq.external_account.as_ref().unwrap().impersonation.as_ref().unwrap();
    assert_eq!(impersonation.lifetime, Duration::from_hours(1));
    assert!(impersonation.url.as_str().ends_with(":generateAccessToken"));
    assert_ne!(bq.cache_key(), gcs.cache_key());
    // Both files are watched: a rewritten credential file reloads the config.
    let watched: Vec<&Path> = config.watched_files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(watched, [plain.as_path(), impersonating.as_path()]);
    // With a secret, provider: google is still the OpenID Connect template.
    let with_secret = endpoint_of(&with_endpoint("    provider: google\n"), &environment);
    assert_eq!(
        with_secret,
        discovery(
            "https://accounts.google.com",
            "https://accounts.google.com/.well-known/openid-configuration"
        )
    );
}

#[test]
fn a_bad_external_account_setup_names_the_file_and_field_never_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, external_account("").replace("\"audience\"", "\"audiance\"")).unwrap();
    let yaml = "auth_configs:\n  - id: gcs\n    provider: google\n    allowed_hosts: [h.test]\n";
    let from_env = env(&[("GOOGLE_APPLICATION_CREDENTIALS", bad.to_str().unwrap())]);
    let got = errors(yaml, &from_env);
    assert_eq!(
        got,
        [format!(
            "test.yaml: auth config `gcs`: credentials_file (from GOOGLE_APPLICATION_CREDENTIALS): {}: audience: missing",
            bad.display()
        )]
    );
    assert!(!got[0].contains("iam.googleapis.com"), "{got:?}");
    assert_eq!(
        errors(yaml, &Env::new()),
        [
            "test.yaml: auth config `gcs`: credentials_file: missing: provider: google without a client secret reads an external_account credential file, or GOOGLE_APPLICATION_CREDENTIALS in the environment"
        ]
    );
    let gone = dir.path().join("gone.json");
    let got = errors(
        &format!("{yaml}    credentials_file: {}\n", gone.display()),
        &Env::new(),
    );
    assert!(
        got[0].starts_with(&format!(
            "test.yaml: auth config `gcs`: credentials_file: cannot read {}: ",
            gone.display()
        )),
        "{got:?}"
    );
    let good = dir.path().join("good.json");
    std::fs::write(&good, external_account("")).unwrap();
    let conflicting = format!(
        "{yaml}    credentials_file: {}\n    token_url: https://sts.test/v1/token\n    audience: a\n",
        good.display()
    );
    assert_eq!(
        errors(&conflicting, &Env::new()),
        [
            "test.yaml: auth config `gcs`: token_url: does not apply to provider: google with a credentials file, which says where tokens come from",
            "test.yaml: auth config `gcs`: audience: does not apply to provider: google with a credentials file, which says where tokens come from",
        ]
    );
    assert_eq!(
        errors(
            &format!(
                "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    credentials_file: {}\n    allowed_hosts: [h.test]\n",
                good.display()
            ),
            &Env::new()
        ),
        [
            "test.yaml: auth config `a`: credentials_file: applies only to provider: google without a client secret (workload identity federation)"
        ]
    );
}
