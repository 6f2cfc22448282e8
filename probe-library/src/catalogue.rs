//! The kernel side of the probe registry: for each probe its description, hooks with their attach chains, the
//! kernel threshold, the object that implements it, its kernel aggregates (reset per policy window), its
//! aggregator and an example. Its API side (name, params section, metrics, CEL rules) is the registry in
//! `sonde_vocab::probe`. [`info`] is an exhaustive match, so a probe without an entry does not compile.

use sonde_vocab::{Metric, ProbeName, ProbeParams};

use crate::aggregate::{Aggregator, Latency, Note, Notes, PacketLatency, Wakeups};

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

#[derive(Clone, Copy)]
pub struct ProbeInfo {
    pub name: ProbeName,
    pub description: &'static str,
    pub hooks: &'static [Hook],
    pub kernel_threshold: Option<KernelThreshold>,
    /// The compiled object of `bpf/<probe>.bpf.c`, embedded at build time.
    pub object: fn() -> &'static [u8],
    /// Its kernel aggregates.
    pub aggregates: &'static [Aggregate],
    /// Its user-space side: events decoded, maps read into findings.
    pub aggregator: fn() -> Box<dyn Aggregator>,
    /// The `ports` of its params, for probes that filter by TCP port.
    pub ports: fn(&ProbeParams) -> Option<&[u32]>,
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

/// The embedded object compiled from `bpf/<file>.bpf.c`.
macro_rules! object {
    ($file:literal) => {
        || aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $file, ".bpf.o"))
    };
}

const NO_PORTS: fn(&ProbeParams) -> Option<&[u32]> = |_| None;

const fn tp(program: &'static str, category: &'static str, name: &'static str) -> Attach {
    Attach::Tracepoint {
        program,
        category,
        name,
    }
}

const WAKEUPS: &[Hook] = &[
    // Hard-interrupt nesting (device handlers, hrtimer callbacks): a wakeup there is not the interrupted task's
    // doing. They attach before the wakeup hook, exits before entries, so a missed entry can only leave the
    // depth too low, never stuck high.
    Hook {
        name: "irq-exit",
        required: false,
        context: true,
        chain: &[tp("tp_irq_exit", "irq", "irq_handler_exit")],
    },
    Hook {
        name: "hrtimer-exit",
        required: false,
        context: true,
        chain: &[tp("tp_hrtimer_exit", "timer", "hrtimer_expire_exit")],
    },
    Hook {
        name: "irq-entry",
        required: false,
        context: true,
        chain: &[tp("tp_irq_entry", "irq", "irq_handler_entry")],
    },
    Hook {
        name: "hrtimer-entry",
        required: false,
        context: true,
        chain: &[tp("tp_hrtimer_entry", "timer", "hrtimer_expire_entry")],
    },
    Hook {
        name: "wakeup",
        required: true,
        context: false,
        chain: &[
            Attach::Fentry {
                program: "fentry_try_to_wake_up",
                func: "try_to_wake_up",
            },
            Attach::Kprobe {
                program: "kprobe_try_to_wake_up",
                func: "try_to_wake_up",
            },
            Attach::TpBtf {
                program: "tp_btf_sched_waking",
                event: "sched_waking",
            },
            tp("tp_sched_waking", "sched", "sched_waking"),
        ],
    },
];

const PACKET_LATENCY: &[Hook] = &[
    Hook {
        name: "xmit",
        required: true,
        context: false,
        chain: &[
            Attach::Fentry {
                program: "fentry_dev_queue_xmit",
                func: "__dev_queue_xmit",
            },
            Attach::Kprobe {
                program: "kprobe_dev_queue_xmit",
                func: "__dev_queue_xmit",
            },
            Attach::TpBtf {
                program: "tp_btf_net_dev_queue",
                event: "net_dev_queue",
            },
            tp("tp_net_dev_queue", "net", "net_dev_queue"),
        ],
    },
    Hook {
        name: "netif_receive",
        required: true,
        context: false,
        chain: &[
            Attach::Fentry {
                program: "fentry_netif_receive_skb",
                func: "__netif_receive_skb",
            },
            Attach::Kprobe {
                program: "kprobe_netif_receive_skb",
                func: "__netif_receive_skb",
            },
            Attach::TpBtf {
                program: "tp_btf_netif_receive_skb",
                event: "netif_receive_skb",
            },
            tp("tp_netif_receive_skb", "net", "netif_receive_skb"),
        ],
    },
    Hook {
        name: "tcp_rcv_established",
        required: false,
        context: false,
        chain: &[
            Attach::Fentry {
                program: "fentry_tcp_rcv_established",
                func: "tcp_rcv_established",
            },
            Attach::Kprobe {
                program: "kprobe_tcp_rcv_established",
                func: "tcp_rcv_established",
            },
            // tcp_probe fires inside tcp_rcv_established with the skb.
            Attach::TpBtf {
                program: "tp_btf_tcp_probe",
                event: "tcp_probe",
            },
            tp("tp_tcp_probe", "tcp", "tcp_probe"),
        ],
    },
    Hook {
        name: "tcp_rcv_state_process",
        required: false,
        context: false,
        chain: &[
            Attach::Fentry {
                program: "fentry_tcp_rcv_state_process",
                func: "tcp_rcv_state_process",
            },
            Attach::Kprobe {
                program: "kprobe_tcp_rcv_state_process",
                func: "tcp_rcv_state_process",
            },
        ],
    },
];

