#!/usr/bin/env bash
# Builds the kwok controller (sigs.k8s.io/kwok: simulated Nodes and Pods against a real API server, for fleet-scale
# tests without a kubelet per node) from the Go module proxy into a per-version cache outside the repo, and prints
# the directory holding the `kwok` binary. Logs go to stderr. A machine builds it once; later runs only check the
# files are there.
#
# Next to the binary: stages.yaml, kwok's Stage objects (the lifecycle it plays on Nodes and Pods) copied from the
# module's kustomize/stage/: node-initialize (a new Node becomes Ready), node-heartbeat-with-lease (status refreshed
# every 10-20 min), pod-ready (a bound Pod becomes Running/Ready with an IP), pod-complete (Job pods succeed) and
# pod-delete (a deleted Pod goes). They are the stages kwok embeds and uses by default when it holds no node leases
# (tests/kwok/up.sh runs it so); up.sh hands them over with --config, so nothing needs the Stage CRD, the harness
# does not depend on a ~/.kwok/kwok.yaml, and a test can play other stages by editing a copy.
set -euo pipefail
version=v0.7.0
module=sigs.k8s.io/kwok
cache=${SONDE_CACHE:-$HOME/.cache/sonde}/kwok-$version
if [ -x "$cache/kwok" ] && [ -s "$cache/stages.yaml" ]; then echo "$cache"; exit 0; fi
mkdir -p "$cache"
start=$(date +%s)
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$module/cmd/kwok@$version" >&2
# The module's source is in the module cache now (go install fetched it); ask go where rather than guess.
src=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src/kustomize/stage" ] || { echo "kwok $version source not found in the module cache ($src)" >&2; exit 1; }
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo "---"
  echo "# kwok $version kustomize/stage/$f"
  cat "$src/kustomize/stage/$f"
done >"$tmp/stages.yaml"
mv "$tmp/stages.yaml" "$cache/stages.yaml"
mv "$tmp/kwok" "$cache/kwok"
echo "built kwok $version in $(( $(date +%s) - start ))s" >&2
echo "$cache"
