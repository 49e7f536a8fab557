#!/usr/bin/env bash
# Cross builds for the boards, from one command on a Debian 12 x86_64 machine.
#
#   bash cross/build.sh [aarch64|armv7|all] [--release] [--tests] [--board pi4|pi5|orin|...]
#                       [--setup-only] [-- EXTRA CARGO ARGS]
#
# Installs what is missing (Debian cross linkers, qemu-user, mmdebstrap, the rustup targets),
# makes a Debian bookworm sysroot per architecture once (~/.cache/tspm-edge/sysroot/<arch>,
# TSPM_SYSROOT_DIR overrides), then builds into target/cross (TSPM_CROSS_TARGET_DIR
# overrides): the binary (debug, or release with --release, which also writes a stripped copy
# to target/cross/dist/<arch>[-<board>]/tspm-edge), and with --tests the test binaries
# (`cargo test --no-run`; run them with cross/test.sh). See cross/README.md.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
arches=() release=0 tests=0 board=generic setup_only=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64|armv7) arches+=("$1") ;;
    all) arches+=(aarch64 armv7) ;;
    --release) release=1 ;;
    --tests) tests=1 ;;
    --board) [ $# -ge 2 ] || die "--board needs a value"; board=$2; shift ;;
    --board=*) board=${1#--board=} ;;
    --setup-only) setup_only=1 ;;
    -h|--help) usage 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "[cross] unknown argument '$1'" >&2; usage 2 ;;
  esac
  shift
done
[ ${#arches[@]} -gt 0 ] || arches=(aarch64)
cd "$REPO_DIR"

# Host side, once for all arches.
apt_install "${HOST_PACKAGES[@]}"
command -v rustup >/dev/null || die "rustup not found (the cross targets are added with rustup)"

for arch in "${arches[@]}"; do
  arch_info "$arch"
  board_rustflags "$arch" "$board" >/dev/null   # refuse an unknown board before any work
  ensure_rust_target
  ensure_sysroot
  [ $setup_only = 1 ] && continue
  (
    cross_env "$arch" "$board"
    profile_args=(); profile=debug
    [ $release = 1 ] && { profile_args=(--release); profile=release; }
    say "$arch ($TRIPLE, board $board): cargo build ${profile_args[*]} (jobs $CARGO_BUILD_JOBS, target dir $CARGO_TARGET_DIR)"
    start=$SECONDS
    cargo build --locked --target "$TRIPLE" "${profile_args[@]}" --bin tspm-edge "${extra[@]}"
    bin=$CARGO_TARGET_DIR/$TRIPLE/$profile/tspm-edge
    # A test run may have left a qemu wrapper script there (cross/qemu-run.sh); the ELF is beside it.
    [ -f "$bin.qemu-guest" ] && head -c2 "$bin" | grep -q '#!' && bin=$bin.qemu-guest
    say "built $bin in $((SECONDS - start)) s"
    if [ $release = 1 ]; then
      dist=$CARGO_TARGET_DIR/dist/$arch; [ "$board" = generic ] || dist+=-$board
      mkdir -p "$dist"
      "$GNU-strip" -o "$dist/tspm-edge" "$bin"
      say "stripped: $dist/tspm-edge ($(stat -c %s "$dist/tspm-edge") bytes)"
      if [ "$board" != generic ]; then
        read -r audio visual head <<<"$(board_precision "$arch" "$board")"
        say "board $board's precision (cross/README.md, \"Precision on the boards\"): [models]" \
          "audio_precision = \"$audio\", visual_precision = \"$visual\", head_precision = \"$head\""
      fi
    fi
    if [ $tests = 1 ]; then
      start=$SECONDS
      cargo test --locked --target "$TRIPLE" "${profile_args[@]}" --lib --bins --tests --no-run "${extra[@]}"
      say "$arch test binaries built in $((SECONDS - start)) s"
    fi
  )
done
