//! The `syscall-latency` probe beside its kernel side, `syscall_latency.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::{Metric, ProbeName};

use crate::aggregate::{Latency, LatencyRows};
use crate::catalogue::{Aggregate, Filtered, Hook, KernelThreshold, ProbeInfo, tp};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::SyscallLatency,
    description: "per-syscall latency histograms; flags slow syscalls",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::SyscallLatencyMs,
        scale: 1e6,
    }),
    object: object!("syscall_latency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || {
        Box::new(Latency::new(
            "syscall latency",
            512,
            "us",
            1e6,
            LatencyRows::Syscall,
        ))
    },
    kernel: |p, k| {
        let nrs = p.syscall_latency.as_ref().map_or(&[][..], |x| &x.syscalls);
        k.set("cfg_filter_syscall", "filter_syscalls", nrs);
    },
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

const HOOKS: &[Hook] = &[
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
