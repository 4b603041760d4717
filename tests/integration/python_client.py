#!/usr/bin/python3
"""A kvidx client in another language: the project's Python client (clients/python, its stubs
generated from proto/ with Debian's python3-grpc-tools) runs lookups and reads stats through a
running kvidx-query; the raw stub checks the errors' details; the standard health and
reflection services are checked with raw messages.

usage: python_client.py HOST:PORT PROMPT_TOKENS_FILE
Exits 0 when every check passes; prints what failed otherwise.
"""
import os
import sys

import grpc

addr, prompts_path = sys.argv[1], sys.argv[2]
# The project's own client package (clients/python): from the directory it was installed into
# (KVIDX_CLIENT_PATH), else from the repository.
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.environ.get("KVIDX_CLIENT_PATH") or os.path.join(root, "clients", "python"))
import kvidx_client  # noqa: E402
from kvidx_client import KvidxClient, KvidxError, pb as kvidx_pb2  # noqa: E402

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


if os.environ.get("KVIDX_CLIENT_PATH"):
    check(os.path.dirname(kvidx_client.__file__).startswith(os.environ["KVIDX_CLIENT_PATH"]),
          "the installed package is the one imported")
    check(hasattr(kvidx_client.pb, "LookupRequest") and
          kvidx_client.pb.__name__ == "kvidx_client.kvidx_pb2", "installed with its built stubs")
kv = KvidxClient(addr)
channel = kv.channel
stub = kv.stub

tokens = [int(t) for t in open(prompts_path).readline().strip().split(",")]
req = kvidx_pb2.LookupRequest(queries=[
    kvidx_pb2.LookupQuery(namespace=kvidx_pb2.Namespace(model="qm"),
                          tokens=kvidx_pb2.TokenIds(ids=tokens)),
    kvidx_pb2.LookupQuery(namespace=kvidx_pb2.Namespace(model="not-a-model"),
                          tokens=kvidx_pb2.TokenIds(ids=[1, 2, 3])),
])
resp = stub.Lookup(req, timeout=5)
check(len(resp.results) == 2, "two results")
check(resp.results[0].namespace_known, "namespace known")
check(resp.results[0].prompt_blocks == len(tokens) // 16, "prompt blocks")
check(not resp.results[1].namespace_known, "unknown namespace is an answer")

# The typed wrapper agrees with the raw answer.
typed = kv.lookup("qm", tokens=tokens)
check(typed.namespace_known and typed.prompt_blocks == len(tokens) // 16, "typed lookup")
check(typed.block_size == 16, "typed block size")
check(not typed.matches or typed.best is not None, "a best pod when some pod matches")
check(all(m.pod.startswith("pod-") for m in typed.matches), "typed matches name pods")
check(not kv.lookup("not-a-model", tokens=[1, 2, 3]).namespace_known, "typed unknown namespace")
# A columnar call gives the same results (ages aside: they are read at each call).
batch = [kv.query("qm", tokens=tokens), kv.query("qm", tokens=tokens[:32]),
         kv.query("not-a-model", tokens=[1, 2, 3]), kv.query("qm", block_keys=[1, 2, 3])]
def without_age(results):
    return [(r.prompt_blocks, r.namespace_known, [(m.pod, m.matched_blocks, m.matched_tokens,
             m.gpu_blocks, m.stream, m.reachable) for m in r.matches],
             r.best.pod if r.best else None) for r in results]
rows, cols = kv.lookup_many(batch), kv.lookup_many(batch, columnar=True)
check(without_age(rows) == without_age(cols), "columnar results equal PodMatch results: %r / %r"
      % (without_age(rows), without_age(cols)))
check(len(cols) == 4 and not cols[2].namespace_known and cols[3].best is None,
      "columnar: an unknown namespace and a miss are answers")
by_keys = kv.lookup("qm", block_keys=[1, 2, 3])
check(by_keys.matches == [] and by_keys.best is None, "typed miss by block keys")
try:
    kv.lookup("qm", tokens=[7] * 5000)
    failures.append("too many tokens should be refused")
except KvidxError as e:
    check(e.code == grpc.StatusCode.INVALID_ARGUMENT and e.reason == "TOO_MANY_TOKENS",
          "KvidxError carries code and reason, got %r" % e)
    check(e.aibrix_code == 0, "no AIBrix code for TOO_MANY_TOKENS")
# Cache salts and per-block extra keys reach the server: the two together are refused there.
salted = kv.query("qm", tokens=tokens, cache_salt="tenant-a", block_extra=[b"", b"\x91\x01"])
check(salted.cache_salt == "tenant-a" and list(salted.block_extra) == [b"", b"\x91\x01"],
      "query carries cache_salt and block_extra")
try:
    kv.lookup("qm", tokens=tokens, cache_salt="tenant-a", block_extra=[b"\x90"])
    failures.append("cache_salt beside block_extra[0] should be refused")
except KvidxError as e:
    check(e.reason == "SALT_AND_EXTRA", "SALT_AND_EXTRA, got %r" % e)
try:
    kv.pod("nobody")
    failures.append("an unknown pod should be refused")
except KvidxError as e:
    check(e.code == grpc.StatusCode.NOT_FOUND and e.reason == "UNKNOWN_POD", "UNKNOWN_POD")
check(len(kv.pods()) >= 4, "typed pods")
kv.ping()

stats = kv.stats()
check(stats.publishers >= 4, "stats publishers")
check(stats.blocks > 0, "stats blocks")
check(stats.lookups > 0, "stats lookups")

try:
    stub.Lookup(kvidx_pb2.LookupRequest(queries=[kvidx_pb2.LookupQuery(
        namespace=kvidx_pb2.Namespace(model="qm"))]), timeout=5)
    failures.append("a query without input should fail")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT for no input")
    detail = kvidx_pb2.ErrorDetail()
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            detail.ParseFromString(value)
    check(detail.reason == "NO_INPUT", "reason detail NO_INPUT, got %r" % detail.reason)

# grpc.health.v1.Health/Check with an empty HealthCheckRequest: SERVING is field 1 = 1.
health = channel.unary_unary("/grpc.health.v1.Health/Check")
check(health(b"", timeout=5) == b"\x08\x01", "health SERVING")

# Server reflection: list_services (field 7, empty string) names kvidx.v1.KvIndex.
reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
answer = b"".join(reflect(iter([b"\x3a\x00"]), timeout=5))
check(b"kvidx.v1.KvIndex" in answer, "reflection lists kvidx.v1.KvIndex")

if failures:
    print("FAILED:", "; ".join(failures))
    sys.exit(1)
print("python client: lookup, stats, errors, health and reflection OK")
