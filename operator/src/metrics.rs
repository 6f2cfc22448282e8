//! The operator's Prometheus metrics (served with the health endpoints by `sonde-telemetry`).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    pub kind: &'static str,
    pub error: &'static str,
}

pub struct Metrics {
    reconciles: Family<KindLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
    breaches: Family<PolicyLabel, Counter>,
}

impl Metrics {
    /// Registers the operator's metrics (prefixed `sonde_operator_`) in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let registry = registry.sub_registry_with_prefix("sonde_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<FailureLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent reconciling",
            duration.clone(),
        );
        let breaches = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "policy_breaches",
            "Threshold breaches seen by a ProbePolicy",
            breaches.clone(),
        );
        Metrics {
            reconciles,
            failures,
            duration,
            breaches,
        }
    }
}

/// Observes the reconcile duration when dropped.
pub struct Timer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&KindLabel { kind: self.kind })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn reconcile_started(&self, kind: &'static str) -> Timer<'_> {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        Timer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, kind: &'static str, error: &'static str) {
        self.failures
            .get_or_create(&FailureLabel { kind, error })
            .inc();
    }

    pub fn policy_breaches(&self, namespace: &str, policy: &str, n: u64) {
        let label = PolicyLabel {
            namespace: namespace.into(),
            policy: policy.into(),
        };
        self.breaches.get_or_create(&label).inc_by(n);
    }
}
