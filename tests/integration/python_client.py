#!/usr/bin/python3
"""A kvidx client in another language: generates Python stubs from proto/ at test time (Debian's
python3-grpc-tools), then runs a lookup and reads stats through a running kvidx-query, and
checks the standard health and reflection services with raw messages.

usage: python_client.py HOST:PORT PROMPT_TOKENS_FILE
Exits 0 when every check passes; prints what failed otherwise.
"""
import os
import subprocess
import sys
import tempfile

import grpc

addr, prompts_path = sys.argv[1], sys.argv[2]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
out = tempfile.mkdtemp(prefix="kvidx-pystubs-")
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(root, "proto/kvidx/v1"),
                "--python_out", out, "--grpc_python_out", out, "kvidx.proto"], check=True)
sys.path.insert(0, out)
import kvidx_pb2  # noqa: E402
import kvidx_pb2_grpc  # noqa: E402

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


channel = grpc.insecure_channel(addr)
stub = kvidx_pb2_grpc.KvIndexStub(channel)

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

stats = stub.Stats(kvidx_pb2.StatsRequest(), timeout=5)
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