const CPU_PROFILE: &[Hook] = &[Hook {
    name: "sample",
    required: true,
    context: false,
    chain: &[Attach::PerfCpuClock {
        program: "profile_sample",
    }],
}];

const RUNQ_LATENCY: &[Hook] = &[
    Hook {
        name: "wakeup",
        required: true,
        context: false,
        chain: &[
            Attach::TpBtf {
                program: "tp_btf_sched_wakeup",
                event: "sched_wakeup",
            },
            tp("tp_sched_wakeup", "sched", "sched_wakeup"),
        ],
    },
    Hook {
        name: "wakeup_new",
        required: true,
        context: false,
        chain: &[
            Attach::TpBtf {
                program: "tp_btf_sched_wakeup_new",
                event: "sched_wakeup_new",
            },
            tp("tp_sched_wakeup_new", "sched", "sched_wakeup_new"),
        ],
    },
    Hook {
        name: "switch",
        required: true,
        context: false,
        chain: &[
            Attach::TpBtf {
                program: "tp_btf_sched_switch",
                event: "sched_switch",
            },
            tp("tp_sched_switch", "sched", "sched_switch"),
        ],
    },
];

const TCP_RETRANSMIT: &[Hook] = &[Hook {
    name: "retransmit",
    required: true,
    context: false,
    chain: &[
        Attach::Fentry {
            program: "fentry_tcp_retransmit_skb",
            func: "tcp_retransmit_skb",
        },
        Attach::Kprobe {
            program: "kprobe_tcp_retransmit_skb",
            func: "tcp_retransmit_skb",
        },
        tp("tp_tcp_retransmit_skb", "tcp", "tcp_retransmit_skb"),
    ],
}];

const TCP_CONNECT: &[Hook] = &[Hook {
    name: "state",
    required: true,
    context: false,
    chain: &[
        Attach::TpBtf {
            program: "tp_btf_inet_sock_set_state",
            event: "inet_sock_set_state",
        },
        tp("tp_inet_sock_set_state", "sock", "inet_sock_set_state"),
    ],
}];

const EXEC: &[Hook] = &[Hook {
    name: "exec",
    required: true,
    context: false,
    chain: &[
        Attach::TpBtf {
            program: "tp_btf_sched_process_exec",
            event: "sched_process_exec",
        },
        tp("tp_sched_process_exec", "sched", "sched_process_exec"),
    ],
}];

const OOM_KILL: &[Hook] = &[Hook {
    name: "victim",
    required: true,
    context: false,
    chain: &[
        Attach::Kprobe {
            program: "kprobe_oom_kill_process",
            func: "oom_kill_process",
        },
        Attach::TpBtf {
            program: "tp_btf_mark_victim",
            event: "mark_victim",
        },
        tp("tp_mark_victim", "oom", "mark_victim"),
    ],
}];

const SYSCALL_LATENCY: &[Hook] = &[
    Hook {
        name: "enter",
        required: true,
        context: false,
        chain: &[tp("tp_sys_enter", "raw_syscalls", "sys_enter")],
    },
    Hook {
        name: "exit",
        required: true,
        context: false,
        chain: &[tp("tp_sys_exit", "raw_syscalls", "sys_exit")],
    },
];

