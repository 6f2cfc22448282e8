#!/usr/bin/env bash
# Removes everything tests/node/up.sh made on this host: its processes and every container, the mounts under
# NODEDIR, the pods' network namespaces, veths and bridge, the sonde0 link, its iptables chains and kube-proxy's
# and the kubelet's (KUBE-*), the /kubepods cgroups the kubelet made, the host sysctls it changed, and the Node
# object. Also cleans the host-wide leftovers of a run whose NODEDIR is gone (up.sh calls it before starting).
#   down.sh NODEDIR     NODEDIR is deleted unless KEEP_LOGS=1.
# shellcheck disable=SC2046 # lists of pids are meant to split into arguments
set -euo pipefail
nd=${1:?usage: down.sh NODEDIR}
nd=$(cd "$nd" 2>/dev/null && pwd || echo "$nd")
env_of() { sed -n "s/^$1=//p" "$nd/env" 2>/dev/null || true; }

# The Node object first, while the API server may still answer (pods bound to it are then garbage collected).
kubectl=$(env_of KUBECTL); cpd=$(env_of CP_DIR); name=$(env_of NODE_NAME)
if [ -x "$kubectl" ] && [ -f "$cpd/admin.kubeconfig" ]; then
  "$kubectl" --kubeconfig "$cpd/admin.kubeconfig" --request-timeout=5s delete node "$name" --wait=false \
    >/dev/null 2>&1 || true
fi

