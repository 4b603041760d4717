#!/usr/bin/env bash
# Checks the unit files with systemd-analyze verify (no running systemd needed). ExecStart
# paths are pointed at the build tree, because verify insists that the binaries exist.
set -euo pipefail
src="$1"
build="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in kvidx.target kvidx-query.service kvidx-ingest@.service; do
  sed -e "s|/usr/local/bin/kvidx-ingest|$build/ingest/kvidx-ingest|" \
      -e "s|/usr/local/bin/kvidx-query|$build/query/kvidx-query|" "$src/systemd/$u" >"$tmp/$u"
done
cp "$tmp/kvidx-ingest@.service" "$tmp/kvidx-ingest@0.service"
cp "$tmp/kvidx-ingest@.service" "$tmp/kvidx-ingest@1.service"
cd "$tmp"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no ./kvidx.target ./kvidx-query.service \
  ./kvidx-ingest@0.service 2>&1 | grep -v -E "network-online.target|multi-user.target|Failed to connect to bus" || true)
if [ -n "$out" ]; then
  echo "$out"
  exit 1
fi
# A broken unit must fail: the check itself is checked.
printf '[Service]\nExecStart=relative/path\nType=bogus\n' >bad.service
if SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no ./bad.service >/dev/null 2>&1; then
  echo "systemd-analyze accepted a broken unit"
  exit 1
fi
echo "units verified"
