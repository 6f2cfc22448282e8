//! Per-probe decoding of ring-buffer records into events, and the summary each probe gives at the end.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::Ebpf;
use serde_json::{Value, json};
use sonde_probe_abi::{self as abi, EV_BREACH, cstr, read};
use sonde_vocab::{Figure, ProbeName, Summary, SummaryRow};

use crate::histogram::{Histogram, read_slots};

/// One decoded event. `value` is the probe's metric in manifest units (ms, us, wakeups/s) for threshold checks.
#[derive(Clone, Debug)]
pub struct Event {
    pub json: Value,
    pub breach: bool,
    pub value: Option<f64>,
}

/// What a finished probe found.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    pub summary: Summary,
    pub histograms: Vec<Histogram>,
    /// Folded stacks (`frame;frame;frame count`), for flame graphs.
    pub folded: Vec<String>,
}

pub trait Aggregator: Send {
    fn record(&mut self, bytes: &[u8]) -> Option<Event>;
    fn finish(&mut self, ebpf: &mut Ebpf, elapsed: Duration, top: usize) -> Findings;
    /// Called on every drain while the probe runs, ring buffer or not: a look at the kernel maps (cpu-profile
    /// notes the processes it sampled while they live). Must be cheap or throttle itself.
    fn observe(&mut self, _ebpf: &Ebpf) {}
    /// Forgets what user space kept for the window just finished (kernel maps are reset by the caller).
    fn reset(&mut self) {}
}

/// The probe's aggregator, as its catalogue entry makes it.
pub fn aggregator(probe: ProbeName) -> Box<dyn Aggregator> {
    (crate::catalogue::info(probe).aggregator)()
}

pub(crate) fn secs(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64().max(1e-3)
}

pub(crate) fn top_rows(mut rows: Vec<SummaryRow>, top: usize) -> Vec<SummaryRow> {
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    rows.truncate(top);
    rows
}

/// Both ends of a connection as `addr:port` (IPv6 when `family` is AF_INET6).
pub(crate) fn endpoints(
    family: u32,
    (saddr, sport): (&[u8; 16], u16),
    (daddr, dport): (&[u8; 16], u16),
) -> (String, String) {
    (
        format!("{}:{sport}", addr(family, saddr)),
        format!("{}:{dport}", addr(family, daddr)),
    )
}

fn addr(family: u32, bytes: &[u8; 16]) -> IpAddr {
    if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

// ---------------- latency probes (runq, syscall, connect, rtt) ----------------

/// What a latency probe's summary rows are keyed by, as its registry entry says (never guessed from an event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LatencyRows {
    /// The thread that waited (`tid N`).
    Thread,
    /// The command and the syscall number (`comm syscall N`), one histogram per syscall.
    Syscall,
    /// A task's connection, by its command and the remote end (`comm -> addr:port`).
    TaskConnection,
    /// A connection measured where no task owns the sample (softirq), by both ends (`addr:port -> addr:port`);
    /// its events carry no pid, tid or comm.
    Connection,
}

pub(crate) struct Latency {
    name: &'static str,
    hists: usize,
    unit: &'static str,
    /// ns per manifest unit of the metric (1e3 for us, 1e6 for ms).
    metric_ns: f64,
    rows: LatencyRows,
    slow: HashMap<String, (u64, f64)>,
}

impl Latency {
    pub(crate) fn new(
        name: &'static str,
        hists: usize,
        unit: &'static str,
        metric_ns: f64,
        rows: LatencyRows,
    ) -> Self {
        Latency {
            name,
            hists,
            unit,
            metric_ns,
            rows,
            slow: HashMap::new(),
        }
    }
}

impl Aggregator for Latency {
    fn reset(&mut self) {
        self.slow.clear();
    }

    fn record(&mut self, bytes: &[u8]) -> Option<Event> {
        let e: abi::LatencyEvent = read(bytes)?;
        let breach = e.flags & EV_BREACH != 0;
        let value = e.latency_ns as f64 / self.metric_ns;
        let mut json = json!({
            "ts_ns": e.ts_ns, "latency_us": e.latency_ns as f64 / 1e3, "pid": e.pid, "tid": e.tid, "cpu": e.cpu,
            "comm": cstr(&e.comm), "breach": breach,
        });
        let connection = |json: &mut Value| {
            let (src, dst) = endpoints(e.family, (&e.saddr, e.sport), (&e.daddr, e.dport));
            json["src"] = json!(src);
            json["dst"] = json!(dst);
            (src, dst)
        };
        let key = match self.rows {
            LatencyRows::Thread => format!("tid {}", e.tid),
            LatencyRows::Syscall => {
                json["syscall"] = json!(e.id);
                format!("{} syscall {}", cstr(&e.comm), e.id)
            }
            LatencyRows::TaskConnection => {
                let (_, dst) = connection(&mut json);
                format!("{} -> {dst}", cstr(&e.comm))
            }
            LatencyRows::Connection => {
                let (src, dst) = connection(&mut json);
                // Measured in softirq context: the task on the CPU is anyone's, so none is named.
                for k in ["pid", "tid", "comm"] {
                    json.as_object_mut().map(|o| o.remove(k));
                }
                format!("{src} -> {dst}")
            }
        };
        let row = self.slow.entry(key).or_default();
        row.0 += 1;
        row.1 = row.1.max(value);
        Some(Event {
            json,
            breach,
            value: Some(value),
        })
    }