# --- processes: by pid file, and by command line naming NODEDIR in case a crash lost the pid files ---------------
ours() { # pids of our daemons and containerd's shims (their command lines name NODEDIR)
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(basename "$(readlink "$p/exe" 2>/dev/null)" 2>/dev/null) || continue
    case "$exe" in kubelet|kube-proxy|kube-scheduler|containerd|containerd-shim-runc-v2) ;; *) continue ;; esac
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$nd/" && echo "${p#/proc/}"
  done
}
stop() { # pid...  TERM, then KILL after 5 s
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    local alive=0 p; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0; sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}
pidof_file() { # the pid in NODEDIR/NAME.pid if that process still is NAME (pids get reused)
  local p; p=$(cat "$nd/$1.pid" 2>/dev/null) || return 0
  [ "$(basename "$(readlink "/proc/$p/exe" 2>/dev/null)")" = "$1" ] && echo "$p" || true
}
# The kubelet first, so it does not restart what goes next.
stop $(pidof_file kubelet) $(pidof_file kube-proxy) $(pidof_file kube-scheduler)
# Containers: runc's state for containerd's k8s.io namespace is under NODEDIR/runc; kill everything in each
# container's cgroup, then the shims and containerd.
for root in "$nd"/runc/*; do
  [ -d "$root" ] || continue
  for id in $(runc --root "$root" list -q 2>/dev/null); do
    runc --root "$root" kill --all "$id" KILL 2>/dev/null || true
    runc --root "$root" delete -f "$id" 2>/dev/null || true
  done
done
# Without NODEDIR's runc state (deleted after a crash), containers are found through the v1 pids hierarchy:
# on this hybrid host only the kubelet's containers live under its kubepods (the e2e harness's fake pods use the
# unified hierarchy only). Pure cgroup v2 hosts have no such hierarchy, and this finds nothing.
kill -9 $(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs $(find /sys/fs/cgroup/pids/kubepods -mindepth 2 \
  -name cgroup.procs 2>/dev/null) 2>/dev/null) 2>/dev/null || true
# containerd takes ~4 s to stop on SIGTERM, and its state goes with NODEDIR anyway.
p=$(pidof_file containerd); [ -z "$p" ] || kill -9 "$p" 2>/dev/null || true
stop $(ours)
rm -f "$nd"/*.pid

# --- mounts under NODEDIR (kubelet's rshared root and volumes, rootfs overlays, shm, netns), deepest first -------
for _ in 1 2 3; do
  mnts=$(awk -v d="$nd/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  [ -z "$mnts" ] && break
  for m in $mnts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done

# --- network: the pods' veths (their netns died with the last process and mount), the bridge, sonde0 -------------
for v in $(ip -o link show master cni-sonde0 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$v" 2>/dev/null || true
done
ip link del cni-sonde0 2>/dev/null || true
ip link del sonde0 2>/dev/null || true # a veth takes its peer sonde0p along
# iptables: kube-proxy's own cleanup (iptables, ipvs and nftables modes), then our chain and what the kubelet
# keeps (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...): every rule jumping to a SONDE-NODE-*/KUBE-* chain, then the
# chains. Only those names: the host's other rules stay.
proxy=$(env_of BIN_DIR)/kube-proxy
[ -x "$proxy" ] && "$proxy" --cleanup >/dev/null 2>&1 || true
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for t in filter nat mangle raw; do
    jumps=$("$ipt" -t "$t" -S 2>/dev/null | grep -E '^-A .* -j (SONDE-NODE-|KUBE-)' |
      grep -vE '^-A (SONDE-NODE-|KUBE-)' || true)
    while IFS= read -r rule; do
      [ -z "$rule" ] || eval "$ipt -t $t -D ${rule#-A }" 2>/dev/null || true
    done <<<"$jumps"
    chains=$("$ipt" -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(SONDE-NODE-|KUBE-)/ {print $2}')
    for c in $chains; do "$ipt" -t "$t" -F "$c" 2>/dev/null || true; done
    for c in $chains; do "$ipt" -t "$t" -X "$c" 2>/dev/null || true; done
  done
done

if [ -f "$nd/nft-tables.before" ] && command -v nft >/dev/null; then
  for ft in $(nft list tables 2>/dev/null | awk '$3 ~ /^(filter|nat|mangle|raw|security)$/ {print $2 ":" $3}'); do
    fam=${ft%:*} tbl=${ft#*:}
    grep -qx "table $fam $tbl" "$nd/nft-tables.before" && continue
    # Base chains with an accept policy and no rule left: exactly what iptables-nft created, a no-op.
    nft list table "$fam" "$tbl" | grep -vqE '^\s*(table |chain |type |\}|$)' || nft delete table "$fam" "$tbl"
  done
fi

# --- cgroups: the kubelet's /kubepods in every hierarchy (v1 controllers, name=systemd, unified), leaves first.
# rmdir only removes empty groups, so a group still holding someone's process (the e2e harness makes
# unified/kubepods/... for its own fake pods) stays. Nothing else in the hierarchies is touched.
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

# --- host files and settings ----------------------------------------------------------------------------------------
for l in /var/log/containers/*; do
  [ -L "$l" ] && case "$(readlink "$l")" in "$nd"/*) rm -f "$l" ;; esac
done
# CNI results naming a netns under NODEDIR; shim sockets, named sha256(<containerd socket>/k8s.io/<sandbox id>).
{ grep -lF "$nd/" /var/lib/cni/results/* 2>/dev/null || true; } | xargs -r rm -f
for sb in "$nd"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*; do
  [ -d "$sb" ] || continue
  rm -f "/run/containerd/s/$(printf '%s' "$nd/containerd.sock/k8s.io/${sb##*/}" | sha256sum | cut -d' ' -f1)"
done
if grep -qx /var/lib/kubelet "$nd/host-made" 2>/dev/null; then rm -f /var/lib/kubelet/device-plugins/kubelet.sock; fi
if [ -f "$nd/host-made" ]; then
  while IFS= read -r d; do # only what up.sh found missing, our subdirectory in it, and only when empty
    for sub in device-plugins results s; do rmdir "$d/$sub" 2>/dev/null || true; done
    rmdir "$d" 2>/dev/null || true
  done <"$nd/host-made"
fi
if [ -f "$nd/sysctl.saved" ]; then
  while IFS= read -r l; do sysctl -qw "$l" 2>/dev/null || true; done <"$nd/sysctl.saved"
  rm -f "$nd/sysctl.saved"
fi
[ "$(cat /run/sonde-node.dir 2>/dev/null)" = "$nd" ] && rm -f /run/sonde-node.dir

left=$(awk -v d="$nd/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)
if [ "${KEEP_LOGS:-0}" = 1 ] || [ "$left" != 0 ]; then
  [ "$left" = 0 ] || echo "$left mounts still under $nd; keeping it" >&2
  if [ -d "$nd" ]; then echo "node logs kept in $nd" >&2; fi
else
  rm -rf "$nd"
fi
