//! The `tcp-rtt` probe beside its kernel side, `tcp_rtt.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::{Metric, ProbeName};

use crate::aggregate::{Latency, LatencyRows};
use crate::catalogue::{
    Aggregate, Filtered, Hook, KernelThreshold, ProbeInfo, TCP_RCV_ESTABLISHED,
};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::TcpRtt,
    description: "smoothed TCP round-trip time per connection as segments arrive (log2 histogram); flags slow ones",
    filtered: Filtered::Socket,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::RttMs,
        scale: 1e6,
    }),
    object: object!("tcp_rtt"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || {
        Box::new(Latency::new(
            "round-trip time",
            1,
            "us",
            1e6,
            LatencyRows::Connection,
        ))
    },
    kernel: |p, k| k.ports(p.tcp_rtt.as_ref().map_or(&[], |x| &x.ports)),
    example: r#"# Round-trip times of connections on port 6379 (redis); samples over 50 ms are flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: redis-rtt}
spec:
  probe: tcp-rtt
  target: {cgroupPaths: [/]}
  duration: 30s
  params: {tcpRtt: {ports: [6379]}}
  thresholds: [{metric: rttMs, value: 50}]
"#,
};

const HOOKS: &[Hook] = &[Hook {
    name: "segment",
    required: true,
    context: false,
    chain: TCP_RCV_ESTABLISHED,
}];
