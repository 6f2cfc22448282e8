//! The `wakeups` probe beside its kernel side, `wakeups.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use std::collections::HashMap;
use std::time::Duration;

use aya::Ebpf;
use serde_json::json;
use sonde_probe_abi::{self as abi, EV_BREACH, cstr, read};
use sonde_vocab::{Figure, Metric, ProbeName, Summary, SummaryRow};

use crate::aggregate::{Aggregator, Event, Findings, secs, top_rows};
use crate::catalogue::{
    Aggregate, Attach, Filtered, Hook, KernelThreshold, NO_SETTINGS, ProbeInfo, tp,
};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::Wakeups,
    description: "who wakes whom: waker comm/pid -> wakee comm/pid, counts and rates; flags pairs over a rate",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::WakeupsPerSecond,
        scale: 1.0,
    }),
    object: object!("wakeups"),
    aggregates: &[Aggregate::WakeupPairs],
    aggregator: || Box::new(Wakeups),
    kernel: NO_SETTINGS,
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

const HOOKS: &[Hook] = &[
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

/// Pairs from the kernel's `pairs` map; breaching events as they come.
pub(crate) struct Wakeups;

impl Aggregator for Wakeups {
    fn record(&mut self, bytes: &[u8]) -> Option<Event> {
        let e: abi::WakeupEvent = read(bytes)?;
        let breach = e.flags & EV_BREACH != 0;
        Some(Event {
            json: json!({
                "ts_ns": e.ts_ns,
                "waker_comm": cstr(&e.waker_comm), "waker_pid": e.waker_pid, "waker_tid": e.waker_tid,
                "wakee_comm": cstr(&e.wakee_comm), "wakee_pid": e.wakee_pid, "wakee_tid": e.wakee_tid,
                "wakee_cgroup": e.wakee_cgroup, "cpu": e.cpu, "window_count": e.window_count, "breach": breach,
            }),
            breach,
            value: Some(e.window_count as f64),
        })
    }

    fn finish(&mut self, ebpf: &mut Ebpf, elapsed: Duration, top: usize) -> Findings {
        let mut by_pair: HashMap<String, (u64, u32)> = HashMap::new();
        let mut total = 0;
        if let Some(map) = ebpf.map("pairs")
            && let Ok(pairs) =
                aya::maps::HashMap::<_, abi::WakeupKey, abi::WakeupVal>::try_from(map)
        {
            for (_, v) in pairs.iter().filter_map(|r| r.ok()) {
                // Threads of one process are one row: pid is the tgid.
                let key = format!(
                    "{}/{} -> {}/{}",
                    cstr(&v.waker_comm),
                    v.waker_pid,
                    cstr(&v.wakee_comm),
                    v.wakee_pid
                );
                let row = by_pair.entry(key).or_default();
                row.0 += v.count;
                row.1 += v.breached_windows;
                total += v.count;
            }
        }
        let s = secs(elapsed);
        let rows = by_pair
            .into_iter()
            .map(|(key, (count, _))| SummaryRow {
                key,
                count,
                per_second: Some(count as f64 / s),
                max: None,
            })
            .collect();
        Findings {
            summary: Summary {
                key_meaning: "waker comm/pid -> wakee comm/pid".into(),
                rows: top_rows(rows, top),
                figures: vec![
                    Figure {
                        name: "wakeups".into(),
                        value: total as f64,
                        unit: "count".into(),
                    },
                    Figure {
                        name: "wakeup rate".into(),
                        value: total as f64 / s,
                        unit: "per second".into(),
                    },
                ],
            },
            ..Default::default()
        }
    }
}
