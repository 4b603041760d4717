#!/usr/bin/python3
"""Three engines with salted and multimodal-like prompts, written from ../shared/spec/wire.md and
docs/block-keys.md alone (Debian's python3-zmq, python3-msgpack, python3-xxhash; no kvidx code):

  pod "mm"     (vLLM, map events): prompt T with an image hash in block 0's extra_keys, and
               prompt V with a cache_salt field and no extra_keys;
  pod "plain"  (vLLM, tagged arrays): T and U with no extra keys;
  pod "salted" (SGLang, BlockStoredWithMetadata): U with {"cache_salt": "tenant-a"}.

usage: extra_keys_peer.py PORTS_FILE OUT_FILE
  binds a PUB and a ROUTER per pod on free ports and writes "pod PUB ROUTER" lines to
  PORTS_FILE; once every pod's ROUTER has had kvidx's first replay request, publishes, then
  writes to OUT_FILE the block keys each pod's blocks must have ("pod key-hex" lines), and the
  extra bytes it used ("extra name hex"); then serves replays until killed.
"""
import os
import struct
import sys
import time

import msgpack
import xxhash
import zmq

ports_path, out_path = sys.argv[1], sys.argv[2]
MODEL, BS = "xk", 4
END = b"\xff" * 8
root = xxhash.xxh3_64_intdigest(b"kvidx-ns-v1\0" + MODEL.encode() + b"\0",
                                seed=int.from_bytes(b"kvidxv01", "big"))


def keys(tokens, extras):
    """docs/block-keys.md: XXH3(tokens as u32 LE [+ ff ff ff ff + extra], seed = parent)."""
    out, k = [], root
    for i in range(len(tokens) // BS):
        data = struct.pack("<%dI" % BS, *tokens[i * BS:(i + 1) * BS])
        if i < len(extras) and extras[i]:
            data += b"\xff\xff\xff\xff" + extras[i]
        k = xxhash.xxh3_64_intdigest(data, seed=k)
        out.append(k)
    return out


T = list(range(100, 108))
U = list(range(200, 208))
V = list(range(300, 308))
image = [["img-1", 0]]                      # block 0's extra-keys tuple
image_bytes = msgpack.packb(image)
salt_a = msgpack.packb(["tenant-a"])
salt_b = msgpack.packb(["tenant-b"])

ctx = zmq.Context()
pods = {}
for pod in ("mm", "plain", "salted"):
    pub = ctx.socket(zmq.PUB)
    router = ctx.socket(zmq.ROUTER)
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


def publish(pod, batch):
    p = pods[pod]
    payload = msgpack.packb(batch, use_bin_type=True)
    p["history"].append((p["seq"], payload))
    p["pub"].send_multipart([pod.encode(), p["seq"].to_bytes(8, "big"), payload])
    p["seq"] += 1


deadline = time.time() + 60
while not all(p["asked"] for p in pods.values()) and time.time() < deadline:
    serve_replays(200)

now = time.time()
publish("mm", [now, [
    {"type": "BlockStored", "block_hashes": [11, 12], "parent_block_hash": None, "token_ids": T,
     "block_size": BS, "lora_id": None, "medium": "GPU", "lora_name": None,
     "extra_keys": [image, None]},
    {"type": "BlockStored", "block_hashes": [13, 14], "parent_block_hash": None, "token_ids": V,
     "block_size": BS, "lora_id": None, "medium": "GPU", "lora_name": None,
     "cache_salt": "tenant-b"},
], 0])
publish("plain", [now, [
    ["BlockStored", [21, 22], None, T, BS, None, "GPU", None],
    ["BlockStored", [23, 24], None, U, BS, None, "GPU", None],
], 0])
publish("salted", [now, [
    ["BlockStored", [31, 32], None, U, BS, None, "GPU", {"cache_salt": "tenant-a"}],
], 0])

expected = {
    "mm": keys(T, [image_bytes]) + keys(V, [salt_b]),
    "plain": keys(T, []) + keys(U, []),
    "salted": keys(U, [salt_a]),
}
with open(out_path + ".tmp", "w") as f:
    for pod, ks in expected.items():
        for k in ks:
            f.write("%s %016x\n" % (pod, k))
    f.write("extra image %s\n" % image_bytes.hex())
os.rename(out_path + ".tmp", out_path)
while True:
    serve_replays(1000)
