//! The `tcp-connect` probe beside its kernel side, `tcp_connect.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::{Metric, ProbeName};

use crate::aggregate::{Latency, LatencyRows};
use crate::catalogue::{Aggregate, Attach, Filtered, Hook, KernelThreshold, ProbeInfo, tp};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::TcpConnect,
    description: "TCP active connect latency (SYN_SENT -> ESTABLISHED)",
    filtered: Filtered::Task,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: Some(KernelThreshold {
        metric: Metric::ConnectLatencyMs,
        scale: 1e6,
    }),
    object: object!("tcp_connect"),
    aggregates: &[Aggregate::Histograms],
    aggregator: || {
        Box::new(Latency::new(
            "connect latency",
            1,
            "us",
            1e6,
            LatencyRows::TaskConnection,
        ))
    },
    kernel: |p, k| k.ports(p.tcp_connect.as_ref().map_or(&[], |x| &x.ports)),
    example: r#"# How long do `curl`'s connects to port 5432 take? Over 100 ms is flagged.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: curl-connects}
spec:
  probe: tcp-connect
  target: {comms: [curl]}
  duration: 30s
  params: {tcpConnect: {ports: [5432]}}
  thresholds: [{metric: connectLatencyMs, value: 100}]
"#,
};

const HOOKS: &[Hook] = &[Hook {
    name: "state",
    required: true,
    context: false,
    chain: &[
        Attach::TpBtf {
            program: "tp_btf_inet_sock_set_state",
            event: "inet_sock_set_state",
        },
        tp("tp_inet_sock_set_state", "sock", "inet_sock_set_state"),
    ],
}];
