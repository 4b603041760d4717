#!/usr/bin/python3
"""A WebSocket client of kvidx-query's HTTP listener (Debian's python3-websocket): reads COUNT
messages of a route and checks each one's shape.

usage: ws_client.py URL COUNT (aibrix|proto)
  aibrix: /api/v1/cache/events, {"type", "timestamp", "data"} messages
  proto:  /v1/events, the canonical JSON of kvidx.v1.WatchEvent
Exits 0 when COUNT well-formed messages arrived (within 30 s), prints what failed otherwise.
"""
import json
import sys

import websocket

url, count, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ws = websocket.create_connection(url, timeout=30)
seen = {}
try:
    for i in range(count):
        msg = json.loads(ws.recv())
        if kind == "aibrix":
            assert msg["type"] in ("block_stored", "block_removed", "cache_cleared",
                                   "stats_update"), msg
            assert isinstance(msg["timestamp"], (int, float)) and msg["timestamp"] > 1.6e9, msg
            data = msg["data"]
            if msg["type"] in ("block_stored", "block_removed"):
                assert data["pod"].startswith("pod-"), msg
                assert data["blocks"] >= 1 and "block_numbers" in data, msg
                assert "sequence_id" in data, msg
            if msg["type"] == "block_stored":
                assert "block_token_ids" in data, msg
            if msg["type"] == "stats_update":
                assert data["total_blocks"] > 0, msg
        else:
            assert "applied" in msg or "stats" in msg, msg
            if "applied" in msg:
                assert msg["applied"]["kind"] in ("STORED", "REMOVED", "CLEARED"), msg
                assert msg["applied"]["pod"].startswith("pod-"), msg
                assert int(msg["applied"]["blocks"]) >= 1, msg
        seen[msg.get("type", "proto")] = seen.get(msg.get("type", "proto"), 0) + 1
    print("ok", seen)
finally:
    ws.close()
