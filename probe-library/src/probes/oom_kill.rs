//! The `oom-kill` probe beside its kernel side, `oom_kill.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::ProbeName;

use crate::aggregate::{Note, Notes};
use crate::catalogue::{Attach, Filtered, Hook, NO_SETTINGS, ProbeInfo, tp};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::OomKill,
    description: "OOM killer victims with their memory at the kill",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: None,
    object: object!("oom_kill"),
    aggregates: &[],
    aggregator: || Box::new(Notes::new(Note::OomVictim)),
    kernel: NO_SETTINGS,
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

const HOOKS: &[Hook] = &[Hook {
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
