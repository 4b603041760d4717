#!/usr/bin/python3
"""A publisher of the sequence-id dialect (wire.md §9), written from the spec: PUB + ROUTER
replay, three-frame messages, payloads {"events": [...]} packed with python3-msgpack.

usage: seqid_peer.py PORTS_FILE   (binds free ports, writes "PUB ROUTER" there, then runs until
                                   killed, serving replays)
"""
import os
import sys

import msgpack
import zmq

ports_path = sys.argv[1]
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
router = ctx.socket(zmq.ROUTER)
router_port = router.bind_to_random_port("tcp://127.0.0.1")
with open(ports_path + ".tmp", "w") as f:
    f.write("%d %d\n" % (pub_port, router_port))
os.rename(ports_path + ".tmp", ports_path)
END = b"\xff" * 8

batches = [
    {"events": [{"sequence_id": 1, "block_numbers": [0, 1, 2],
                 "block_token_ids": [[11, 12, 13, 14], [15, 16, 17, 18], [19, 20, 21, 22]]}]},
    {"events": [{"type": "block_stored", "sequence_id": 2, "block_numbers": [0],
                 "block_token_ids": [[11, 12, 13, 14]]}]},
    {"events": [{"sequence_id": 1, "block_numbers": [2]},
                {"type": "request_finished", "request_id": "req-one", "sequence_id": 1,
                 "finished": True}]},
    {"events": [{"type": "request_finished", "request_id": "two\nlines \\n", "sequence_id": 2,
                 "finished": False}]},
]
history = [(i, msgpack.packb(b, use_bin_type=True)) for i, b in enumerate(batches)]
for seq, payload in history:
    pub.send_multipart([b"seq", seq.to_bytes(8, "big"), payload])
while True:
    if router.poll(100):
        frames = router.recv_multipart()
        if len(frames) == 3 and frames[1] == b"":
            start = int.from_bytes(frames[2], "big")
            for seq, payload in history:
                if seq >= start:
                    router.send_multipart([frames[0], b"", seq.to_bytes(8, "big"), payload])
            router.send_multipart([frames[0], b"", END, b""])
