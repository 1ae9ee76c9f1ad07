//! What ships in `deploy/` and `config/examples/`: the Dockerfile's structure (no container
//! engine here to build it), the Kubernetes manifests against the Kubernetes JSON schemas
//! (`kubernetes-validate` from `PyPI`) and the Prometheus Operator's schema, the pod's security and
//! probes, and every shipped config through `bearerd check --offline`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::Value;

#[path = "support/binary.rs"]
mod binary;
mod support;

const BIN: &str = env!("CARGO_BIN_EXE_bearerd");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubernetes() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// `value` at a dotted path of mapping keys (without dots) and sequence indexes.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |value, key| match key.parse::<usize>() {
        Ok(index) => &value[index],
        Err(_) => &value[key],
    })
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

#[test]
fn the_dockerfile_builds_in_stages_onto_an_empty_base_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let instructions: Vec<(String, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (word, rest) = line.split_once(' ')?;
            word.chars()
                .all(|c| c.is_ascii_uppercase())
                .then(|| (word.to_owned(), rest.trim().to_owned()))
        })
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(word, _)| word == "FROM")
        .map(|(_, rest)| rest.as_str())
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    for from in &froms[..froms.len() - 1] {
        let image = from.split_whitespace().next().unwrap();
        assert!(from.contains(" AS "), "named build stage: {from}");
        let (_, tag) = image.split_once(':').unwrap_or_else(|| panic!("{image} has no tag"));
        assert!(
            image.contains("@sha256:") || tag.chars().any(|c| c.is_ascii_digit()),
            "{image} is pinned by neither version nor digest"
        );
    }
    let last = *froms.last().unwrap();
    assert!(
        last == "scratch" || last.starts_with("gcr.io/distroless/"),
        "final stage is {last}"
    );
    assert!(
        !dockerfile.contains(":latest"),
        "an image tagged latest is not reproducible"
    );
    // Only what comes after the final FROM is in the image.
    let final_stage = instructions.iter().rposition(|(word, _)| word == "FROM").unwrap();
    let last_of = |word: &str| {
        instructions[final_stage..]
            .iter()
            .rev()
            .find(|(w, _)| w == word)
            .map_or_else(|| panic!("no {word} in the final stage"), |(_, rest)| rest.clone())
    };
    let user = last_of("USER");
    let uid: u32 = user.split(':').next().unwrap().parse().expect("a numeric UID");
    assert_ne!(uid, 0);
    assert_eq!(last_of("EXPOSE"), "8080 9090");
    assert_eq!(
        last_of("ENTRYPOINT"),
        r#"["/usr/local/bin/bearerd", "run", "--config", "/etc/bearerd/bearerd.yaml"]"#
    );
    // What the build copies exists.
    for (word, rest) in &instructions {
        if word == "COPY" && !rest.starts_with("--from") {
            let sources: Vec<&str> = rest.split_whitespace().collect();
            for source in &sources[..sources.len() - 1] {
                assert!(root().join(source).exists(), "COPY {source}: no such path");
            }
        }
    }
}

/// The manifests the kustomize base lists, each parsed.
fn base() -> BTreeMap<String, Value> {
    let kustomization = yaml(&kubernetes().join("kustomization.yaml"));
    assert_eq!(text(&kustomization, "kind"), "Kustomization");
    at(&kustomization, "resources")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|file| {
            let file = file.as_str().unwrap();
            (file.to_owned(), yaml(&kubernetes().join(file)))
        })
        .collect()
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let mut files: Vec<PathBuf> = base().keys().map(|file| kubernetes().join(file)).collect();
    // Every YAML file in the directory is in the base, except the kustomization itself and
    // the ServiceMonitor (a CRD kind, checked below).
    for entry in std::fs::read_dir(kubernetes()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.extension().is_some_and(|e| e == "yaml")
            && !["kustomization.yaml", "servicemonitor.yaml"].contains(&name.as_str())
        {
            assert!(files.contains(&path), "{name} is not listed in kustomization.yaml");
        }
    }
    files.sort();
    validate(&files);
}

