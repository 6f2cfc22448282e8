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

fn secs(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64().max(1e-3)
}

fn top_rows(mut rows: Vec<SummaryRow>, top: usize) -> Vec<SummaryRow> {
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    rows.truncate(top);
    rows
}

fn addr(family: u32, bytes: &[u8; 16]) -> IpAddr {
    if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

// ---------------- wakeups ----------------

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

// ---------------- packet-latency ----------------

#[derive(Default)]
pub(crate) struct PacketLatency {
    /// (stage, flow) -> (count, max ms)
    slow: HashMap<(u8, String), (u64, f64)>,
}

pub fn tcp_flags(f: u8) -> String {
    let names = [
        (0x01, "F"),
        (0x02, "S"),
        (0x04, "R"),
        (0x08, "P"),
        (0x10, "."),
        (0x20, "U"),
        (0x40, "E"),
        (0x80, "C"),
    ];
    names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

impl Aggregator for PacketLatency {
    fn reset(&mut self) {
        self.slow.clear();
    }

    fn record(&mut self, bytes: &[u8]) -> Option<Event> {
        let e: abi::PktEvent = read(bytes)?;
        let breach = e.flags & EV_BREACH != 0;
        let src = format!("{}:{}", addr(e.family, &e.saddr), e.sport);
        let dst = format!("{}:{}", addr(e.family, &e.daddr), e.dport);
        let function = abi::stage::NAMES
            .get(e.stage as usize)
            .copied()
            .unwrap_or("?");
        let ms = e.delta_ns as f64 / 1e6;
        let stage_ms = e.stage_delta_ns as f64 / 1e6;
        if breach {
            let row = self
                .slow
                .entry((e.stage, format!("{function} {src} -> {dst}")))
                .or_default();
            row.0 += 1;
            row.1 = row.1.max(ms);
        }
        Some(Event {
            json: json!({
                "ts_ns": e.ts_ns, "netns": e.netns, "ifname": cstr(&e.ifname), "ifindex": e.ifindex,
                "pid": e.pid, "comm": cstr(&e.comm), "function": function, "cpu": e.cpu,
                "flags": tcp_flags(e.tcp_flags), "seq": e.seq, "ack": e.ack, "win": e.win,
                "src": src, "dst": dst, "delta_ms": ms, "stage_delta_ms": stage_ms, "breach": breach,
            }),
            breach,
            value: Some(ms),
        })
    }

    fn finish(&mut self, ebpf: &mut Ebpf, _elapsed: Duration, top: usize) -> Findings {
        let names = [
            "xmit -> __netif_receive_skb",
            "xmit -> tcp_rcv_established",
            "xmit -> tcp_rcv_state_process",
        ];
        let histograms: Vec<Histogram> = read_slots(ebpf, 3)
            .iter()
            .zip(names)
            .map(|(s, n)| Histogram::from_slots(n, "ns", s))
            .collect();
        let mut figures = Vec::new();
        for h in &histograms {
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                if let Some(v) = h.quantile(q) {
                    figures.push(Figure {
                        name: format!("{label} {} (<=)", h.name),
                        value: v as f64 / 1e6,
                        unit: "ms".into(),
                    });
                }
            }
        }
        let rows = self
            .slow
            .iter()
            .map(|((_, k), (count, max))| SummaryRow {
                key: k.clone(),
                count: *count,
                per_second: None,
                max: Some(*max),
            })
            .collect();
        Findings {
            summary: Summary {
                key_meaning: "receive function, flow of slow segments (max ms)".into(),
                rows: top_rows(rows, top),
                figures,
            },
            histograms,
            folded: vec![],
        }
    }
}

// ---------------- latency probes (runq, syscall, connect) ----------------

pub(crate) struct Latency {
    name: &'static str,
    hists: usize,
    unit: &'static str,
    /// ns per manifest unit of the metric (1e3 for us, 1e6 for ms).
    metric_ns: f64,
    slow: HashMap<String, (u64, f64)>,
}

impl Latency {
    pub(crate) fn new(
        name: &'static str,
        hists: usize,
        unit: &'static str,
        metric_ns: f64,
    ) -> Self {
        Latency {
            name,
            hists,
            unit,
            metric_ns,
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
        let key = if self.hists > 1 {
            json["syscall"] = json!(e.id);
            format!("{} syscall {}", cstr(&e.comm), e.id)
        } else if e.family != 0 {
            let src = format!("{}:{}", addr(e.family, &e.saddr), e.sport);
            let dst = format!("{}:{}", addr(e.family, &e.daddr), e.dport);
            json["src"] = json!(src);
            json["dst"] = json!(dst);
            let comm = cstr(&e.comm);
            if comm.is_empty() {
                // Measured in softirq context (tcp-rtt): no task owns the sample, the connection names it.
                for k in ["pid", "tid", "comm"] {
                    json.as_object_mut().map(|o| o.remove(k));
                }
                format!("{src} -> {dst}")
            } else {
                format!("{comm} -> {dst}")
            }
        } else {
            format!("tid {}", e.tid)
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
                let src = format!("{}:{}", addr(e.family, &e.saddr), e.sport);
                let dst = format!("{}:{}", addr(e.family, &e.daddr), e.dport);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0), "");
    }

    #[test]
    fn packet_events_decode_every_column() {
        let mut e = abi::PktEvent {
            delta_ns: 12_500_000,
            stage: 1,
            flags: EV_BREACH,
            family: 2,
            sport: 5201,
            dport: 40000,
            seq: 7,
            tcp_flags: 0x10,
            ..Default::default()
        };
        e.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.ifname[..4].copy_from_slice(b"veth");
        // SAFETY-free view of the struct's bytes via the ABI's own reader round trip.
        let bytes: Vec<u8> = to_bytes(&e);
        let ev = PacketLatency::default().record(&bytes).unwrap();
        assert!(ev.breach);
        assert_eq!(ev.json["src"], "10.0.0.1:5201");
        assert_eq!(ev.json["function"], "__netif_receive_skb");
        assert_eq!(ev.json["ifname"], "veth");
        assert_eq!(ev.value, Some(12.5));
        assert!(
            PacketLatency::default().record(&bytes[..10]).is_none(),
            "short records are refused"
        );
    }

    fn to_bytes(e: &abi::PktEvent) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(e.ts_ns.to_ne_bytes());
        v.extend(e.delta_ns.to_ne_bytes());
        v.extend(e.stage_delta_ns.to_ne_bytes());
        for x in [e.netns, e.ifindex, e.pid, e.cpu, e.seq, e.ack, e.family] {
            v.extend(x.to_ne_bytes());
        }
        for x in [e.win, e.sport, e.dport] {
            v.extend(x.to_ne_bytes());
        }
        v.push(e.tcp_flags);
        v.push(e.stage);
        v.extend(e.flags.to_ne_bytes());
        v.extend(e.saddr);
        v.extend(e.daddr);
        v.extend(e.ifname);
        v.extend(e.comm);
        assert_eq!(v.len(), 128);
        v
    }
}
