#!/usr/bin/env bash
# A simulated fleet on a real control plane: the kwok controller (tests/kwok/build.sh) plays the kubelet of NODES
# fake Nodes and their Pods against the API server that tests/controlplane/up.sh runs in CP_DIR, so the operator
# can be tested at fleet scale (watches, lists, status writes of a thousand nodes) on one machine. No container
# runs: kwok only writes the objects' status.
#
#   up.sh CP_DIR NODES [PODS_PER_NODE]
#       Starts kwok in the background (CP_DIR/kwok.pid, CP_DIR/kwok.log; reused when already running), makes sure
#       Nodes kwok-node-1 .. kwok-node-NODES exist and PODS_PER_NODE (default 1, at most 110) Pods on each, in
#       namespace `fleet`, then waits until every fleet Node is Ready and every fleet Pod Running and prints, on
#       stdout, one line with the seconds that took. Exits non-zero with the counts reached and the tail of kwok's
#       log when that takes longer than $SONDE_KWOK_TIMEOUT seconds (default 60 s + 30 s per 1000 objects:
#       120 s for 1000 nodes with a pod each). Only missing objects are created: running it again with more
#       NODES or PODS_PER_NODE adds the missing ones, and it never changes or deletes existing ones.
#   down.sh CP_DIR   stops kwok (the objects stay; tests/controlplane/down.sh throws the whole store away).
#
# Nodes: annotation kwok.x-k8s.io/node=fake (what kwok is told to manage), labels sonde.dev/fleet=true,
# type=kwok, kubernetes.io/{hostname,os,arch}; the taint kwok.x-k8s.io/node=fake:NoSchedule (kwok's convention:
# a scheduler places nothing there unless it tolerates it; the Sonde agent tolerates every taint); allocatable and
# capacity 32 cpu, 128Gi memory, 110 pods; InternalIP 10.250.x.y and podCIDR 10.(64+x).y.0/24 (x.y = the node's
# number in base 256), so kwok hands out distinct pod IPs per node. The status given at creation is kept by the
# API server, and kwok's node-initialize stage keeps what is already there and adds the Ready conditions.
# Pods fleet-<node>-<k>: label app=fleet, spec.nodeName set (no scheduler needed), one container whose image,
# kwok.invalid/sonde/fleet:never-pulled, nothing ever pulls; no service-account token.
#
# Objects are sent by server-side apply (field manager sonde-kwok), SONDE_KWOK_BATCH objects (default 250) per
# kubectl, SONDE_KWOK_PARALLEL kubectls (default 4) at a time, from multi-document YAML made by awk. With
# --validate=false: with field validation on, a kubectl older than the server (1.32 against 1.35 here) spends
# ~40 ms of CPU per object on it (8 s per 200 objects; 1.35's kubectl does not), and the documents are ours.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: up.sh CP_DIR NODES [PODS_PER_NODE]"
dir=$(cd "${1:?$usage}" && pwd)
nodes=${2:?$usage}
per_node=${3:-1}
case "$nodes" in '' | *[!0-9]*) echo "$usage: NODES must be a number" >&2; exit 2 ;; esac
case "$per_node" in '' | *[!0-9]*) echo "$usage: PODS_PER_NODE must be a number" >&2; exit 2 ;; esac
# Addresses are 10.250.x.y and pod CIDRs 10.(64+x).y.0/24: x stays below 64, so at most 16383 nodes.
if [ "$nodes" -lt 1 ] || [ "$nodes" -gt 16383 ]; then echo "NODES must be 1..16383" >&2; exit 2; fi
if [ "$per_node" -gt 110 ]; then echo "PODS_PER_NODE must be at most 110 (the nodes' allocatable pods)" >&2; exit 2; fi
kubeconfig=$dir/admin.kubeconfig
[ -f "$kubeconfig" ] || { echo "no control plane in $dir (start it with tests/controlplane/up.sh $dir)" >&2; exit 1; }
bin=${SONDE_KWOK_DIR:-$("$here/build.sh")}
batch=${SONDE_KWOK_BATCH:-250}
parallel=${SONDE_KWOK_PARALLEL:-4}
objects=$(( nodes + nodes * per_node ))
timeout=${SONDE_KWOK_TIMEOUT:-$(( 60 + objects * 30 / 1000 ))}
k() { kubectl --kubeconfig "$kubeconfig" --request-timeout=30s "$@"; }

