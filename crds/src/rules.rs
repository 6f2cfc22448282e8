//! CEL rules shared by every kind that names a probe. They live in the schema, so the API server rejects a
//! mismatched spec at `kubectl apply` and `sonde run` evaluates the very same rules client-side. The rules that
//! tie params and thresholds to the probe are generated from the probe registry (`crate::probe`).

pub use crate::probe::{
    PARAMS_MATCH_PROBE, PARAMS_MATCH_PROBE_MSG, THRESHOLDS_MATCH_PROBE, THRESHOLDS_MATCH_PROBE_MSG,
};
