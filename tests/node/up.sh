#!/usr/bin/env bash
# Brings this host up as a real Kubernetes node of the control plane in CPDIR (tests/controlplane/up.sh):
# containerd (Debian 1.6) + runc + CNI bridge, kubelet, kube-proxy (iptables) and kube-scheduler, all private to
# NODEDIR (config, state, sockets, logs) so nothing collides with a containerd or kubelet of the host.
#
#   up.sh CPDIR [NODEDIR]   NODEDIR defaults to $SONDE_NODE_DIR or /tmp/sonde-node. Prints NODEDIR once the Node
#                           is Ready and kube-proxy serves the `kubernetes` Service. NODEDIR/env has the node's
#                           name, IP, containerd socket, kubectl, image names (source it).
#   import-image.sh NODEDIR archive.tar   makes an OCI archive usable with imagePullPolicy: Never.
#   down.sh NODEDIR         removes everything up.sh made on the host; KEEP_LOGS=1 keeps NODEDIR.
#
# Host-wide names (one node per host): interface sonde0 with the node IP from CPDIR/node-ip, bridge cni-sonde0
# with pods on 10.88.0.0/16, iptables chain SONDE-NODE-PODS (pods may talk only to the host, pods and
# Services), ports 10250/10248 (kubelet) and 10249/10256 (kube-proxy) on 127.0.0.1 / the node IP, the
# /kubepods cgroups. Reuse: a healthy node of the same control plane is left alone. Anything else is torn down
# first (down.sh), including a node another NODEDIR left behind.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cpd=$(cd "${1:?usage: up.sh CPDIR [NODEDIR]}" && pwd)
nd=${2:-${SONDE_NODE_DIR:-/tmp/sonde-node}}
bin=${SONDE_NODE_BIN:-$("$here/build.sh")}
mkdir -p "$nd"
nd=$(cd "$nd" && pwd)
[ -s "$cpd/node-ip" ] && [ -s "$cpd/pki/ca.key" ] || {
  echo "the control plane in $cpd has no node-ip (started by an older up.sh?): restart it with down.sh + up.sh" >&2
  exit 1
}
node_ip=$(cat "$cpd/node-ip")
service_cidr=$(cat "$cpd/service-cidr")
api="https://127.0.0.1:$(cat "$cpd/apiserver.port")"
name=${SONDE_NODE_NAME:-$(tr 'A-Z' 'a-z' </proc/sys/kernel/hostname)}
pod_cidr=10.88.0.0/16
ca_sum=$(sha256sum <"$cpd/pki/ca.crt" | cut -c1-16)
k() { "$bin/kubectl" --kubeconfig "$cpd/admin.kubeconfig" --request-timeout=5s "$@"; }

# One node per host (the names above are host-wide): a lock, and /run/sonde-node.dir naming the current NODEDIR.
# The daemons get `9>&-`: a daemon holding the lock's descriptor would block every later caller.
exec 9>/run/sonde-node.lock
flock 9

