//! The agent's liveness: its node's Lease (`sonde_crds::agent_lease_name`, in the agent's namespace), renewed by
//! server-side apply every `AGENT_LEASE_RENEW_SECONDS` for `AGENT_LEASE_SECONDS`, as the kubelet renews its node
//! lease. One small write per node every 10 s replaces a status write per session every 2 s: the operator
//! reads a node's sessions as alive from the Lease, and a session's status is written only when it has
//! something to say (`session::reporter`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams};
use sonde_crds::{
    AGENT_LEASE_LABEL, AGENT_LEASE_NODE_ANNOTATION, AGENT_LEASE_RENEW_SECONDS, AGENT_LEASE_SECONDS,
    NODE_LABEL, agent_lease_name, node_label_value,
};

use crate::metrics::AgentMetrics;

const MANAGER: &str = "sonde-agent";

/// The Lease as this agent applies it, renewed now.
fn lease(node: &str, holder: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": agent_lease_name(node),
            "labels": {AGENT_LEASE_LABEL: "true", NODE_LABEL: node_label_value(node)},
            "annotations": {AGENT_LEASE_NODE_ANNOTATION: node},
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": AGENT_LEASE_SECONDS,
            "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
        },
    })
}

/// Renews the node's Lease for as long as the agent runs. A renewal that fails (the API server away) is
/// counted and tried again at the next beat; each one is bounded by the beat, so a slow API server never
/// stacks renewals up.
pub async fn hold(api: Api<Lease>, node: String, holder: String, metrics: AgentMetrics) {
    let every = Duration::from_secs(AGENT_LEASE_RENEW_SECONDS);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let name = agent_lease_name(&node);
    let params = PatchParams::apply(MANAGER).force();
    loop {
        ticks.tick().await;
        let body = Patch::Apply(lease(&node, &holder));
        let apply = api.patch(&name, &params, &body);
        let failed = match tokio::time::timeout(every, apply).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {every:?}")),
        };
        if let Some(error) = failed {
            metrics.lease_renewals_failed.inc();
            tracing::warn!(lease = %name, %error, "renewing the agent's lease; the operator may judge this node's sessions gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_names_its_node_and_lasts_four_beats() {
        let l: Lease = serde_json::from_value(lease("node-a", "sonde-agent-x")).unwrap();
        assert_eq!(l.metadata.name.as_deref(), Some("sonde-agent-node-a"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("sonde-agent-x"));
        assert_eq!(
            spec.lease_duration_seconds,
            Some(4 * AGENT_LEASE_RENEW_SECONDS as i32)
        );
        assert!(spec.renew_time.is_some());
        let labels = l.metadata.labels.unwrap();
        assert_eq!(labels[NODE_LABEL], "node-a");
        assert_eq!(
            l.metadata.annotations.unwrap()[AGENT_LEASE_NODE_ANNOTATION],
            "node-a"
        );
    }
}
