//! Sonde's operator: reconciles TraceJobs into per-node ProbeSessions (owned, labelled with their node), rolls
//! the sessions' statuses up into the job, emits Events, and leads through a Lease so one replica acts.

pub mod backoff;
pub mod conditions;
pub mod context;
pub mod error;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod owner;
pub mod placement;
pub mod pods;
pub mod policy;
pub mod rollup;
pub mod tracejob;

pub use context::Context;
pub use error::{Error, Result};
