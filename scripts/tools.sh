#!/usr/bin/env bash
# Builds the Go tools the tests use (helm) from the Go module proxy into a per-version cache outside the repo,
# once per machine, and prints the helm binary's path.
set -euo pipefail
version=v3.22.0
dir=${SONDE_CACHE:-$HOME/.cache/sonde}/tools-helm-$version
if [ ! -x "$dir/helm" ]; then
  mkdir -p "$dir"
  GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$version" >&2
fi
echo "$dir/helm"
