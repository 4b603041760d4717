#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs every test (the release build; the
# whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer with LeakSanitizer; the
# index's concurrency tests under ThreadSanitizer), measures line and branch coverage over the
# sanitized run (scripts/coverage.sh), and ends with "N passed, N failed" counted in
# GoogleTest cases; the decoders are fuzzed (scripts/fuzz.sh). Exits non-zero if
# anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || exit 1
bash scripts/build.sh || exit 1

# ThreadSanitizer: only the index and its tests (TSan sees one address space, so the threaded
# variant of the multi-writer test is the one it checks; see tests/index/concurrency_test.cc).
if [ ! -f build-tsan/build.ninja ]; then
  meson setup build-tsan -Dservices=false -Db_sanitize=thread -Dbuildtype=debugoptimized -Dwerror=false \
    >/dev/null || exit 1
fi
ninja -C build-tsan -j2 tests/index/concurrency_test tests/index/prefix_index_test || exit 1
# AddressSanitizer + UBSan (+ LeakSanitizer): every test, services and tools included. The same
# build is instrumented for coverage (gcov), so one build and one run give both.
if [ ! -f build-asan/build.ninja ]; then
  meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=false \
    -Dbuildtype=debugoptimized -Db_coverage=true >/dev/null || exit 1
elif ! grep -q -- "--coverage" build-asan/build.ninja; then
  meson configure build-asan -Db_coverage=true >/dev/null || exit 1
fi
ninja -C build-asan -j2 || exit 1
find build-asan -name '*.gcda' -delete

rc=0
meson test -C build --num-processes 2 --print-errorlogs "$@" || rc=1
# The release run above does the stream machine's 100,000 schedules; under the sanitizers, whose
# code runs ~60x slower, 10,000 of them.
KVIDX_SIM_SCHEDULES=10000 \
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  meson test -C build-asan --no-rebuild --num-processes 2 --timeout-multiplier 3 \
  --print-errorlogs "$@" || rc=1
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  meson test -C build-tsan --no-rebuild --print-errorlogs concurrency_test prefix_index_test || rc=1
# Coverage of the project's own code (not tests, benches or generated code) over the sanitized
# run: at least 90 % of lines and 70 % of branches (throw branches and branches the compiler
# proves unreachable are not counted). Counts as one test.
lint=build/lint-testlog.json
: >"$lint"
record() {  # name, result
  printf '{"name": "%s", "result": "%s", "stdout": ""}\n' "$1" "$2" >>"$lint"
}
if bash scripts/coverage.sh build-asan; then
  record coverage OK
else
  record coverage FAIL
  rc=1
fi
# Lint: formatting and clang-tidy's error-level checks (bugprone, analyzer, concurrency,
# performance, naming) over the service code. Each counts as one test.
if ninja -C build clang-format-check >/dev/null 2>&1; then
  record clang-format OK
else
  echo "clang-format: files need formatting (run: ninja -C build clang-format)"
  record clang-format FAIL
  rc=1
fi
tidy_out=$(ls index/*.cc index/internal/*.cc shared/*.cc control/*.cc wire/*.cc config/*.cc \
  ingest/*.cc ingest/internal/*.cc query/*.cc |
  xargs -P2 -n1 clang-tidy -p build --quiet --extra-arg=-Wno-unknown-warning-option 2>/dev/null | grep -E "error:" || true)
if [ -z "$tidy_out" ]; then
  record clang-tidy OK
else
  echo "$tidy_out"
  record clang-tidy FAIL
  rc=1
fi
# Fuzzing under libFuzzer (ASan + UBSan), from fixed seeds: the decoders (500,000 inputs, the
# fast path checked against the general one) and the configuration (200,000 inputs, the
# FleetToml round trip checked). Counts as one test.
if bash scripts/fuzz.sh; then
  record fuzz-decoders-and-config OK
else
  echo "fuzz: a crash or a finding; the input is in build-fuzz/"
  record fuzz-decoders-and-config FAIL
  rc=1
fi
/usr/bin/python3 scripts/summarize_tests.py build/meson-logs/testlog.json \
  build-asan/meson-logs/testlog.json build-tsan/meson-logs/testlog.json "$lint" || rc=1
exit $rc
