//! ProbeSession: one node's share of a TraceJob or ProbePolicy. Created by the operator, run by that node's
//! agent, owned by its parent so the garbage collector removes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Budget, Counts, Output, Phase, Storage, Summary, Threshold};
use crate::probe::{ProbeName, ProbeParams};
use crate::rules::*;

/// Label carrying the node name (see [`node_label_value`]), so each agent watches only its own sessions.
pub const NODE_LABEL: &str = "sonde.dev/node";
/// Label carrying the uid of the TraceJob or ProbePolicy a session belongs to.
pub const OWNER_UID_LABEL: &str = "sonde.dev/owner-uid";

/// How an agent says it is alive: one coordination.k8s.io Lease per node in the agent's namespace, named
/// [`agent_lease_name`] and labelled [`AGENT_LEASE_LABEL`], renewed every [`AGENT_LEASE_RENEW_SECONDS`] for
/// [`AGENT_LEASE_SECONDS`], as the kubelet's node lease. The operator judges a node's sessions alive from it, so
/// a session's status is written when it has something to say, not to prove the agent lives.
pub const AGENT_LEASE_LABEL: &str = "sonde.dev/agent-lease";
/// Annotation of an agent Lease naming its node in full. The chart's admission policy lets an agent write only a
/// Lease that names its own node here, and the operator believes a Lease only for the node it names, so no agent
/// can keep another node's sessions alive.
pub const AGENT_LEASE_NODE_ANNOTATION: &str = "sonde.dev/node-name";
pub const AGENT_LEASE_SECONDS: i32 = 40;
pub const AGENT_LEASE_RENEW_SECONDS: u64 = 10;

/// The name of the agent Lease of `node` (its [`NODE_LABEL`] value: at most 63 characters, so the name is a valid
/// object name whatever the node's).
pub fn agent_lease_name(node: &str) -> String {
    format!("sonde-agent-{}", node_label_value(node))
}

/// The [`NODE_LABEL`] value for a node. Label values stop at 63 characters and node names may not, so long
/// names are cut and suffixed with a hash of the whole name; operator and agent both call this.
pub fn node_label_value(node: &str) -> String {
    if node.len() <= 63 {
        return node.to_string();
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = node.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let head: String = node.chars().take(46).collect();
    format!("{}-{hash:016x}", head.trim_end_matches(['-', '.']))
}

/// One node's share of a trace. Written by the operator, run and reported on by the node's agent.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "ProbeSession",
    namespaced,
    status = "ProbeSessionStatus",
    shortname = "ps",
    category = "sonde",
    cel,
    doc = "One node's share of a TraceJob or ProbePolicy, run by that node's agent.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Probe", type_ = "string", json_path = ".spec.probe"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".status.attachStrategy"
    ),
    printcolumn(
        name = "Events",
        type_ = "integer",
        json_path = ".status.counts.captured"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new(PARAMS_MATCH_PROBE).message(PARAMS_MATCH_PROBE_MSG).field_path(".params"),
    validation = Rule::new(THRESHOLDS_MATCH_PROBE).message(THRESHOLDS_MATCH_PROBE_MSG).field_path(".thresholds")
)]
pub struct ProbeSessionSpec {
    /// The node whose agent runs this session.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    pub probe: ProbeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ProbeParams>,
    /// Absolute end of the trace; the agent detaches at this time even if it cannot reach the API server.
    /// Absent for a standing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// Aggregation window of a standing policy (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Pods whose cgroups the kernel filter admits. Empty with `allPods` traces the whole node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    pub pods: Vec<TargetPod>,
    /// Trace every task on the node (a target of nodes without a pod selector).
    #[serde(default)]
    pub all_pods: bool,
    /// Only tasks with these command names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub comms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub thresholds: Vec<Threshold>,
    #[serde(default)]
    pub output: Output,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(default)]
    pub budget: Budget,
    /// Object-store path under the storage URL where this session writes, e.g. `tracejobs/ns/name/node`.
    #[schemars(length(min = 1))]
    pub result_prefix: String,
}

/// A pod the session traces.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, KubeSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct TargetPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// What the node's agent reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSessionStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Attached, Complete, Failed, ThresholdBreached, OverBudget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The attach strategy that loaded (fentry, kprobe, tp_btf, tracepoint, perf_event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_at: Option<Time>,
    /// Last time the agent reported; a stale heartbeat means the agent is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Time>,
    #[serde(default)]
    pub counts: Counts,
    /// Kernel CPU used by the probe's programs, percent of one CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Result URLs: of the whole trace, or of the last complete window of a standing probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<String>,
    /// Whether the result files reached the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<crate::Upload>,
    /// Windows completed (standing probes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub windows: u64,
    /// When a window last had a threshold breach (standing probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_breach_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_label_values_fit_and_stay_distinct() {
        assert_eq!(super::node_label_value("node-a"), "node-a");
        let long_a = format!("{}a", "n".repeat(80));
        let long_b = format!("{}b", "n".repeat(80));
        let (a, b) = (
            super::node_label_value(&long_a),
            super::node_label_value(&long_b),
        );
        assert!(a.len() <= 63 && b.len() <= 63, "{a}");
        assert_ne!(a, b);
    }
}
