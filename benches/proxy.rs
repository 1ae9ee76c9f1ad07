//! Micro-benchmarks of the request path (`cargo bench --bench proxy`): choosing the auth
//! config among 10, 1,000 and 10,000 routes, injecting the token, a token cache hit, and a
//! whole request through bearerd to a loopback upstream, in process.
//!
//! Numbers measured on the 2-core CI machine are in `benches/README.md`.

#[path = "../tests/support/mod.rs"]
#[allow(dead_code, clippy::all, clippy::pedantic)]
mod support;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bearerd::config::{AuthConfig, Config, Env};
use bearerd::metrics::Metrics;
use bearerd::routes::{RequestFacts, RouteIndex, select};
use bearerd::secret::AccessToken;
use bearerd::token::{FetchToken, TokenCache, TokenError, TokenResponse};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Uri};

/// `n` forward routes, one per host `h<i>.test`, each with its own auth config.
fn routes(n: usize) -> Config {
    let mut yaml = String::from("auth_configs:\n");
    for i in 0..n {
        let _ = write!(
            yaml,
            "  - id: c{i}\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n"
        );
    }
    yaml.push_str("routes:\n");
    for i in 0..n {
        let _ = write!(
            yaml,
            "  - match: {{ host: h{i}.test, path_prefix: /v1/ }}\n    auth_config: c{i}\n    upstream_tls: true\n"
        );
    }
    Config::from_yaml("bench.yaml", &yaml, &Env::new()).unwrap()
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [10, 1_000, 10_000] {
        let config = routes(n);
        let index = RouteIndex::new(&config.routes);
        // The last route: the worst case for a walk of the table.
        let host = format!("h{}.test", n - 1);
        let method = Method::GET;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let facts = RequestFacts {
                    method: &method,
                    host: Some((host.as_str(), 80)),
                    path: "/v1/invoices",
                    origin_form: false,
                    named_config: None,
                };
                let selection = select(std::hint::black_box(&config), &index, facts).unwrap();
                assert!(selection.route.is_some());
            });
        });
    }
    group.finish();
}

fn injection(c: &mut Criterion) {
    let config = routes(1);
    let header = config.auth_config("c0").unwrap();
    let token = AccessToken::new("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlLWJ5dGVzLWZvci1iZW5jaA");
    let mut template = HeaderMap::new();
    for (name, value) in [
        ("host", "api.billing.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer app-token"),
    ] {
        template.insert(name, value.parse().unwrap());
    }
    let uri: Uri = "http://api.billing.example.com/v1/invoices?status=open"
        .parse()
        .unwrap();
    c.bench_function("inject/header", |b| {
        b.iter_batched_ref(
            || (template.clone(), uri.clone()),
            |(headers, uri)| bearerd::inject::inject(&header.inject, &token, headers, uri).unwrap(),
            criterion::BatchSize::SmallInput,
        );
    });
    // What a request on the hit path does: the value was rendered once per token.
    let prerendered = bearerd::inject::header_value("Bearer", &token).unwrap();
    c.bench_function("inject/header_prerendered", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |headers| headers.insert(http::header::AUTHORIZATION, prerendered.clone()),
            criterion::BatchSize::SmallInput,
        );
    });
    let query = Config::from_yaml(
        "q.yaml",
        "auth_configs:\n  - id: q\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [a.test]\n    inject: { query: access_token }\n",
        &Env::new(),
    )
    .unwrap();
    let query = query.auth_config("q").unwrap();
    c.bench_function("inject/query", |b| {
        b.iter_batched_ref(
            || (template.clone(), uri.clone()),
            |(headers, uri)| bearerd::inject::inject(&query.inject, &token, headers, uri).unwrap(),
            criterion::BatchSize::SmallInput,
        );
    });
}

/// Always answers a one-hour token.
struct Instant;

impl FetchToken for Instant {
    fn fetch<'a>(
        &'a self,
        _config: &'a AuthConfig,
    ) -> Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>> {
        Box::pin(async {
            Ok(TokenResponse {
                access_token: AccessToken::new("bench-token"),
                expires_in: Some(Duration::from_secs(3600)),
                scope: None,
                refresh_token: None,
            })
        })
    }
}

fn cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = routes(1);
    let auth_config = config.auth_config("c0").unwrap();
    let cache = TokenCache::new(Instant, Arc::new(Metrics::new()));
    runtime.block_on(cache.get(&auth_config)).unwrap();
    c.bench_function("token_cache/hit", |b| {
        b.iter(|| runtime.block_on(cache.get(&auth_config)).unwrap());
    });
}

fn whole_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_tokens, echo, bearerd, client) = runtime.block_on(async {
        let tokens = support::TokenServer::start().await;
        let echo = support::Echo::start().await;
        let bearerd = support::start_bearerd(&support::billing(&tokens, "")).await;
        let client = support::proxied_client(bearerd.proxy_addr);
        (tokens, echo, bearerd, client)
    });
    let url = format!("http://{}/v1/invoices", echo.addr);
    let get = || async {
        let response = client
            .get(&url)
            .header("x-auth-config", "billing")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap()
    };
    runtime.block_on(get());
    c.bench_function("request/through_bearerd", |b| b.iter(|| runtime.block_on(get())));
    let direct = support::direct_client();
    c.bench_function("request/direct", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = direct.get(&url).send().await.unwrap();
                response.bytes().await.unwrap()
            })
        });
    });
    drop(bearerd);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = selection, injection, cache_hit, whole_request
}
criterion_main!(benches);
