#!/usr/bin/env bash
# The test suite for a board architecture under qemu-user, with the real models.
#
#   bash cross/test.sh [aarch64|armv7] [--lib] [--board B] [--release] [-- TEST ARGS]
#
# aarch64 runs everything `scripts/test.sh` runs (unit + integration tests); armv7 runs the
# unit tests (`--lib --bins`) unless --all is given; --lib restricts aarch64 the same way.
# Needs the models (`bash models/build.sh` on the host: they are arch-independent ONNX files;
# TSPM_MODEL_DIR overrides ~/.cache/tspm-edge/models) and ../shared beside the checkout.
# The media fixtures are made here on the host first (tests/fixtures/make.sh runs host
# gst-launch-1.0); the test binaries then find them current. TSPM_QEMU_CPU picks the CPU model.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

arch=aarch64 scope="" board=generic release_args=() test_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64|armv7) arch=$1 ;;
    --lib) scope=lib ;;
    --all) scope=all ;;
    --board) [ $# -ge 2 ] || die "--board needs a value"; board=$2; shift ;;
    --board=*) board=${1#--board=} ;;
    --release) release_args=(--release) ;;
    --) shift; test_args=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$scope" ] || { [ "$arch" = aarch64 ] && scope=all || scope=lib; }
cd "$REPO_DIR"
arch_info "$arch"

models=${TSPM_MODEL_DIR:-$HOME/.cache/tspm-edge/models}
[ -f "$models/manifest.toml" ] || die "no models at $models: run \`bash models/build.sh\` first (on the host)"
[ -d "$REPO_DIR/../shared/golden" ] || die "../shared/golden is missing beside the checkout (the goldens live there)"

start=$SECONDS
cargo_config=()
if [ "$scope" = lib ]; then
  # The unit tests run no model (68 in ~2 s under qemu): unoptimised dependencies build in
  # 207 s from nothing instead of 758 s (armv7, 2026-12-02). cargo test builds them below.
  cargo_config=(--config 'profile.dev.package."*".opt-level=0')
  bash "$CROSS_DIR/build.sh" "$arch" --setup-only
else
  bash "$CROSS_DIR/build.sh" "$arch" --tests --board "$board" "${release_args[@]}"
fi
build_s=$((SECONDS - start))

targets=(--lib --bins)
if [ "$scope" = all ]; then
  targets+=(--tests)
  # Host tools, host environment: the fixtures the capture tests read.
  say "media fixtures (host gst-launch-1.0)"
  # CARGO_TARGET_TMPDIR of a --target build is <target dir>/<triple>/tmp.
  bash tests/fixtures/make.sh "$CROSS_TARGET_DIR/$TRIPLE/tmp/test-fixtures"
fi

cross_env "$arch" "$board"
export G_DEBUG=${G_DEBUG:-fatal_warnings}
# Under emulation everything is ~10-50x slower: the daemon tests stretch their wall-clock
# deadlines by this (tests/daemon.rs, `scaled`; cross/README.md, "What differs under emulation").
export TSPM_TEST_TIME_SCALE=${TSPM_TEST_TIME_SCALE:-10}
say "$arch: cargo test ${targets[*]} under $QEMU (cpu ${TSPM_QEMU_CPU:-$(default_qemu_cpu "$arch")}, sysroot $SYSROOT)"
start=$SECONDS
status=0
cargo "${cargo_config[@]}" test --locked --target "$TRIPLE" "${release_args[@]}" "${targets[@]}" -- "${test_args[@]}" || status=$?
say "$arch: build/setup ${build_s} s, test run $((SECONDS - start)) s, exit $status"
exit $status
