#!/usr/bin/env bash
# The ARM step of CI (called by .ci/run after the models are built and the native tests ran):
# aarch64 unit + integration tests under qemu-user with the real models, then armv7 unit
# tests. Sysroots and the cross target dir are cached outside the clone when CI keeps
# ~/.cache (TSPM_SYSROOT_DIR / TSPM_CROSS_TARGET_DIR override).
# CROSS_CI_ARCHES="aarch64 armv7" (the default) picks the architectures.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"
step() { echo; echo "=== cross: $* ($(date +%T))"; }

for arch in ${CROSS_CI_ARCHES:-aarch64 armv7}; do
  case "$arch" in
    aarch64) step "aarch64: unit + integration tests under qemu-user"; bash cross/test.sh aarch64 ;;
    armv7) step "armv7: unit tests under qemu-user"; bash cross/test.sh armv7 --lib ;;
    *) die "unknown arch '$arch' in CROSS_CI_ARCHES" ;;
  esac
done
step "done"
