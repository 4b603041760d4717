#!/usr/bin/python3
"""Two vLLM engines for the engine-hash cross-check, written from ../shared/spec/wire.md §3
alone (hashlib and a hand-written canonical CBOR; python3-zmq, python3-msgpack):

  pod "good" publishes the hashes vLLM computes with --prefix-caching-hash-algo sha256_cbor and
             PYTHONHASHSEED=0;
  pod "bad"  publishes the same prompts with hashes of another seed ("1").

Each publishes five prompts of two blocks (block size 4), each followed by a continuation event
of one block naming its parent.

usage: hash_peer.py PORTS_FILE DONE_FILE
  binds a PUB and a ROUTER per pod and writes "pod PUB ROUTER" lines to PORTS_FILE; once both
  ROUTERs had kvidx's first replay request, publishes, writes DONE_FILE, serves replays.
"""
import hashlib
import os
import sys
import time

import msgpack
import zmq

ports_path, done_path = sys.argv[1], sys.argv[2]
BS = 4
END = b"\xff" * 8


def head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for code, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | code]) + n.to_bytes(size, "big")


def none_hash(seed):
    return hashlib.sha256(head(3, len(seed)) + seed.encode()).digest()


def block_digest(parent, tokens):
    body = b"\x83" + head(2, 32) + parent + head(4, len(tokens))
    body += b"".join(head(0, t) for t in tokens) + b"\xf6"
    return hashlib.sha256(body).digest()


def chain(seed, tokens):
    d, out = none_hash(seed), []
    for i in range(len(tokens) // BS):
        d = block_digest(d, tokens[i * BS:(i + 1) * BS])
        out.append(int.from_bytes(d[-8:], "big"))
    return out


ctx = zmq.Context()
pods = {}
for pod in ("good", "bad"):
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    pods[pod] = {"pub": pub, "pub_port": pub.bind_to_random_port("tcp://127.0.0.1"),
                 "router": router, "router_port": router.bind_to_random_port("tcp://127.0.0.1"),
                 "history": [], "seq": 0, "asked": False}
with open(ports_path + ".tmp", "w") as f:
    for pod, p in pods.items():
        f.write("%s %d %d\n" % (pod, p["pub_port"], p["router_port"]))
os.rename(ports_path + ".tmp", ports_path)


def serve_replays(timeout_ms=0):
    poller = zmq.Poller()
    for p in pods.values():
        poller.register(p["router"], zmq.POLLIN)
    for sock, _ in poller.poll(timeout_ms):
        p = next(p for p in pods.values() if p["router"] is sock)
        frames = sock.recv_multipart()
        if len(frames) != 3 or frames[1] != b"":
            continue
        p["asked"] = True
        start = int.from_bytes(frames[2], "big")
        for s, payload in p["history"]:
            if s >= start:
                sock.send_multipart([frames[0], b"", s.to_bytes(8, "big"), payload])
        sock.send_multipart([frames[0], b"", END, b""])


deadline = time.time() + 60
while not all(p["asked"] for p in pods.values()) and time.time() < deadline:
    serve_replays(200)

for pod, seed in (("good", "0"), ("bad", "1")):
    p = pods[pod]
    events = []
    for n in range(5):
        tokens = [1000 * n + i for i in range(3 * BS)]
        h = chain(seed, tokens)
        events.append(["BlockStored", h[:2], None, tokens[:2 * BS], BS, None, "GPU", None])
        events.append(["BlockStored", h[2:], h[1], tokens[2 * BS:], BS, None, "GPU", None])
    payload = msgpack.packb([time.time(), events, 0], use_bin_type=True)
    p["history"].append((0, payload))
    p["pub"].send_multipart([pod.encode(), (0).to_bytes(8, "big"), payload])
with open(done_path + ".tmp", "w") as f:
    f.write("published\n")
os.rename(done_path + ".tmp", done_path)
while True:
    serve_replays(1000)