const TCP_RTT: &[Hook] = &[Hook {
    name: "segment",
    required: true,
    context: false,
    chain: &[
        Attach::Fentry {
            program: "fentry_tcp_rcv_established",
            func: "tcp_rcv_established",
        },
        Attach::Kprobe {
            program: "kprobe_tcp_rcv_established",
            func: "tcp_rcv_established",
        },
        // tcp_probe fires at the top of tcp_rcv_established with the socket.
        Attach::TpBtf {
            program: "tp_btf_tcp_probe",
            event: "tcp_probe",
        },
        tp("tp_tcp_probe", "tcp", "tcp_probe"),
    ],
}];

/// The entry of `name`.
pub fn info(name: ProbeName) -> &'static ProbeInfo {
    match name {
        ProbeName::Wakeups => &WAKEUPS_PROBE,
        ProbeName::PacketLatency => &PACKET_LATENCY_PROBE,
        ProbeName::CpuProfile => &CPU_PROFILE_PROBE,
        ProbeName::RunqLatency => &RUNQ_LATENCY_PROBE,
        ProbeName::TcpRetransmit => &TCP_RETRANSMIT_PROBE,
        ProbeName::TcpConnect => &TCP_CONNECT_PROBE,
        ProbeName::Exec => &EXEC_PROBE,
        ProbeName::OomKill => &OOM_KILL_PROBE,
        ProbeName::SyscallLatency => &SYSCALL_LATENCY_PROBE,
        ProbeName::TcpRtt => &TCP_RTT_PROBE,
    }
}

/// Every probe's entry, in registry order.
pub fn all() -> impl Iterator<Item = &'static ProbeInfo> {
    ProbeName::ALL.iter().map(|p| info(*p))
}

const WAKEUPS_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::Wakeups,
    description: "who wakes whom: waker comm/pid -> wakee comm/pid, counts and rates; flags pairs over a rate",
    hooks: WAKEUPS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::WakeupsPerSecond,
        scale: 1.0,
    }),
    object: object!("wakeups"),
    aggregates: &[Aggregate::WakeupPairs],
    aggregator: || Box::new(Wakeups),
    ports: NO_PORTS,
    example: r#"# Who wakes `ping`, and who does it wake? Pairs above 200 wakeups/s are flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: who-wakes-ping}
spec:
  probe: wakeups
  target: {comms: [ping]}
  duration: 30s
  params: {wakeups: {top: 10}}
  thresholds: [{metric: wakeupsPerSecond, value: 200}]
"#,
};

const PACKET_LATENCY_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::PacketLatency,
    description: "per TCP segment latency from device xmit to netif receive and the TCP receive functions",
    hooks: PACKET_LATENCY,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::SegmentLatencyMs,
        scale: 1e6,
    }),
    object: object!("packet_latency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::<PacketLatency>::default(),
    ports: |p| p.packet_latency.as_ref().map(|x| x.ports.as_slice()),
    example: r#"# TCP segments of port 8080 slower than 20 ms from the sender's device to the receiving socket.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: web-segments}
spec:
  probe: packet-latency
  target: {comms: [web]}
  duration: 30s
  params: {packetLatency: {ports: [8080]}}
  thresholds: [{metric: segmentLatencyMs, value: 20, comparison: GreaterOrEqual}]
"#,
};

const CPU_PROFILE_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::CpuProfile,
    description: "sampled kernel+user stacks, folded and rendered as a flame graph",
    hooks: CPU_PROFILE,
    kernel_threshold: None,
    object: object!("cpu_profile"),
    aggregates: &[Aggregate::StackCounts, Aggregate::Stacks],
    aggregator: || Box::<crate::profile::Profile>::default(),
    ports: NO_PORTS,
    example: r#"# Where does `stress-ng` spend its CPU? A flame graph of 99 Hz samples.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: stress-profile}
spec:
  probe: cpu-profile
  target: {comms: [stress-ng]}
  duration: 20s
  params: {cpuProfile: {frequencyHz: 99, userStacks: true}}
"#,
};

const RUNQ_LATENCY_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::RunqLatency,
    description: "run-queue latency (wakeup to on-CPU) as a log2 histogram; flags long waits",
    hooks: RUNQ_LATENCY,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::RunqLatencyUs,
        scale: 1e3,
    }),
    object: object!("runq_latency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::new(Latency::new("runq latency", 1, "us", 1e3)),
    ports: NO_PORTS,
    example: r#"# How long do `postgres` tasks wait for a CPU? Waits of 10 ms and more are flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: db-runq}
spec:
  probe: runq-latency
  target: {comms: [postgres]}
  duration: 30s
  thresholds: [{metric: runqLatencyUs, value: 10000, comparison: GreaterOrEqual}]
"#,
};

