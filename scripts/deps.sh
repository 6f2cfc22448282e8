#!/usr/bin/env bash
# Installs what building and testing Sonde needs on a Debian machine: clang/llvm for the eBPF programs, libbpf
# headers, bpftool, bpftrace (the benchmark's reference), ping/iproute2/perf for the kernel tests; for the real
# node of tests/node: containerd, runc, the CNI plugins, iptables/conntrack (kube-proxy), and buildah,
# busybox-static and a static libc (gcc) for its locally built images; Chromium and its WebDriver for the results
# server's web page test.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool bpftrace iputils-ping iproute2 linux-perf procps
  containerd runc containernetworking-plugins iptables conntrack buildah busybox-static gcc libc6-dev
  chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The S3 server the storage tests write to (moto's server mode: real S3 over HTTP).
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'moto[server]==5.2.1'
# The results server's API is fuzzed against its own OpenAPI document (schemathesis, CLI `st`).
python3 -c 'import schemathesis' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'schemathesis==4.32.5'
