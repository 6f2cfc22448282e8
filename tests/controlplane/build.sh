#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from Go modules into a per-version cache outside the
# repo. A machine builds them once; later runs only check the binaries are there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(awk '$1=="k8s.io/kubernetes"{print $2}' "$here/go.mod")
etcd=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2}' "$here/go.mod")
cache=${SONDE_CACHE:-$HOME/.cache/sonde}/controlplane-$k8s-etcd-$etcd
want=(kube-apiserver kube-controller-manager etcd)
missing=0
for b in "${want[@]}"; do [ -x "$cache/$b" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "$cache"; exit 0; fi
mkdir -p "$cache"
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$(echo "$k8s" | cut -d. -f2)"
start=$(date +%s)
go build -trimpath -ldflags "$ldflags" -o "$cache/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
go build -trimpath -ldflags "$ldflags" -o "$cache/kube-controller-manager.tmp" k8s.io/kubernetes/cmd/kube-controller-manager >&2
go build -trimpath -ldflags "-s -w" -o "$cache/etcd.tmp" ./cmd/etcd >&2
for b in "${want[@]}"; do mv "$cache/$b.tmp" "$cache/$b"; done
echo "built control plane $k8s + etcd $etcd in $(( $(date +%s) - start ))s" >&2
echo "$cache"
