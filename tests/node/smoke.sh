#!/usr/bin/env bash
# Checks a node from up.sh does what Sonde's tests rely on: a pod of the local busybox image runs in the
# kubelet's cgroups (0::/kubepods/...), gets an address from the bridge, reaches the API server through the
# `kubernetes` Service, cannot reach anything outside the host; a DaemonSet's pod is scheduled and runs.
#   smoke.sh NODEDIR      exit 0 when all hold; works in a namespace of its own, deleted on exit.
set -euo pipefail
nd=${1:?usage: smoke.sh NODEDIR}
. "$nd/env"
ns=sonde-smoke-$$ # a fresh one: the last run's may still be terminating
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" -n "$ns" "$@"; }
k create namespace "$ns" >/dev/null
trap 'k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: [sh, -c]
    args:
    - |
      grep '^0::' /proc/self/cgroup
      t() { echo | nc -w 3 \$1 \$2 >/dev/null 2>&1 && echo "\$3 \$1:\$2 open" || echo "\$3 \$1:\$2 closed"; }
      t \$KUBERNETES_SERVICE_HOST \$KUBERNETES_SERVICE_PORT service
      t 1.1.1.1 80 outside
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:
      containers:
      - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "3600"]}
EOF
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/probe --timeout=60s >/dev/null
out=$(k logs probe)
ip=$(k get pod probe -o jsonpath='{.status.podIP}')
echo "$out"; echo "pod IP $ip"
k rollout status ds/ds --timeout=60s >/dev/null
echo "DaemonSet pod $(k get pods -l app=ds -o jsonpath='{.items[0].metadata.name} {.items[0].status.phase}')"
ok=1
grep -q '^0::/kubepods/besteffort/pod' <<<"$out" || { echo "FAIL: not in the kubelet's cgroup" >&2; ok=0; }
case "$ip" in 10.88.*) ;; *) echo "FAIL: pod IP $ip not from the bridge" >&2; ok=0 ;; esac
grep -q '^service .* open' <<<"$out" || { echo "FAIL: kubernetes Service unreachable" >&2; ok=0; }
grep -q '^outside .* closed' <<<"$out" || { echo "FAIL: a pod reached 1.1.1.1" >&2; ok=0; }
[ "$ok" = 1 ] && echo "smoke: ok"