running() { # NAME: NODEDIR/NAME.pid is a live NAME (a killed daemon can linger as a zombie: no exe). Right
  # after `NAME ... &` the child can still be the forking shell, not yet exec'd (seen on a busy machine).
  local p exe; p=$(cat "$nd/$1.pid" 2>/dev/null) || return 1
  exe=$(basename "$(readlink "/proc/$p/exe" 2>/dev/null)")
  [ "$exe" = "$1" ] || [ "$exe" = bash ]
}
healthy() {
  [ -f "$nd/env" ] && grep -qx "CA_SUM=$ca_sum" "$nd/env" || return 1
  for p in containerd kubelet kube-proxy kube-scheduler; do running "$p" || return 1; done
  ctr -a "$nd/containerd.sock" version >/dev/null 2>&1 &&
    [ "$(curl -fsS --max-time 2 http://127.0.0.1:10248/healthz 2>/dev/null)" = ok ] &&
    [ "$(k get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
# Imports each of scripts/images.sh's archives that changed since it was last imported (a reused node must run
# the images just built, not the ones it was first given).
import_images() {
  local images=${SONDE_IMAGES_DIR:-$here/../../target/images} a sum
  [ -s "$images/images.env" ] || images=$("$here/../../scripts/images.sh")
  # shellcheck disable=SC1091
  . "$images/images.env"
  mkdir -p "$nd/imported"
  for a in $SONDE_IMAGE_ARCHIVES; do
    sum=$(sha256sum <"$a" | cut -d' ' -f1)
    [ "$(cat "$nd/imported/$(basename "$a").sha256" 2>/dev/null)" = "$sum" ] && continue
    "$here/import-image.sh" "$nd" "$a" >/dev/null
    echo "$sum" >"$nd/imported/$(basename "$a").sha256"
  done
}
if healthy; then import_images; echo "$nd"; exit 0; fi
old=$(cat /run/sonde-node.dir 2>/dev/null || true)
if [ -n "$old" ] && [ "$old" != "$nd" ]; then "$here/down.sh" "$old" >&2 || true; fi
# down.sh also cleans host-wide leftovers (interfaces, chains, cgroups) of a run whose NODEDIR is gone.
KEEP_LOGS=0 "$here/down.sh" "$nd" >&2 || true
mkdir -p "$nd"/{pki,cni/net.d,cni/ipam,containerd,kubelet,pod-logs}
echo "$nd" >/run/sonde-node.dir
start_ns=$(date +%s%N)
ms() { echo $(( ($(date +%s%N) - start_ns) / 1000000 )); }

fail() {
  echo "node failed to come up: $1 (logs in $nd)" >&2
  for l in "$nd"/*.log; do [ -f "$l" ] && { echo "--- tail $l" >&2; tail -n 25 "$l" >&2; }; done
  exit 1
}
# Host settings the kubelet and the CNI bridge change: saved here, put back by down.sh (and the kubelet's kernel
# tunables right after it started: kernel.panic_on_oops=1 would turn an oops in a kernel test into a reboot).
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward)
for s in "${sysctls[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$nd/sysctl.saved"

# --- identities, signed by the control plane's CA -----------------------------------------------------------
pki="$nd/pki"
cert() { # name subject extendedKeyUsage [san]
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$3"; [ -z "${4:-}" ] || echo "subjectAltName=$4"; } >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$cpd/pki/ca.crt" -CAkey "$cpd/pki/ca.key" -CAcreateserial \
    -CAserial "$pki/ca.srl" -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
kubeconfig() { # name
  cat >"$nd/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sonde-test
  cluster: {server: "$api", certificate-authority: "$cpd/pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: $1
  context: {cluster: sonde-test, user: $1}
current-context: $1
EOF
}
# The Node authorizer and NodeRestriction let system:node:<name> touch only its own Node and pods.
cert kubelet "/O=system:nodes/CN=system:node:$name" clientAuth
cert kubelet-serving "/CN=$name" serverAuth "IP:$node_ip,DNS:$name"
cert kube-proxy "/CN=system:kube-proxy" clientAuth
cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
for c in kubelet kube-proxy kube-scheduler; do kubeconfig "$c"; done

# --- the node's address: a link of its own, never the host's interfaces ----------------------------------------
# 127.0.0.1 is refused as a node IP, and a pod's netns cannot reach the host's loopback. This kernel has no dummy
# driver, so a veth pair with both ends on the host serves when `type dummy` is missing.
ip link add sonde0 type dummy 2>/dev/null || ip link add sonde0 type veth peer name sonde0p
ip addr add "$node_ip/32" dev sonde0
ip link set sonde0 up
ip link show sonde0p >/dev/null 2>&1 && ip link set sonde0p up

# --- pods talk only to the host, to each other and to Services (DNAT happens before FORWARD) ---------------------
# The CNI bridge turns ip_forward on: nothing is forwarded out of the pod range, nor into it from elsewhere.
# iptables here is iptables-nft: the tables it creates stay (empty) after the last rule goes; down.sh deletes the
# empty ones that were not there before.
nft list tables 2>/dev/null >"$nd/nft-tables.before" || true
iptables -N SONDE-NODE-PODS
iptables -A SONDE-NODE-PODS -s "$pod_cidr" -d "$pod_cidr" -j RETURN
iptables -A SONDE-NODE-PODS -s "$pod_cidr" -j REJECT --reject-with icmp-net-prohibited
iptables -A SONDE-NODE-PODS -d "$pod_cidr" -j REJECT --reject-with icmp-net-prohibited
iptables -I FORWARD 1 -j SONDE-NODE-PODS

# Host paths the kubelet and containerd 1.6 use whatever their configuration says: container log links
# (/var/log/containers), the device-plugin socket (/var/lib/kubelet/device-plugins), CNI result cache
# (/var/lib/cni/results), shim sockets (/run/containerd/s), util-linux's utab (/run/mount). down.sh removes our
# files there, and the directories that did not exist before.
for d in /var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd /run/mount; do
  [ -e "$d" ] || echo "$d"
done >"$nd/host-made"

# --- containerd, private to NODEDIR -----------------------------------------------------------------------------
sock="$nd/containerd.sock"
snap=overlayfs
# overlayfs on NODEDIR's filesystem, or the slow but universal native snapshotter.
t="$nd/containerd/overlay-probe"; mkdir -p "$t"/{l,u,w,m}
if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
  umount "$t/m"
else snap=native; fi
rm -rf "$t"
# Images come from scripts/images.sh (pause for the sandbox; busybox, ping and sonde for tests and the chart).
images=${SONDE_IMAGES_DIR:-$here/../../target/images}
[ -s "$images/images.env" ] || images=$("$here/../../scripts/images.sh")
. "$images/images.env"
PAUSE_IMAGE=$SONDE_PAUSE_IMAGE BUSYBOX_IMAGE=$SONDE_BUSYBOX_IMAGE
# restrict_oom_score_adj: this machine refuses to lower oom_score_adj even for root, and without it every sandbox
# fails with "runc create failed: can't get final child's PID from pipe: EOF".
cat >"$nd/containerd/config.toml" <<EOF
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$nd/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snap"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$nd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni/net.d"
EOF
# The bridge's gateway is the pods' way to the node IP and to Services; no masquerade: nothing leaves the host.
cat >"$nd/cni/net.d/10-sonde.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "sonde", "plugins": [
  {"type": "bridge", "bridge": "cni-sonde0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$nd/cni/ipam", "ranges": [[{"subnet": "$pod_cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF
containerd --config "$nd/containerd/config.toml" </dev/null >"$nd/containerd.log" 2>&1 9>&- &
echo $! >"$nd/containerd.pid"
for _ in $(seq 100); do
  ctr -a "$sock" version >/dev/null 2>&1 && break
  running containerd || fail "containerd exited"
  sleep 0.1
done
ctr -a "$sock" version >/dev/null 2>&1 || fail "containerd did not answer on $sock"
import_images

# --- kubelet ------------------------------------------------------------------------------------------------------
# failCgroupV1: kubelet 1.35 refuses this hybrid host's v1 controllers otherwise. imageGCHighThresholdPercent 100:
# containerd 1.6 cannot pin the sandbox image, and local images cannot be pulled again. Eviction thresholds
# near zero: a test machine's full-ish disk must not evict test pods.
cat >"$nd/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
rotateCertificates: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $cpd/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
podLogsDir: $nd/pod-logs
volumePluginDir: $nd/kubelet/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%, imagefs.inodesFree: 1%}
EOF
"$bin/kubelet" --config="$nd/kubelet/config.yaml" --kubeconfig="$nd/kubelet.kubeconfig" \
  --root-dir="$nd/kubelet" --cert-dir="$pki" --node-ip="$node_ip" --hostname-override="$name" --v=1 \
  </dev/null >"$nd/kubelet.log" 2>&1 9>&- &
echo $! >"$nd/kubelet.pid"

# --- kube-proxy (iptables) and kube-scheduler ---------------------------------------------------------------------
# conntrack 0 / localhostNodePorts false: leave the host's conntrack and route_localnet sysctls alone.
cat >"$nd/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $nd/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $pod_cidr
hostnameOverride: $name
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$node_ip/32"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
"$bin/kube-proxy" --config="$nd/kube-proxy.yaml" --v=1 </dev/null >"$nd/kube-proxy.log" 2>&1 9>&- &
echo $! >"$nd/kube-proxy.pid"
"$bin/kube-scheduler" --kubeconfig="$nd/kube-scheduler.kubeconfig" --leader-elect=false --secure-port=0 --v=1 \
  </dev/null >"$nd/kube-scheduler.log" 2>&1 9>&- &
echo $! >"$nd/kube-scheduler.pid"

cat >"$nd/env" <<EOF
NODE_NAME=$name
NODE_IP=$node_ip
NODE_DIR=$nd
CP_DIR=$cpd
KUBECONFIG_ADMIN=$cpd/admin.kubeconfig
CONTAINERD_SOCK=$sock
POD_CIDR=$pod_cidr
SERVICE_CIDR=$service_cidr
BIN_DIR=$bin
KUBECTL=$bin/kubectl
PAUSE_IMAGE=$PAUSE_IMAGE
BUSYBOX_IMAGE=$BUSYBOX_IMAGE
CA_SUM=$ca_sum
EOF

# --- ready: the Node Ready (CNI config seen, runtime up), kube-proxy's rules for the `kubernetes` Service in place,
# and the default ServiceAccount a pod needs.
alive() { for p in containerd kubelet kube-proxy kube-scheduler; do running "$p" || fail "$p exited"; done; }
for _ in $(seq 240); do
  alive
  [ "$(k get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
  sleep 0.5
done
[ "$(k get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] ||
  fail "Node $name not Ready after 120s"
ready_ms=$(ms)
# The kubelet set its kernel tunables once, at start: put the host's back now. ip_forward is the CNI bridge's
# (it turns it on with the first pod); down.sh restores it.
grep -v ip_forward "$nd/sysctl.saved" | while IFS= read -r l; do sysctl -qw "$l" || true; done
for _ in $(seq 120); do
  alive
  iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https' &&
    k -n default get serviceaccount default >/dev/null 2>&1 && break
  sleep 0.5
done
iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https' ||
  fail "kube-proxy did not program the kubernetes Service"
# kube-proxy put its FORWARD jumps before ours: ours goes first again (kube-proxy only re-adds missing rules).
iptables -D FORWARD -j SONDE-NODE-PODS
iptables -I FORWARD 1 -j SONDE-NODE-PODS
echo "node $name ($node_ip) Ready in $ready_ms ms, Services in $(ms) ms ($nd)" >&2
echo "$nd"
