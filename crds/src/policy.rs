//! ProbePolicy: a standing probe with rolling windows, managed from Git.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Budget, Counts, Output, Storage, Summary, Target, Threshold};
use crate::probe::{ProbeName, ProbeParams};
use crate::rules::*;
use crate::tracejob::NodeCounts;

/// Keep a probe on for matching pods; each window's results roll to storage and breaches raise Events,
/// the ThresholdBreached condition and metrics. Editing the policy converges without restarting other probes.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "ProbePolicy",
    namespaced,
    status = "ProbePolicyStatus",
    shortname = "pp",
    category = "sonde",
    cel,
    doc = "A standing eBPF probe for matching pods, with thresholds that raise Events, conditions and metrics.",
    printcolumn(name = "Probe", type_ = "string", json_path = ".spec.probe"),
    printcolumn(
        name = "Nodes",
        type_ = "string",
        json_path = ".status.progress",
        description = "nodes attached/targeted"
    ),
    printcolumn(
        name = "Breaches",
        type_ = "integer",
        json_path = ".status.counts.breaches"
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
pub struct ProbePolicySpec {
    /// The probe to keep on, by library name.
    pub probe: ProbeName,
    /// Parameters of the probe: set only the section named after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ProbeParams>,
    /// What to trace; a policy needs `podSelector` or `nodeNames`.
    #[x_kube(validation = Rule::new("has(self.podSelector) || has(self.nodeNames)").message("a ProbePolicy target needs podSelector or nodeNames"))]
    pub target: Target,
    /// Length of one aggregation window (Go duration, 10s to 1h). Summaries and results roll per window.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('1h')").message("window must be between 10s and 1h"))]
    pub window: String,
    /// Thresholds whose breaches raise Events and the ThresholdBreached condition. At least one, at most 16.
    #[schemars(length(min = 1, max = 16))]
    pub thresholds: Vec<Threshold>,
    /// What to keep beyond the per-window summary.
    #[serde(default)]
    pub output: Output,
    /// Where results go; defaults to the operator's configured store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Limits on the kernel CPU the probe may use.
    #[serde(default)]
    pub budget: Budget,
    /// Detach everywhere while true, keeping the policy.
    #[serde(default)]
    pub suspend: bool,
}

fn default_window() -> String {
    "60s".into()
}

/// Observed state of a ProbePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbePolicyStatus {
    /// Attached, Degraded, ThresholdBreached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub nodes: NodeCounts,
    /// `attached/targeted`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Totals since the policy was created.
    #[serde(default)]
    pub counts: Counts,
    /// Summary of the last complete window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_window: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_breach_time: Option<Time>,
}
