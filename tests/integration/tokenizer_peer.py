#!/usr/bin/python3
"""A tokenizer that speaks vLLM's POST /tokenize ({"model", "prompt"} or {"model", "messages"}
-> {"tokens": [...], "count", "max_model_len"}), for kvidx's prompt-text lookups.

usage: tokenizer_peer.py PORT_FILE PROMPTS_FILE
  prompt "sample:N" (or messages whose contents join to it) -> line N of PROMPTS_FILE's ids;
  "fail" -> 500; "slow" -> never answers (blocks until the server is killed); any other text -> one id
  per byte. GET /calls -> {"calls": N} (tokenize calls answered so far). Binds 127.0.0.1:0 and
  writes its port to PORT_FILE.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, prompts_file = sys.argv[1], sys.argv[2]
calls = 0
lock = threading.Lock()
never = threading.Event()  # never set


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/calls":
            with lock:
                self.answer(200, {"calls": calls})
        else:
            self.answer(404, {"error": "no route"})

    def do_POST(self):
        global calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/tokenize" or "model" not in body:
            self.answer(400, {"error": "bad request"})
            return
        text = body.get("prompt")
        if text is None:
            text = "".join(m["content"] for m in body["messages"])
        with lock:
            calls += 1
        if text == "fail":
            self.answer(500, {"error": "tokenizer exploded"})
        elif text == "slow":
            never.wait()  # a hung tokenizer: the caller's deadline must end the call
        elif text.startswith("sample:"):
            prompts = [line.strip() for line in open(prompts_file) if line.strip()]
            ids = [int(t) for t in prompts[int(text[7:])].split(",")]
            self.answer(200, {"tokens": ids, "count": len(ids), "max_model_len": 131072})
        else:
            ids = list(text.encode())
            self.answer(200, {"tokens": ids, "count": len(ids), "max_model_len": 131072})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(port_file + ".tmp", "w") as f:
    f.write("%d\n" % server.server_address[1])
import os  # noqa: E402
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
