#!/usr/bin/env bash
# The demo: installs what is missing, builds, and runs kvidx on an embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh >/dev/null
echo "== kvidx index on the fleet workload (200k blocks), beside a mutex+unordered_map baseline =="
./build/bench/index_bench --blocks 200000 --lookups 50000
