#!/usr/bin/env bash
# Stops or starts again the API server of a control plane up.sh started in DIR (etcd and the controller manager
# keep running): for tests of what the product does while the API server is away.
#
#   apiserver.sh DIR stop     SIGTERM, and SIGKILL if it has not exited within 10 s; returns once it is gone.
#   apiserver.sh DIR start    the same command again (DIR/kube-apiserver.sh); returns once it is ready (60 s).
set -euo pipefail
dir=${1:?usage: apiserver.sh DIR stop|start}
what=${2:?usage: apiserver.sh DIR stop|start}
pidfile="$dir/kube-apiserver.pid"
ready() {
  curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "https://127.0.0.1:$(cat "$dir/apiserver.port")/readyz" >/dev/null 2>&1
}
case $what in
  stop)
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    echo "kube-apiserver $pid did not exit" >&2; exit 1 ;;
  start)
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "kube-apiserver is running" >&2; exit 1; fi
    # Detached from the caller's descriptors: a caller reading this script's output must not wait on the server.
    bash "$dir/kube-apiserver.sh" </dev/null >/dev/null 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 600); do
      ready && exit 0
      kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "kube-apiserver exited; see $dir/kube-apiserver.log" >&2; exit 1; }
      sleep 0.1
    done
    echo "kube-apiserver not ready after 60 s; see $dir/kube-apiserver.log" >&2; exit 1 ;;
  *) echo "usage: apiserver.sh DIR stop|start" >&2; exit 2 ;;
esac