# One caller at a time per control plane; kwok gets `9>&-` so it does not hold the lock.
exec 9>"$dir/.kwok.lock"
flock 9

k get --raw /readyz >/dev/null || { echo "the API server of $dir does not answer" >&2; exit 1; }

# --- the kwok controller ----------------------------------------------------------------------------------------
kwok_pid() { # the pid in CP_DIR/kwok.pid if that process still is kwok (pids get reused)
  local p; p=$(cat "$dir/kwok.pid" 2>/dev/null) || return 0
  if [ "$(basename "$(readlink "/proc/$p/exe" 2>/dev/null)")" = kwok ]; then echo "$p"; fi
}
if [ -z "$(kwok_pid)" ]; then
  # --manage-nodes-with-annotation-selector: only our Nodes (a real node of the same API server stays its
  #   kubelet's); kwok then plays the Pods bound to them.
  # --node-lease-duration-seconds=0: no Lease per node (a thousand lease renewals every 10 s would be most of the
  #   API server's load). The control plane's node-monitor grace period is 24 h, so the Nodes stay Ready on the
  #   status heartbeat of stages.yaml (every 10-20 min).
  # --config stages.yaml: the Node and Pod stages (build.sh); KWOK_WORKDIR keeps a ~/.kwok/kwok.yaml out.
  # No --node-port/--server-address: kwok serves no kubelet API (logs, exec), so it takes no port.
  mkdir -p "$dir/kwok-home"
  KWOK_WORKDIR="$dir/kwok-home" "$bin/kwok" --kubeconfig="$kubeconfig" --config="$bin/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=0 >"$dir/kwok.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/kwok.pid"
  echo "kwok started (pid $!, log $dir/kwok.log)" >&2
fi

# --- the objects ---------------------------------------------------------------------------------------------------
k apply --server-side --field-manager=sonde-kwok -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: fleet, labels: {sonde.dev/fleet: "true"}}
EOF
# Pods are refused until the namespace's default ServiceAccount exists (the controller manager makes it).
for _ in $(seq 100); do k get serviceaccount default -n fleet >/dev/null 2>&1 && break; sleep 0.1; done

