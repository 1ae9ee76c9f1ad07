//! `cargo run --example demo`: bearerd end to end on loopback, in one process.
//!
//! Starts a token endpoint and an echo upstream, starts bearerd with one auth config, sends
//! a request through bearerd the way an app with `HTTP_PROXY` would, and prints what the
//! token endpoint and the upstream received.

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Echo, Echoed, TokenServer, proxied_client, start_bearerd};

#[tokio::main]
async fn main() {
    let tokens = TokenServer::start().await;
    let upstream = Echo::start().await;
    let config = format!(
        "auth_configs:
  - id: billing
    token_url: {}
    client_id: demo-client
    client_secret: demo-secret
    scopes: [invoices.read]
    allowed_hosts: [127.0.0.1]
",
        tokens.url()
    );
    let bearerd = start_bearerd(&config).await;
    let url = format!("http://{}/v1/invoices?status=open", upstream.addr);

    println!(
        "bearerd proxy on {}, admin on {}",
        bearerd.proxy_addr, bearerd.admin_addr
    );
    println!("token endpoint {}, upstream http://{}\n", tokens.url(), upstream.addr);
    println!("The app sends (HTTP_PROXY=http://{}):", bearerd.proxy_addr);
    println!("  GET {url}\n  X-Auth-Config: billing\n  Authorization: Bearer what-the-app-had\n");

    let client = proxied_client(bearerd.proxy_addr);
    for round in 1..=2 {
        let response = client
            .get(&url)
            .header("x-auth-config", "billing")
            .header("authorization", "Bearer what-the-app-had")
            .send()
            .await
            .expect("request through bearerd");
        let status = response.status();
        let seen = Echoed::parse(&response.bytes().await.expect("response body"));
        println!("Request {round}: the upstream answered {status} and received:");
        println!("  {} {} ({})", seen.method, seen.uri, seen.scheme);
        for (name, value) in &seen.headers {
            println!("  {name}: {value}");
        }
        println!();
    }

    let requests = tokens.requests();
    println!(
        "The token endpoint received {} request(s) for 2 app requests (the token is cached):",
        requests.len()
    );
    for request in &requests {
        println!("  {} {}", request.method, request.path);
        println!("  content-type: {}", request.header("content-type").unwrap_or("-"));
        println!("  authorization: Basic <demo-client:demo-secret, form-urlencoded, base64>");
        println!("  body: {}", request.body);
    }
}
