//! Sonde's probe library: prebuilt CO-RE eBPF programs (`src/probes/<probe>.bpf.c`, compiled by build.rs and
//! embedded, each beside its Rust entry `<probe>.rs`), the catalogue that describes them, the loader that attaches each hook through its fallback chain, and the
//! decoders and aggregators that turn kernel records into events, summaries, histograms and flame graphs.

pub mod aggregate;
pub mod catalogue;
pub mod cgroup;
pub mod chunks;
pub mod config;
pub mod error;
mod filter;
pub mod histogram;
pub mod loader;
mod probes;
pub mod procmaps;
pub mod profile;
pub mod report;
pub mod results;
pub mod run;
pub mod symbolize;
mod window;

pub use aggregate::{Event, Findings};
pub use catalogue::ProbeInfo;
pub use config::{Filter, ProbeConfig};
pub use error::{AttachAttempt, Error, Result};
pub use report::{RunReport, WindowReport};
pub use run::{DrainLimit, Drained, Drops, KernelStats, Running};
