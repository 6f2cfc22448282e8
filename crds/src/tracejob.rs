//! TraceJob: a one-shot trace with a deadline.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Budget, Counts, Output, Phase, Storage, Summary, Target, Threshold};
use crate::probe::{ProbeName, ProbeParams};
use crate::rules::*;

/// The longest `ttlSecondsAfterFinished` accepted: 365 days.
pub const TTL_MAX_SECONDS: i64 = 31_536_000;

/// Run one probe from Sonde's library on the targeted pods for a fixed duration, then keep the results.
/// The spec cannot change once created: delete and re-create the job to trace differently.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "TraceJob",
    namespaced,
    status = "TraceJobStatus",
    shortname = "tj",
    category = "sonde",
    cel,
    doc = "A one-shot eBPF trace: a probe from the library, run on the targeted pods for a duration.",
    printcolumn(name = "Probe", type_ = "string", json_path = ".spec.probe"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Nodes",
        type_ = "string",
        json_path = ".status.progress",
        description = "nodes done/targeted"
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
    validation = Rule::new("self == oldSelf").message("spec is immutable once created: delete and re-create the TraceJob"),
    validation = Rule::new(PARAMS_MATCH_PROBE).message(PARAMS_MATCH_PROBE_MSG).field_path(".params"),
    validation = Rule::new(THRESHOLDS_MATCH_PROBE).message(THRESHOLDS_MATCH_PROBE_MSG).field_path(".thresholds")
)]
pub struct TraceJobSpec {
    /// The probe to run, by library name (`sonde probes` lists them).
    pub probe: ProbeName,
    /// Parameters of the probe: set only the section named after it, e.g. `params.wakeups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ProbeParams>,
    /// What to trace.
    pub target: Target,
    /// How long to trace, as a Go duration between 1s and 24h (`60s`, `5m`). Each node enforces it locally.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("duration must be between 1s and 24h"))]
    pub duration: String,
    /// Thresholds that flag (and optionally stop on) interesting events. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub thresholds: Vec<Threshold>,
    /// What to keep beyond the summary.
    #[serde(default)]
    pub output: Output,
    /// Where results go; defaults to the operator's configured store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Limits on the kernel CPU the probe may use.
    #[serde(default)]
    pub budget: Budget,
    /// Delete the finished job (and its sessions) this many seconds after it completes, at most 31536000 (365
    /// days). Results stay in storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = TTL_MAX_SECONDS))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Observed state of a TraceJob, rolled up from its per-node ProbeSessions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceJobStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Scheduled, Attached, Complete, Failed, ThresholdBreached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Per-node progress.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// `done/targeted`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Events captured and dropped, and breaches, over all nodes.
    #[serde(default)]
    pub counts: Counts,
    /// Top rows and headline figures merged over all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Object-store URLs of the results (events, summary, histograms, flame graphs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<String>,
    /// Whether every node's result files reached the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<crate::Upload>,
    /// What each node did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_results: Vec<NodeResult>,
}

/// How many nodes are in each state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub targeted: u32,
    pub attached: u32,
    pub done: u32,
    pub failed: u32,
}

/// One node's part of a trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    pub node: String,
    pub phase: Phase,
    /// The attach strategy that loaded, e.g. `tp_btf` or `tracepoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_strategy: Option<String>,
    #[serde(default)]
    pub counts: Counts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
