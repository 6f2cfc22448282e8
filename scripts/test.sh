#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds (or reuses) the Kubernetes control plane and node
# binaries, checks format, lints and the dependencies' licences, then runs every test -- unit, kernel (root)
# and end-to-end against a real kube-apiserver + etcd -- then the release images and the real-node tests:
# `helm install` of the chart on this host as a kubelet node (containerd, runc, CNI), field cases on real
# containers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export SONDE_CONTROLPLANE_DIR SONDE_HELM SONDE_NODE_BIN
# Tests that need root, the control plane or helm skip themselves under a plain `cargo test` as a user; here
# every one must run, and one that cannot fails (sonde_tests::requires!).
export SONDE_REQUIRE_ALL_TESTS=1
# One build per run: incremental compilation's caches would add 3 GB of disk for nothing.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
SONDE_CONTROLPLANE_DIR=$(tests/controlplane/build.sh)
SONDE_HELM=$(scripts/tools.sh)
SONDE_NODE_BIN=$(tests/node/build.sh)
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The probe library as a library user builds it: the vocabulary without its schema feature, and no Kubernetes
# crate in its tree.
cargo clippy -p sonde-vocab -p sonde-probes --locked -- -D warnings
if cargo tree -p sonde-probes -e normal --prefix none --locked | grep -E '^(kube|k8s-openapi|schemars) '; then
  echo "the probe library depends on the crates above; it must need sonde-vocab only" >&2
  exit 1
fi
scripts/cargo-deny.sh
mkdir -p target
log=target/test-output.log
status=0
# A failed step keeps the run going (every result is reported) but makes it red.
step() { if ! "$@" 2>&1 | tee -a "$log"; then status=1; fi; }
: >"$log"

# 1. Everything but the real node, on one control plane shared by every e2e test binary (the harness reuses it
# through SONDE_CP_DIR; its logs stay in target/controlplane when the run fails). The e2e harness registers this
# host as a Node by hand, so the real kubelet node comes later, on a control plane of its own.
export SONDE_CP_DIR=$PWD/target/controlplane
tests/controlplane/up.sh "$SONDE_CP_DIR" >/dev/null
step cargo test --workspace --locked --no-fail-fast -- --skip real_node_
KEEP_LOGS=$status tests/controlplane/down.sh "$SONDE_CP_DIR"
# 2. The overload tests again on release builds: bounds and accounting must hold whatever the decoder's speed.
step cargo test --release --locked --no-fail-fast -p sonde-probes -p sonde-cli --test overload
# 3. The images, from the same release build, then the real node: the chart installed as a user installs it.
export SONDE_IMAGES_DIR=$PWD/target/images SONDE_REALNODE_DIR=$PWD/target/realnode
step scripts/images.sh
step cargo test --locked --no-fail-fast -p sonde-tests --test realnode
KEEP_LOGS=$status tests/node/down.sh "$SONDE_REALNODE_DIR/node"
KEEP_LOGS=$status tests/controlplane/down.sh "$SONDE_REALNODE_DIR/cp"

# Kept for the run's record: the web page test's screenshots.
if [ -d target/artifacts ]; then echo "artifacts (target/artifacts):"; find target/artifacts -type f | sort; fi

# One line for the whole run (cargo prints a summary per test binary). An ignored test counts as a failure.
awk -v status="$status" '/^test result:/ {p+=$4; f+=$6; i+=$8}
  END {printf "\nALL TESTS: %d passed, %d failed, %d ignored\n", p, f, i; exit (status != 0 || f > 0 || i > 0)}' "$log"
