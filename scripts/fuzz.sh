#!/usr/bin/env bash
# Builds the libFuzzer harness of the batch decoders (clang, ASan + UBSan) and runs it from
# seeds made of the golden payloads in tests/data: FUZZ_RUNS inputs (default 500,000, about 25 s
# here) with FUZZ_SEED (default 1), so that a CI run is repeatable; FUZZ_SECONDS instead runs for
# that long with a random seed. Prints the
# executions and coverage reached; exits non-zero on a crash, a sanitizer report or a
# disagreement between the fast and the general decoder (the input is kept in build-fuzz/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=build-fuzz
mkdir -p "$out/corpus" "$out/seeds"
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. -DMSGPACK_DEFAULT_API_VERSION=3 tests/fuzz/decoder_fuzz.cc ingest/decoder.cc \
  ingest/internal/object_parser.cc ingest/internal/kvbm_parser.cc ingest/fast_decoder.cc ingest/json_to_msgpack.cc wire/vocabulary.cc \
  $(pkg-config --libs absl_status absl_strings) -o "$out/decoder_fuzz" || exit 1
# Seeds: each golden payload under every dialect byte (0 auto .. 5 kvbm).
/usr/bin/python3 - "$out/seeds" <<'PY'
import glob, os, sys
for path in glob.glob("tests/data/*.hex"):
    data = bytes.fromhex("".join(l.split("#")[0] for l in open(path)).replace(" ", "").replace("\n", ""))
    for d in range(6):
        open(os.path.join(sys.argv[1], "%s-%d" % (os.path.basename(path), d)), "wb").write(bytes([d]) + data)
PY
if [ -n "${FUZZ_SECONDS:-}" ]; then
  budget=(-max_total_time="$FUZZ_SECONDS")
else
  budget=(-runs="${FUZZ_RUNS:-500000}" -seed="${FUZZ_SEED:-1}")
fi
rm -rf "$out/corpus" && mkdir -p "$out/corpus"
ASAN_OPTIONS=detect_leaks=1 "$out/decoder_fuzz" "${budget[@]}" -max_len=4096 -print_final_stats=1 -artifact_prefix="$out/" "$out/corpus" "$out/seeds" \
  >"$out/fuzz.log" 2>&1
rc=$?
grep -E "^stat::number_of_executed_units|^stat::new_units_added|cov: " "$out/fuzz.log" | tail -3
[ $rc -eq 0 ] || tail -40 "$out/fuzz.log"
exit $rc
