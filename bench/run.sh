#!/usr/bin/env bash
# Side by side on one load: Sonde's wakeups probe and a bpftrace script doing the same work, both attached at
# once to `perf bench sched pipe`. Reports kernel ns per program run (kernel.bpf_stats_enabled) and peak RSS.
# Usage (root): bench/run.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
./scripts/deps.sh
cargo build -q --release --bin sonde
sysctl -q kernel.bpf_stats_enabled=1
trap 'sysctl -q kernel.bpf_stats_enabled=0; kill $(jobs -p) 2>/dev/null || true' EXIT
out=$(mktemp -d)

target/release/sonde run -f bench/wakeups-bench.yaml --duration "$((secs + 2))s" --json --output "$out/sonde" >"$out/sonde.json" 2>"$out/sonde.err" &
sonde_pid=$!
bpftrace -q bench/wakeups.bt >"$out/bpftrace.out" 2>&1 &
bt_pid=$!
sleep 2 # both attached
# Bounded by timeout, which leads its own process group: killing the group also ends perf's second task.
timeout -s KILL "$((secs + 10))" perf bench sched pipe -l 100000000 >/dev/null 2>&1 &
load_pid=$!
sleep "$secs"
kill -KILL -- "-$load_pid" 2>/dev/null || true
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
sonde_rss=$(hwm "$sonde_pid"); bt_rss=$(hwm "$bt_pid")
# bpftrace's program stats, read while it is attached. bpftrace names a program after its probe
# (sched_waking, a classic tracepoint); Sonde's are tp_btf_* / tp_* programs of its own.
bt_stats=$(bpftool prog show -j | python3 -c '
import json, sys
progs = [p for p in json.load(sys.stdin) if p.get("type") == "tracepoint" and p.get("name") == "sched_waking"]
print(sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs))')
kill -INT "$bt_pid"; wait "$bt_pid" || true
wait "$sonde_pid"
read -r sonde_ns sonde_runs < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["kernel_run_time_ns"], r["kernel_runs"])' "$out/sonde.json")
read -r bt_ns bt_runs <<<"$bt_stats"
python3 - "$sonde_ns" "$sonde_runs" "$sonde_rss" "$bt_ns" "$bt_runs" "$bt_rss" <<'PY'
import sys
s_ns, s_runs, s_rss, b_ns, b_runs, b_rss = map(int, sys.argv[1:])
s_per = s_ns / max(s_runs, 1); b_per = b_ns / max(b_runs, 1)
print(f"{'tool':<10} {'runs':>12} {'ns/run':>8} {'peak RSS MiB':>13}")
print(f"{'sonde':<10} {s_runs:>12} {s_per:>8.0f} {s_rss/1024:>13.1f}")
print(f"{'bpftrace':<10} {b_runs:>12} {b_per:>8.0f} {b_rss/1024:>13.1f}")
print(f"sonde/bpftrace: {s_per/max(b_per,1e-9):.2f}x ns per run, {s_rss/max(b_rss,1):.2f}x RSS")
PY
