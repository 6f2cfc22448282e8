//! The probes, one unit each: `<probe>.bpf.c` (the kernel side) beside `<probe>.rs` (its registry entry: hooks,
//! filter, kernel settings, aggregator, example). build.rs compiles every C file and writes the module list and
//! [`info`] from the files found here, so adding a probe edits no list.

use sonde_vocab::ProbeName;

use crate::catalogue::ProbeInfo;

/// The embedded object compiled from `<file>.bpf.c`.
macro_rules! object {
    ($file:literal) => {
        || aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $file, ".bpf.o"))
    };
}

include!(concat!(env!("OUT_DIR"), "/probes.rs"));
