//! Prometheus metrics (names and labels are part of DESIGN.md's contract), plus the standard
//! `process_*` metrics. Labels carry auth config ids, status codes, error codes and fixed
//! words only, never hosts, paths or user data, so their number stays bounded.

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Registers a metric built from a constant definition, and hands it back.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

/// Requests with no auth config are counted under this label.
pub const NO_AUTH_CONFIG: &str = "none";

/// Seconds. From 100 µs (bearerd's own overhead on a cache hit) to 30 s (a slow identity
/// provider at its timeout), roughly ×2.5 per step.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The registry and every metric bearerd updates.
pub struct Metrics {
    registry: Registry,
    /// `bearerd_requests_total{auth_config, status}`: status is the HTTP status, or bearerd's
    /// error code when bearerd answered itself.
    pub requests: IntCounterVec,
    /// `bearerd_request_duration_seconds{auth_config}`: from the request's head to the
    /// response's head (bodies stream afterwards).
    pub request_duration: HistogramVec,
    /// `bearerd_token_requests_total{auth_config, outcome}`: `success` / `error`.
    pub token_requests: IntCounterVec,
    /// `bearerd_token_request_duration_seconds{auth_config}`.
    pub token_request_duration: HistogramVec,
    /// `bearerd_token_cache_lookups_total{auth_config, result}`: `hit` / `miss` / `refresh_ahead`.
    pub token_cache_lookups: IntCounterVec,
    /// `bearerd_token_expiry_timestamp_seconds{auth_config}`: when the cached token expires.
    pub token_expiry: GaugeVec,
    /// `bearerd_upstream_retries_total{auth_config}`: requests replayed after an upstream 401.
    pub upstream_retries: IntCounterVec,
    /// `bearerd_config_reloads_total{outcome}`: `success` / `error`.
    pub config_reloads: IntCounterVec,
    /// `bearerd_client_secret_expiry_timestamp_seconds{auth_config}`, from
    /// `client_secret_expires_at`.
    pub client_secret_expiry: GaugeVec,
    /// `bearerd_consent_required{auth_config}`: 1 while a user grant needs a new consent.
    pub consent_required: IntGaugeVec,
    /// `bearerd_inflight_requests`: requests between their head and their response's head.
    pub inflight: IntGauge,
    /// `bearerd_connections`: app connections open on the proxy listener.
    pub connections: IntGauge,
    /// `bearerd_intercepted_connections_total{outcome}`: `ok` / `handshake_failed` /
    /// `refused`, for `CONNECT`s whose TLS bearerd terminates.
    pub intercepted_connections: IntCounterVec,
    /// `bearerd_shared_cache_operations_total{op, outcome}`: Redis operations of the shared
    /// token cache, `op` `get` / `set` / `lease`, `outcome` `hit` / `miss` / `ok` / `error`.
    pub shared_cache_operations: IntCounterVec,
    /// `bearerd_shared_cache_fallbacks_total{auth_config}`: tokens fetched alone because
    /// Redis failed or did not answer in time.
    pub shared_cache_fallbacks: IntCounterVec,
}

