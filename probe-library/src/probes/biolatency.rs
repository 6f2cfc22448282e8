//! The `biolatency` probe beside its kernel side, `biolatency.bpf.c`: hooks and attach chains, what it filters on,
//! how its params become kernel settings, its aggregator and its example.

use std::collections::HashMap;
use std::time::Duration;

use aya::Ebpf;
use serde_json::json;
use sonde_probe_abi::{self as abi, cstr, read};
use sonde_vocab::{Metric, ProbeName, SummaryRow};

use crate::aggregate::{Aggregator, Event, Findings, Latency, LatencyRows, top_rows};
use crate::catalogue::{
    Aggregate, Attach, Filtered, Hook, KernelThreshold, NO_SETTINGS, ProbeInfo, tp,
};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::Biolatency,
    description: "block I/O latency from issue to completion (log2 histogram), by the task that started each request; flags slow requests",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::IoLatencyUs,
        scale: 1e3,
    }),
    object: object!("biolatency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::<BioLatency>::default(),
    kernel: NO_SETTINGS,
    example: r#"# How long do `postgres`'s disk requests take? Requests of 20 ms and more are flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: db-disk}
spec:
  probe: biolatency
  target: {comms: [postgres]}
  duration: 30s
  thresholds: [{metric: ioLatencyUs, value: 20000, comparison: GreaterOrEqual}]
"#,
};

const HOOKS: &[Hook] = &[
    // Where a request is started, in the submitter's context: the target filter is checked here.
    Hook {
        name: "start",
        required: true,
        context: false,
        chain: &[
            Attach::TpBtf {
                program: "tp_btf_block_io_start",
                event: "block_io_start",
            },
            tp("tp_block_io_start", "block", "block_io_start"),
            Attach::Kprobe {
                program: "kprobe_blk_account_io_start",
                func: "blk_account_io_start",
            },
        ],
    },
    Hook {
        name: "issue",
        required: true,
        context: false,
        chain: &[
            Attach::TpBtf {
                program: "tp_btf_block_rq_issue",
                event: "block_rq_issue",
            },
            tp("tp_block_rq_issue", "block", "block_rq_issue"),
        ],
    },
    Hook {
        name: "complete",
        required: true,
        context: false,
        chain: &[
            Attach::TpBtf {
                program: "tp_btf_block_rq_complete",
                event: "block_rq_complete",
            },
            tp("tp_block_rq_complete", "block", "block_rq_complete"),
        ],
    },
];

/// The latency histogram as every latency probe has it; summary rows of slow requests keyed by the task that
/// started them and the disk (`comm pid -> major:minor`), which the event's `id` carries as the kernel's dev_t.
struct BioLatency {
    latency: Latency,
    slow: HashMap<String, (u64, f64)>,
}

impl Default for BioLatency {
    fn default() -> Self {
        BioLatency {
            latency: Latency::new("block I/O latency", 1, "us", 1e3, LatencyRows::Thread),
            slow: HashMap::new(),
        }
    }
}

/// `major:minor` of a kernel dev_t (MKDEV: 12 bits of major above 20 of minor).
fn disk(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

impl Aggregator for BioLatency {
    fn reset(&mut self) {
        self.latency.reset();
        self.slow.clear();
    }

    fn record(&mut self, bytes: &[u8]) -> Option<Event> {
        let e: abi::LatencyEvent = read(bytes)?;
        let mut event = self.latency.record(bytes)?;
        let disk = disk(e.id);
        event.json["disk"] = json!(disk);
        let row = self
            .slow
            .entry(format!("{}/{} -> {disk}", cstr(&e.comm), e.pid))
            .or_default();
        row.0 += 1;
        row.1 = row.1.max(event.value.unwrap_or_default());
        Some(event)
    }

    fn finish(&mut self, ebpf: &mut Ebpf, elapsed: Duration, top: usize) -> Findings {
        let mut findings = self.latency.finish(ebpf, elapsed, top);
        let rows = self
            .slow
            .iter()
            .map(|(key, (count, max))| SummaryRow {
                key: key.clone(),
                count: *count,
                per_second: None,
                max: Some(*max),
            })
            .collect();
        findings.summary.key_meaning =
            "comm/pid -> disk major:minor of slow requests (max us)".into();
        findings.summary.rows = top_rows(rows, top);
        findings
    }
}