const TCP_RETRANSMIT_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::TcpRetransmit,
    description: "TCP retransmissions with addresses, ports and state",
    hooks: TCP_RETRANSMIT,
    kernel_threshold: None,
    object: object!("tcp_retransmit"),
    aggregates: &[],
    aggregator: || Box::new(Notes::new(Note::Connection)),
    ports: |p| p.tcp_retransmit.as_ref().map(|x| x.ports.as_slice()),
    example: r#"# Retransmitted segments of connections on port 443, node-wide.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: tls-retransmits}
spec:
  probe: tcp-retransmit
  target: {cgroupPaths: [/]}
  duration: 60s
  params: {tcpRetransmit: {ports: [443]}}
"#,
};

const TCP_CONNECT_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::TcpConnect,
    description: "TCP active connect latency (SYN_SENT -> ESTABLISHED)",
    hooks: TCP_CONNECT,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::ConnectLatencyMs,
        scale: 1e6,
    }),
    object: object!("tcp_connect"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::new(Latency::new("connect latency", 1, "us", 1e6)),
    ports: |p| p.tcp_connect.as_ref().map(|x| x.ports.as_slice()),
    example: r#"# How long do `curl`'s connects to port 5432 take? Over 100 ms is flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: curl-connects}
spec:
  probe: tcp-connect
  target: {comms: [curl]}
  duration: 30s
  params: {tcpConnect: {ports: [5432]}}
  thresholds: [{metric: connectLatencyMs, value: 100}]
"#,
};

const EXEC_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::Exec,
    description: "process executions with filename",
    hooks: EXEC,
    kernel_threshold: None,
    object: object!("exec"),
    aggregates: &[],
    aggregator: || Box::new(Notes::new(Note::Exec)),
    ports: NO_PORTS,
    example: r#"# What do `bash` shells execute?
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: shell-execs}
spec:
  probe: exec
  target: {comms: [bash]}
  duration: 60s
"#,
};

const OOM_KILL_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::OomKill,
    description: "OOM killer victims with their memory at the kill",
    hooks: OOM_KILL,
    kernel_threshold: None,
    object: object!("oom_kill"),
    aggregates: &[],
    aggregator: || Box::new(Notes::new(Note::OomVictim)),
    ports: NO_PORTS,
    example: r#"# Which tasks does the OOM killer pick, and how big were they?
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: oom-victims}
spec:
  probe: oom-kill
  target: {cgroupPaths: [/]}
  duration: 10m
"#,
};

const SYSCALL_LATENCY_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::SyscallLatency,
    description: "per-syscall latency histograms; flags slow syscalls",
    hooks: SYSCALL_LATENCY,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::SyscallLatencyMs,
        scale: 1e6,
    }),
    object: object!("syscall_latency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::new(Latency::new("syscall latency", 512, "us", 1e6)),
    ports: NO_PORTS,
    example: r#"# Which of `nginx`'s read(0)/write(1)/fsync(74) calls take 50 ms or more?
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: nginx-syscalls}
spec:
  probe: syscall-latency
  target: {comms: [nginx]}
  duration: 30s
  params: {syscallLatency: {syscalls: [0, 1, 74]}}
  thresholds: [{metric: syscallLatencyMs, value: 50, comparison: GreaterOrEqual}]
"#,
};

const TCP_RTT_PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::TcpRtt,
    description: "smoothed TCP round-trip time per connection as segments arrive (log2 histogram); flags slow ones",
    hooks: TCP_RTT,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::RttMs,
        scale: 1e6,
    }),
    object: object!("tcp_rtt"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::new(Latency::new("round-trip time", 1, "us", 1e6)),
    ports: |p| p.tcp_rtt.as_ref().map(|x| x.ports.as_slice()),
    example: r#"# Round-trip times of connections on port 6379 (redis); samples over 50 ms are flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: redis-rtt}
spec:
  probe: tcp-rtt
  target: {cgroupPaths: [/]}
  duration: 30s
  params: {tcpRtt: {ports: [6379]}}
  thresholds: [{metric: rttMs, value: 50}]
"#,
};
