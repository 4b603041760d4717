#!/usr/bin/env bash
# Checks the units as meson configured them (build/systemd/): systemd-analyze verify (no
# running systemd needed; ExecStart is pointed at the build tree, because verify insists that
# the binaries exist), the exposure score of each service against a ceiling, and the
# sysusers.d file by creating its users in a scratch root.
#   verify_units.sh SOURCE_ROOT BUILD_ROOT [MAX_EXPOSURE]
set -euo pipefail
src="$1"
build="$2"
max="${3:-1.5}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bindir=$(sed -n 's|^ExecStart=\(.*\)/kvidx-query .*|\1|p' "$build/systemd/kvidx-query.service")
for u in kvidx-query.service kvidx-ingest@.service; do
  sed -e "s|$bindir/kvidx-ingest|$build/ingest/kvidx-ingest|" \
      -e "s|$bindir/kvidx-query|$build/query/kvidx-query|" "$build/systemd/$u" >"$tmp/$u"
done
cp "$src/systemd/kvidx.target" "$tmp/"
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
# Exposure: each service at or below the ceiling.
fail=0
for u in kvidx-query.service kvidx-ingest@0.service; do
  score=$(systemd-analyze security --offline=true "./$u" 2>/dev/null |
    sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    echo "no exposure score for $u"
    exit 1
  fi
  echo "exposure $u: $score (ceiling $max)"
  if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then fail=1; fi
done
# The scorer must see a weaker unit as weaker (the check itself is checked).
printf '[Service]\nExecStart=/bin/true\n' >open.service
open=$(systemd-analyze security --offline=true ./open.service 2>/dev/null |
  sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
if ! awk -v s="$open" -v m="$max" 'BEGIN { exit !(s > m) }'; then
  echo "an unhardened unit scored $open, under the ceiling"
  exit 1
fi
[ "$fail" = 0 ] || exit 1
# The users: the unit names them, sysusers.d creates them with the shared groups.
mkdir -p root/etc
systemd-sysusers --root="$tmp/root" "$src/systemd/kvidx.sysusers" >/dev/null 2>&1
for u in kvidx-ingest kvidx-query; do
  grep -q "^$u:" root/etc/passwd || { echo "sysusers did not create $u"; exit 1; }
done
grep -q '^kvidx:x:[0-9]*:kvidx-ingest,kvidx-query$' root/etc/group ||
  { echo "group kvidx lacks its members:"; cat root/etc/group; exit 1; }
grep -q '^kvidx-admin:x:[0-9]*:kvidx-query$' root/etc/group ||
  { echo "group kvidx-admin lacks kvidx-query"; exit 1; }
for u in User Group; do
  for unit in kvidx-query.service kvidx-ingest@0.service; do
    name=$(sed -n "s/^$u=//p" "$unit")
    grep -q "^$name:" root/etc/passwd root/etc/group 2>/dev/null ||
      grep -q "^$name:" root/etc/group || { echo "$unit: $u=$name is not created by sysusers"; exit 1; }
  done
done
echo "sysusers verified"
