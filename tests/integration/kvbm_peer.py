#!/usr/bin/python3
"""One NVIDIA KVBM endpoint carrying two instances, written from ../shared/spec/wire.md §10
alone (python3-zmq, python3-msgpack): rmp-serde's encodings of KvbmCacheEvents, positional
lineage hashes packed as the spec's u128 (mode, position, parent fragment, current fragment,
most significant bits first) and as the newer struct.

usage: kvbm_peer.py DIR
  binds a PUB and a ROUTER, writes "PUB ROUTER" to DIR/ports.txt; once kvidx asked for its
  first replay, runs the phases below. Each phase writes DIR/phaseN.txt (the lineage hashes it
  published, "name position u128hex" per line) after publishing; phases 2 and 3 wait for
  DIR/goN.txt first. Serves replays throughout.

phase 1: instance A (4660) and instance B (2^100 + 5) alternate: A stores S at positions 16,
         32, 64 (u128, named variant map); B stores S at 16 and 32 (struct form, map and
         array), then T at 16; A stores S at 128 (older indexed variant).
phase 2: A shuts down ([2, []] indexed unit variant); B removes S at 32 (struct form).
phase 3: a new instance C (77) stores S at 16; then D (99), one instance more than kvidx is
         configured to keep, stores T at 32.
phase 4: a flood: 2000 batches, each from a new instance id (bin 16), each storing T at 64.
"""
import hashlib
import os
import sys
import time

import msgpack
import zmq

d = sys.argv[1]
END = b"\xff" * 8
A, B, C = 4660, (1 << 100) + 5, 77
FRAG = {0: 59, 1: 55, 2: 51}
POSBITS = {0: 8, 1: 16, 2: 24}


def mode_of(position):
    return 0 if position < 256 else 1 if position < 65536 else 2


def seq_hash(seq, position):
    """The 64-bit sequence hash of block `position` of sequence `seq` (any chained hash)."""
    return int.from_bytes(hashlib.sha256(("%s/%d" % (seq, position)).encode()).digest()[:8],
                          "big")


def plh(seq, position):
    """(u128 int, struct dict) of block `position` of `seq`."""
    cur = seq_hash(seq, position)
    par = seq_hash(seq, position - 1) if position > 0 else 0
    m = mode_of(position)
    f = FRAG[m]
    mask = (1 << f) - 1
    v = (m << 126) | (position << (2 * f)) | ((par & mask) << f) | (cur & mask)
    return v, {"current": cur, "parent": par, "position": position, "flags": 0}


def u128_bin(v):
    return v.to_bytes(16, "big")


ctx = zmq.Context()
pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
router_port = router.bind_to_random_port("tcp://127.0.0.1")
history = []
asked = [False]


def write(name, text):
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))


write("ports.txt", "%d %d\n" % (pub_port, router_port))


def serve(timeout_ms=0):
    if not router.poll(timeout_ms):
        return
    frames = router.recv_multipart()
    if len(frames) != 3 or frames[1] != b"":
        return
    asked[0] = True
    start = int.from_bytes(frames[2], "big")
    for s, payload in history:
        if s >= start:
            router.send_multipart([frames[0], b"", s.to_bytes(8, "big"), payload])
    router.send_multipart([frames[0], b"", END, b""])


def send(obj):
    seq = len(history)
    payload = msgpack.packb(obj, use_bin_type=True)
    history.append((seq, payload))
    pub.send_multipart([b"kvbm", seq.to_bytes(8, "big"), payload])


def wait_for(name):
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(d, name)) and time.time() < deadline:
        serve(100)


deadline = time.time() + 60
while not asked[0] and time.time() < deadline:
    serve(200)

listing = []


def note(name, seq, position):
    listing.append("%s %d %032x" % (name, position, plh(seq, position)[0]))


# Phase 1.
send({"events": {"Create": [u128_bin(plh("S", p)[0]) for p in (16, 32, 64)]},
      "instance_id": u128_bin(A)})
send([{"Create": [plh("S", 16)[1], list(plh("S", 32)[1].values())]}, u128_bin(B)])
send({"events": {"Create": [u128_bin(plh("T", 16)[0])]}, "instance_id": u128_bin(B)})
send([[0, [[u128_bin(plh("S", 128)[0])]]], A])
for p in (16, 32, 64, 128):
    note("S", "S", p)
note("T", "T", 16)
note("T", "T", 32)  # published in phase 3 only, by an instance kvidx refuses
note("T", "T", 64)  # published in phase 4 only, by the flood kvidx refuses
write("phase1.txt", "\n".join(listing) + "\n")

# Phase 2.
wait_for("go2.txt")
send([[2, []], A])
send([{"Remove": [plh("S", 32)[1]]}, u128_bin(B)])
write("phase2.txt", "done\n")

# Phase 3.
wait_for("go3.txt")
send({"events": {"Create": [u128_bin(plh("S", 16)[0])]}, "instance_id": C})
send({"events": {"Create": [u128_bin(plh("T", 32)[0])]}, "instance_id": 99})
write("phase3.txt", "done\n")

# Phase 4.
wait_for("go4.txt")
for i in range(2000):
    send({"events": {"Create": [u128_bin(plh("T", 64)[0])]},
          "instance_id": u128_bin((7 << 120) + i)})
    if i % 100 == 0:
        serve(0)
write("phase4.txt", "done\n")
while True:
    serve(1000)
