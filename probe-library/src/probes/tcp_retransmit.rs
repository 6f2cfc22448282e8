//! The `tcp-retransmit` probe beside its kernel side, `tcp_retransmit.bpf.c`: hooks and attach chains, what it
//! filters on, how its params become kernel settings, its aggregator and its example.

use sonde_vocab::ProbeName;

use crate::aggregate::{Note, Notes};
use crate::catalogue::{Attach, Filtered, Hook, ProbeInfo, tp};

pub(crate) const PROBE: ProbeInfo = ProbeInfo {
    name: ProbeName::TcpRetransmit,
    description: "TCP retransmissions with addresses, ports and state",
    filtered: Filtered::Socket,
    local_netns: |_| None,
    hooks: HOOKS,
    kernel_threshold: None,
    object: object!("tcp_retransmit"),
    aggregates: &[],
    aggregator: || Box::new(Notes::new(Note::Connection)),
    kernel: |p, k| k.ports(p.tcp_retransmit.as_ref().map_or(&[], |x| &x.ports)),
    example: r#"# Retransmitted segments of connections on port 443, node-wide.
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: tls-retransmits}
spec:
  probe: tcp-retransmit
  target: {cgroupPaths: [/]}
  duration: 60s
  params: {tcpRetransmit: {ports: [443]}}
"#,
};

const HOOKS: &[Hook] = &[Hook {
    name: "retransmit",
    required: true,
    context: false,
    chain: &[
        Attach::Fentry {
            program: "fentry_tcp_retransmit_skb",
            func: "tcp_retransmit_skb",
        },
        Attach::Kprobe {
            program: "kprobe_tcp_retransmit_skb",
            func: "tcp_retransmit_skb",
        },
        tp("tp_tcp_retransmit_skb", "tcp", "tcp_retransmit_skb"),
    ],
}];
