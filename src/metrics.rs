//! Prometheus metrics (names and labels are part of DESIGN.md's contract). Labels carry auth
//! config ids and codes only, never hosts, paths or user data.

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

/// The registry and the metrics bearerd updates.
pub struct Metrics {
    registry: Registry,
    /// `bearerd_upstream_retries_total{auth_config}`: requests replayed after an upstream 401.
    pub upstream_retries: IntCounterVec,
}

impl Metrics {
    /// # Panics
    /// Never: the metric definitions are constant and registered once.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "bearerd_upstream_retries_total",
                "Requests replayed with a new token after an upstream 401.",
            ),
            &["auth_config"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(upstream_retries.clone()))
            .expect("registered once");
        Self {
            registry,
            upstream_retries,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
