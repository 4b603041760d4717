"""A typed client of kvidx's gRPC API (proto/kvidx/v1/kvidx.proto).

    from kvidx_client import KvidxClient
    with KvidxClient("127.0.0.1:50051") as kv:
        r = kv.lookup("demo-model", tokens=[...])
        print(r.prompt_blocks, r.best.pod if r.best else None)

Refusals raise KvidxError with the gRPC code, kvidx's reason and the AIBrix error code.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import grpc

from ._stubs import load as _load

pb, pb_grpc = _load()

__all__ = ["KvidxClient", "KvidxError", "LookupResult", "PodMatch", "pb"]


class KvidxError(Exception):
    """A refused call: `code` (grpc.StatusCode), `reason` (kvidx's, e.g. TOO_MANY_TOKENS),
    `aibrix_code` (1001-1007, 0 if none) and the server's message."""

    def __init__(self, code, reason, aibrix_code, message):
        super().__init__("%s %s: %s" % (code.name, reason, message))
        self.code, self.reason, self.aibrix_code, self.message = code, reason, aibrix_code, message


@dataclass
class PodMatch:
    pod: str
    dp_rank: int
    matched_blocks: int
    matched_tokens: int
    gpu_blocks: int
    cpu_blocks: int
    disk_blocks: int
    stream: str
    reachable: bool
    last_event_age_ms: int
    kvbm_instance: str = ""  # the KVBM instance id (decimal) whose events the publisher holds

    @staticmethod
    def of(m) -> "PodMatch":
        f = m.freshness
        return PodMatch(m.pod, m.dp_rank, m.matched_blocks, m.matched_tokens, m.gpu_blocks,
                        m.cpu_blocks, m.disk_blocks, f.stream, f.reachable, f.last_event_age_ms,
                        m.kvbm_instance)

    @staticmethod
    def of_column(pod, c, i: int, block_size: int) -> "PodMatch":
        f = pod.freshness
        return PodMatch(pod.pod, pod.dp_rank, c.matched_blocks[i], c.matched_blocks[i] * block_size,
                        c.gpu_blocks[i], c.cpu_blocks[i], c.disk_blocks[i], f.stream, f.reachable,
                        f.last_event_age_ms, pod.kvbm_instance)


@dataclass
class LookupResult:
    prompt_blocks: int
    block_size: int
    namespace_known: bool
    degraded: bool
    matches: List[PodMatch] = field(default_factory=list)
    best: Optional[PodMatch] = None

    @staticmethod
    def of(r) -> "LookupResult":
        return LookupResult(r.prompt_blocks, r.block_size, r.namespace_known, r.degraded,
                            [PodMatch.of(m) for m in r.matches],
                            PodMatch.of(r.best) if r.HasField("best") else None)

    @staticmethod
    def of_columns(r, pods) -> "LookupResult":
        c = r.columns
        matches = [PodMatch.of_column(pods[c.pod[i]], c, i, r.block_size)
                   for i in range(len(c.pod))]
        return LookupResult(r.prompt_blocks, r.block_size, r.namespace_known, r.degraded, matches,
                            matches[r.best_column] if r.best_column >= 0 else None)


def _error(e: grpc.RpcError) -> KvidxError:
    detail = pb.ErrorDetail()
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            detail.ParseFromString(value)
    return KvidxError(e.code(), detail.reason, detail.code, e.details())


class KvidxClient:
    """A channel to kvidx-query's router listener ("HOST:PORT", or "unix:PATH" for the admin
    socket); every call has a deadline of `timeout` seconds."""

    def __init__(self, address: str, timeout: float = 5.0, credentials=None):
        self.timeout = timeout
        self.channel = (grpc.secure_channel(address, credentials) if credentials
                        else grpc.insecure_channel(address))
        self.stub = pb_grpc.KvIndexStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(e) from None

    @staticmethod
    def query(model: str, tokens: Optional[Sequence[int]] = None,
              block_keys: Optional[Sequence[int]] = None,
              engine_hashes: Optional[Sequence[int]] = None, lora_name: str = "",
              candidates: Sequence[str] = (), max_blocks: int = 0, cache_salt: str = "",
              block_extra: Sequence[bytes] = (), kvbm_hashes: Optional[Sequence[int]] = None):
        """One LookupQuery: exactly one of tokens, block_keys, engine_hashes, kvbm_hashes
        (NVIDIA KVBM positional lineage hashes as u128 ints: each holder's answer is its deepest
        held position + 1 blocks). With tokens, cache_salt and block_extra (each block's
        extra-key msgpack bytes, b"" for none) are mixed into the block keys as
        docs/block-keys.md says."""
        if sum(x is not None for x in (tokens, block_keys, engine_hashes, kvbm_hashes)) != 1:
            raise ValueError("give exactly one of tokens, block_keys, engine_hashes, kvbm_hashes")
        q = pb.LookupQuery(namespace=pb.Namespace(model=model, lora_name=lora_name),
                           candidates=[pb.PodRef(pod=p, dp_rank=-1) for p in candidates],
                           max_blocks=max_blocks, cache_salt=cache_salt,
                           block_extra=list(block_extra))
        if tokens is not None:
            q.tokens.ids.extend(tokens)
        elif block_keys is not None:
            q.block_keys.keys.extend(block_keys)
        elif kvbm_hashes is not None:
            q.kvbm_hashes.hashes.extend(pb.KvbmHash(u128=h.to_bytes(16, "big"))
                                        for h in kvbm_hashes)
        else:
            q.engine_hashes.hashes.extend(engine_hashes)
        return q

    def lookup(self, model: str, **kwargs) -> LookupResult:
        """The pods holding the prompt's leading blocks (see query() for the arguments)."""
        return self.lookup_many([self.query(model, **kwargs)])[0]

    def lookup_many(self, queries, columnar: bool = False) -> List[LookupResult]:
        """One Lookup call. columnar=True asks for the columnar answer (each pod and its
        freshness once per call: fewer, smaller messages for large batches); the results are
        the same either way."""
        resp = self._call(self.stub.Lookup,
                          pb.LookupRequest(queries=list(queries), columnar=columnar))
        if columnar:
            return [LookupResult.of_columns(r, resp.pods) for r in resp.results]
        return [LookupResult.of(r) for r in resp.results]

    def stats(self):
        return self._call(self.stub.Stats, pb.StatsRequest())

    def pods(self):
        return list(self._call(self.stub.ListPods, pb.ListPodsRequest()).pods)

    def pod(self, name: str, dp_rank: int = 0):
        return self._call(self.stub.GetPod, pb.GetPodRequest(pod=name, dp_rank=dp_rank))

    def ping(self) -> None:
        self._call(self.stub.Ping, pb.PingRequest())
