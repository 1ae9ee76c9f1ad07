//! The newcomer's demo (`cargo run --example demo`) runs and shows the injected token.

#[test]
fn the_demo_shows_the_token_the_upstream_received() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["run", "--quiet", "--locked", "--example", "demo"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("  authorization: Bearer tok-1\n").count(), 2, "{stdout}");
    assert!(
        !stdout.contains("  authorization: Bearer what-the-app-had"),
        "the app's Authorization reached the upstream: {stdout}"
    );
    assert!(
        stdout.contains("The token endpoint received 1 request(s) for 2 app requests"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  body: grant_type=client_credentials&scope=invoices.read\n"),
        "{stdout}"
    );
}
