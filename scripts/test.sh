#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds (or reuses) the Kubernetes control plane, checks format
# and lints, then runs every test -- unit, kernel (root) and end-to-end against a real kube-apiserver + etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export SONDE_CONTROLPLANE_DIR
SONDE_CONTROLPLANE_DIR=$(tests/controlplane/build.sh)
export SONDE_HELM
SONDE_HELM=$(scripts/tools.sh)
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
mkdir -p target
# One control plane for every e2e test binary (the harness reuses it through SONDE_CP_DIR); its logs stay in
# target/controlplane when the run fails.
export SONDE_CP_DIR=$PWD/target/controlplane
tests/controlplane/up.sh "$SONDE_CP_DIR" >/dev/null
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
# The overload tests again on release builds: bounds and accounting must hold whatever the decoder's speed.
cargo test --release --locked --no-fail-fast -p sonde-probes -p sonde-cli --test overload 2>&1 |
  tee -a target/test-output.log
[ "${PIPESTATUS[0]}" = 0 ] || status=1
KEEP_LOGS=$([ "$status" = 0 ] && echo 0 || echo 1) tests/controlplane/down.sh "$SONDE_CP_DIR"
set -e
# One line for the whole run (cargo prints a summary per test binary). An ignored test counts as a failure.
awk -v status="$status" '/^test result:/ {p+=$4; f+=$6; i+=$8}
  END {printf "\nALL TESTS: %d passed, %d failed, %d ignored\n", p, f, i; exit (status != 0 || f > 0 || i > 0)}' target/test-output.log
