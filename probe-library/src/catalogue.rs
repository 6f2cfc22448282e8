//! The kernel side of the probe registry: what a probe's entry ([`ProbeInfo`]) says: its description, what it
//! filters on, its hooks with their attach chains, the kernel threshold, how its params become kernel settings,
//! the object that implements it, its kernel aggregates (reset per policy window), its aggregator and an example.
//! Each probe's entry lives beside its C file (`src/probes/<probe>.rs` and `<probe>.bpf.c`); [`info`] is an
//! exhaustive match generated from those files, so a probe without an entry does not compile. Its API side (name,
//! params section, metrics, CEL rules) is the registry in `sonde_vocab::probe`.

use sonde_probe_abi::MAX_PORTS;
use sonde_vocab::{Metric, ProbeName, ProbeParams};

use crate::aggregate::Aggregator;
pub use crate::probes::info;

/// One way to attach a hook, tried in the order the probe declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// BTF-typed function entry (`fentry/<func>`): cheapest, needs BPF trampolines.
    Fentry {
        program: &'static str,
        func: &'static str,
    },
    /// Dynamic kernel probe (`kprobe/<func>`): needs CONFIG_KPROBES.
    Kprobe {
        program: &'static str,
        func: &'static str,
    },
    /// BTF-typed raw tracepoint: typed pointers (task, skb) at a stable tracepoint.
    TpBtf {
        program: &'static str,
        event: &'static str,
    },
    /// Classic tracepoint with its format-defined record.
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// Sampling on the cpu-clock software event on every CPU.
    PerfCpuClock { program: &'static str },
}

impl Attach {
    pub fn strategy(&self) -> &'static str {
        match self {
            Attach::Fentry { .. } => "fentry",
            Attach::Kprobe { .. } => "kprobe",
            Attach::TpBtf { .. } => "tp_btf",
            Attach::Tracepoint { .. } => "tracepoint",
            Attach::PerfCpuClock { .. } => "perf_event",
        }
    }

    pub fn program(&self) -> &'static str {
        match *self {
            Attach::Fentry { program, .. }
            | Attach::Kprobe { program, .. }
            | Attach::TpBtf { program, .. }
            | Attach::Tracepoint { program, .. }
            | Attach::PerfCpuClock { program } => program,
        }
    }

    pub fn target(&self) -> String {
        match *self {
            Attach::Fentry { func, .. } | Attach::Kprobe { func, .. } => func.to_string(),
            Attach::TpBtf { event, .. } => event.to_string(),
            Attach::Tracepoint { category, name, .. } => format!("{category}:{name}"),
            Attach::PerfCpuClock { .. } => "cpu-clock".to_string(),
        }
    }
}

/// A point the probe observes, with its fallback chain. An optional hook that cannot attach anywhere is
/// reported but does not fail the probe.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub name: &'static str,
    pub required: bool,
    /// Keeps context for the probe's event hooks (such as interrupt nesting) rather than observing events
    /// itself: attached like any hook, but not part of the probe's attach strategy.
    pub context: bool,
    pub chain: &'static [Attach],
}

/// How a probe's threshold value maps to the kernel's `cfg_threshold`.
#[derive(Clone, Copy, Debug)]
pub struct KernelThreshold {
    pub metric: Metric,
    /// Multiply the manifest's value by this to get kernel units (ms -> ns is 1e6).
    pub scale: f64,
}

/// A kernel map that sums what the probe saw, zeroed when a ProbePolicy window rolls (`window.rs`). Maps of
/// these names must be declared by the probe that has them (the registry test checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// `pairs`: waker -> wakee counts (`WakeupKey` -> `WakeupVal`).
    WakeupPairs,
    /// `counts`: sampled stacks (`StackKey` -> count).
    StackCounts,
    /// `stacks`: the stack trace map the counts point into.
    Stacks,
    /// `hists`: log2 histograms, a per-CPU array.
    Histograms,
}

impl Aggregate {
    pub const ALL: [Aggregate; 4] = [
        Aggregate::WakeupPairs,
        Aggregate::StackCounts,
        Aggregate::Stacks,
        Aggregate::Histograms,
    ];

    /// The map's name in the object.
    pub fn map(self) -> &'static str {
        match self {
            Aggregate::WakeupPairs => "pairs",
            Aggregate::StackCounts => "counts",
            Aggregate::Stacks => "stacks",
            Aggregate::Histograms => "hists",
        }
    }
}

/// What a probe's kernel side tells targets apart by, hence what its target filter is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtered {
    /// The task the event is about (current, or the woken or switched task): cgroups, pids and comms.
    Task,
    /// The socket's cgroup: events fire in softirq or timer context, where the current task is anyone's.
    Socket,
    /// The receiving network namespace (packets in softirq context); cgroups only decide which task the
    /// pid/comm columns may name.
    Netns,
}

