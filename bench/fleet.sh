#!/usr/bin/env bash
# Sonde at fleet scale: for each NODES (default 10 100 1000), a control plane of its own with NODES kwok nodes and
# a pod on each, the release operator and one simulated agent per node (`sonde-agent simulate-fleet`: the agent's
# own session watch, Lease, reporter and deadline, the kernel replaced by a counter), 50 TraceJobs and 20
# ProbePolicies on every node. Prints one table row per size (tests/src/fleet.rs: apply to Running, roll-up after
# the deadline, operator CPU and peak RSS, slow reconciles, the API server's own count of writes in steady state,
# watch events, etcd size, delete-all) and which of issue 23's targets held. bench/README.md holds the last table.
# Usage: bench/fleet.sh [NODES...]
set -euo pipefail
cd "$(dirname "$0")/.."
export SONDE_CONTROLPLANE_DIR=${SONDE_CONTROLPLANE_DIR:-$(tests/controlplane/build.sh)}
cargo build -q --release --locked -p sonde-operator -p sonde-agent
export SONDE_BIN_DIR=$PWD/target/release
[ $# -gt 0 ] || set -- 10 100 1000
cargo run -q --release --locked -p sonde-tests --example fleet -- "$@"
