//! The agent's Prometheus metrics (served with the health endpoints by `sonde-telemetry`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct AgentMetrics {
    /// Sessions with programs attached (or attaching) on this node.
    pub running: Gauge,
    pub started: Counter,
    pub finished: Counter,
    /// Result sets spooled on this node that the object store has not taken yet.
    pub results_pending: Gauge,
    /// Result sets deleted undelivered: after a week of failed uploads, or at once when the results server says
    /// their TraceJob or ProbePolicy is gone (410).
    pub results_abandoned: Counter,
    /// 1 while the spooled results are over `agent.limits.maxSpoolMiB` (sessions keep no new events).
    pub spool_full: Gauge,
    /// Namespaces whose results waiting in the spool are over `agent.limits.maxSpoolMiBPerNamespace` (their
    /// sessions keep no new events; the others' still do).
    pub namespaces_over_spool_share: Gauge,
    /// Sessions that ended Failed, by `reason` (their `Failed` condition's: `unsupported_kernel`, `OverBudget`,
    /// `StorageNotAllowed`, `ResultsLost`, ...).
    pub sessions_failed: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Events that reached the agent and were not kept in results, by `reason` (as in `status.counts.notKept`).
    pub events_not_kept: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Renewals of this node's agent Lease that failed (`crate::liveness`).
    pub lease_renewals_failed: Counter,
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
        r.register(
            "sessions_failed",
            "Sessions that ended Failed on this node, by reason (the reason of their Failed condition)",
            m.sessions_failed.clone(),
        );
        r.register(
            "results_pending",
            "Result sets spooled on this node, not yet in the object store",
            m.results_pending.clone(),
        );
        r.register(
            "results_abandoned",
            "Result sets deleted undelivered: after a week of failed uploads, or when the results server says their object is gone (410)",
            m.results_abandoned.clone(),
        );
        r.register(
            "spool_full",
            "1 while results waiting for the object store fill the spool to its cap: new events are not kept",
            m.spool_full.clone(),
        );
        r.register(
            "namespaces_over_spool_share",
            "Namespaces whose results waiting for the object store fill their share of the spool: their new \
             events are not kept",
            m.namespaces_over_spool_share.clone(),
        );
        r.register(
            "events_not_kept",
            "Events that reached the agent and were not kept in the results, by reason (SpoolFull, \
             MaxEventBytes, MaxEvents, WriteFailed)",
            m.events_not_kept.clone(),
        );
        r.register(
            "lease_renewals_failed",
            "Renewals of this node's agent Lease that failed: past 40 s without one the operator judges this \
             node's sessions gone once their deadline passes",
            m.lease_renewals_failed.clone(),
        );
        m
    }
}