#[derive(Clone, Copy)]
pub struct ProbeInfo {
    pub name: ProbeName,
    pub description: &'static str,
    pub filtered: Filtered,
    /// The network namespace a local run (`sonde run`) names in the params. The agent never reads it: a cluster
    /// target's namespaces are its pods'.
    pub local_netns: fn(&ProbeParams) -> Option<u32>,
    pub hooks: &'static [Hook],
    pub kernel_threshold: Option<KernelThreshold>,
    /// The compiled object of `bpf/<probe>.bpf.c`, embedded at build time.
    pub object: fn() -> &'static [u8],
    /// Its kernel aggregates.
    pub aggregates: &'static [Aggregate],
    /// Its user-space side: events decoded, maps read into findings (its summary rows keyed as it says).
    pub aggregator: fn() -> Box<dyn Aggregator>,
    /// How its params become kernel settings (its object's globals, filter sets, a sampling rate).
    pub kernel: fn(&ProbeParams, &mut KernelSettings),
    /// A TraceJob that runs it on one machine (`sonde probes --example <probe>`); the registry test runs it.
    pub example: &'static str,
}

impl std::fmt::Debug for ProbeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeInfo")
            .field("name", &self.name)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// For probes whose params set nothing in the kernel.
pub(crate) const NO_SETTINGS: fn(&ProbeParams, &mut KernelSettings) = |_, _| {};

/// A classic tracepoint attach.
pub(crate) const fn tp(
    program: &'static str,
    category: &'static str,
    name: &'static str,
) -> Attach {
    Attach::Tracepoint {
        program,
        category,
        name,
    }
}

/// `tcp_rcv_established`, where an established socket takes a segment: the same programs in every object that
/// has them (`packet-latency`, `tcp-rtt`). Its tracepoint fallback `tcp_probe` fires at the top of the function with
/// the socket and the skb.
pub(crate) const TCP_RCV_ESTABLISHED: &[Attach] = &[
    Attach::Fentry {
        program: "fentry_tcp_rcv_established",
        func: "tcp_rcv_established",
    },
    Attach::Kprobe {
        program: "kprobe_tcp_rcv_established",
        func: "tcp_rcv_established",
    },
    Attach::TpBtf {
        program: "tp_btf_tcp_probe",
        event: "tcp_probe",
    },
    tp("tp_tcp_probe", "tcp", "tcp_probe"),
];

/// A value for one of a probe's own `const volatile` globals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    U8(u8),
    U32(u32),
    Ports([u16; MAX_PORTS]),
}

/// What a probe's params set in the kernel, beyond the filter and threshold every probe has: globals of its
/// object (each must exist there: a misspelt name fails the load), hash sets of `u32` keys, and the rate of a
/// sampling hook. Made by the probe's [`ProbeInfo::kernel`]; the loader applies it without knowing the probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSettings {
    pub globals: Vec<(&'static str, Global)>,
    /// (map, keys): a `u32 -> u8` hash map the object declares, filled with `keys`.
    pub sets: Vec<(&'static str, Vec<u32>)>,
    /// Samples per second per CPU of a perf-event hook.
    pub sample_hz: Option<u64>,
}

impl KernelSettings {
    /// The settings of `probe` for these params.
    pub fn of(probe: ProbeName, params: &ProbeParams) -> KernelSettings {
        let mut settings = KernelSettings::default();
        (info(probe).kernel)(params, &mut settings);
        settings
    }

    pub fn flag(&mut self, global: &'static str, on: bool) {
        self.globals.push((global, Global::U8(on as u8)));
    }

    /// The TCP port filter of `sonde.h` (`cfg_ports`, `cfg_nports`): at most [`MAX_PORTS`] ports, each 1-65535
    /// (the API refuses others); none means every port.
    pub fn ports(&mut self, ports: &[u32]) {
        let mut table = [0u16; MAX_PORTS];
        let mut n = 0;
        for p in ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .take(MAX_PORTS)
        {
            table[n] = p;
            n += 1;
        }
        self.globals.push(("cfg_ports", Global::Ports(table)));
        self.globals.push(("cfg_nports", Global::U32(n as u32)));
    }

    /// A set filter: the map `map` holds `keys`, and the flag `global` turns it on when there are any.
    pub fn set(&mut self, global: &'static str, map: &'static str, keys: &[u32]) {
        self.flag(global, !keys.is_empty());
        if !keys.is_empty() {
            self.sets.push((map, keys.to_vec()));
        }
    }

    pub fn sample_hz(&mut self, hz: u64) {
        self.sample_hz = Some(hz);
    }
}

/// Every probe's entry, in registry order.
pub fn all() -> impl Iterator<Item = &'static ProbeInfo> {
    ProbeName::ALL.iter().map(|p| info(*p))
}
