#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds (or reuses) the Kubernetes control plane, checks format
# and lints, then runs every test -- unit, kernel (root) and end-to-end against a real kube-apiserver + etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export SONDE_CONTROLPLANE_DIR
SONDE_CONTROLPLANE_DIR=$(tests/controlplane/build.sh)
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
mkdir -p target
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One line for the whole run (cargo prints a summary per test binary). An ignored test counts as a failure.
awk -v status="$status" '/^test result:/ {p+=$4; f+=$6; i+=$8}
  END {printf "\nALL TESTS: %d passed, %d failed, %d ignored\n", p, f, i; exit (status != 0 || f > 0 || i > 0)}' target/test-output.log