work=$(mktemp -d "$dir/kwok-apply.XXXXXX")
trap 'rm -rf "$work"' EXIT
start_ns=$(date +%s%N)
# Only the objects that are missing: what exists stays as it is (a test may have tainted, labelled or changed it,
# and applying our manifest again would conflict with that change's field manager or undo it).
{ k get nodes -o name; k get pods -n fleet -o name; } >"$work/existing"
# One YAML document per object, `batch` documents per file: nodes first, then pods.
awk -v nodes="$nodes" -v per_node="$per_node" -v batch="$batch" -v work="$work" '
function next_doc() { # the file the next document goes to
  if (docs % batch == 0) { if (f != "") close(f); f = sprintf("%s/%06d.yaml", work, docs / batch) }
  docs++; printf "---\n" > f
}
{ have[$0] = 1 }
END {
  for (i = 1; i <= nodes; i++) {
    n = "kwok-node-" i
    if (("node/" n) in have) continue
    next_doc(); new_nodes++; x = int(i / 256); y = i % 256
    printf "apiVersion: v1\nkind: Node\nmetadata:\n  name: %s\n", n > f
    printf "  annotations: {kwok.x-k8s.io/node: fake}\n" > f
    printf "  labels: {sonde.dev/fleet: \"true\", type: kwok, kubernetes.io/hostname: %s, kubernetes.io/os: linux, kubernetes.io/arch: amd64}\n", n > f
    printf "spec:\n  podCIDR: 10.%d.%d.0/24\n  podCIDRs: [10.%d.%d.0/24]\n", 64 + x, y, 64 + x, y > f
    printf "  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]\n" > f
    printf "status:\n  allocatable: {cpu: \"32\", memory: 128Gi, pods: \"110\"}\n" > f
    printf "  capacity: {cpu: \"32\", memory: 128Gi, pods: \"110\"}\n" > f
    printf "  addresses: [{type: InternalIP, address: 10.250.%d.%d}, {type: Hostname, address: %s}]\n", x, y, n > f
  }
  for (i = 1; i <= nodes; i++) for (j = 1; j <= per_node; j++) {
    if (("pod/fleet-" i "-" j) in have) continue
    next_doc(); new_pods++
    printf "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fleet-%d-%d\n  namespace: fleet\n  labels: {app: fleet}\n", i, j > f
    printf "spec:\n  nodeName: kwok-node-%d\n  automountServiceAccountToken: false\n  enableServiceLinks: false\n", i > f
    printf "  tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]\n" > f
    printf "  containers:\n  - name: app\n    image: kwok.invalid/sonde/fleet:never-pulled\n" > f
    printf "    resources: {requests: {cpu: 10m, memory: 16Mi}}\n" > f
  }
  print new_nodes + 0, new_pods + 0 > (work "/counts")
}' "$work/existing"
read -r new_nodes new_pods <"$work/counts"
export KUBECONFIG=$kubeconfig
# `timeout` signals its whole process group: xargs and the kubectls under it.
status=0
find "$work" -name '*.yaml' | sort | timeout "$timeout" xargs -r -P "$parallel" -n 1 \
  kubectl --request-timeout=120s apply --server-side --field-manager=sonde-kwok --validate=false -f >/dev/null ||
  status=$?
if [ "$status" = 124 ]; then
  echo "kwok fleet not ready: timed out after ${timeout}s still creating its objects" >&2
  exit 1
elif [ "$status" != 0 ]; then
  echo "creating the fleet's objects failed (see kubectl's errors above)" >&2
  exit 1
fi
applied_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
echo "created $new_nodes nodes and $new_pods pods in $applied_ms ms" >&2

# --- wait for kwok ---------------------------------------------------------------------------------------------------
# The API server's tables (kubectl's default output) are a line per object: cheap enough to poll a fleet.
want_pods=$(( nodes * per_node ))
while :; do
  read -r n_total n_ready < <(k get nodes -l sonde.dev/fleet=true --no-headers 2>/dev/null |
    awk '{t++; if ($2 ~ /^Ready(,|$)/) r++} END {print t + 0, r + 0}')
  read -r p_total p_running < <(k get pods -n fleet -l app=fleet --no-headers 2>/dev/null |
    awk '{t++; if ($3 == "Running") r++} END {print t + 0, r + 0}')
  elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  if [ "$n_total" -ge "$nodes" ] && [ "$n_ready" = "$n_total" ] &&
    [ "$p_total" -ge "$want_pods" ] && [ "$p_running" = "$p_total" ]; then
    break
  fi
  if [ -z "$(kwok_pid)" ] || [ "$elapsed_ms" -ge $(( timeout * 1000 )) ]; then
    if [ -z "$(kwok_pid)" ]; then why="kwok exited"; else why="timed out after ${timeout}s"; fi
    echo "kwok fleet not ready: $why: $n_ready/$n_total nodes Ready (want $nodes)," \
      "$p_running/$p_total pods Running (want $want_pods); kwok log $dir/kwok.log:" >&2
    tail -n 10 "$dir/kwok.log" >&2
    exit 1
  fi
  sleep 0.5
done
secs=$(awk -v ms="$elapsed_ms" 'BEGIN {printf "%.1f", ms / 1000}')
echo "kwok fleet ready in ${secs}s: $n_ready nodes Ready, $p_running pods Running (objects created in ${applied_ms} ms)"
