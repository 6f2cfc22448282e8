//! The `packet-latency` probe beside its kernel side, `packet_latency.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use std::collections::HashMap;
use std::time::Duration;

use aya::Ebpf;
use serde_json::json;
use sonde_probe_abi::{self as abi, EV_BREACH, cstr, read};
use sonde_vocab::{Figure, Metric, ProbeName, Summary, SummaryRow};

use crate::aggregate::{Aggregator, Event, Findings, endpoints, top_rows};
use crate::catalogue::{
    Aggregate, Attach, Filtered, Hook, KernelThreshold, ProbeInfo, TCP_RCV_ESTABLISHED, tp,
};
use crate::histogram::{Histogram, read_slots};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::PacketLatency,
    description: "per TCP segment latency from device xmit to netif receive and the TCP receive functions",
    filtered: Filtered::Netns,
    local_netns: |p| {
        p.packet_latency
            .as_ref()
            .and_then(|x| x.netns)
            .map(|n| n as u32)
    },
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::SegmentLatencyMs,
        scale: 1e6,
    }),
    object: object!("packet_latency"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || Box::<PacketLatency>::default(),
    kernel: |p, k| k.ports(p.packet_latency.as_ref().map_or(&[], |x| &x.ports)),
    example: r#"# TCP segments of port 8080 slower than 20 ms from the sender's device to the receiving socket.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: web-segments}
spec:
  probe: packet-latency
  target: {comms: [web]}
  duration: 30s
  params: {packetLatency: {ports: [8080]}}
  thresholds: [{metric: segmentLatencyMs, value: 20, comparison: GreaterOrEqual}]
"#,
};

const HOOKS: &[Hook] = &[
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
        chain: TCP_RCV_ESTABLISHED,
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

/// Stage histograms from the kernel; slow segments (breaches) counted by stage and flow.
#[derive(Default)]
pub(crate) struct PacketLatency {
    /// (stage, flow) -> (count, max ms)
    slow: HashMap<(u8, String), (u64, f64)>,
}

fn tcp_flags(f: u8) -> String {
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
        let (src, dst) = endpoints(e.family, (&e.saddr, e.sport), (&e.daddr, e.dport));
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
