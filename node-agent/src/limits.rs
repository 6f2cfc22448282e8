//! What sessions may cost this node whatever their specs say, set by the cluster admin (chart `agent.limits`).
//! A spec that passes the schema can still ask for a lot: 10^8 kept events, a 100 % CPU budget, a namespace's
//! forty jobs at once. These keep one tenant's sessions from taking down the agent, its other sessions or the
//! node; a session they refuse or cut says so in its status, naming the limit.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `Failed` reason of a session refused because the agent already runs `maxSessions`.
pub const NODE_AT_CAPACITY: &str = "NodeAtCapacity";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Sessions running at once. Each holds a ring buffer and the probe's maps in the agent's memory cgroup
    /// (7 to 24 MiB measured), so the agent's memory limit caps how many fit; one more fails at once.
    pub max_sessions: usize,
    /// Bytes of events a trace (or a policy window) keeps on the node; past it events are counted, not kept.
    pub max_event_bytes: u64,
    /// Ceiling on `spec.budget.maxKernelCpuPercent`: a session asking for more runs under this.
    pub max_kernel_cpu_percent: f64,
    /// Bytes of results waiting in the spool for the object store; past it, sessions keep no new events (they
    /// count them) until uploads make room, so an outage cannot fill the node's disk.
    pub max_spool_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 12,
            max_event_bytes: 256 << 20,
            max_kernel_cpu_percent: 10.0,
            max_spool_bytes: 2048 << 20,
        }
    }
}

impl Limits {
    /// The kernel CPU budget a session runs under, and a note when the node's ceiling lowered it.
    pub fn budget(&self, asked: f64) -> (f64, Option<String>) {
        if asked <= self.max_kernel_cpu_percent {
            return (asked, None);
        }
        let cap = self.max_kernel_cpu_percent;
        (
            cap,
            Some(format!(
                "budget lowered from {asked}% to {cap}% of a CPU, this node's ceiling (Helm value \
                 agent.limits.maxKernelCpuPercent)"
            )),
        )
    }

    /// Why a session may not start here now: the agent is full.
    pub fn capacity_refusal(&self) -> String {
        format!(
            "this node's agent already runs {} sessions, its limit (Helm value agent.limits.maxSessions, sized to \
             the agent's memory limit): delete finished or unneeded TraceJobs/ProbePolicies and re-create this one",
            self.max_sessions
        )
    }
}

/// Running sessions: a session holds one slot from start to its last status write.
#[derive(Clone, Debug)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new(limits: &Limits) -> Slots {
        Slots(Arc::new(Semaphore::new(limits.max_sessions)))
    }

    /// A slot, or None when every slot is taken.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_over_the_ceiling_is_lowered_and_said_so() {
        let l = Limits::default();
        assert_eq!(l.budget(5.0), (5.0, None));
        let (b, note) = l.budget(100.0);
        assert_eq!(b, 10.0);
        assert!(note.unwrap().contains("from 100% to 10%"));
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let l = Limits {
            max_sessions: 2,
            ..Default::default()
        };
        let slots = Slots::new(&l);
        let (a, b) = (slots.take(), slots.take());
        assert!(a.is_some() && b.is_some());
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
        assert!(l.capacity_refusal().contains("runs 2 sessions"));
    }
}
