//! Field case B's network: two namespaces joined by a veth pair with a tight tbf qdisc on the sender's end, and
//! a TCP bulk flow across it, so segments queue in the qdisc. Needs root; namespaces go away on drop.

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct NetPair {
    /// The sending namespace `sa-<tag>` (10.<net>.0.1, tbf on its veth end `va-<tag>`).
    pub a: String,
    /// The receiving namespace `sb-<tag>` (10.<net>.0.2 on `vb-<tag>`).
    pub b: String,
    pub net: u8,
    /// The namespace of the bridge between them, if the path has one (`sr-<tag>`).
    bridge: Option<String>,
    children: Vec<Child>,
}

/// Field case B's bottleneck: a 4 Mbit/s token bucket that queues up to 100 ms.
pub const TIGHT_TBF: &[&str] = &["rate", "4mbit", "burst", "16kb", "latency", "100ms"];

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("ip from iproute2");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl NetPair {
    /// `sa-<tag>` --veth--> `sb-<tag>` with `tbf` arguments on sa's end.
    pub fn new(tag: &str, net: u8, tbf: &[&str]) -> NetPair {
        Self::build(tag, net, tbf, false)
    }

    /// `sa-<tag>` --veth--> bridge --veth--> `sb-<tag>`, as a CNI bridge joins two pods on a node (the bridge in
    /// a namespace of its own, `sr-<tag>`), with `tbf` arguments on sa's end: a segment is sent twice, by sa and
    /// by the bridge, and the queue is at the first send.
    pub fn bridged(tag: &str, net: u8, tbf: &[&str]) -> NetPair {
        Self::build(tag, net, tbf, true)
    }

    fn build(tag: &str, net: u8, tbf: &[&str], bridged: bool) -> NetPair {
        let (a, b, r) = (
            format!("sa-{tag}"),
            format!("sb-{tag}"),
            format!("sr-{tag}"),
        );
        for ns in [&a, &b, &r] {
            // Left over from a killed run, if anything.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let pair = NetPair {
            a: a.clone(),
            b: b.clone(),
            net,
            bridge: bridged.then(|| r.clone()),
            children: vec![],
        };
        let (va, vb) = (format!("va-{tag}"), format!("vb-{tag}"));
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        if bridged {
            let (ra, rb, br) = (
                format!("ra-{tag}"),
                format!("rb-{tag}"),
                format!("br-{tag}"),
            );
            ip(&["netns", "add", &r]);
            ip(&["-n", &r, "link", "add", &br, "type", "bridge"]);
            ip(&["-n", &r, "link", "set", &br, "up"]);
            for (end, port) in [(&va, &ra), (&vb, &rb)] {
                ip(&["link", "add", end, "type", "veth", "peer", "name", port]);
                ip(&["link", "set", port, "netns", &r]);
                ip(&["-n", &r, "link", "set", port, "master", &br]);
                ip(&["-n", &r, "link", "set", port, "up"]);
            }
        } else {
            ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        }
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

    pub fn netns_inode(&self, ns: &str) -> u32 {
        std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino() as u32
    }

    /// argv of the sink: a TCP server on 10.<net>.0.2:5201 in the receiving namespace, reading until EOF.
    pub fn sink_argv(&self) -> Vec<String> {
        let code = format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('10.{}.0.2', 5201)); s.listen(1)\nc,_=s.accept()\nwhile c.recv(1<<16): pass",
            self.net
        );
        ["ip", "netns", "exec", &self.b, "python3", "-c", &code]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Starts the sender in `sa`, pushing bytes to the sink for `secs`.
    pub fn start_sender(&mut self, secs: f64) {
        let code = format!(
            "import socket,time\nc=socket.create_connection(('10.{}.0.2', 5201))\nend=time.time()+{secs}\nb=b'x'*65536\nwhile time.time()<end: c.send(b)",
            self.net
        );
        self.spawn(&[
            "ip",
            "netns",
            "exec",
            &self.a.clone(),
            "python3",
            "-c",
            &code,
        ]);
    }

    /// The sink and the sender, both as plain processes. A flow before it on this pair ends first: its sink would
    /// still hold the port, and the new sender would fill a socket nobody reads.
    pub fn bulk_flow(&mut self, secs: f64) {
        self.stop_flows();
        let sink = self.sink_argv();
        self.spawn(&sink.iter().map(String::as_str).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(300));
        self.start_sender(secs);
    }

    fn spawn(&mut self, argv: &[&str]) {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning a flow process");
        self.children.push(child);
    }
}

impl NetPair {
    fn stop_flows(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        self.stop_flows();
        for ns in [Some(&self.a), Some(&self.b), self.bridge.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The slow segments of a packet-latency run, read from its events (`events_url`: the `file://` URL or path of
/// a results folder's `events/manifest.json`, chunks checked against it): there are some, and every one the
/// kernel let through was at or over `threshold_ms`.
pub fn slow_segments(events_url: &str, threshold_ms: f64) -> Vec<serde_json::Value> {
    let events = crate::events_of(events_url);
    assert!(!events.is_empty(), "no slow segment in {events_url}");
    assert!(
        events
            .iter()
            .all(|e| e["delta_ms"].as_f64().unwrap_or(0.0) >= threshold_ms),
        "a segment under {threshold_ms} ms crossed the ring buffer"
    );
    events
}

/// Field case B's answer: the delay sits in front of the receive path, not in TCP (the median stage after
/// `__netif_receive_skb` is under 1 ms).
pub fn assert_tcp_stage_is_quick(events: &[serde_json::Value]) {
    let mut stage: Vec<f64> = events
        .iter()
        .filter(|e| e["function"] == "tcp_rcv_established")
        .filter_map(|e| e["stage_delta_ms"].as_f64())
        .collect();
    stage.sort_by(f64::total_cmp);
    assert!(!stage.is_empty(), "no tcp_rcv_established events");
    assert!(
        stage[stage.len() / 2] < 1.0,
        "median TCP stage delta {} ms",
        stage[stage.len() / 2]
    );
}