    fn finish(&mut self, ebpf: &mut Ebpf, _elapsed: Duration, top: usize) -> Findings {
        let slots = read_slots(ebpf, self.hists);
        let histograms: Vec<Histogram> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| self.hists == 1 || s.iter().any(|c| *c > 0))
            .map(|(i, s)| {
                let name = if self.hists == 1 {
                    self.name.to_string()
                } else {
                    format!("{} nr {i}", self.name)
                };
                Histogram::from_slots(name, self.unit, s)
            })
            .collect();
        let mut all = vec![0u64; sonde_probe_abi::HIST_SLOTS];
        for s in &slots {
            for (a, b) in all.iter_mut().zip(s) {
                *a += b;
            }
        }
        let merged = Histogram::from_slots(self.name, self.unit, &all);
        let mut figures = vec![Figure {
            name: format!("{} samples", self.name),
            value: merged.total as f64,
            unit: "count".into(),
        }];
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some(v) = merged.quantile(q) {
                figures.push(Figure {
                    name: format!("{label} {} (<=)", self.name),
                    value: v as f64,
                    unit: self.unit.into(),
                });
            }
        }
        let rows = self
            .slow
            .iter()
            .map(|(k, (count, max))| SummaryRow {
                key: k.clone(),
                count: *count,
                per_second: None,
                max: Some(*max),
            })
            .collect();
        Findings {
            summary: Summary {
                key_meaning: format!("{} events by key (max in threshold unit)", self.name),
                rows: top_rows(rows, top),
                figures,
            },
            histograms,
            folded: vec![],
        }
    }
}

// ---------------- single happenings (exec, oom-kill, tcp-retransmit) ----------------

/// What a `note_event` says, by probe.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Note {
    /// An executed file (`exec`).
    Exec,
    /// An OOM victim (`oom-kill`).
    OomVictim,
    /// A TCP connection's segment (`tcp-retransmit`).
    Connection,
}

/// Counts of one-off notes (a retransmit, an exec, an OOM kill) by what they name.
pub(crate) struct Notes {
    note: Note,
    counts: HashMap<String, u64>,
}

impl Notes {
    pub(crate) fn new(note: Note) -> Notes {
        Notes {
            note,
            counts: HashMap::new(),
        }
    }
}

const TCP_STATES: [&str; 13] = [
    "",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

impl Aggregator for Notes {
    fn reset(&mut self) {
        self.counts.clear();
    }

    fn record(&mut self, bytes: &[u8]) -> Option<Event> {
        let e: abi::NoteEvent = read(bytes)?;
        let (json, key) = match self.note {
            Note::Exec => {
                let file = cstr(&e.text);
                (
                    json!({"ts_ns": e.ts_ns, "pid": e.pid, "ppid": e.ppid, "comm": cstr(&e.comm), "filename": file}),
                    file,
                )
            }
            Note::OomVictim => {
                let victim = cstr(&e.text);
                (
                    json!({"ts_ns": e.ts_ns, "victim_pid": e.pid, "victim_comm": victim, "rss_mib": e.value, "trigger_comm": cstr(&e.comm)}),
                    victim,
                )
            }
            Note::Connection => {
                let (src, dst) = endpoints(e.family, (&e.saddr, e.sport), (&e.daddr, e.dport));
                let state = TCP_STATES.get(e.value as usize).copied().unwrap_or("?");
                (
                    // No pid/comm: a retransmit runs in timer/softirq context (see tcp_retransmit.bpf.c).
                    json!({"ts_ns": e.ts_ns, "cpu": e.cpu, "src": src, "dst": dst, "state": state}),
                    format!("{src} -> {dst}"),
                )
            }
        };
        *self.counts.entry(key).or_default() += 1;
        Some(Event {
            json,
            breach: false,
            value: None,
        })
    }

    fn finish(&mut self, _ebpf: &mut Ebpf, elapsed: Duration, top: usize) -> Findings {
        let s = secs(elapsed);
        let rows = self
            .counts
            .iter()
            .map(|(k, c)| SummaryRow {
                key: k.clone(),
                count: *c,
                per_second: Some(*c as f64 / s),
                max: None,
            })
            .collect();
        let meaning = match self.note {
            Note::Exec => "executed file",
            Note::OomVictim => "victim comm",
            Note::Connection => "connection",
        };
        Findings {
            summary: Summary {
                key_meaning: meaning.into(),
                rows: top_rows(rows, top),
                figures: vec![],
            },
            ..Default::default()
        }
    }
}
