#!/usr/bin/env bash
# Brings a real control plane up: etcd on 127.0.0.1, kube-apiserver (x509, Node+RBAC authorization) and
# kube-controller-manager with its full default controller set (no cloud provider). The API server listens on all
# addresses and advertises $SONDE_NODE_IP (default 10.244.255.1): the address tests/node/up.sh gives the node,
# so pods reach it through the `kubernetes` Service; clients here keep using https://127.0.0.1:<port>.
#
#   up.sh [DIR]      DIR defaults to $SONDE_CP_DIR or /tmp/sonde-cp. Everything of the run lives there:
#                    certs and service-account keys (generated per run), data, logs, pids and one kubeconfig per
#                    identity: admin.kubeconfig (system:masters) and user.kubeconfig (sonde-user, allowed only in
#                    namespace sonde-user). Prints DIR on stdout when the API server is ready. node-ip and
#                    service-cidr are for tests/node/up.sh. Anonymous requests are refused on every address.
#   down.sh [DIR]    stops it; keeps DIR (logs) when KEEP_LOGS=1 or when a process had already died.
#
# Reuse: when DIR holds a healthy control plane it is left alone and DIR is printed again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-${SONDE_CP_DIR:-/tmp/sonde-cp}}
bin=${SONDE_CONTROLPLANE_DIR:-$("$here/build.sh")}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# The daemons get `9>&-`: a daemon holding the lock's descriptor would block every later caller.
exec 9>"$dir/.lock"
flock 9

ready() {
  [ -f "$dir/admin.kubeconfig" ] || return 1
  curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "https://127.0.0.1:$(cat "$dir/apiserver.port")/readyz" >/dev/null 2>&1
}
if ready; then echo "$dir"; exit 0; fi
# Whatever is left of an earlier run goes: a half-started plane is worse than a slow start.
"$here/down.sh" "$dir" >/dev/null 2>&1 || true
mkdir -p "$dir"
rm -rf "$dir/pki" "$dir/etcd-data" "$dir"/*.log "$dir"/*.pid "$dir"/*.kubeconfig
start_ns=$(date +%s%N)

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
etcd_port=$(free_port 127.0.0.1); peer_port=$(free_port 127.0.0.1); api_port=$(free_port 0.0.0.0)
echo "$api_port" >"$dir/apiserver.port"
# A node's address (tests/node/up.sh puts it on an interface of its own; it need not exist yet) and the Service
# range, whose first address is the `kubernetes` Service. Both private; the node scripts read them from here.
node_ip=${SONDE_NODE_IP:-10.244.255.1}
service_cidr=10.96.0.0/16
echo "$node_ip" >"$dir/node-ip"
echo "$service_cidr" >"$dir/service-cidr"

# --- PKI: one CA for serving and client certs, a key pair for service-account tokens -------------------------
pki="$dir/pki"; mkdir -p "$pki"
openssl_q() { openssl "$@" 2>/dev/null; }
openssl_q req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=sonde-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
cert() { # name subject [san]
  local name=$1 subj=$2 san=${3:-}
  openssl_q req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$pki/$name.key" -out "$pki/$name.csr"
  local ext="$pki/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi; } >"$ext"
  openssl_q x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$pki/$name.crt"
}
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:$node_ip,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=sonde-admin"
# The API server's client identity towards kubelets (logs, exec, port-forward): the kubelet asks the API server
# to authorize it (webhook), and system:masters may do anything.
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert user "/O=sonde-users/CN=sonde-user"
cert controller-manager "/CN=system:kube-controller-manager"
openssl_q genrsa -out "$pki/sa.key" 2048
openssl_q rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

kubeconfig() { # identity
  local who=$1
  cat >"$dir/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sonde-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $who
  user:
    client-certificate: $pki/$who.crt
    client-key: $pki/$who.key
contexts:
- name: $who
  context: {cluster: sonde-test, user: $who}
current-context: $who
EOF
}

fail() {
  echo "control plane failed to start: $1 (logs in $dir)" >&2
  for l in "$dir"/*.log; do echo "--- tail $l" >&2; tail -n 20 "$l" >&2; done
  exit 1
}

# --- etcd -----------------------------------------------------------------------------------------------------
"$bin/etcd" --name sonde --data-dir "$dir/etcd-data" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "sonde=http://127.0.0.1:$peer_port" --log-level warn >"$dir/etcd.log" 2>&1 9>&- &
echo $! >"$dir/etcd.pid"
for _ in $(seq 100); do
  curl -fsS --max-time 1 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
  kill -0 "$(cat "$dir/etcd.pid")" 2>/dev/null || fail "etcd exited"
  sleep 0.1
done

# --- kube-apiserver ---------------------------------------------------------------------------------------------
# Its command is a script of its own, so a test can stop this API server and start the same one again
# (tests/controlplane/apiserver.sh); the log is appended to.
cat >"$dir/kube-apiserver.sh" <<EOF
#!/usr/bin/env bash
exec "$bin/kube-apiserver" --bind-address=0.0.0.0 --advertise-address="$node_ip" --secure-port="$api_port" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --anonymous-auth=false \
  --allow-privileged=true --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" --kubelet-certificate-authority="$pki/ca.crt" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" --service-cluster-ip-range="$service_cidr" \
  --cert-dir="$pki" --v=1 >>"$dir/kube-apiserver.log" 2>&1
EOF
: >"$dir/kube-apiserver.log"
bash "$dir/kube-apiserver.sh" </dev/null 9>&- &
echo $! >"$dir/kube-apiserver.pid"
kubeconfig admin
for _ in $(seq 600); do
  ready && break
  kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null || fail "kube-apiserver exited"
  sleep 0.1
done
ready || fail "kube-apiserver not ready after 60s"
kubeconfig user
kubeconfig controller-manager

# --- kube-controller-manager ------------------------------------------------------------------------------------
# Every default controller: a real node needs the DaemonSet/ReplicaSet/Deployment controllers, the root-CA
# publisher (pods with a service-account token wait for kube-root-ca.crt) and node lifecycle (it lifts the
# not-ready taint a new Node is created with). Node lifecycle would also mark the Nodes the e2e harness registers
# by hand Unknown after 50s without a heartbeat and evict their pods 5 min later: a day of grace keeps them Ready.
# Cloud controllers skip themselves without a cloud provider. The CA signs approved CSRs. The volume controllers
# would create their FlexVolume directory under /usr/libexec: it goes in DIR.
"$bin/kube-controller-manager" --kubeconfig="$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
  --controllers='*' --node-monitor-grace-period=24h \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --flex-volume-plugin-dir="$dir/flexvolume" \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --use-service-account-credentials --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --v=1 \
  >"$dir/kube-controller-manager.log" 2>&1 9>&- &
echo $! >"$dir/kube-controller-manager.pid"

# --- the namespaced identity: sonde-user may work with Sonde objects and read pods only in namespace sonde-user -
kubectl --kubeconfig "$dir/admin.kubeconfig" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: sonde-user}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sonde-user, namespace: sonde-user}
rules:
- apiGroups: [sonde.dev]
  resources: [tracejobs, probepolicies]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [sonde.dev]
  resources: [tracejobs/status, probepolicies/status, probesessions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods, events]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: sonde-user, namespace: sonde-user}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sonde-user}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: sonde-user}
EOF
echo "control plane ready in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms: https://127.0.0.1:$api_port ($dir)" >&2
echo "$dir"
