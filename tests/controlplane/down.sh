#!/usr/bin/env bash
# Stops what up.sh started in DIR. The directory (certs, data, logs) is removed unless KEEP_LOGS=1 or one of the
# processes had died on its own -- then its log is what explains a failed run, and it is kept.
set -euo pipefail
dir=${1:-${SONDE_CP_DIR:-/tmp/sonde-cp}}
[ -d "$dir" ] || exit 0
keep=${KEEP_LOGS:-0}
for p in kube-controller-manager kube-apiserver etcd; do
  f="$dir/$p.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  else
    echo "$p had exited before down.sh; keeping $dir" >&2
    keep=1
  fi
  rm -f "$f"
done
if [ "$keep" = 1 ]; then echo "logs kept in $dir" >&2; else rm -rf "$dir"; fi
