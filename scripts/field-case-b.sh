#!/usr/bin/env bash
# Field case B on one machine: two network namespaces joined by a veth pair, a tight tbf on the sender's end,
# a TCP bulk flow across it, and `sonde run` of a packet-latency TraceJob aimed at the receiver's namespace.
# The slow segments show their delay between xmit and __netif_receive_skb; tcp_rcv_established adds ~nothing.
# Usage (root): scripts/field-case-b.sh [threshold-ms]
set -euo pipefail
cd "$(dirname "$0")/.."
thr=${1:-5}
cargo build -q --release --bin sonde
cleanup() { kill $(jobs -p) 2>/dev/null || true; ip netns del fcb-a 2>/dev/null || true; ip netns del fcb-b 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add fcb-a; ip netns add fcb-b
ip link add fcb-va type veth peer name fcb-vb
ip link set fcb-va netns fcb-a; ip link set fcb-vb netns fcb-b
ip -n fcb-a addr add 10.79.0.1/24 dev fcb-va; ip -n fcb-b addr add 10.79.0.2/24 dev fcb-vb
for ns in a b; do ip -n fcb-$ns link set fcb-v$ns up; ip -n fcb-$ns link set lo up; done
ip netns exec fcb-a tc qdisc add dev fcb-va root tbf rate 4mbit burst 16kb latency 100ms
ip netns exec fcb-b python3 -c "import socket
s=socket.socket(); s.bind(('10.79.0.2', 8080)); s.listen(1); c,_=s.accept()
while c.recv(1<<16): pass" &
sleep 0.3
server=$(pgrep -n -f "10.79.0.2', 8080")
ip netns exec fcb-a python3 -c "import socket,time
c=socket.create_connection(('10.79.0.2', 8080)); end=time.time()+8
while time.time()<end: c.send(b'x'*65536)" &
job=$(mktemp --suffix .yaml)
sed -e "s/podSelector:/pids: [$server]\n    # podSelector:/" -e "s/value: 5$/value: $thr/" examples/packet-latency.yaml \
  | sed -e '/# podSelector:/,/app: web/d' >"$job"
target/release/sonde run -f "$job" --duration 6s
