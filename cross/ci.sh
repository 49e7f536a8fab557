#!/usr/bin/env bash
# The ARM step of CI (called by .ci/run after the models are built and the native tests ran):
# aarch64 unit + integration tests under qemu-user with the real models, then armv7 unit
# tests. Sysroots and the cross target dir are cached outside the clone when CI keeps
# ~/.cache (TSPM_SYSROOT_DIR / TSPM_CROSS_TARGET_DIR override).
# CROSS_CI_ARCHES="aarch64 armv7" (the default) picks the architectures; set and empty: none.
#
# CI has 90 minutes on 2 cores (TSPM_CI_STARTED, epoch seconds, set by .ci/run;
# TSPM_CI_BUDGET_MIN overrides 90). An architecture whose step would not end 5 minutes before
# that, by the times measured below, is not started: it is reported as skipped, with the
# reason, and the next run (its target dir then cached) runs it.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"
step() { echo; echo "=== cross: $* ($(date +%T))"; }

# Minutes a step takes on a 2-core machine, from nothing / with its target dir cached and only
# this package changed (2026-12-02, cross/test.sh; build + qemu run):
#   aarch64: 14.4 + 14.6 from nothing; 1.8-3.2 + 14.6 cached.
#   armv7:   ~1.5 (sysroot, rustup target) + 3.8 (lib tests, dependencies unoptimised) + 0.1
#            from nothing; ~2 cached.
need_min() {
  local arch=$1 cached=0
  arch_info "$arch"
  [ -d "$CROSS_TARGET_DIR/$TRIPLE/debug/deps" ] && cached=1
  case "$arch/$cached" in
    aarch64/0) echo 32 ;; aarch64/1) echo 20 ;;
    armv7/0) echo 8 ;; armv7/1) echo 4 ;;
  esac
}

skipped=()
for arch in ${CROSS_CI_ARCHES-aarch64 armv7}; do
  case "$arch" in aarch64|armv7) arch_info "$arch" ;; *) die "unknown arch '$arch' in CROSS_CI_ARCHES" ;; esac
  if [ -n "${TSPM_CI_STARTED:-}" ]; then
    used=$(( ($(date +%s) - TSPM_CI_STARTED) / 60 )) need=$(need_min "$arch")
    left=$(( ${TSPM_CI_BUDGET_MIN:-90} - 5 - used ))
    if [ "$need" -gt "$left" ]; then
      step "$arch: SKIPPED — $used min of CI's ${TSPM_CI_BUDGET_MIN:-90} used, it needs ~$need min" \
        "(its target dir $CROSS_TARGET_DIR/$TRIPLE is $( [ -d "$CROSS_TARGET_DIR/$TRIPLE/debug/deps" ] || echo "not ")cached)"
      skipped+=("$arch")
      continue
    fi
  fi
  case "$arch" in
    aarch64) step "aarch64: unit + integration tests under qemu-user"; bash cross/test.sh aarch64 ;;
    armv7) step "armv7: unit tests under qemu-user"; bash cross/test.sh armv7 --lib ;;
  esac
done
if [ ${#skipped[@]} -gt 0 ]; then
  step "done; not run for lack of CI time: ${skipped[*]}"
else
  step "done"
fi
