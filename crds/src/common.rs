//! Spec and status pieces shared by TraceJob, ProbePolicy and ProbeSession.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

pub use sonde_vocab::{
    Comparison, Counts, Figure, Output, Summary, SummaryRow, Threshold, ThresholdAction,
};

/// Go-style duration (`90s`, `1m30s`, `500ms`) as accepted by `kubectl` and `time.ParseDuration`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// What to trace. In a cluster, `podSelector` picks pods in the object's own namespace and the node fields narrow
/// the nodes; `comms`, `pids` and `cgroupPaths` narrow further and are how `sonde run` targets a single machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "has(self.podSelector) || has(self.nodeNames) || has(self.nodeSelector) || has(self.comms) || has(self.pids) || has(self.cgroupPaths)"
).message("target must name at least one of podSelector, nodeNames, nodeSelector, comms, pids, cgroupPaths"))]
pub struct Target {
    /// Pods in the object's namespace whose processes are traced (their cgroups are filtered in the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Only nodes with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Only these nodes. Without `podSelector`, everything on these nodes is traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub node_names: Option<Vec<String>>,
    /// Only tasks with one of these command names (as in /proc/<pid>/comm, at most 15 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(validation = Rule::new("self.all(c, size(c) >= 1 && size(c) <= 15)").message("each comm must be 1-15 characters"))]
    pub comms: Option<Vec<String>>,
    /// Only these process ids (host pid namespace), each 1 to 4194304 (the kernel's PID_MAX_LIMIT). Meaningful
    /// for `sonde run` on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(p, p > 0 && p <= 4194304)").message("pids must be 1-4194304"))]
    pub pids: Option<Vec<i32>>,
    /// Only tasks in these cgroup v2 directories (relative to the cgroup root, or absolute under /sys/fs/cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub cgroup_paths: Option<Vec<String>>,
}

/// Where results go, among the storage locations the cluster admin defined. Omit for the default location.
/// Keys always live under `<tracejobs|probepolicies>/<namespace>/<name>-<uid>/<node>` in it; `sonde run` ignores
/// this (it writes to its `--out` folder).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    /// Name of a storage location the cluster admin defined (Helm value `storage.locations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub location: Option<String>,
    /// No longer accepted: a URL chosen by the user would let the node agents, which hold the cluster's storage
    /// credentials, write wherever a namespace editor pointed them. Kept in the schema so objects written before
    /// stay readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("false").message("spec.storage.url is no longer accepted: name a storage location the cluster admin defined (spec.storage.location)"))]
    pub url: Option<String>,
}

/// Limits on what tracing may cost the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// Kernel CPU time the probe's programs may use, as percent of one CPU averaged over 10 s (from
    /// `kernel.bpf_stats_enabled`). A session over budget is stopped with a condition saying so.
    #[serde(default = "default_cpu_percent")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub max_kernel_cpu_percent: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_kernel_cpu_percent: default_cpu_percent(),
        }
    }
}

fn default_cpu_percent() -> f64 {
    5.0
}

/// Whether a trace's result files reached the object store.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum UploadState {
    /// Every result file is in the store.
    #[default]
    Complete,
    /// Some are spooled on the node and retried until the store takes them (an agent restart included).
    Pending,
    /// Some could not be written at all; `message` says which.
    Incomplete,
}

/// Where a trace's result files are. Written by the agent, rolled up over nodes by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    pub state: UploadState,
    /// Result sets (a trace's, or a policy window's) spooled on the node(s) and not in the store yet.
    #[serde(default)]
    pub pending: u32,
    /// When the oldest of them was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The store's last error while pending, what is missing when incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Upload {
    /// The upload state of a job over its nodes: the worst state, pending sets summed, the oldest first.
    /// The `ResultsComplete` condition for this state: status, reason, message. `running`: the trace still
    /// runs (its events stream, and what is pending are chunks); `was_pending`: an earlier report said pending
    /// (so complete now means uploaded late); `place` names where the results wait (`on node-a, node-b`), or is
    /// empty for one node's session.
    pub fn condition(
        &self,
        running: bool,
        was_pending: bool,
        place: &str,
    ) -> (bool, &'static str, String) {
        let place = match place {
            "" => String::new(),
            p => format!(" {p}"),
        };
        let why = self.message.as_deref().unwrap_or_default();
        match self.state {
            UploadState::Complete if running => (
                true,
                "Streaming",
                "every closed chunk of events is in the object store; the rest follow as the trace runs".into(),
            ),
            UploadState::Complete if was_pending => (
                true,
                "UploadedLate",
                "every result file is in the object store (some uploaded after the trace ended, once the store \
                 took them)"
                    .into(),
            ),
            UploadState::Complete => (true, "Uploaded", "every result file is in the object store".into()),
            UploadState::Pending => (
                false,
                "UploadPending",
                format!(
                    "{} {} spooled{place}, retried until the object store takes them: {why}",
                    self.pending,
                    if running { "chunk(s) of events" } else { "result set(s)" },
                ),
            ),
            UploadState::Incomplete => (false, "ResultsIncomplete", format!("results lost{place}: {why}")),
        }
    }

    pub fn merge<'a>(uploads: impl IntoIterator<Item = &'a Upload>) -> Option<Upload> {
        let mut out: Option<Upload> = None;
        for u in uploads {
            let o = out.get_or_insert_with(Upload::default);
            o.state = o.state.max(u.state);
            o.pending = o.pending.saturating_add(u.pending);
            o.oldest_pending = match (o.oldest_pending.take(), u.oldest_pending.clone()) {
                (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
                (a, b) => a.or(b),
            };
            if u.state != UploadState::Complete && o.message.is_none() {
                o.message = u.message.clone();
            }
        }
        out
    }
}

/// Lifecycle phase of a TraceJob or ProbeSession.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_results_condition_says_streaming_pending_late_or_lost() {
        let pending = Upload {
            state: UploadState::Pending,
            pending: 3,
            message: Some("connection refused".into()),
            ..Default::default()
        };
        let (ok, reason, msg) = pending.condition(true, false, "on node-a");
        assert_eq!((ok, reason), (false, "UploadPending"));
        assert!(
            msg.starts_with("3 chunk(s) of events spooled on node-a")
                && msg.ends_with("connection refused"),
            "{msg}"
        );
        assert!(
            pending
                .condition(false, false, "")
                .2
                .starts_with("3 result set(s) spooled,")
        );
        let done = Upload::default();
        assert_eq!(done.condition(true, true, "").1, "Streaming");
        assert_eq!(done.condition(false, true, "").1, "UploadedLate");
        assert_eq!(done.condition(false, false, "").1, "Uploaded");
        let lost = Upload {
            state: UploadState::Incomplete,
            message: Some("disk full".into()),
            ..Default::default()
        };
        assert_eq!(
            lost.condition(false, false, "on node-b").2,
            "results lost on node-b: disk full"
        );
    }
}
