//! What a probe is loaded with: the target filter, the kernel threshold and output sampling, derived from a
//! TraceJob/ProbeSession spec plus what the caller resolved (cgroup ids, pids, netns inodes).

use sonde_vocab::{Comparison, Metric, Output, ProbeName, ProbeParams, Threshold};

use crate::catalogue;
use crate::error::{Error, Result};

/// The in-kernel target filter. A filter that is on with an empty set admits nothing: a pod target whose
/// containers have not started yet traces nothing until the caller fills the set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub cgroups: Option<Vec<u64>>,
    pub pids: Option<Vec<u32>>,
    pub comms: Option<Vec<String>>,
    /// Network namespaces (inode numbers), for packet-latency.
    pub netns: Option<Vec<u32>>,
    /// The cgroup holding every pod of the node (kubepods) as (cgroup id, level below the v2 root), with a
    /// cgroup filter: a task under it but outside the filter belongs to another pod and is never reported
    /// because a traced task woke it (wakeups).
    pub pods_root: Option<(u64, u32)>,
    /// With a cgroup filter, name counterparts outside the filter's cgroups (wakeups' host tasks) only as
    /// `[outside]`: the cluster admin's tenancy switch.
    pub redact_outside: bool,
}

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub probe: ProbeName,
    pub params: ProbeParams,
    pub filter: Filter,
    pub thresholds: Vec<Threshold>,
    pub output: Output,
}

/// The one threshold the kernel checks: the lowest on the probe's own metric (the rest are checked on the
/// breaching events in user space), in kernel units, and whether it is inclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelThresholdValue {
    pub value: u64,
    pub inclusive: bool,
}

impl ProbeConfig {
    pub fn validate(&self) -> Result<()> {
        let info = catalogue::info(self.probe);
        for t in &self.thresholds {
            let ok = t.metric == Metric::EventsPerSecond
                || info.kernel_threshold.is_some_and(|k| k.metric == t.metric);
            if !ok {
                return Err(Error::BadParams {
                    probe: self.probe,
                    message: format!(
                        "threshold metric {} is not produced by this probe",
                        t.metric.as_str()
                    ),
                });
            }
        }
        let sets = self.params.set_sections();
        if sets.iter().any(|s| *s != self.probe.params_key()) {
            return Err(Error::BadParams {
                probe: self.probe,
                message: format!(
                    "params sets {sets:?}; only params.{} belongs to this probe",
                    self.probe.params_key()
                ),
            });
        }
        if let Some(c) = self
            .filter
            .comms
            .iter()
            .flatten()
            .find(|c| c.is_empty() || c.len() > 15)
        {
            return Err(Error::BadParams {
                probe: self.probe,
                message: format!("comm {c:?} must be 1-15 bytes"),
            });
        }
        Ok(())
    }

    pub fn kernel_threshold(&self) -> Option<KernelThresholdValue> {
        let k = catalogue::info(self.probe).kernel_threshold?;
        self.thresholds
            .iter()
            .filter(|t| t.metric == k.metric)
            .map(|t| KernelThresholdValue {
                value: (t.value * k.scale).round().max(0.0) as u64,
                inclusive: t.comparison == Comparison::GreaterOrEqual,
            })
            .min_by_key(|t| (t.value, !t.inclusive))
    }

    /// Does a breach of the kernel threshold mean Stop? Then the kernel's breach count alone ends the trace,
    /// which holds even when the breaching event itself was dropped with the ring buffer full.
    pub fn kernel_threshold_stops(&self) -> bool {
        let Some(k) = catalogue::info(self.probe).kernel_threshold else {
            return false;
        };
        let Some(lowest) = self.kernel_threshold() else {
            return false;
        };
        self.thresholds.iter().any(|t| {
            t.metric == k.metric
                && t.action == sonde_vocab::ThresholdAction::Stop
                && (t.value * k.scale).round().max(0.0) as u64 == lowest.value
                && (t.comparison == Comparison::GreaterOrEqual) == lowest.inclusive
        })
    }

    /// Will events cross the ring buffer? All of them with `output.events`; with it off, still the ones that
    /// breach the kernel threshold.
    pub fn events_expected(&self) -> bool {
        self.output.events || self.kernel_threshold().is_some()
    }
}
