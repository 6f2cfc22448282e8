//! Field case B on this machine: two network namespaces joined by a veth pair, a tight tbf qdisc on one end,
//! and a TCP bulk flow across it. The delay must show between device xmit and receive, not in the TCP stage.
//! Needs root; namespaces, links and qdiscs are removed even when a test fails.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sonde_crds::*;
use sonde_probes::{Filter, ProbeConfig};

struct Pair {
    a: String,
    b: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("ip from iproute2");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl Pair {
    /// `sa` --veth--> `sb` (10.<net>.0.1 -> 10.<net>.0.2) with `tbf` args on sa's end.
    fn new(tag: &str, net: u8, tbf: &[&str]) -> Pair {
        let (a, b) = (format!("sa-{tag}"), format!("sb-{tag}"));
        let _ = Command::new("ip").args(["netns", "del", &a]).status();
        let _ = Command::new("ip").args(["netns", "del", &b]).status();
        let pair = Pair {
            a: a.clone(),
            b: b.clone(),
            children: vec![],
        };
        let (va, vb) = (format!("va-{tag}"), format!("vb-{tag}"));
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &a]);
        ip(&["link", "set", &vb, "netns", &b]);
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("10.{net}.0.1/24"),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("10.{net}.0.2/24"),
            "dev",
            &vb,
        ]);
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let mut qdisc = vec![
            "netns", "exec", &a, "tc", "qdisc", "add", "dev", &va, "root", "tbf",
        ];
        qdisc.extend_from_slice(tbf);
        let st = Command::new("ip").args(&qdisc).status().unwrap();
        assert!(st.success(), "tc {qdisc:?}");
        pair
    }

    fn netns_inode(&self, ns: &str) -> u32 {
        std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino() as u32
    }

    /// A sink on sb:5201 and a sender in sa pushing bytes for `secs`.
    fn bulk_flow(&mut self, net: u8, secs: f64) {
        let server = format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('10.{net}.0.2', 5201)); s.listen(1)\nc,_=s.accept()\nwhile c.recv(1<<16): pass"
        );
        let client = format!(
            "import socket,time\nc=socket.create_connection(('10.{net}.0.2', 5201))\nend=time.time()+{secs}\nb=b'x'*65536\nwhile time.time()<end: c.send(b)"
        );
        let spawn = |ns: &str, code: &str| {
            Command::new("ip")
                .args(["netns", "exec", ns, "python3", "-c", code])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        self.children.push(spawn(&self.b, &server));
        std::thread::sleep(Duration::from_millis(300));
        self.children.push(spawn(&self.a, &client));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

#[test]
fn packet_latency_puts_the_tbf_delay_between_xmit_and_receive() {
    let mut pair = Pair::new(
        "pl",
        77,
        &["rate", "4mbit", "burst", "16kb", "latency", "100ms"],
    );
    let netns = pair.netns_inode(&pair.b.clone());
    let params = ProbeParams {
        packet_latency: Some(PacketLatencyParams {
            ports: vec![5201],
            netns: Some(netns as u64),
        }),
        ..Default::default()
    };
    let threshold = common::threshold(Metric::SegmentLatencyMs, Comparison::GreaterOrEqual, 5.0);
    let cfg = ProbeConfig {
        probe: ProbeName::PacketLatency,
        params,
        filter: Filter {
            netns: Some(vec![netns]),
            ..Default::default()
        },
        thresholds: vec![threshold],
        output: Output {
            events: false,
            ..Default::default()
        },
    };
    pair.bulk_flow(77, 3.0);
    let common::Outcome {
        events,
        findings,
        strategy,
        ..
    } = common::trace(cfg, Duration::from_secs(4), || {});
    assert!(
        strategy.contains("tp_btf")
            || strategy.contains("tracepoint")
            || strategy.contains("kprobe"),
        "{strategy}"
    );

    let at = |f: &str| {
        events
            .iter()
            .filter(|e| e["function"] == f)
            .collect::<Vec<_>>()
    };
    let netif = at("__netif_receive_skb");
    let tcp = at("tcp_rcv_established");
    assert!(
        netif.len() >= 10,
        "slow segments at netif receive: {} of {}",
        netif.len(),
        events.len()
    );
    // Only segments at or over the threshold cross the ring buffer.
    for e in &events {
        assert!(
            e["delta_ms"].as_f64().unwrap() >= 5.0,
            "under threshold: {e}"
        );
        assert_eq!(e["netns"].as_u64().unwrap() as u32, netns);
        assert!(e["src"].as_str().unwrap().starts_with("10.77.0.1:"), "{e}");
        for col in [
            "ifname", "pid", "comm", "cpu", "flags", "seq", "ack", "win", "dst",
        ] {
            assert!(!e[col].is_null(), "column {col} missing in {e}");
        }
    }
    assert_eq!(netif[0]["ifname"], "vb-pl");
    // The stack adds almost nothing after the device: TCP-stage deltas are small next to the queueing delay.
    assert!(
        !tcp.is_empty(),
        "tcp_rcv_established stage seen (attach: {strategy})"
    );
    let mut stage: Vec<f64> = tcp
        .iter()
        .map(|e| e["stage_delta_ms"].as_f64().unwrap())
        .collect();
    stage.sort_by(f64::total_cmp);
    let median_stage = stage[stage.len() / 2];
    let mut delay: Vec<f64> = netif
        .iter()
        .map(|e| e["delta_ms"].as_f64().unwrap())
        .collect();
    delay.sort_by(f64::total_cmp);
    let median_delay = delay[delay.len() / 2];
    assert!(
        median_stage < 1.0 && median_stage * 10.0 < median_delay,
        "stage {median_stage} ms vs xmit->rcv {median_delay} ms"
    );
    // Histograms count every segment, fast or slow.
    assert!(findings.histograms[0].total as usize >= netif.len());
}

#[test]
fn tcp_retransmit_sees_drops_at_a_tiny_queue() {
    let mut pair = Pair::new(
        "rt",
        78,
        &["rate", "1mbit", "burst", "4kb", "limit", "3000"],
    );
    let params = ProbeParams {
        tcp_retransmit: Some(PortParams { ports: vec![5201] }),
        ..Default::default()
    };
    let cfg = ProbeConfig {
        probe: ProbeName::TcpRetransmit,
        params,
        filter: Filter::default(),
        thresholds: vec![],
        output: Output::default(),
    };
    pair.bulk_flow(78, 3.0);
    let common::Outcome {
        events, findings, ..
    } = common::trace(cfg, Duration::from_secs(4), || {});
    assert!(
        events.iter().any(|e| e["src"]
            .as_str()
            .is_some_and(|s| s.starts_with("10.78.0.1:"))
            && e["dst"] == "10.78.0.2:5201"),
        "{events:?}"
    );
    assert!(
        findings
            .summary
            .rows
            .iter()
            .any(|r| r.key.ends_with("10.78.0.2:5201"))
    );
}
