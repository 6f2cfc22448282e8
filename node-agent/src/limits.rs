//! What sessions may cost this node whatever their specs say, set by the cluster admin (chart `agent.limits`).
//! A spec that passes the schema can still ask for a lot: 10^8 kept events, a 100 % CPU budget, a namespace's
//! forty jobs at once. These keep one tenant's sessions from taking down the agent, its other sessions or the
//! node; a session they refuse or cut says so in its status, naming the limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sonde_probes::results::Gate;

/// `Failed` reason of a session refused because the agent already runs `maxSessions`.
pub const NODE_AT_CAPACITY: &str = "NodeAtCapacity";
/// `Failed` reason of a session refused because its namespace already runs `maxSessionsPerNamespace` here.
pub const NAMESPACE_AT_SHARE: &str = "NamespaceAtShare";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Sessions running at once. Each holds a ring buffer and the probe's maps in the agent's memory cgroup
    /// (7 to 24 MiB measured), so the agent's memory limit caps how many fit; one more fails at once.
    pub max_sessions: usize,
    /// Sessions of one namespace running at once: the rest of `max_sessions` stays for other tenants, so one
    /// namespace's twelve policies cannot refuse every other namespace's jobs on the node.
    pub max_sessions_per_namespace: usize,
    /// Bytes of events a trace (or a policy window) keeps on the node; past it events are counted, not kept.
    pub max_event_bytes: u64,
    /// Ceiling on `spec.budget.maxKernelCpuPercent`: a session asking for more runs under this.
    pub max_kernel_cpu_percent: f64,
    /// Bytes of results waiting in the spool for the object store; past it, sessions keep no new events (they
    /// count them) until uploads make room, so an outage cannot fill the node's disk.
    pub max_spool_bytes: u64,
    /// Of `max_spool_bytes`, what one namespace's waiting results may take: past it that namespace's sessions
    /// keep no new events while the others' still do.
    pub max_spool_bytes_per_namespace: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 12,
            max_sessions_per_namespace: 6,
            max_event_bytes: 256 << 20,
            max_kernel_cpu_percent: 10.0,
            max_spool_bytes: 2048 << 20,
            max_spool_bytes_per_namespace: 1024 << 20,
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

    /// Half of a node-wide figure, at least one: a namespace's share when the admin set none.
    pub fn half(total: u64) -> u64 {
        (total / 2).max(1)
    }
}

/// Why a session may not start here now, as its `Failed` condition says it.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
}

/// Running sessions, counted on the node and per namespace: a session holds one [`Slot`] from start to its
/// last status write.
#[derive(Clone, Debug)]
pub struct Slots {
    max: usize,
    per_namespace: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running session's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    namespace: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.namespace) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.namespace);
            }
        }
    }
}

impl Slots {
    pub fn new(limits: &Limits) -> Slots {
        Slots {
            max: limits.max_sessions,
            per_namespace: limits.max_sessions_per_namespace,
            held: Arc::default(),
        }
    }

    /// A slot for a session of `namespace`, or why not: the node is full, or the namespace holds its share.
    pub fn take(&self, namespace: &str) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = held.values().sum();
        // A namespace at its share hears that first: it would be refused on an emptier node too.
        let mine = held.get(namespace).copied().unwrap_or_default();
        if mine >= self.per_namespace {
            return Err(Refused {
                reason: NAMESPACE_AT_SHARE,
                message: format!(
                    "namespace {namespace} already runs {mine} sessions on this node, its share (Helm value \
                     agent.limits.maxSessionsPerNamespace; the node runs {total} of {}): the rest stay for other \
                     namespaces; delete finished or unneeded TraceJobs/ProbePolicies of {namespace} and re-create \
                     this one",
                    self.max
                ),
            });
        }
        if total >= self.max {
            return Err(Refused {
                reason: NODE_AT_CAPACITY,
                message: format!(
                    "this node's agent already runs {total} sessions, its limit (Helm value \
                     agent.limits.maxSessions, sized to the agent's memory limit): delete finished or unneeded \
                     TraceJobs/ProbePolicies and re-create this one"
                ),
            });
        }
        *held.entry(namespace.to_string()).or_default() += 1;
        Ok(Slot {
            namespace: namespace.to_string(),
            held: self.held.clone(),
        })
    }
}

