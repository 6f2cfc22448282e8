#!/usr/bin/env bash
# Memory of the node agent's results path with 1 GB of events: the chunk writer and the results streamer sending closed
# chunks to a real S3 server (moto) as a trace does, then the rest sealed and delivered. Peak RSS is the
# process's VmHWM. Usage: bench/results-memory.sh [MB of NDJSON, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build -q --release -p sonde-agent --example results_memory
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break; sleep 0.2; done
python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT').create_bucket(Bucket='bench')"
target/release/examples/results_memory s3://bench/runs "${1:-1000}"
