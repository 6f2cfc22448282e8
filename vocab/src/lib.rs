//! Sonde's probe vocabulary, shared by the API types (`sonde-crds`), the probe library and the tools: which
//! probe, its parameters, the metrics thresholds watch, what a trace keeps, and what it found (summary rows,
//! figures, counts). Plain serde types with no Kubernetes dependency; `sonde-crds` builds them with the
//! `schema` feature, which adds the JSON schema and the CEL rules the API server checks.
#![cfg_attr(
    feature = "schema",
    allow(
        unreachable_pub,
        reason = "KubeSchema's CEL validation derive copies each type into a private scope, where its pub is unreachable"
    )
)]

pub mod probe;
pub mod results;
pub mod summary;
pub mod threshold;

pub use probe::*;
pub use summary::{Counts, Figure, Summary, SummaryRow};
pub use threshold::{Comparison, Output, Threshold, ThresholdAction};
