//! Prometheus metrics (`GET /metrics`). Labels are schemes, route names,
//! surfaces and error codes: bounded sets chosen by the operator or the
//! code, never a secret, a token or a URL.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    surface: String,
    scheme: String,
    route: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabels {
    scheme: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~10 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 21))
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    plugin_seconds: Family<SchemeLabels, Histogram, fn() -> Histogram>,
    /// Agents registered.
    pub registrations: Counter,
    /// JWKS documents fetched for identity providers.
    pub jwks_fetches: Counter,
    /// Agent authentications refused, by kind (token, jwt, basic).
    auth_refusals: Family<AuthLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    kind: String,
    code: String,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("latchkey");
        let calls = Family::<CallLabels, Counter>::default();
        let call_seconds = Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let plugin_seconds =
            Family::<SchemeLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let registrations = Counter::default();
        let jwks_fetches = Counter::default();
        let auth_refusals = Family::<AuthLabels, Counter>::default();
        registry.register("calls", "Calls by surface (sign, proxy), scheme, route and outcome", calls.clone());
        registry.register(
            "call_seconds",
            "Time to answer a call, by surface, scheme, route and outcome",
            call_seconds.clone(),
        );
        registry.register("plugin_seconds", "Time spent in the scheme plugin per call", plugin_seconds.clone());
        registry.register("agent_registrations", "Registration tokens redeemed", registrations.clone());
        registry.register("jwks_fetches", "JWKS documents fetched for identity providers", jwks_fetches.clone());
        registry.register(
            "agent_auth_refusals",
            "Agent authentications refused, by kind (token, jwt, basic) and error code",
            auth_refusals.clone(),
        );
        Metrics { registry, calls, call_seconds, plugin_seconds, registrations, jwks_fetches, auth_refusals }
    }
}

impl Metrics {
    /// Count one call.
    pub fn call(&self, surface: &str, scheme: &str, route: &str, outcome: &str, took: Duration) {
        let labels =
            CallLabels { surface: surface.into(), scheme: scheme.into(), route: route.into(), outcome: outcome.into() };
        self.calls.get_or_create(&labels).inc();
        self.call_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Time one plugin call.
    pub fn observe_plugin(&self, scheme: &str, took: Duration) {
        self.plugin_seconds.get_or_create(&SchemeLabels { scheme: scheme.into() }).observe(took.as_secs_f64());
    }

    /// Count one refused agent authentication.
    pub fn auth_refused(&self, kind: &str, code: crate::error::ErrorCode) {
        self.auth_refusals.get_or_create(&AuthLabels { kind: kind.into(), code: code.as_str().into() }).inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Prometheus metrics
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    responses((
        status = 200,
        description = "The metrics, OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String
    ))
)]
pub(super) async fn render(State(app): State<Arc<AppState>>) -> Response {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.text()).into_response()
}
