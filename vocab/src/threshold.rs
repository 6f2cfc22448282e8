//! Thresholds on a probe's metrics, and what a trace keeps.

use serde::{Deserialize, Serialize};

use crate::probe::Metric;

/// How the observed value compares with `value` to count as a breach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Comparison {
    #[default]
    GreaterThan,
    GreaterOrEqual,
}

/// What a breach does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ThresholdAction {
    /// Record the breaching event, count it and raise the ThresholdBreached condition.
    #[default]
    Record,
    /// As Record, then end the trace early (the job succeeds with what was collected).
    Stop,
}

/// A threshold on one metric of the probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Threshold {
    /// The metric watched; it must be one the probe produces.
    pub metric: Metric,
    /// Comparison of observed value against `value`. Default GreaterThan.
    #[serde(default)]
    pub comparison: Comparison,
    /// The limit, in the metric's unit (the unit is the metric name's suffix), 0 to 1e15.
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1e15)))]
    pub value: f64,
    /// What a breach does. Default Record.
    #[serde(default)]
    pub action: ThresholdAction,
}

/// What the trace keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Output {
    /// Keep individual events (NDJSON) in addition to the aggregated summary and histograms.
    #[serde(default = "default_true")]
    pub events: bool,
    /// Keep one event in N (1 keeps all). Aggregates always count every event.
    #[serde(default = "default_one")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000000)))]
    pub sample_every: u32,
    /// Stop keeping individual events after this many per node; aggregates keep counting.
    #[serde(default = "default_max_events")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100000000)))]
    pub max_events: u64,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            events: true,
            sample_every: 1,
            max_events: default_max_events(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}
fn default_max_events() -> u64 {
    100_000
}
