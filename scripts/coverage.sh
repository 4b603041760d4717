#!/usr/bin/env bash
# Line and branch coverage of kvidx's own code (index, shared, control, wire, config, ingest,
# query, tools; not tests, benches or generated code) from a build configured with
# -Db_coverage=true whose tests have run (scripts/test.sh uses the ASan build). Prints the
# figures and each file's, writes BUILD/coverage.txt, and fails under 90 % of lines or 70 % of
# branches. Throw branches and branches GCC proves unreachable are not counted.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-asan}
min_lines=${COVERAGE_MIN_LINES:-90}
min_branches=${COVERAGE_MIN_BRANCHES:-70}
args=(-r . "$build" -j2 --filter '(index|shared|control|wire|config|ingest|query|tools)/'
  --exclude '.*_test\.cc' --exclude-unreachable-branches --exclude-throw-branches)
gcovr "${args[@]}" -b -o "$build/coverage-branches.txt" || exit 1
summary=$(gcovr "${args[@]}" -o "$build/coverage.txt" --print-summary) || exit 1
lines=$(echo "$summary" | sed -n 's/^lines: \([0-9.]*\)%.*/\1/p')
branches=$(echo "$summary" | sed -n 's/^branches: \([0-9.]*\)%.*/\1/p')
echo "coverage: $(echo "$summary" | grep -E '^(lines|branches):' | tr '\n' ' ')(gates: lines $min_lines %, branches $min_branches %; per file: $build/coverage.txt)"
awk -v l="$lines" -v b="$branches" -v ml="$min_lines" -v mb="$min_branches" \
  'BEGIN { exit !(l >= ml && b >= mb) }' || {
  echo "coverage: below the gate"
  exit 1
}
