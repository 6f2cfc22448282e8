//! The agent's results from the moment a session knows where they go until the store has them, in layers:
//!
//! - [`locations`]: where a session's results may go at all (the admin's storage locations, the session's own
//!   prefix), decided before anything is written.
//! - [`spool`]: the result sets on the node's disk: a run's directory with its destination, sealed with a
//!   marker once finished (from then on it survives a crash), delivered and removed once the store has it.
//! - [`streaming`]: a running trace's closed chunks, sent as they appear.
//! - [`recovery`]: what a previous agent process left: cut-off policy windows and traces no session resumed.
//! - [`uploader`]: the background task that retries every sealed set until its store takes it.
//! - [`status`]: what a session's status says of its results, and the uploader's write of it beside the
//!   session's own (the two writers of a session's status, side by side).
//! - [`store`]: the client that puts one file to an object store or the results server.
//!
//! A finished trace's (or policy window's) files leave the spool only once the store has taken every one. The
//! session (`session/publish.rs`) tries once as it ends; the uploader retries the rest across agent restarts and
//! store outages, with the one retry policy here ([`backoff`]), which the streamer uses too.

use std::time::{Duration, SystemTime};

pub mod locations;
pub mod recovery;
pub mod spool;
pub mod status;
pub mod store;
pub mod streaming;
pub mod uploader;

/// Longest wait between two tries of one set.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The next wait after `attempts` failed tries: doubling from 1 s up to [`MAX_BACKOFF`], ±20 % jitter so many
/// sets (or agents) do not retry in lockstep.
pub fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1 << attempts.min(6)).min(MAX_BACKOFF);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    base.mul_f64(0.8 + f64::from(nanos % 400) / 1000.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::spool::Destination;
    use super::*;

    /// Where a set of session `ns/job-node` goes: under `prefix` of a store that is never reached.
    pub(crate) fn to(prefix: &str) -> Destination {
        Destination {
            store_url: "file:///nowhere".into(),
            prefix: prefix.into(),
            namespace: "ns".into(),
            session: "job-node".into(),
            stream: false,
            default_store: false,
        }
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter() {
        let b1 = backoff(1);
        assert!(
            b1 >= Duration::from_millis(1600) && b1 <= Duration::from_millis(2400),
            "{b1:?}"
        );
        let b9 = backoff(9);
        assert!(
            b9 <= MAX_BACKOFF.mul_f64(1.2) && b9 >= MAX_BACKOFF.mul_f64(0.8),
            "{b9:?}"
        );
    }
}
