#!/bin/sh
# Verifies the unit files with systemd-analyze (README.md: why a temporary copy).
#   sh deploy/systemd/verify.sh            exit 0: every unit verifies; 1: errors (printed)
# systemd-analyze verify refuses a unit whose ExecStart binary does not exist, before looking at
# anything else; so the units are copied to a temporary directory with /usr/local/bin/caravel
# replaced by /bin/true (arguments kept), and verified there. A copy with a misspelt directive
# must fail, proving that directives really are parsed (warnings about unknown keys are made fatal).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
units="caravel-orchestrator.service caravel-compute.service caravel.service caravel-snapshot.service caravel-snapshot.timer"
for u in $units; do
  sed 's#/usr/local/bin/caravel#/bin/true#g' "$here/$u" > "$tmp/$u"
done
check() {  # systemd-analyze prints problems on stderr; any output counts as a failure
  out=$(cd "$1" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no $units 2>&1) || { echo "$out"; return 1; }
  [ -z "$out" ] || { echo "$out"; return 1; }
}
check "$tmp"
echo "systemd-analyze verify: OK ($units)"
mkdir "$tmp/broken"
for u in $units; do cp "$tmp/$u" "$tmp/broken/$u"; done
sed -i 's/^ProtectSystem=strict/ProtectSytem=strict/' "$tmp/broken/caravel-compute.service"
if check "$tmp/broken" >/dev/null 2>&1; then
  echo "systemd-analyze verify accepted a misspelt directive: it is not checking directives" >&2
  exit 1
fi
echo "systemd-analyze verify: a misspelt directive is reported, as it should be"
for u in caravel-orchestrator.service caravel-compute.service caravel.service caravel-snapshot.service; do
  printf '%s: ' "$u"
  (cd "$tmp" && systemd-analyze security --offline=yes --no-pager "$u" 2>/dev/null | tail -1) || echo "(systemd-analyze security --offline unavailable)"
done