/// `kubernetes-validate --strict` passes every one of `files`.
fn validate(files: &[PathBuf]) {
    let output = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.31.0",
        ])
        .args(files)
        .output()
        .expect(
            "kubernetes-validate is installed by the README's test command (pip install -r tests/requirements.txt)",
        );
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert_eq!(
        said.lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
            .count(),
        files.len(),
        "{said}"
    );
}

fn workload_identity() -> PathBuf {
    kubernetes().join("workload-identity")
}

#[test]
fn the_workload_identity_variant_validates_and_gives_its_tokens_to_the_sidecar_only() {
    let kustomization = yaml(&workload_identity().join("kustomization.yaml"));
    let listed: Vec<String> = at(&kustomization, "resources")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|file| file.as_str().unwrap().to_owned())
        .collect();
    for entry in std::fs::read_dir(workload_identity()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "kustomization.yaml" || listed.contains(&name),
            "{name} is not listed in workload-identity/kustomization.yaml"
        );
    }
    let files: Vec<PathBuf> = listed.iter().map(|file| workload_identity().join(file)).collect();
    validate(&files);

    let deployment = yaml(&workload_identity().join("deployment.yaml"));
    let spec = at(&deployment, "spec.template.spec");
    assert_eq!(at(spec, "automountServiceAccountToken").as_bool(), Some(false));
    assert_eq!(text(spec, "serviceAccountName"), "billing-app");
    let volume = at(spec, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|volume| text(volume, "name") == "workload-identity-tokens")
        .expect("the projected token volume");
    let sources = at(volume, "projected.sources").as_sequence().unwrap();
    let audiences: Vec<&str> = sources
        .iter()
        .map(|source| {
            assert_eq!(at(source, "serviceAccountToken.expirationSeconds").as_u64(), Some(3600));
            text(source, "serviceAccountToken.audience")
        })
        .collect();
    assert_eq!(audiences[0], "api://AzureADTokenExchange");
    assert!(
        audiences[1].starts_with("https://iam.googleapis.com/projects/"),
        "{audiences:?}"
    );
    let mounts = |containers: &str| -> Vec<String> {
        at(spec, containers)
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_sequence)
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|mount| text(&mount, "name").to_owned())
            .collect()
    };
    assert!(mounts("initContainers").contains(&"workload-identity-tokens".to_owned()));
    assert!(
        !mounts("containers").contains(&"workload-identity-tokens".to_owned()),
        "the app must not see the tokens"
    );

    // The ConfigMap's configuration loads with the sidecar's environment, its files in
    // place (the token paths pointed at a test's directory).
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, workload_jwt(3600)).unwrap();
    let configmap = yaml(&workload_identity().join("configmap.yaml"));
    let data = at(&configmap, "data");
    let credentials = dir.path().join("gcp-credentials.json");
    std::fs::write(
        &credentials,
        data["gcp-credentials.json"]
            .as_str()
            .unwrap()
            .replace("/var/run/secrets/tokens/gcp-token", token.to_str().unwrap()),
    )
    .unwrap();
    let config = dir.path().join("bearerd.yaml");
    std::fs::write(
        &config,
        data["bearerd.yaml"]
            .as_str()
            .unwrap()
            .replace("/etc/bearerd/gcp-credentials.json", credentials.to_str().unwrap()),
    )
    .unwrap();
    let bearerd = &at(spec, "initContainers").as_sequence().unwrap()[0];
    let mut env: Vec<(String, String)> = at(bearerd, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|var| (text(var, "name").to_owned(), text(var, "value").to_owned()))
        .collect();
    for (name, value) in &mut env {
        if name == "AZURE_FEDERATED_TOKEN_FILE" {
            *value = token.to_str().unwrap().to_owned();
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let (code, stdout, stderr) = check_offline(&config, &env);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn the_servicemonitor_validates_and_selects_the_admin_port_of_the_service() {
    let monitor = yaml(&kubernetes().join("servicemonitor.yaml"));
    let script = root().join("tests/interop/validate-servicemonitor.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let json = serde_json::to_vec(&monitor).unwrap();
    std::io::Write::write_all(&mut node.stdin.take().unwrap(), &json).unwrap();
    let output = node.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert_eq!(said.trim(), "valid");

    let service = &base()["service.yaml"];
    let labels = at(service, "metadata.labels").as_mapping().unwrap();
    for (key, value) in at(&monitor, "spec.selector.matchLabels").as_mapping().unwrap() {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the ServiceMonitor does not select the Service"
        );
    }
    let port = text(&monitor, "spec.endpoints.0.port");
    assert_eq!(text(service, "spec.ports.0.name"), port);
    assert_eq!(text(&monitor, "spec.endpoints.0.path"), "/metrics");
}

#[test]
fn the_pod_runs_bearerd_as_a_restricted_native_sidecar_with_probes() {
    let manifests = base();
    let deployment = &manifests["deployment.yaml"];
    let pod = at(deployment, "spec.template.spec");
    let sidecar = at(pod, "initContainers.0");
    assert_eq!(text(sidecar, "name"), "bearerd");
    assert_eq!(text(sidecar, "restartPolicy"), "Always", "a native sidecar");
    assert_eq!(text(sidecar, "livenessProbe.httpGet.path"), "/healthz");
    assert_eq!(text(sidecar, "readinessProbe.httpGet.path"), "/readyz");
    for container in [sidecar, at(pod, "containers.0")] {
        let security = at(container, "securityContext");
        assert_eq!(at(security, "readOnlyRootFilesystem"), &Value::Bool(true));
        assert_eq!(at(security, "allowPrivilegeEscalation"), &Value::Bool(false));
        assert_eq!(at(security, "runAsNonRoot"), &Value::Bool(true));
        assert_eq!(text(security, "capabilities.drop.0"), "ALL");
        assert_eq!(text(security, "seccompProfile.type"), "RuntimeDefault");
        assert!(at(container, "resources.requests.memory").is_string());
        assert!(at(container, "resources.limits.memory").is_string());
    }
    assert_eq!(at(pod, "securityContext.runAsNonRoot"), &Value::Bool(true));
    let annotations = at(deployment, "spec.template.metadata.annotations");
    assert_eq!(annotations["prometheus.io/scrape"], Value::from("true"));
    assert_eq!(annotations["prometheus.io/port"], Value::from("9090"));

    // The app goes through bearerd, except for what must not.
    let env: BTreeMap<&str, &str> = at(pod, "containers.0.env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|var| (text(var, "name"), text(var, "value")))
        .collect();
    assert_eq!(env["HTTP_PROXY"], "http://127.0.0.1:8080");
    assert_eq!(env["http_proxy"], "http://127.0.0.1:8080");
    for bypass in [
        "localhost",
        "127.0.0.1",
        ".svc",
        ".cluster.local",
        "kubernetes.default.svc",
    ] {
        assert!(
            env["NO_PROXY"].split(',').any(|b| b == bypass),
            "NO_PROXY lacks {bypass}"
        );
    }

    // The grace period outlasts bearerd's own drain; the probes reach the admin listener.
    let config = embedded_config(&manifests);
    let config: Value = serde_yaml::from_str(&config).unwrap();
    let grace = bearerd::config::parse_duration(text(&config, "shutdown_grace")).unwrap();
    let pod_grace = at(pod, "terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(pod_grace > grace.as_secs(), "{pod_grace}s is not longer than {grace:?}");
    assert!(text(&config, "admin_listen").starts_with("0.0.0.0:9090"));
    assert!(
        text(&config, "listen").starts_with("127.0.0.1:"),
        "the proxy stays on loopback"
    );
    let mounts: Vec<&str> = at(sidecar, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| text(m, "mountPath"))
        .collect();
    assert!(mounts.contains(&"/etc/bearerd"));
    assert!(mounts.contains(&"/var/run/secrets/bearerd"));
}

/// A container's environment as name → value.
fn env_of(container: &Value) -> BTreeMap<&str, &str> {
    at(container, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|var| (text(var, "name"), text(var, "value")))
        .collect()
}

/// Where `container` mounts the pod volume `volume`, and whether read-only.
fn mount<'a>(container: &'a Value, volume: &str) -> Option<(&'a str, bool)> {
    at(container, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| text(m, "name") == volume)
        .map(|m| (text(m, "mountPath"), m["readOnly"] == Value::Bool(true)))
}

#[tokio::test]
async fn the_sidecar_writes_the_ca_bundle_the_app_trusts_before_the_app_starts() {
    let manifests = base();
    let pod = at(&manifests["deployment.yaml"], "spec.template.spec");
    let (sidecar, app) = (at(pod, "initContainers.0"), at(pod, "containers.0"));
    let config = embedded_config(&manifests);
    let parsed: Value = serde_yaml::from_str(&config).unwrap();
    let bundle = Path::new(text(&parsed, "intercept.ca_bundle_out"));
    let (dir, file) = (bundle.parent().unwrap(), bundle.file_name().unwrap());

    // One emptyDir: bearerd mounts it writable where it writes the bundle, the app read-only,
    // and every TLS stack in the app is pointed at the file.
    let volume = at(pod, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v.get("emptyDir").is_some())
        .expect("an emptyDir volume for the CA bundle");
    let volume = text(volume, "name");
    assert_eq!(mount(sidecar, volume), Some((dir.to_str().unwrap(), false)));
    let (app_dir, read_only) = mount(app, volume).expect("the app mounts the CA bundle volume");
    assert!(read_only, "the app only reads the bundle");
    let app_bundle = Path::new(app_dir).join(file);
    let env = env_of(app);
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
    ] {
        assert_eq!(env.get(var).map(Path::new), Some(app_bundle.as_path()), "{var}");
    }
    assert_eq!(env["HTTPS_PROXY"], "http://127.0.0.1:8080");
    assert_eq!(env["https_proxy"], "http://127.0.0.1:8080");
    assert!(
        parsed["routes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|route| route["intercept"] == Value::Bool(true)),
        "no route is intercepted"
    );
    // A native sidecar's startupProbe holds the app back until it passes.
    assert_eq!(text(sidecar, "startupProbe.httpGet.path"), "/healthz");

    // The real binary on that config, its mounts remapped to a temporary directory: by the
    // time its admin listener answers (what the startupProbe waits for), the bundle is there,
    // the CA that `/ca.pem` serves first, then the roots bearerd trusts.
    let scratch = tempfile::tempdir().unwrap();
    let secrets = scratch.path().join("secrets");
    let ca_dir = scratch.path().join("ca");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::create_dir(&ca_dir).unwrap();
    for (name, value) in at(&manifests["secret.yaml"], "stringData").as_mapping().unwrap() {
        std::fs::write(secrets.join(name.as_str().unwrap()), value.as_str().unwrap()).unwrap();
    }
    let config = config
        .lines()
        .filter(|line| !line.starts_with("listen:") && !line.starts_with("admin_listen:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("/var/run/secrets/bearerd", secrets.to_str().unwrap())
        .replace(dir.to_str().unwrap(), ca_dir.to_str().unwrap());
    let bearerd = binary::Bearerd::start(&config, "info", &[]);
    let (status, _) = bearerd.admin_get("/healthz").await;
    assert_eq!(status, 200);
    let written = std::fs::read_to_string(ca_dir.join(file)).expect("the bundle is written at start");
    let (status, ca) = bearerd.admin_get("/ca.pem").await;
    assert_eq!(status, 200);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert!(written.starts_with(&ca), "the bundle does not start with bearerd's CA");
    assert!(
        written.matches("-----BEGIN CERTIFICATE-----").count() > 100,
        "the public roots are missing from the bundle"
    );
}

fn embedded_config(manifests: &BTreeMap<String, Value>) -> String {
    at(&manifests["configmap.yaml"], "data")["bearerd.yaml"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `bearerd check --offline --config <path>` with `env`: (exit code, stdout, stderr).
fn check_offline(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_configmaps_config_passes_bearerd_check_offline_with_the_secret_mounted() {
    let manifests = base();
    let dir = tempfile::tempdir().unwrap();
    // Mount the Secret's entries as files, as the kubelet does, and point the config there.
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (name, value) in at(&manifests["secret.yaml"], "stringData").as_mapping().unwrap() {
        std::fs::write(secrets.join(name.as_str().unwrap()), value.as_str().unwrap()).unwrap();
    }
    let config = embedded_config(&manifests).replace("/var/run/secrets/bearerd", secrets.to_str().unwrap());
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, stdout, stderr) = check_offline(&path, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.lines().nth(1).unwrap().starts_with("billing "), "{stdout}");

    // Without the Secret mounted, the same check fails and says which file is missing.
    std::fs::remove_dir_all(&secrets).unwrap();
    let (code, _, stderr) = check_offline(&path, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("auth config `billing`: client_secret_file"), "{stderr}");
}

#[test]
fn every_example_config_passes_bearerd_check_offline() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "dummy-secret\n").unwrap();
    let state_key = dir.path().join("state-key");
    std::fs::write(&state_key, format!("{}\n", "5a".repeat(32))).unwrap();
    let refresh_token = dir.path().join("refresh-token");
    std::fs::write(&refresh_token, "dummy-refresh-token\n").unwrap();
    // A workload's JWT as a kubelet or the SPIFFE helper writes it, an hour from expiry:
    // every example that sends one reads this file.
    let workload_token = dir.path().join("workload-token");
    std::fs::write(&workload_token, format!("{}\n", workload_jwt(3600))).unwrap();
    // Google's sample credential file, its credential_source.file pointed at that token.
    let sample = std::fs::read_to_string(root().join("config/examples/google-workload-identity.json")).unwrap();
    assert!(sample.contains("\"/var/run/secrets/tokens/gcp-token\""));
    let credentials = dir.path().join("credentials.json");
    std::fs::write(
        &credentials,
        sample.replace("/var/run/secrets/tokens/gcp-token", workload_token.to_str().unwrap()),
    )
    .unwrap();
    // Dummy values for what the examples read from the environment, including what Azure
    // Workload Identity's webhook injects.
    let env = [
        ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("AZURE_TENANT_ID", "0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1"),
        ("AZURE_FEDERATED_TOKEN_FILE", workload_token.to_str().unwrap()),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
        ("GOOGLE_APPLICATION_CREDENTIALS", credentials.to_str().unwrap()),
        ("PAYMENTS_KEY_FILE", key.to_str().unwrap()),
        ("KEYCLOAK_CLIENT_SECRET_FILE", secret.to_str().unwrap()),
        ("AUTH0_DOMAIN", "tenant.eu.auth0.com"),
        ("OKTA_DOMAIN", "example.okta.com"),
        ("ENTRA_TENANT_ID", "0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1"),
        ("STATE_KEY_FILE", state_key.to_str().unwrap()),
        ("CRM_REFRESH_TOKEN_FILE", refresh_token.to_str().unwrap()),
        ("KEYCLOAK_TOKEN_FILE", workload_token.to_str().unwrap()),
        ("SPIFFE_JWT_SVID_FILE", workload_token.to_str().unwrap()),
    ];
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root().join("config/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            // A sample credential file a config names, checked through it above.
            continue;
        }
        let (code, stdout, stderr) = check_offline(&path, &env);
        assert_eq!(code, Some(0), "{}:\n{stdout}{stderr}", path.display());
        assert!(stdout.contains("offline: nothing contacted"), "{stdout}");
        checked.push(path.file_stem().unwrap().to_str().unwrap().to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "auth0",
            "entra-workload-identity",
            "google",
            "google-workload-identity",
            "keycloak",
            "keycloak-federated",
            "microsoft",
            "okta",
            "private-key-jwt",
            "spiffe-jwt-bearer",
            "user-grants"
        ]
    );
}

/// A JWT whose `exp` is `seconds` from now (a past one when negative); its signature is
/// the provider's business, and `check` never verifies one.
fn workload_jwt(seconds: i64) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now.saturating_add_signed(seconds);
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64.encode(r#"{"alg":"RS256","kid":"cluster"}"#),
        b64.encode(format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:reports:bearerd","exp":{exp}}}"#
        ))
    )
}

#[test]
fn the_workload_identity_examples_pass_check_offline_only_while_their_token_file_is_usable() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    for (example, variable) in [
        ("keycloak-federated", "KEYCLOAK_TOKEN_FILE"),
        ("spiffe-jwt-bearer", "SPIFFE_JWT_SVID_FILE"),
    ] {
        let path = root().join(format!("config/examples/{example}.yaml"));
        let env = [(variable, token.to_str().unwrap())];
        std::fs::write(&token, workload_jwt(3600)).unwrap();
        let (code, stdout, stderr) = check_offline(&path, &env);
        assert_eq!(code, Some(0), "{example}: {stdout}{stderr}");
        let listed = format!("assertion file  {}  readable JWT, expires at ", token.display());
        assert!(stdout.contains(&listed), "{example}: {stdout}");

        // The writer stopped renewing it, or the volume is not mounted: the check says so.
        std::fs::write(&token, workload_jwt(-60)).unwrap();
        let (code, stdout, _) = check_offline(&path, &env);
        assert_eq!(code, Some(1), "{example}: {stdout}");
        assert!(
            stdout.contains("FAILED: holds an assertion that expired at "),
            "{example}: {stdout}"
        );
        std::fs::remove_file(&token).unwrap();
        let (code, stdout, _) = check_offline(&path, &env);
        assert_eq!(code, Some(1), "{example}: {stdout}");
        let failed = format!("assertion file {} cannot be read: ", token.display());
        assert!(stdout.contains(&failed), "{example}: {stdout}");
    }
}

#[test]
fn the_shared_cache_variant_is_the_base_plus_redis_from_a_secret() {
    let variant = root().join("deploy/kubernetes-shared-cache");
    let kustomization = yaml(&variant.join("kustomization.yaml"));
    let resources: Vec<&str> = at(&kustomization, "resources")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(resources, ["../kubernetes", "secret.yaml"]);
    let patches: Vec<&str> = at(&kustomization, "patches")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| text(p, "path"))
        .collect();
    assert_eq!(patches, ["configmap.yaml", "deployment.yaml"]);

    // The config is the base's with one block added, so the two cannot drift apart.
    let config = at(&yaml(&variant.join("configmap.yaml")), "data")["bearerd.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let block_start = config.find("# One token per lifetime").unwrap();
    let block_end = config.find("\nauth_configs:").unwrap() + 1;
    assert_eq!(
        format!("{}{}", &config[..block_start], &config[block_end..]),
        embedded_config(&base())
    );

    // The Redis URL comes from the Secret through the environment, the key as a file.
    let secret = yaml(&variant.join("secret.yaml"));
    let secret_name = text(&secret, "metadata.name");
    let deployment_patch = yaml(&variant.join("deployment.yaml"));
    let bearerd = at(&deployment_patch, "spec.template.spec.initContainers.0");
    assert_eq!(text(bearerd, "name"), "bearerd");
    assert_eq!(text(bearerd, "env.0.name"), "BEARERD_REDIS_URL");
    assert_eq!(text(bearerd, "env.0.valueFrom.secretKeyRef.name"), secret_name);
    let url_key = text(bearerd, "env.0.valueFrom.secretKeyRef.key");
    let mount = text(bearerd, "volumeMounts.0.mountPath");
    assert!(config.contains(&format!("key_file: {mount}/cache-key")), "{config}");
    assert_eq!(
        text(&deployment_patch, "spec.template.spec.volumes.0.secret.secretName"),
        secret_name
    );

    // Mounted as the kubelet would, the config passes the offline check.
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::create_dir(&cache).unwrap();
    for (name, value) in at(&base()["secret.yaml"], "stringData").as_mapping().unwrap() {
        std::fs::write(secrets.join(name.as_str().unwrap()), value.as_str().unwrap()).unwrap();
    }
    let data = at(&secret, "stringData");
    std::fs::write(cache.join("cache-key"), text(data, "cache-key")).unwrap();
    let config = config
        .replace("/var/run/secrets/bearerd-cache", cache.to_str().unwrap())
        .replace("/var/run/secrets/bearerd", secrets.to_str().unwrap());
    let path = dir.path().join("bearerd.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, stdout, stderr) = check_offline(&path, &[("BEARERD_REDIS_URL", text(data, url_key))]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    let output = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.31.0",
        ])
        .arg(variant.join("secret.yaml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}
