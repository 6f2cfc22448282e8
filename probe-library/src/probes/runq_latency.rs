//! The `runq-latency` probe beside its kernel side, `runq_latency.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::{Metric, ProbeName};

use crate::aggregate::{Latency, LatencyRows};
use crate::catalogue::{
    Aggregate, Attach, Filtered, Hook, KernelThreshold, NO_SETTINGS, ProbeInfo, tp,
};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::RunqLatency,
    description: "run-queue latency (wakeup to on-CPU) as a log2 histogram; flags long waits",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::RunqLatencyUs,
        scale: 1e3,
    }),
    object: object!("runq_latency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || {
        Box::new(Latency::new(
            "runq latency",
            1,
            "us",
            1e3,
            LatencyRows::Thread,
        ))
    },
    kernel: NO_SETTINGS,
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

const HOOKS: &[Hook] = &[
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
