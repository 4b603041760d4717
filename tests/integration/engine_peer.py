#!/usr/bin/python3
"""An inference engine's KV-event publisher, written from ../shared/spec/wire.md alone (no code
shared with kvidx or kvidx-sim): a PUB socket sending [topic, seq8, KVEventBatch] and a ROUTER
serving replays from a bounded ring of the batches it sent, in front of an LRU block cache
(vLLM-style content hashes chained from the parent, a fixed hash seed; BlockStored for the blocks
a request computes — from its first cache miss on, so a block may be stored again while one with
its hash is cached, a second reference, as in vLLM —, BlockRemoved for each block it evicts).
5 % of live batches are lost on purpose. KVIDX_PEER_TRACE=1 prints every batch's events.

It is driven by the test through files in DIR, one command at a time: the test writes
DIR/cmd.N (N = 1, 2, ...), the engine carries it out and writes DIR/ack.N. Between commands it
keeps answering replays.
  publish K   serve K requests, one batch each
  restart     a new engine process on the same ports: empty cache and ring, sequence from 0
  move        a new engine process on new ports (the pod moved); ack: "PUB ROUTER" ports
  lost        ack: how many live batches it has lost on purpose
  holdings    ack: the kvidx block keys (docs/block-keys.md) of every block the cache holds
  quit

usage: engine_peer.py DIR SEED [MODEL] [BLOCK_SIZE]
"""
import collections
import os
import random
import struct
import sys
import time

import msgpack
import xxhash
import zmq

DIR = sys.argv[1]
SEED = int(sys.argv[2])
MODEL = sys.argv[3] if len(sys.argv) > 3 else "peer-model"
BS = int(sys.argv[4]) if len(sys.argv) > 4 else 4
CACHE_BLOCKS = 120
RING = 400
LOSS = 0.05
END = b"\xff" * 8
TRACE = os.environ.get("KVIDX_PEER_TRACE") == "1"  # each batch's events on stdout (the log)

ROOT = xxhash.xxh3_64_intdigest(b"kvidx-ns-v1\0" + MODEL.encode() + b"\0",
                                seed=int.from_bytes(b"kvidxv01", "big"))


def kvidx_key(parent, tokens):
    return xxhash.xxh3_64_intdigest(struct.pack("<%dI" % len(tokens), *tokens), seed=parent)


def engine_hash(parent, tokens):
    # The engine's own block hash: content and parent, fixed seed (as vLLM with a hash seed).
    return xxhash.xxh64_intdigest(struct.pack("<Q%dI" % len(tokens), parent, *tokens), seed=42)


