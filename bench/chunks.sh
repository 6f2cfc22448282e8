#!/usr/bin/env bash
# The events path side by side with the compressors a user would reach for, on the same real events: a 10 s
# runq-latency trace of `perf bench sched pipe` with every wait kept. Sonde's chunk writer (gzip level 1 +
# SHA-256) against `gzip -1` and `zstd -1` on the NDJSON: events/s, MB/s, ratio, CPU per MB.
# Usage (root): bench/chunks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build -q --release -p sonde-cli --bin sonde
cargo build -q --release -p sonde-probes --example chunk_bench
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
timeout -s KILL 30 perf bench sched pipe -l 100000000 >/dev/null 2>&1 &
sleep 1
target/release/sonde run -f bench/chunks-bench.yaml --json --output "$out/r" >"$out/run.json"
zcat "$out"/r/events/*.ndjson.gz >"$out/events.ndjson"
echo "real events: $(wc -l <"$out/events.ndjson") lines, $(du -m "$out/events.ndjson" | cut -f1) MB of NDJSON"
target/release/examples/chunk_bench "$out/events.ndjson" 3
mb=$(python3 -c 'import os,sys; print(os.path.getsize(sys.argv[1]) / 1e6)' "$out/events.ndjson")
for tool in "gzip -1" "zstd -1 -q -T1"; do
  /usr/bin/time -f "%e %U %S" -o "$out/t" $tool -c "$out/events.ndjson" >"$out/z"
  read -r wall user sys <"$out/t"
  python3 - "$tool" "$mb" "$wall" "$user" "$sys" "$(stat -c %s "$out/z")" "$(stat -c %s "$out/events.ndjson")" <<'PY'
import sys
tool, mb, wall, user, sys_, z, raw = sys.argv[1], *map(float, sys.argv[2:])
print(f"{tool:<16} {mb / max(wall, 1e-9):.1f} MB/s, ratio {raw / z:.1f}:1, {(user + sys_) / mb:.3f} CPU s per MB")
PY
done
