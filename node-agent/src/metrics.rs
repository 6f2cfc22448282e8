//! The agent's Prometheus metrics (served with the health endpoints by `sonde-telemetry`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct AgentMetrics {
    /// Sessions with programs attached (or attaching) on this node.
    pub running: Gauge,
    pub started: Counter,
    pub finished: Counter,
}

impl AgentMetrics {
    /// Registers the agent's metrics (prefixed `sonde_agent_`) in `registry`.
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let m = AgentMetrics::default();
        let r = registry.sub_registry_with_prefix("sonde_agent");
        r.register(
            "sessions_running",
            "Sessions running on this node",
            m.running.clone(),
        );
        r.register(
            "sessions_started",
            "Sessions started on this node",
            m.started.clone(),
        );
        r.register(
            "sessions_finished",
            "Sessions that ended on this node",
            m.finished.clone(),
        );
        m
    }
}
