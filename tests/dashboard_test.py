#!/usr/bin/python3
"""Checks deploy/grafana-dashboard.json: valid JSON, and every kvidx_* metric its queries use is
one that kvidx-query exports (query/metrics.cc)."""
import json
import re
import sys

root = sys.argv[1]
dash = json.load(open(root + "/deploy/grafana-dashboard.json"))
exported = set(re.findall(r'"(kvidx_[a-z_]+)"', open(root + "/query/metrics.cc").read()))
used = set()
for p in dash["panels"]:
    for t in p.get("targets", []):
        used |= set(re.findall(r"kvidx_[a-z_]+", t["expr"]))
missing = sorted(used - exported)
if missing or not used:
    print("dashboard uses metrics kvidx does not export:", missing)
    sys.exit(1)
print("dashboard: %d panels, %d metrics, all exported" % (len(dash["panels"]), len(used)))
