#!/usr/bin/python3
"""Two vLLM engines for the predictions test (python3-zmq, python3-msgpack; no kvidx code).

usage: predict_peer.py PORTS_FILE GO_FILE DONE_FILE
  binds a PUB and a ROUTER for pods "a" and "b", writes "pod PUB ROUTER" lines to PORTS_FILE;
  once both ROUTERs had kvidx's first replay request, pod "a" stores prompt W (tokens 100..107,
  2 blocks of 4). When GO_FILE appears, pod "a" stores prompt X (tokens 1..12, 3 blocks) and
  DONE_FILE is written. Serves replays until killed.
"""
import os
import sys
import time

import msgpack
import zmq

ports_path, go_path, done_path = sys.argv[1], sys.argv[2], sys.argv[3]
END = b"\xff" * 8
ctx = zmq.Context()
pods = {}
for pod in ("a", "b"):
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


def publish(pod, events):
    p = pods[pod]
    payload = msgpack.packb([time.time(), events, 0], use_bin_type=True)
    p["history"].append((p["seq"], payload))
    p["pub"].send_multipart([pod.encode(), p["seq"].to_bytes(8, "big"), payload])
    p["seq"] += 1


deadline = time.time() + 60
while not all(p["asked"] for p in pods.values()) and time.time() < deadline:
    serve_replays(200)
publish("a", [["BlockStored", [1001, 1002], None, list(range(100, 108)), 4, None, "GPU", None]])
while not os.path.exists(go_path):
    serve_replays(50)
publish("a", [["BlockStored", [11, 12, 13], None, list(range(1, 13)), 4, None, "GPU", None]])
with open(done_path + ".tmp", "w") as f:
    f.write("published\n")
os.rename(done_path + ".tmp", done_path)
while True:
    serve_replays(1000)
