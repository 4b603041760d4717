#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan) and runs each from its seeds:
# - decoder_fuzz, the batch decoders, from the golden payloads in tests/data (FUZZ_RUNS inputs,
#   default 500,000, about 25 s here); a disagreement between the fast and the general decoder
#   is a finding;
# - config_fuzz, the TOML configuration, from the README's example and the installed
#   configuration (CONFIG_FUZZ_RUNS, default 200,000); a configuration that does not survive
#   its FleetToml round trip is a finding.
# - lookup_fuzz, Lookup request validation by the real service over a real segment, from
#   well-formed requests it writes itself (LOOKUP_FUZZ_RUNS, default 100,000); a refusal without
#   a reason or an answer that breaks its invariants is a finding.
# FUZZ_SEED (default 1) makes a CI run repeatable; FUZZ_SECONDS instead runs each for that long
# with a random seed. Prints the executions and coverage reached per harness; exits non-zero on a
# crash, a sanitizer report or a finding (the input is kept in build-fuzz/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=build-fuzz
mkdir -p "$out/corpus" "$out/seeds"
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. -DMSGPACK_DEFAULT_API_VERSION=3 tests/fuzz/decoder_fuzz.cc ingest/decoder.cc \
  ingest/internal/object_parser.cc ingest/internal/kvbm_parser.cc ingest/fast_decoder.cc ingest/json_to_msgpack.cc wire/vocabulary.cc wire/lineage_hash.cc \
  $(pkg-config --libs absl_status absl_strings) -lxxhash -o "$out/decoder_fuzz" || exit 1
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
# run NAME SEEDS RUNS: one harness, its figures, its exit code.
run() {
  local name=$1 seeds=$2 runs=$3 b=("${budget[@]}")
  [ -n "${FUZZ_SECONDS:-}" ] || b=(-runs="$runs" -seed="${FUZZ_SEED:-1}")
  rm -rf "$out/corpus-$name" && mkdir -p "$out/corpus-$name"
  ASAN_OPTIONS=detect_leaks=1 "$out/$name" "${b[@]}" -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$out/$name-" "$out/corpus-$name" "$seeds" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name:"
  grep -E "^stat::number_of_executed_units|^stat::new_units_added|cov: " "$out/$name.log" | tail -3
  [ $rc -eq 0 ] || tail -40 "$out/$name.log"
  return $rc
}
run decoder_fuzz "$out/seeds" "${FUZZ_RUNS:-500000}"
rc=$?
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. -DTOML_HEADER_ONLY=0 tests/fuzz/config_fuzz.cc config/config.cc config/aibrix_env.cc config/sizing.cc wire/vocabulary.cc \
  $(pkg-config --libs tomlplusplus absl_statusor absl_status absl_strings absl_str_format) -lxxhash -o "$out/config_fuzz" || exit 1
mkdir -p "$out/config-seeds"
cp systemd/kvidx.toml "$out/config-seeds/installed.toml"
/usr/bin/python3 - "$out/config-seeds" <<'PY'
import os, re, sys
readme = open("README.md").read()
block = re.search(r"## Configuration.*?```toml\n(.*?)```", readme, re.S).group(1)
open(os.path.join(sys.argv[1], "readme.toml"), "w").write(block)
PY
run config_fuzz "$out/config-seeds" "${CONFIG_FUZZ_RUNS:-200000}"
rc2=$?
# lookup_fuzz: the real KvIndexService answering arbitrary LookupRequests over a real segment
# (the generated protobuf code comes from the release build, build/proto).
[ -f build/proto/kvidx.pb.cc ] || ninja -C build proto/libkvidx_proto.a >/dev/null || exit 1
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. -Ibuild/proto -DTOML_HEADER_ONLY=0 -DMSGPACK_DEFAULT_API_VERSION=3 -w \
  tests/fuzz/lookup_fuzz.cc query/service.cc query/admin.cc query/announce.cc query/answer.cc query/errors.cc \
  query/predictions.cc query/query_keys.cc query/tokenizer.cc \
  config/config.cc config/aibrix_env.cc config/sizing.cc \
  control/control_area.cc shared/log.cc shared/shm_file.cc wire/vocabulary.cc wire/lineage_hash.cc \
  index/block_key.cc index/internal/*.cc index/lookup.cc index/lookup_deepest.cc index/prefix_index.cc \
  index/robust_mutex.cc index/segment.cc build/proto/kvidx.pb.cc build/proto/kvidx.grpc.pb.cc \
  $(pkg-config --cflags --libs grpc++ protobuf tomlplusplus absl_statusor absl_status absl_strings absl_str_format) \
  -lxxhash -lpthread -lrt -o "$out/lookup_fuzz" || exit 1
mkdir -p "$out/lookup-seeds"
KVIDX_FUZZ_WRITE_SEEDS="$out/lookup-seeds" "$out/lookup_fuzz" >/dev/null 2>&1 || exit 1
run lookup_fuzz "$out/lookup-seeds" "${LOOKUP_FUZZ_RUNS:-100000}"
rc3=$?
[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ $rc3 -eq 0 ]