/// Whether the results waiting in the spool leave room for new events: for the node as a whole and for each
/// namespace against its share. A session's results writer holds its namespace's gate; the uploader, which
/// measures the spool, opens and closes them.
#[derive(Clone, Debug, Default)]
pub struct SpoolGates(Arc<Mutex<Measured>>);

#[derive(Debug, Default)]
struct Measured {
    gates: HashMap<String, Gate>,
    /// The last look: the limits, the bytes waiting in all and per namespace. A gate made after it starts as
    /// that look says, not open until the next one.
    limits: Option<Limits>,
    total: u64,
    waiting: HashMap<String, u64>,
}

impl Measured {
    /// Why `namespace`'s sessions must keep no new events now, if they must.
    fn closed_because(&self, namespace: &str) -> Option<String> {
        let l = self.limits?;
        let mine = self.waiting.get(namespace).copied().unwrap_or_default();
        if self.total > l.max_spool_bytes {
            Some(format!(
                "this node's spool of results waiting for the object store reached its cap ({} MiB waiting; Helm \
                 value agent.limits.maxSpoolMiB, {} MiB)",
                self.total >> 20,
                l.max_spool_bytes >> 20
            ))
        } else if mine > l.max_spool_bytes_per_namespace {
            Some(format!(
                "namespace {namespace}'s results waiting for the object store on this node reached its share of \
                 the spool ({} MiB waiting; Helm value agent.limits.maxSpoolMiBPerNamespace, {} MiB)",
                mine >> 20,
                l.max_spool_bytes_per_namespace >> 20
            ))
        } else {
            None
        }
    }

    fn set(&self, namespace: &str, gate: &Gate) {
        match self.closed_because(namespace) {
            Some(why) => gate.close(why),
            None => gate.open(),
        }
    }
}

/// What one look at the spool found.
#[derive(Debug, Default, PartialEq)]
pub struct SpoolUse {
    /// The node's spool holds more than `max_spool_bytes`: no session keeps new events.
    pub node_full: bool,
    /// Namespaces past their share: their sessions keep no new events.
    pub over_share: Vec<String>,
}

impl SpoolGates {
    /// The gate of `namespace`'s sessions, as the last look at the spool left it.
    pub fn of(&self, namespace: &str) -> Gate {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = m.gates.get(namespace) {
            return g.clone();
        }
        let gate = Gate::default();
        m.set(namespace, &gate);
        m.gates.insert(namespace.to_string(), gate.clone());
        gate
    }

