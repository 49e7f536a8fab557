#!/usr/bin/env bash
# Checks systemd/tspm-edge.service with `systemd-analyze verify` (any finding fails) against
# the built binary, and prints its `systemd-analyze security` exposure.
# Usage: bash systemd/verify.sh [BINARY]   (default: target/debug/tspm-edge)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/target/debug/tspm-edge}")
[ -x "$bin" ] || { echo "verify.sh: $bin is not an executable (build first)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The unit names /usr/bin/tspm-edge (where the .deb installs it); point it at this build.
sed "s|/usr/bin/tspm-edge|$bin|" "$root/systemd/tspm-edge.service" > "$tmp/tspm-edge.service"
findings=$(systemd-analyze verify "$tmp/tspm-edge.service" 2>&1 || true)
if [ -n "$findings" ]; then
    echo "systemd-analyze verify found problems in systemd/tspm-edge.service:" >&2
    echo "$findings" >&2
    exit 1
fi
echo "systemd-analyze verify: systemd/tspm-edge.service OK"
systemd-analyze security --offline=true "$tmp/tspm-edge.service" 2>/dev/null | tail -1 \
    || echo "(systemd-analyze security --offline is not available here)"
