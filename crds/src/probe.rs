//! Which probe to run and its typed parameters: the probe registry, from `sonde-vocab` (built here with its
//! `schema` feature: the schema derives and CEL rules the CRDs carry).

pub use sonde_vocab::probe::*;
