#!/usr/bin/python3
"""Counts test cases from meson's testlog.json files and prints 'N passed, N failed'.

A GoogleTest executable counts as its cases ("[  PASSED  ] N tests", "[  FAILED  ] N tests");
any other test (a Python peer, a script) counts as one. Exits 1 if anything failed.
"""
import json
import re
import sys

passed = failed = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print(f"summarize: {path} missing", file=sys.stderr)
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        out = t.get("stdout") or ""
        ok = t.get("result") == "OK"
        p = re.search(r"\[  PASSED  \] (\d+) test", out)
        f = re.search(r"\[  FAILED  \] (\d+) test", out)
        if p or f:
            np = int(p.group(1)) if p else 0
            nf = int(f.group(1)) if f else 0
            if not ok and nf == 0:
                nf = 1  # crashed or timed out after its summary, or before any
            passed += np
            failed += nf
        elif ok:
            passed += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
