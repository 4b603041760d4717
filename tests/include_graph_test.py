#!/usr/bin/python3
"""Checks the arrows between kvidx's components (docs/architecture.md): each component's sources
include only the components it may depend on. In particular query/ and ingest/ never include
each other, and index/ includes neither."""
import os
import re
import sys

root = sys.argv[1]
allowed = {
    "shared": {"shared"},
    "index": {"index", "shared"},
    "control": {"control", "index", "shared"},
    "wire": {"wire"},
    "config": {"config", "control", "index", "wire", "shared"},
    "ingest": {"ingest", "config", "control", "wire", "index", "shared"},
    "query": {"query", "config", "control", "wire", "index", "shared"},
}
components = set(allowed) | {"tools", "tests", "bench", "proto"}
bad = []
for comp, may in allowed.items():
    for dirpath, _, files in os.walk(os.path.join(root, comp)):
        for f in files:
            if not f.endswith((".h", ".cc")):
                continue
            path = os.path.join(dirpath, f)
            for n, line in enumerate(open(path, encoding="utf-8"), 1):
                m = re.match(r'\s*#include\s+"([a-z_]+)/', line)
                if m and m.group(1) in components and m.group(1) not in may:
                    bad.append("%s:%d: %s includes %s/" % (os.path.relpath(path, root), n, comp,
                                                           m.group(1)))
for b in bad:
    print(b)
print("include graph: %d components checked, %d forbidden includes" % (len(allowed), len(bad)))
sys.exit(1 if bad else 0)
