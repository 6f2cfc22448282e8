#!/usr/bin/env bash
# Brings a real control plane up on 127.0.0.1: etcd, kube-apiserver (x509 + RBAC), kube-controller-manager
# (garbage collector, namespace, service-account and role-aggregation controllers; no cloud provider).
#
#   up.sh [DIR]      DIR defaults to $SONDE_CP_DIR or /tmp/sonde-cp. Everything of the run lives there:
#                    certs and service-account keys (generated per run), data, logs, pids and one kubeconfig per
#                    identity: admin.kubeconfig (system:masters) and user.kubeconfig (sonde-user, allowed only in
#                    namespace sonde-user). Prints DIR on stdout when the API server is ready.
#   down.sh [DIR]    stops it; keeps DIR (logs) when KEEP_LOGS=1 or when a process had already died.
#
# Reuse: when DIR holds a healthy control plane it is left alone and DIR is printed again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-${SONDE_CP_DIR:-/tmp/sonde-cp}}
bin=${SONDE_CONTROLPLANE_DIR:-$("$here/build.sh")}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
echo "$api_port" >"$dir/apiserver.port"

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
cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.0.0.1"
cert admin "/O=system:masters/CN=sonde-admin"
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
  --initial-cluster "sonde=http://127.0.0.1:$peer_port" --log-level warn >"$dir/etcd.log" 2>&1 &
echo $! >"$dir/etcd.pid"
for _ in $(seq 100); do
  curl -fsS --max-time 1 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
  kill -0 "$(cat "$dir/etcd.pid")" 2>/dev/null || fail "etcd exited"
  sleep 0.1
done

# --- kube-apiserver ---------------------------------------------------------------------------------------------
"$bin/kube-apiserver" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --authorization-mode=RBAC --anonymous-auth=false \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
  --cert-dir="$pki" --v=1 >"$dir/kube-apiserver.log" 2>&1 &
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
"$bin/kube-controller-manager" --kubeconfig="$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
  --controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --use-service-account-credentials --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --v=1 \
  >"$dir/kube-controller-manager.log" 2>&1 &
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
