//! The `cpu-profile` probe beside its kernel side, `cpu_profile.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::ProbeName;

use crate::catalogue::{Aggregate, Attach, Filtered, Hook, ProbeInfo};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::CpuProfile,
    description: "sampled kernel+user stacks, folded and rendered as a flame graph",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: None,
    object: object!("cpu_profile"),
    aggregates: &[Aggregate::StackCounts, Aggregate::Stacks],
    aggregator: || Box::<crate::profile::Profile>::default(),
    kernel: |p, k| {
        let p = p.cpu_profile.as_ref();
        // User stacks unless asked not to; 99 Hz avoids lockstep with timers.
        k.flag(
            "cfg_user_stacks",
            p.and_then(|p| p.user_stacks).unwrap_or(true),
        );
        k.sample_hz(p.and_then(|p| p.frequency_hz).unwrap_or(99).into());
    },
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

const HOOKS: &[Hook] = &[Hook {
    name: "sample",
    required: true,
    context: false,
    chain: &[Attach::PerfCpuClock {
        program: "profile_sample",
    }],
}];
