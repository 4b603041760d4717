#!/usr/bin/python3
"""A hostile publisher of the sequence-id dialect (wire.md §9): well-formed on the wire where it
must be (PUB [topic, seq8, payload], ROUTER replays of its last 64 batches), hostile in what it
sends. It binds free ports, writes "PUB ROUTER" to DIR/ports, waits for DIR/go, then floods:

  1. REQUESTS finished requests of unique sequences that never stored a block, 200-byte ids;
  2. SEQUENCES sequences of 8 stored blocks each, finished, never removed (the sequence table
     fills up to its budget);
  3. garbage: one- and two-frame messages, a payload past max_payload_bytes, an array header
     claiming a million events in a few bytes, truncated msgpack, unknown event tags;

and writes DIR/done with the sequence number of its last batch. It keeps serving replays until
killed. Its PUB queue is unbounded, so back-pressure reaches kvidx's queues at full force.

usage: hostile_peer.py DIR [REQUESTS] [SEQUENCES]
"""
import collections
import os
import sys

import msgpack
import zmq

DIR = sys.argv[1]
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 300000
SEQUENCES = int(sys.argv[3]) if len(sys.argv) > 3 else 40000
END = b"\xff" * 8

ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.SNDHWM, 0)
pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
router = ctx.socket(zmq.ROUTER)
router_port = router.bind_to_random_port("tcp://127.0.0.1")
with open(os.path.join(DIR, "ports.tmp"), "w") as f:
    f.write("%d %d\n" % (pub_port, router_port))
os.rename(os.path.join(DIR, "ports.tmp"), os.path.join(DIR, "ports"))

ring = collections.deque(maxlen=64)
seq = 0


def serve_replays(timeout_ms=0):
    """Answers the replay requests that arrive within timeout_ms (0: those already queued)."""
    while router.poll(timeout_ms):
        timeout_ms = 0
        frames = router.recv_multipart()
        if len(frames) == 3 and frames[1] == b"":
            start = int.from_bytes(frames[2], "big")
            for s, payload in ring:
                if s >= start:
                    router.send_multipart([frames[0], b"", s.to_bytes(8, "big"), payload])
            router.send_multipart([frames[0], b"", END, b""])


def publish(payload, record=True):
    global seq
    pub.send_multipart([b"kv", seq.to_bytes(8, "big"), payload])
    if record:
        ring.append((seq, payload))
    seq += 1
    if seq % 64 == 0:
        serve_replays()


while not os.path.exists(os.path.join(DIR, "go")):
    serve_replays(10)  # the test creates DIR/go; meanwhile replays are answered

# 1. Finished requests of sequences that hold nothing.
rid = "r" * 190
for base in range(0, REQUESTS, 1000):
    events = [{"type": "request_finished", "request_id": "%s%09d" % (rid, i), "sequence_id": 10**9 + i,
               "finished": True} for i in range(base, min(base + 1000, REQUESTS))]
    publish(msgpack.packb({"events": events}, use_bin_type=True))

# 2. Sequences that are never removed.
for base in range(0, SEQUENCES, 200):
    events = []
    for i in range(base, min(base + 200, SEQUENCES)):
        events.append({"sequence_id": i, "block_numbers": list(range(8)),
                       "block_token_ids": [[i, b, 7, 7] for b in range(8)]})
        events.append({"type": "request_finished", "request_id": "seq-%d" % i, "sequence_id": i,
                       "finished": True})
    publish(msgpack.packb({"events": events}, use_bin_type=True))

# 3. Garbage.
pub.send_multipart([b"kv"])
pub.send_multipart([b"kv", b"short"])
publish(b"\x81\xa6events\x91" + msgpack.packb({"sequence_id": 1, "block_numbers": [0],
                                                "block_token_ids": [[1] * (3 << 20)]}),
        record=False)  # not replayed either: a replay of it would be refused the same way
publish(b"\x81\xa6events\xdd\x00\x0f\x42\x40\x80\x80\x80")
publish(msgpack.packb({"events": [{"sequence_id": 5}]})[:-1])
publish(msgpack.packb({"events": [{"type": "no_such_event", "x": 1}] * 1000}))
publish(msgpack.packb({"events": []}))

with open(os.path.join(DIR, "done.tmp"), "w") as f:
    f.write("%d\n" % (seq - 1))
os.rename(os.path.join(DIR, "done.tmp"), os.path.join(DIR, "done"))
while True:
    serve_replays(1000)
