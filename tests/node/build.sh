#!/usr/bin/env bash
# Builds what a real node needs into a per-version cache outside the repo and prints that directory:
#   kubelet, kube-scheduler, kube-proxy, kubectl  from the same k8s.io/kubernetes module (and version ldflags) as
#                                                 the control plane (tests/controlplane/go.mod), so no skew.
# The node's images (pause, busybox, ping, sonde) come from scripts/images.sh.
# A machine builds them once; later runs only check the files are there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
module="$here/../controlplane"
k8s=$(awk '$1=="k8s.io/kubernetes"{print $2}' "$module/go.mod")
cache=${SONDE_CACHE:-$HOME/.cache/sonde}/node-$k8s
bins=(kubelet kube-scheduler kube-proxy kubectl)
want=("${bins[@]}")

# Host packages: containerd/runc/CNI plugins run the pods, iptables/conntrack serve kube-proxy. scripts/deps.sh
# installs them.
for c in containerd containerd-shim-runc-v2 ctr runc iptables conntrack; do
  command -v "$c" >/dev/null || { "$here/../../scripts/deps.sh" >&2; break; }
done
[ -x /usr/lib/cni/bridge ] || "$here/../../scripts/deps.sh" >&2

missing=0
for f in "${want[@]}"; do [ -s "$cache/$f" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "$cache"; exit 0; fi
mkdir -p "$cache"

start=$(date +%s)
# Same flags as tests/controlplane/build.sh: without the version ldflags the kubelet reports v0.0.0-master.
export CGO_ENABLED=0 GOFLAGS=-mod=mod
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$(echo "$k8s" | cut -d. -f2)"
for b in "${bins[@]}"; do
  [ -x "$cache/$b" ] && continue
  (cd "$module" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$cache/$b.tmp" "k8s.io/kubernetes/cmd/$b") >&2
  mv "$cache/$b.tmp" "$cache/$b"
done
built=$(( $(date +%s) - start ))

echo "built kubelet, kube-scheduler, kube-proxy, kubectl $k8s in ${built}s" >&2
echo "$cache"