impl Metrics {
    /// # Panics
    /// Never: the metric definitions are constant and registered once.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
            register(&registry, HistogramVec::new(opts, &["auth_config"]))
        };
        let gauge =
            |name: &str, help: &str| register(&registry, GaugeVec::new(Opts::new(name, help), &["auth_config"]));
        let requests = counter(
            "bearerd_requests_total",
            "Requests answered, by auth config and HTTP status (or bearerd's error code).",
            &["auth_config", "status"],
        );
        let request_duration = histogram(
            "bearerd_request_duration_seconds",
            "Time from a request's head to its response's head.",
        );
        let token_requests = counter(
            "bearerd_token_requests_total",
            "Token endpoint requests, by outcome.",
            &["auth_config", "outcome"],
        );
        let token_request_duration = histogram(
            "bearerd_token_request_duration_seconds",
            "Time a token request took, discovery included.",
        );
        let token_cache_lookups = counter(
            "bearerd_token_cache_lookups_total",
            "Token cache lookups by result: hit, miss (waited for a fetch), refresh_ahead.",
            &["auth_config", "result"],
        );
        let token_expiry = gauge(
            "bearerd_token_expiry_timestamp_seconds",
            "When the cached token expires, in Unix seconds.",
        );
        let upstream_retries = counter(
            "bearerd_upstream_retries_total",
            "Requests replayed with a new token after an upstream 401.",
            &["auth_config"],
        );
        let config_reloads = counter(
            "bearerd_config_reloads_total",
            "Configuration reloads, by outcome.",
            &["outcome"],
        );
        let client_secret_expiry = gauge(
            "bearerd_client_secret_expiry_timestamp_seconds",
            "When the client secret expires (client_secret_expires_at), in Unix seconds.",
        );
        let intercepted_connections = counter(
            "bearerd_intercepted_connections_total",
            "TLS handshakes with apps whose CONNECT bearerd intercepts, by outcome: ok, handshake_failed, refused.",
            &["outcome"],
        );
        let (shared_cache_operations, shared_cache_fallbacks) = shared_cache_counters(&registry);
        let consent_required = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "bearerd_consent_required",
                    "1 while a user grant (authorization_code, refresh_token) holds no refresh token the provider still honours.",
                ),
                &["auth_config"],
            ),
        );
        let inflight = register(
            &registry,
            IntGauge::new(
                "bearerd_inflight_requests",
                "Requests being handled (until their response headers are sent).",
            ),
        );
        let connections = register(
            &registry,
            IntGauge::new("bearerd_connections", "App connections open on the proxy listener."),
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
        Self {
            registry,
            requests,
            request_duration,
            token_requests,
            token_request_duration,
            token_cache_lookups,
            token_expiry,
            upstream_retries,
            config_reloads,
            client_secret_expiry,
            consent_required,
            inflight,
            connections,
            intercepted_connections,
            shared_cache_operations,
            shared_cache_fallbacks,
        }
    }

    /// Creates the zero-valued series of every auth config (and of reloads), so counters
    /// exist before their first event and `rate()` and `increase()` see the first one.
    pub fn announce(&self, auth_configs: &[std::sync::Arc<crate::config::AuthConfig>]) {
        for outcome in ["success", "error"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
        for auth_config in auth_configs {
            let id = auth_config.id.as_str();
            for outcome in ["success", "error"] {
                self.token_requests.with_label_values(&[id, outcome]);
            }
            for result in ["hit", "miss", "refresh_ahead"] {
                self.token_cache_lookups.with_label_values(&[id, result]);
            }
            self.upstream_retries.with_label_values(&[id]);
            self.request_duration.with_label_values(&[id]);
            self.token_request_duration.with_label_values(&[id]);
        }
    }

    /// Creates the zero-valued series of the shared token cache (`shared_cache:` set): its
    /// operations, and each auth config's fallbacks.
    pub fn announce_shared_cache(&self, auth_configs: &[std::sync::Arc<crate::config::AuthConfig>]) {
        for (op, outcomes) in [
            ("get", &["hit", "miss", "error"][..]),
            ("set", &["ok", "error"][..]),
            ("lease", &["ok", "miss", "error"][..]),
        ] {
            for outcome in outcomes {
                self.shared_cache_operations.with_label_values(&[op, outcome]);
            }
        }
        for auth_config in auth_configs {
            self.shared_cache_fallbacks
                .with_label_values(&[auth_config.id.as_str()]);
        }
    }

    /// Drops the gauges and histograms of an auth config that no longer exists (after a
    /// reload), so no stale expiry stays exported. Its counters stay until a restart, as
    /// counters should.
    pub fn forget(&self, auth_config: &str) {
        let _ = self.token_expiry.remove_label_values(&[auth_config]);
        let _ = self.client_secret_expiry.remove_label_values(&[auth_config]);
        let _ = self.consent_required.remove_label_values(&[auth_config]);
        let _ = self.request_duration.remove_label_values(&[auth_config]);
        let _ = self.token_request_duration.remove_label_values(&[auth_config]);
    }

    /// The series every request of auth config `id` updates, for the running state to keep:
    /// each `with_label_values` hashes its labels and searches a map under a lock.
    #[must_use]
    pub fn series(&self, id: &str) -> ConfigSeries {
        ConfigSeries {
            ok: self.requests.with_label_values(&[id, "200"]),
            duration: self.request_duration.with_label_values(&[id]),
            hits: self.token_cache_lookups.with_label_values(&[id, "hit"]),
        }
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// An auth config's most used series: its 200 responses, its request durations, its token
/// cache hits.
#[derive(Clone)]
pub struct ConfigSeries {
    pub ok: IntCounter,
    pub duration: Histogram,
    pub hits: IntCounter,
}

/// The shared token cache's counters, registered in `registry`.
fn shared_cache_counters(registry: &Registry) -> (IntCounterVec, IntCounterVec) {
    let operations = IntCounterVec::new(
        Opts::new(
            "bearerd_shared_cache_operations_total",
            "Redis operations of the shared token cache, by op (get, set, lease) and outcome (hit, miss, ok, error).",
        ),
        &["op", "outcome"],
    );
    let fallbacks = IntCounterVec::new(
        Opts::new(
            "bearerd_shared_cache_fallbacks_total",
            "Tokens fetched by this process alone because Redis failed or did not answer in time.",
        ),
        &["auth_config"],
    );
    (register(registry, operations), register(registry, fallbacks))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(metrics: &Metrics, series: &str) -> String {
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
            .unwrap_or_else(|| panic!("no {series} in the exposition"))
    }

    #[test]
    fn an_auth_configs_series_count_in_their_own_metrics() {
        let (first, second) = (Metrics::new(), Metrics::new());
        // Kept, as the running state keeps them, and looked up again: the same series.
        let kept = first.series("a");
        for _ in 0..3 {
            kept.ok.inc();
            first.series("a").hits.inc();
            kept.duration.observe(0.002);
        }
        second.series("a").ok.inc();
        assert_eq!(
            value(&first, r#"bearerd_requests_total{auth_config="a",status="200"}"#),
            "3"
        );
        assert_eq!(
            value(
                &first,
                r#"bearerd_token_cache_lookups_total{auth_config="a",result="hit"}"#
            ),
            "3"
        );
        assert_eq!(
            value(&first, r#"bearerd_request_duration_seconds_count{auth_config="a"}"#),
            "3"
        );
        assert_eq!(
            value(
                &first,
                r#"bearerd_request_duration_seconds_bucket{auth_config="a",le="0.001"}"#
            ),
            "0"
        );
        assert_eq!(
            value(
                &first,
                r#"bearerd_request_duration_seconds_bucket{auth_config="a",le="0.0025"}"#
            ),
            "3"
        );
        assert_eq!(
            value(&second, r#"bearerd_requests_total{auth_config="a",status="200"}"#),
            "1"
        );
    }
}