def write_whole(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


rng = random.Random(SEED)
# A pool of prompts sharing prefixes: 6 system prompts, each followed by per-user turns.
SYSTEMS = [[rng.randrange(1, 50000) for _ in range(BS * rng.randint(2, 6))] for _ in range(6)]


def make_prompt():
    sysp = SYSTEMS[rng.randrange(len(SYSTEMS))]
    user = rng.randrange(40)
    turn = [(user * 7919 + i * 31) % 50000 for i in range(BS * rng.randint(1, 8))]
    return sysp + turn


class Engine:
    def __init__(self, ctx, pub_port=0, router_port=0):
        self.pub = ctx.socket(zmq.PUB)
        self.router = ctx.socket(zmq.ROUTER)
        for s in (self.pub, self.router):
            s.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100000)
        self.pub_port = self.bind(self.pub, pub_port)
        self.router_port = self.bind(self.router, router_port)
        self.seq = 0
        self.ring = collections.deque(maxlen=RING)  # (seq, payload)
        self.cache = collections.OrderedDict()       # engine hash -> kvidx key, LRU first
        # Physical blocks per hash. A prefix hit stops at the first missing block, so the blocks
        # after it are computed again and stored as new blocks even when blocks with the same
        # hash are cached (vLLM keeps both under one hash): one BlockStored each, and one
        # BlockRemoved each when they are evicted.
        self.refs = {}

    @staticmethod
    def bind(sock, port):
        if port == 0:
            return sock.bind_to_random_port("tcp://127.0.0.1")
        deadline = time.time() + 10
        while True:  # the previous process's listener closes asynchronously
            try:
                sock.bind("tcp://127.0.0.1:%d" % port)
                return port
            except zmq.ZMQError:
                if time.time() > deadline:
                    raise
                time.sleep(0.005)

    def close(self):
        self.pub.close(0)
        self.router.close(0)

    def serve(self, timeout_ms=0):
        while self.router.poll(timeout_ms):
            timeout_ms = 0
            frames = self.router.recv_multipart()
            if len(frames) != 3 or frames[1] != b"" or len(frames[2]) != 8:
                continue
            start = int.from_bytes(frames[2], "big")
            for s, payload in list(self.ring):
                if s >= start:
                    self.router.send_multipart([frames[0], b"", b"kv", s.to_bytes(8, "big"),
                                                payload])
            self.router.send_multipart([frames[0], b"", b"kv", END, b""])

    def request(self):
        tokens = make_prompt()
        events = []
        parent_h, parent_k = None, ROOT
        new_hashes, new_tokens, first_parent = [], [], None
        chain = []
        for i in range(0, len(tokens) // BS * BS, BS):
            blk = tokens[i:i + BS]
            h = engine_hash(parent_h or 0, blk)
            k = kvidx_key(parent_k, blk)
            chain.append((h, k, blk, parent_h))
            parent_h, parent_k = h, k
        # Blocks already cached are touched, leaves first (so a parent is always more recent
        # than its children and is evicted after them, as vLLM frees a request's blocks in
        # reverse); the rest are stored, evicting the least recent.
        for h, k, blk, ph in reversed(chain):
            if h in self.cache:
                self.cache.move_to_end(h)
        first = next((i for i, c in enumerate(chain) if c[0] not in self.cache), len(chain))
        run = chain[first:]  # computed from the first miss on, stored as new blocks
        protect = {c[0] for c in chain}
        while self.cache and sum(self.refs.values()) + len(run) > CACHE_BLOCKS:
            victim = next((h for h in self.cache if h not in protect), None)
            if victim is None:
                break
            self.refs[victim] -= 1
            if self.refs[victim] == 0:
                del self.cache[victim]
                del self.refs[victim]
            events.append(["BlockRemoved", [victim], "GPU"])
        if run:
            # One BlockStored for the run of new blocks.
            for h, k, blk, ph in reversed(run):
                if h in self.cache:
                    self.refs[h] += 1
                    self.cache.move_to_end(h)
                else:
                    self.cache[h] = k
                    self.refs[h] = 1
            events.append(["BlockStored", [c[0] for c in run], run[0][3],
                           [t for c in run for t in c[2]], BS, None, "GPU", None])
        if not events:
            return  # a scheduler step without events publishes no batch
        if TRACE:
            print("batch %d: %s" % (self.seq, " ".join(
                ("S" + ",".join("%x:%x" % (h, self.cache[h]) for h in e[1])
                 if e[0] == "BlockStored" else "R%x" % e[1][0])
                for e in events)), flush=True)
        payload = msgpack.packb([time.time(), events, 0], use_bin_type=True)
        self.ring.append((self.seq, payload))
        if rng.random() >= LOSS:
            self.pub.send_multipart([b"kv", self.seq.to_bytes(8, "big"), payload])
        else:
            global lost
            lost += 1
        self.seq += 1


lost = 0  # live batches lost on purpose, all lives
ctx = zmq.Context()
engine = Engine(ctx)
write_whole(os.path.join(DIR, "ports"), "%d %d\n" % (engine.pub_port, engine.router_port))
n = 1
while True:
    cmd_path = os.path.join(DIR, "cmd.%d" % n)
    if not os.path.exists(cmd_path):
        engine.serve(10)
        continue
    with open(cmd_path) as f:
        cmd = f.read().split()
    ack = "ok\n"
    if cmd[0] == "publish":
        target = engine.seq + int(cmd[1])
        while engine.seq < target:
            engine.request()
            engine.serve(0)
    elif cmd[0] == "restart" or cmd[0] == "move":
        ports = (engine.pub_port, engine.router_port) if cmd[0] == "restart" else (0, 0)
        engine.close()
        engine = Engine(ctx, *ports)
        ack = "%d %d\n" % (engine.pub_port, engine.router_port)
    elif cmd[0] == "lost":
        ack = "%d\n" % lost
    elif cmd[0] == "holdings":
        ack = "".join("%016x\n" % k for k in sorted(set(engine.cache.values())))
    elif cmd[0] == "quit":
        write_whole(os.path.join(DIR, "ack.%d" % n), ack)
        break
    write_whole(os.path.join(DIR, "ack.%d" % n), ack)
    n += 1
