//! What the library offers: each probe's name, description, hooks with their attach chains, the metrics its
//! thresholds may watch, and the object that implements it.

use sonde_crds::{Metric, ProbeName};

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

#[derive(Clone, Copy, Debug)]
pub struct ProbeInfo {
    pub name: ProbeName,
    pub description: &'static str,
    pub hooks: &'static [Hook],
    pub kernel_threshold: Option<KernelThreshold>,
}

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

pub const CATALOGUE: &[ProbeInfo] = &[
    ProbeInfo {
        name: ProbeName::Wakeups,
        description: "who wakes whom: waker comm/pid -> wakee comm/pid, counts and rates; flags pairs over a rate",
        hooks: WAKEUPS,
        kernel_threshold: Some(KernelThreshold {
            metric: Metric::WakeupsPerSecond,
            scale: 1.0,
        }),
    },
    ProbeInfo {
        name: ProbeName::PacketLatency,
        description: "per TCP segment latency from device xmit to netif receive and the TCP receive functions",
        hooks: PACKET_LATENCY,
        kernel_threshold: Some(KernelThreshold {
            metric: Metric::SegmentLatencyMs,
            scale: 1e6,
        }),
    },
    ProbeInfo {
        name: ProbeName::CpuProfile,
        description: "sampled kernel+user stacks, folded and rendered as a flame graph",
        hooks: CPU_PROFILE,
        kernel_threshold: None,
    },
    ProbeInfo {
        name: ProbeName::RunqLatency,
        description: "run-queue latency (wakeup to on-CPU) as a log2 histogram; flags long waits",
        hooks: RUNQ_LATENCY,
        kernel_threshold: Some(KernelThreshold {
            metric: Metric::RunqLatencyUs,
            scale: 1e3,
        }),
    },
    ProbeInfo {
        name: ProbeName::TcpRetransmit,
        description: "TCP retransmissions with addresses, ports and state",
        hooks: TCP_RETRANSMIT,
        kernel_threshold: None,
    },
    ProbeInfo {
        name: ProbeName::TcpConnect,
        description: "TCP active connect latency (SYN_SENT -> ESTABLISHED)",
        hooks: TCP_CONNECT,
        kernel_threshold: Some(KernelThreshold {
            metric: Metric::ConnectLatencyMs,
            scale: 1e6,
        }),
    },
    ProbeInfo {
        name: ProbeName::Exec,
        description: "process executions with filename",
        hooks: EXEC,
        kernel_threshold: None,
    },
    ProbeInfo {
        name: ProbeName::OomKill,
        description: "OOM killer victims with their memory at the kill",
        hooks: OOM_KILL,
        kernel_threshold: None,
    },
    ProbeInfo {
        name: ProbeName::SyscallLatency,
        description: "per-syscall latency histograms; flags slow syscalls",
        hooks: SYSCALL_LATENCY,
        kernel_threshold: Some(KernelThreshold {
            metric: Metric::SyscallLatencyMs,
            scale: 1e6,
        }),
    },
];

pub fn info(name: ProbeName) -> &'static ProbeInfo {
    CATALOGUE
        .iter()
        .find(|p| p.name == name)
        .expect("every ProbeName has a catalogue entry")
}
