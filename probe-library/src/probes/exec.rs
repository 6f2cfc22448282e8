//! The `exec` probe beside its kernel side, `exec.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::ProbeName;

use crate::aggregate::{Note, Notes};
use crate::catalogue::{Attach, Filtered, Hook, NO_SETTINGS, ProbeInfo, tp};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::Exec,
    description: "process executions with filename",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: None,
    object: object!("exec"),
    aggregates: &[],
    aggregator: || Box::new(Notes::new(Note::Exec)),
    kernel: NO_SETTINGS,
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

const HOOKS: &[Hook] = &[Hook {
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
