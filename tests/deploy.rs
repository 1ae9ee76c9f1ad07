//! What ships in `deploy/` and `config/examples/`: the Dockerfile's structure (no container
//! engine here to build it), the Kubernetes manifests against the Kubernetes JSON schemas
//! (`kubernetes-validate` from `PyPI`) and the Prometheus Operator's schema, the pod's security and
//! probes, and every shipped config through `bearerd check --offline`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::Value;

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
    let output = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.31.0",
        ])
        .args(&files)
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
    // Dummy values for what the examples read from the environment.
    let env = [
        ("PAYMENTS_KEY_FILE", key.to_str().unwrap()),
        ("KEYCLOAK_CLIENT_SECRET_FILE", secret.to_str().unwrap()),
        ("AUTH0_DOMAIN", "tenant.eu.auth0.com"),
        ("OKTA_DOMAIN", "example.okta.com"),
        ("ENTRA_TENANT_ID", "0b8e5f2a-57b4-4ea4-9f8b-1cf2e8d7c3a1"),
        ("STATE_KEY_FILE", state_key.to_str().unwrap()),
        ("CRM_REFRESH_TOKEN_FILE", refresh_token.to_str().unwrap()),
    ];
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root().join("config/examples")).unwrap() {
        let path = entry.unwrap().path();
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
            "google",
            "keycloak",
            "microsoft",
            "okta",
            "private-key-jwt",
            "user-grants"
        ]
    );
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