    /// Opens or closes every gate from what the spool holds: `waiting` bytes per namespace.
    pub fn measure(&self, limits: &Limits, waiting: HashMap<String, u64>) -> SpoolUse {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A namespace counts at most its share toward the node's cap: past it its own gate is closed already,
        // and two namespaces over their shares must not close every other namespace's gate too.
        m.total = waiting.values().fold(0u64, |a, b| {
            a.saturating_add((*b).min(limits.max_spool_bytes_per_namespace))
        });
        m.waiting = waiting;
        m.limits = Some(*limits);
        // A gate no session holds any more goes (namespaces come and go; the map must not grow with them).
        m.gates.retain(|_, g| g.is_shared());
        for (ns, gate) in &m.gates {
            m.set(ns, gate);
        }
        let mut over_share: Vec<String> = m
            .waiting
            .iter()
            .filter(|(_, b)| **b > limits.max_spool_bytes_per_namespace)
            .map(|(ns, _)| ns.clone())
            .collect();
        over_share.sort();
        SpoolUse {
            node_full: m.total > limits.max_spool_bytes,
            over_share,
        }
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
    fn slots_run_out_per_namespace_and_on_the_node_and_come_back() {
        let l = Limits {
            max_sessions: 4,
            max_sessions_per_namespace: 2,
            ..Default::default()
        };
        let slots = Slots::new(&l);
        let a: Vec<Slot> = (0..2).map(|_| slots.take("team-a").unwrap()).collect();
        // team-a holds its share; team-b still gets the rest.
        let refused = slots.take("team-a").unwrap_err();
        assert_eq!(refused.reason, NAMESPACE_AT_SHARE);
        assert!(
            refused
                .message
                .contains("namespace team-a already runs 2 sessions")
                && refused
                    .message
                    .contains("agent.limits.maxSessionsPerNamespace"),
            "{}",
            refused.message
        );
        let b1 = slots.take("team-b").unwrap();
        let _b2 = slots.take("team-b").unwrap();
        // The node is full: whoever asks next hears NodeAtCapacity, naming the node's limit.
        // team-a on the full node hears of its share (it would be refused on an emptier node too).
        assert_eq!(slots.take("team-a").unwrap_err().reason, NAMESPACE_AT_SHARE);
        let full = slots.take("team-c").unwrap_err();
        assert_eq!(full.reason, NODE_AT_CAPACITY);
        assert!(
            full.message.contains("runs 4 sessions")
                && full.message.contains("agent.limits.maxSessions")
        );
        drop(b1);
        assert_eq!(slots.take("team-a").unwrap_err().reason, NAMESPACE_AT_SHARE);
        let c = slots.take("team-c").unwrap();
        drop((a, c));
        assert!(
            slots.held.lock().unwrap().get("team-a").is_none(),
            "counts go with their slots"
        );
        assert!(slots.take("team-a").is_ok());
    }

    #[test]
    fn a_namespace_past_its_spool_share_is_gated_alone_and_a_full_spool_gates_all() {
        let l = Limits {
            max_spool_bytes: 100 << 20,
            max_spool_bytes_per_namespace: 50 << 20,
            ..Default::default()
        };
        let gates = SpoolGates::default();
        let (a, b, c) = (gates.of("team-a"), gates.of("team-b"), gates.of("team-c"));
        let waiting = |x: u64, y: u64| {
            HashMap::from([
                ("team-a".to_string(), x << 20),
                ("team-b".to_string(), y << 20),
            ])
        };
        let used = gates.measure(&l, waiting(60, 10));
        assert_eq!(
            used,
            SpoolUse {
                node_full: false,
                over_share: vec!["team-a".into()]
            }
        );
        assert!(a.is_closed() && !b.is_closed());
        assert!(
            a.why().contains("namespace team-a's results")
                && a.why().contains("maxSpoolMiBPerNamespace, 50 MiB"),
            "{}",
            a.why()
        );
        // Three under their shares but the node over its cap: every namespace waits.
        let mut three = waiting(40, 40);
        three.insert("team-c".into(), 30 << 20);
        let used = gates.measure(&l, three);
        assert!(used.node_full && used.over_share.is_empty(), "{used:?}");
        assert!(a.is_closed() && b.is_closed() && c.is_closed());
        assert!(b.why().contains("maxSpoolMiB, 100 MiB"), "{}", b.why());
        // Two namespaces far past their shares count as their shares: they wait, the third does not.
        let used = gates.measure(&l, waiting(200, 200));
        assert!(!used.node_full, "{used:?}");
        assert!(a.is_closed() && b.is_closed() && !c.is_closed());
        // Uploads made room: open again.
        gates.measure(&l, waiting(10, 10));
        assert!(!a.is_closed() && !b.is_closed());
        // A session that starts after a look starts as that look says, not open until the next one.
        gates.measure(&l, waiting(70, 0));
        assert!(gates.of("team-a").is_closed() && !gates.of("team-c").is_closed());
        // A namespace whose sessions all ended leaves no gate behind.
        drop((b, c));
        gates.measure(&l, HashMap::new());
        let left: Vec<String> = gates.0.lock().unwrap().gates.keys().cloned().collect();
        assert_eq!(left, ["team-a"], "only the gate `a` still holds");
    }
}
