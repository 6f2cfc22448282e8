//! The node's share of the API server for status that can wait. What a reader acts on (a phase, a condition's
//! status or reason, attach, results, the upload state) is written at once; counts and figures that move with
//! every event at most every `COUNTS_EVERY` per session and, for the whole node, one such write every
//! [`StatusShare::EVERY`], given to the session that has waited longest. A node with a session or two sees its
//! counts every 30 s; a node with seventy (a fleet of 1000 nodes under 50 TraceJobs and 20 ProbePolicies) shares
//! three writes a minute among them, so the fleet's writes stay near its Leases' (100/s at 1000 nodes) however
//! many sessions it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct StatusShare {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// No write granted before this.
    next: Option<Instant>,
    /// Sessions with counts to write, by when they last wrote them.
    waiting: BTreeMap<String, Instant>,
}

impl StatusShare {
    /// One write of counts per this, for the whole node.
    pub const EVERY: Duration = Duration::from_secs(20);

    /// Whether `session`, whose counts were last written at `since`, may write them now. A session asks on its
    /// beats; it is granted once the node's share is free and it has waited longest.
    pub fn take(&self, session: &str, since: Instant) -> bool {
        self.take_at(session, since, Instant::now())
    }

    fn take_at(&self, session: &str, since: Instant, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.insert(session.to_string(), since);
        if s.next.is_some_and(|next| now < next) {
            return false;
        }
        let oldest = s
            .waiting
            .iter()
            .min_by_key(|(name, at)| (**at, name.as_str()))
            .map(|(name, _)| name.as_str());
        if oldest != Some(session) {
            return false;
        }
        s.waiting.remove(session);
        s.next = Some(now + Self::EVERY);
        true
    }

    /// `session` has nothing more to wait for (it wrote at once, or ended).
    pub fn forget(&self, session: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.remove(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_per_period_to_the_session_that_waited_longest() {
        let share = StatusShare::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(
            share.take_at("b", at(5), at(39)),
            "alone and the share free"
        );
        assert!(
            !share.take_at("a", at(0), at(40)),
            "the share is spent until 59"
        );
        assert!(!share.take_at("b", at(39), at(59)), "a has waited longer");
        assert!(share.take_at("a", at(0), at(59)), "a's turn");
        assert!(!share.take_at("b", at(39), at(61)), "spent until 79");
        assert!(share.take_at("b", at(39), at(79)), "b's turn");
        // A session that ended is forgotten and holds nobody up.
        assert!(!share.take_at("c", at(1), at(80)));
        share.forget("c");
        assert!(share.take_at("a", at(59), at(99)));
    }
}
