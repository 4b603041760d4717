#!/usr/bin/python3
"""An independent publisher, written from ../shared/spec/wire.md alone (it shares no code with
kvidx-sim): binds a PUB socket and a ROUTER replay socket, publishes vLLM KVEventBatch payloads
packed with python3-msgpack (events as tagged maps and as positional arrays, hashes as ints,
negative ints and 32-byte digests, some batches lost on purpose so kvidx must replay), and
writes the kvidx block keys (docs/block-keys.md, computed here with python3-xxhash) that each
of its blocks should end up under.

usage: python_peer.py PORTS_FILE OUT_FILE [MODEL] [BLOCK_SIZE]
  binds free ports and writes "PUB ROUTER" to PORTS_FILE; waits for kvidx's first replay request
  (its worker is connected), publishes, writes OUT_FILE, then serves replays until killed.
"""
import os
import random
import struct
import sys
import time

import msgpack
import xxhash
import zmq

ports_path = sys.argv[1]
out_path = sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else "peer-model"
block_size = int(sys.argv[4]) if len(sys.argv) > 4 else 4
END = b"\xff" * 8

root = xxhash.xxh3_64_intdigest(b"kvidx-ns-v1\0" + model.encode() + b"\0",
                                seed=int.from_bytes(b"kvidxv01", "big"))


def block_key(parent, tokens):
    return xxhash.xxh3_64_intdigest(struct.pack("<%dI" % len(tokens), *tokens), seed=parent)


ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
router = ctx.socket(zmq.ROUTER)
router_port = router.bind_to_random_port("tcp://127.0.0.1")
with open(ports_path + ".tmp", "w") as f:
    f.write("%d %d\n" % (pub_port, router_port))
os.rename(ports_path + ".tmp", ports_path)
rng = random.Random(7)
history = []  # (seq, payload)
held = {}     # engine hash (as the decoder folds it) -> kvidx key
seq = 0


def serve_replays(timeout_ms=0):
    while router.poll(timeout_ms):
        frames = router.recv_multipart()
        if len(frames) != 3 or frames[1] != b"":
            continue
        start = int.from_bytes(frames[2], "big")
        ident = frames[0]
        for s, payload in history:
            if s >= start:
                router.send_multipart([ident, b"", s.to_bytes(8, "big"), payload])
        router.send_multipart([ident, b"", END, b""])
        timeout_ms = 0


def wire_hash(h, style):
    """The engine hash h (a u64) as the engine would put it on the wire."""
    if style == "bin":
        return bytes(range(24)) + h.to_bytes(8, "big")   # folded: last 8 bytes
    if style == "neg" and h >= 1 << 63:
        return h - (1 << 64)                             # builtin hash(): signed
    return h


def publish(events, lose=False):
    global seq
    batch = [time.time(), events, 0]
    payload = msgpack.packb(batch, use_bin_type=True)
    history.append((seq, payload))
    if not lose:
        pub.send_multipart([b"peer", seq.to_bytes(8, "big"), payload])
    seq += 1


# kvidx's first contact is a replay request from 0: once it comes, its worker is there. What
# the subscriber misses before it has joined is a gap that kvidx must replay anyway.
serve_replays(60000)
chains = []  # (engine hashes, keys) per stored chain
for step in range(120):
    serve_replays()
    style = ["int", "neg", "bin"][step % 3]
    as_map = step % 2 == 0
    events = []
    if chains and rng.random() < 0.35:
        hashes, keys = chains.pop(rng.randrange(len(chains)))
        for h in reversed(hashes):  # one BlockRemoved per hash, leaves first
            held.pop(h, None)
            ev = {"type": "BlockRemoved", "block_hashes": [wire_hash(h, style)], "medium": "GPU"}
            events.append(ev if as_map else ["BlockRemoved", ev["block_hashes"], "GPU", 0])
    n = rng.randint(1, 5)
    tokens = [rng.randrange(0, 150000) for _ in range(n * block_size)]
    hashes = [rng.getrandbits(64) for _ in range(n)]
    key, keys = root, []
    for i in range(n):
        key = block_key(key, tokens[i * block_size:(i + 1) * block_size])
        keys.append(key)
        held[hashes[i]] = key
    chains.append((hashes, keys))
    if as_map:
        events.append({"type": "BlockStored", "block_hashes": [wire_hash(h, style) for h in hashes],
                       "parent_block_hash": None, "token_ids": tokens, "block_size": block_size,
                       "lora_id": None, "medium": "GPU", "lora_name": None})
    else:
        events.append(["BlockStored", [wire_hash(h, style) for h in hashes], None, tokens,
                       block_size, None, "GPU", None])
    if step == 60:
        events = [["AllBlocksCleared"]]
        held.clear()
        chains.clear()
    publish(events, lose=(step % 17 == 5))
    time.sleep(0.005)

with open(out_path + ".tmp", "w") as f:
    for k in sorted(set(held.values())):
        f.write("%016x\n" % k)
os.rename(out_path + ".tmp", out_path)
while True:
    serve_replays(1000)
