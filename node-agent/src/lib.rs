//! Sonde's node agent: watches only its node's ProbeSessions and Pods, turns target pods into cgroup v2 ids
//! (and network namespaces), runs each session with the probe library under a local deadline and an overhead
//! budget, and uploads results through `object_store`. Kernel objects belong to the process (nothing is
//! pinned), so a killed agent leaves nothing attached.

pub mod agent;
pub mod cgroups;
pub mod error;
#[cfg(test)]
mod fake_api;
pub mod limits;
pub mod liveness;
pub mod metrics;
pub mod results;
pub mod session;

pub use agent::{Agent, AgentConfig};
pub use error::{Error, Result};
