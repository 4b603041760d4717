#!/usr/bin/env bash
# The demo: installs what is missing, builds, then runs kvidx on loopback with an embedded
# default configuration: kvidx-sim (8 simulated engines, every wire encoding: vLLM's four eras,
# SGLang, AIBrix, the sequence-id form and NVIDIA KVBM, with
# lost batches to replay), two kvidx-ingest workers, kvidx-query; shows real lookups and stats
# with kvidxctl, and shuts everything down (no processes or segments left behind).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh >/dev/null
B=build
DIR=$(mktemp -d /tmp/kvidx-demo.XXXXXX)
SEG="kvidx-demo-$$"
GRPC="${KVIDX_DEMO_GRPC:-127.0.0.1:50051}"
METRICS="${KVIDX_DEMO_METRICS:-127.0.0.1:9464}"
HTTP="${KVIDX_DEMO_HTTP:-127.0.0.1:8080}"
SIM_PORT="${KVIDX_DEMO_SIM_PORT:-5557}"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "/dev/shm/$SEG" "/dev/shm/$SEG.control"
  rm -rf "$DIR"
}
trap cleanup EXIT
ctl() { "$B/tools/kvidxctl" --server "$GRPC" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting kvidx-sim: 8 engines (every encoding), synthetic workload, 1 batch in 40 lost"
"$B/tools/kvidx-sim" --pods 8 --mixed-encodings --base-port "$SIM_PORT" --requests 4000 \
  --rate 250 --cache-blocks 600 --drop-every 40 --garbage-every 97 --model demo-model \
  --config-out "$DIR/sim.toml" --prompts-out "$DIR/prompts.txt" --start-delay-ms 1500 \
  --linger-ms 60000 >"$DIR/sim.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$DIR/sim.toml" ] && break; sleep 0.05; done
cat >"$DIR/kvidx.toml" <<TOML
[segment]
name = "$SEG"
blocks = 200000
pairs = 1000000
publishers = 64
namespaces = 16
stripes = 128

[ingest]
workers = 2

[query]
listen = "$GRPC"
metrics_listen = "$METRICS"
http_listen = "$HTTP"
admin_listen = "unix:$DIR/admin.sock"

TOML
cat "$DIR/sim.toml" >>"$DIR/kvidx.toml"
echo "configuration: $DIR/kvidx.toml"

say "starting two kvidx-ingest workers and kvidx-query"
for w in 0 1; do
  "$B/ingest/kvidx-ingest" --config "$DIR/kvidx.toml" --worker $w >"$DIR/ingest$w.log" 2>&1 &
  PIDS+=($!)
done
"$B/query/kvidx-query" --config "$DIR/kvidx.toml" >"$DIR/query.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ctl --timeout-ms 200 ping >/dev/null 2>&1 && break; sleep 0.1; done
ctl ping

say "letting the engines serve requests for 6 s"
sleep 6

say "kvidxctl status"
ctl status
say "kvidxctl pods"
ctl pods

n=0
while IFS= read -r line; do
  n=$((n + 1))
  say "lookup of sample prompt $n ($(echo "$line" | tr ',' '\n' | wc -l) tokens)"
  ctl lookup --model demo-model --tokens "$line"
done <"$DIR/prompts.txt"

say "lookup of a prompt nobody has seen"
ctl lookup --model demo-model --tokens 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32

say "lookup restricted to candidate pods pod-0,pod-1, as JSON"
head -n1 "$DIR/prompts.txt" | { read -r line; ctl --json lookup --model demo-model --tokens "$line" --candidates pod-0,pod-1; }

say "the same lookup over HTTP/JSON: curl -X POST http://$HTTP/v1/lookup"
head -n1 "$DIR/prompts.txt" | { read -r line; curl -s -X POST "http://$HTTP/v1/lookup" \
  -d "{\"queries\": [{\"namespace\": {\"model\": \"demo-model\"}, \"tokens\": {\"ids\": [$line]}}]}" |
  /usr/bin/python3 -c 'import json, sys; r = json.load(sys.stdin)["results"][0]; print("prompt blocks", r["promptBlocks"], "| best", r.get("best", {}).get("pod"), r.get("best", {}).get("matchedBlocks"), "blocks |", len(r["matches"]), "pods match")'; }

say "AIBrix status route: curl http://$HTTP/api/v1/cache/status"
curl -s "http://$HTTP/api/v1/cache/status"
echo

say "one AIBrix WebSocket event (ws://$HTTP/api/v1/cache/events) with python3-websocket"
/usr/bin/python3 -c 'import sys, websocket
ws = websocket.create_connection(sys.argv[1], timeout=10)
while True:
    m = ws.recv()
    if "block_" in m:
        print(m)
        break
ws.close()' "ws://$HTTP/api/v1/cache/events?stats_interval_ms=0"

say "the Python client (clients/python/README.md's example, verbatim but for the address)"
PYTHONPATH=clients/python /usr/bin/python3 -c '
from kvidx_client import KvidxClient
with KvidxClient("'"$GRPC"'") as kv:
    r = kv.lookup("demo-model", tokens=list(range(64)))
    print(r.prompt_blocks, "blocks;", len(r.matches), "pods match")
    print(kv.stats().blocks, "blocks indexed")'

say "a KVBM lookup: the lineage hashes of a prompt the KVBM engine served (Python client)"
if [ -s "$DIR/prompts.txt.kvbm" ]; then
  PYTHONPATH=clients/python /usr/bin/python3 -c '
import sys
from kvidx_client import KvidxClient
hashes = [int(h, 16) for h in open(sys.argv[2]).readlines()[-1].strip().split(",")]
with KvidxClient(sys.argv[1]) as kv:
    r = kv.lookup("demo-model-kvbm", kvbm_hashes=hashes)
    print(len(hashes), "lineage hashes (positions 16, 32, ...);", r.prompt_blocks, "blocks deep")
    for m in r.matches:
        print("  %s: deepest held position %d (%d blocks), KVBM instance %s"
              % (m.pod, m.matched_blocks - 1, m.matched_blocks, m.kvbm_instance))' \
    "$GRPC" "$DIR/prompts.txt.kvbm"
else
  echo "(the KVBM engine served no prompt of 33 blocks or more)"
fi

say "kvidxctl watch (the next 8 applied events)"
ctl watch --count 8

say "a bad request: more tokens than the configured maximum"
python3 -c "print(','.join(['7'] * 140000))" >"$DIR/huge.txt"
ctl lookup --model demo-model --tokens-file "$DIR/huge.txt" || true

say "admin calls: refused on the router listener, served on the admin socket"
ctl clear --pod pod-0 || true
"$B/tools/kvidxctl" --server "unix:$DIR/admin.sock" clear --pod pod-0

say "Prometheus metrics (excerpt)"
if command -v curl >/dev/null; then
  curl -s "http://$METRICS/metrics" | grep -E '^kvidx_(blocks|pairs|lookups_total|gaps_total|replays_total|bytes_per_pair) ' || true
else
  echo "(curl not installed; metrics are at http://$METRICS/metrics)"
fi

say "kvidxctl status (again)"
ctl status
say "shutting down"
