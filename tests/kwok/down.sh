#!/usr/bin/env bash
# Stops the kwok controller tests/kwok/up.sh started for the control plane in CP_DIR, and nothing else: the pid in
# CP_DIR/kwok.pid, only if that process still is kwok (pids get reused). The fake Nodes and Pods stay in the API
# server (tests/controlplane/down.sh throws the whole store away); kwok.log stays in CP_DIR. Run it before
# tests/controlplane/down.sh, or kwok keeps retrying an API server that is gone.
#   down.sh CP_DIR
set -euo pipefail
dir=${1:?usage: down.sh CP_DIR}
[ -d "$dir" ] || exit 0
f=$dir/kwok.pid
[ -f "$f" ] || exit 0
pid=$(cat "$f")
if [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = kwok ]; then
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
else
  echo "kwok (pid $pid) had exited before down.sh; its log: $dir/kwok.log" >&2
fi
rm -f "$f"
