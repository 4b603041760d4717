#!/usr/bin/python3
"""Checks the house's size rules (docs/architecture.md): no source file of the service over 600
lines, no function in index/ over 60 lines, and #pragma once in every header of the service."""
import os
import re
import sys

root = sys.argv[1]
service = ["shared", "index", "control", "wire", "config", "ingest", "query", "tools"]
MAX_FILE, MAX_FN = 600, 60
bad = []


def functions(lines):
    """Yields (name, first line, length) for every function body that opens at the end of a
    signature line and closes at the same indentation."""
    for i, line in enumerate(lines):
        if not re.search(r"\)( const)?( noexcept)?( override)?( -> [\w:<>]+)? \{$", line):
            continue
        # The statement's first line: a signature may span lines.
        start = i
        while start > 0 and lines[start - 1].strip() and \
                not lines[start - 1].rstrip().endswith((";", "{", "}", ":")) and \
                not lines[start - 1].lstrip().startswith(("//", "#")):
            start -= 1
        first = lines[start]
        indent = len(first) - len(first.lstrip())
        if indent > 2 or first.lstrip().startswith(("if ", "for ", "while ", "switch ", "} ",
                                                    "else", "do ", "return ", "case ")):
            continue
        if "[&]" in line or "[this" in line or "[]" in line or " = " in first:
            continue
        close = " " * indent + "}"
        for j in range(i + 1, len(lines)):
            if lines[j].rstrip() == close or lines[j].startswith(close + ";"):
                yield first.strip()[:70], start + 1, j - start + 1
                break


for comp in service:
    for dirpath, _, files in os.walk(os.path.join(root, comp)):
        for f in sorted(files):
            if not f.endswith((".h", ".cc")):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            lines = open(path, encoding="utf-8").read().split("\n")
            if len(lines) > MAX_FILE:
                bad.append("%s: %d lines (max %d)" % (rel, len(lines), MAX_FILE))
            if f.endswith(".h") and "#pragma once" not in lines:
                bad.append("%s: no #pragma once" % rel)
            if comp == "index":
                for name, at, n in functions(lines):
                    if n > MAX_FN:
                        bad.append("%s:%d: %d-line function (max %d): %s" % (rel, at, n, MAX_FN,
                                                                             name))
for b in bad:
    print(b)
print("house rules: %d problems" % len(bad))
sys.exit(1 if bad else 0)
