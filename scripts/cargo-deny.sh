#!/usr/bin/env bash
# Checks the dependency tree against deny.toml (licences, banned and wildcard dependencies, sources) with
# cargo-deny, built from crates.io once per machine into a per-version cache outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
dir=${SONDE_CACHE:-$HOME/.cache/sonde}/tools-cargo-deny-$version
if [ ! -x "$dir/bin/cargo-deny" ]; then
  cargo install --locked --quiet --root "$dir" --version "$version" cargo-deny >&2
fi
"$dir/bin/cargo-deny" --log-level warn check licenses bans sources
