#!/usr/bin/env bash
# The results server under load, side by side with the Kubernetes API server serving the same TraceJob (what
# `kubectl get tracejob -o json` reads): requests/s and latency p50/p99 for a job's summary (status + stored
# nodes) and for an events page (500 events decoded from stored gzip chunks), each driven by vegeta at the same
# concurrency for the same time, with the reader's own token; then TokenReview/SubjectAccessReview calls per
# request with the caches warm (the server's own counter). The events are real: `sonde run` of runq-latency on
# `perf bench sched pipe` writes them in the layout agents use, and they are placed under a real TraceJob's uid.
# Usage (root): bench/results-server.sh [seconds per target, default 10] [concurrent clients, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
workers=${2:-8}
./scripts/deps.sh
export SONDE_CONTROLPLANE_DIR
SONDE_CONTROLPLANE_DIR=$(tests/controlplane/build.sh)
cache=${SONDE_CACHE:-$HOME/.cache/sonde}
[ -x "$cache/bin/vegeta" ] || GOBIN="$cache/bin" GOFLAGS=-mod=mod go install github.com/tsenart/vegeta/v12@v12.13.0
vegeta=$cache/bin/vegeta
cargo build -q --release -p sonde-cli -p sonde-results
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
cp=$work/cp
trap 'kill $(jobs -p) 2>/dev/null || true; tests/controlplane/down.sh "$cp" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
tests/controlplane/up.sh "$cp" >/dev/null
export KUBECONFIG=$cp/admin.kubeconfig
kubectl apply -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/tracejobs.sonde.dev >/dev/null

# Real events: runq latency of sched-pipe's tasks, every 10th sample, for 5 s.
cat >"$work/job.yaml" <<'EOF'
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: bench-runq}
spec:
  probe: runq-latency
  target: {comms: [sched-pipe]}
  duration: 5s
  thresholds: [{metric: runqLatencyUs, value: 0, comparison: GreaterOrEqual}]
  output: {sampleEvery: 10}
EOF
timeout -s KILL 30 perf bench sched pipe -l 100000000 >/dev/null 2>&1 &
load=$!
"$bin/sonde" run -f "$work/job.yaml" --output "$work/run" >/dev/null
kill -KILL -- "-$load" 2>/dev/null || kill -KILL "$load" 2>/dev/null || true

# The same job in the API server, a reader allowed to read it, and its results where the agents put them.
kubectl create namespace bench >/dev/null
kubectl -n bench apply -f "$work/job.yaml" >/dev/null
uid=$(kubectl -n bench get tracejob bench-runq -o jsonpath='{.metadata.uid}')
node=$(hostname)
mkdir -p "$work/store/tracejobs/bench/bench-runq-${uid:0:8}"
cp -r "$work/run" "$work/store/tracejobs/bench/bench-runq-${uid:0:8}/$node"
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: bench}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: bench}
rules:
- apiGroups: [sonde.dev]
  resources: [tracejobs, tracejobs/results]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: bench}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: bench}]
EOF
results_token=$(kubectl -n bench create token reader --audience sonde-results)
api_token=$(kubectl -n bench create token reader)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/sonde-results" --listen "127.0.0.1:$port" --metrics-addr "127.0.0.1:$metrics" \
  --storage-url "file://$work/store" >"$work/server.log" 2>&1 &
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$metrics/readyz" >/dev/null && break; sleep 0.1; done
job=/api/v1/namespaces/bench/tracejobs/bench-runq
events=$(curl -fsS -H "Authorization: Bearer $results_token" "http://127.0.0.1:$port$job/events?limit=500" |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)["events"]))')
chunks=$(ls "$work/run/events" | grep -c 'ndjson.gz$')
lines=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lines"])' "$work/run/events/manifest.json")
echo "stored: $lines events in $chunks chunks; a page holds $events"

reviews() { curl -fs "http://127.0.0.1:$metrics/metrics" | awk '/^sonde_results_reviews_total/ {n += $2} END {print n + 0}'; }
attack() { # name, URL, token, extra vegeta flags
  printf 'GET %s\nAuthorization: Bearer %s\n' "$2" "$3" >"$work/targets"
  "$vegeta" attack -targets="$work/targets" -rate=0 -max-workers="$workers" -duration="${secs}s" "${@:4}" |
    "$vegeta" report -type=json >"$work/$1.json"
  python3 - "$1" "$work/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
lat = r["latencies"]
print(f"{sys.argv[1]:<28} {r['requests']:>8} {r['throughput']:>10.0f} {lat['50th'] / 1e6:>9.2f} {lat['99th'] / 1e6:>9.2f} {r['success'] * 100:>8.1f}")
PY
}
# Warm the caches (one review of each kind), then count what the runs add.
curl -fsS -o /dev/null -H "Authorization: Bearer $results_token" "http://127.0.0.1:$port$job"
before=$(reviews)
printf '%-28s %8s %10s %9s %9s %8s\n' target requests 'req/s' 'p50 ms' 'p99 ms' 'ok %'
attack results-summary "http://127.0.0.1:$port$job" "$results_token"
attack results-events-500 "http://127.0.0.1:$port$job/events?limit=500" "$results_token"
apiport=$(cat "$cp/apiserver.port")
attack apiserver-tracejob "https://127.0.0.1:$apiport/apis/sonde.dev/v1alpha1/namespaces/bench/tracejobs/bench-runq" \
  "$api_token" -root-certs="$cp/pki/ca.crt"
after=$(reviews)
served=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["requests"] for f in sys.argv[1:]))' \
  "$work/results-summary.json" "$work/results-events-500.json")
echo "reviews during the runs: $((after - before)) for $served requests to the results server (caches: 30 s for an allow)"
echo "($(nproc) cores; vegeta, the server and the API server share them)"
