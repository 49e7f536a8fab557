#!/usr/bin/env bash
# Runs a target binary under qemu-user against the cross sysroot: the cargo runner that
# cross/lib.sh sets (`CARGO_TARGET_<T>_RUNNER`), also usable by hand.
#
#   cross/qemu-run.sh aarch64|armv7 [--argv0 NAME] BINARY [ARGS...]
#
# - `-L <sysroot>` (QEMU_LD_PREFIX): the dynamic loader, glibc and GStreamer come from the
#   Debian bookworm sysroot, never from /usr/aarch64-linux-gnu (that glibc makes threads spin
#   forever under qemu 7.2).
# - GStreamer loads its plugins from the sysroot, in process (GST_REGISTRY_FORK=no: the
#   plugin scanner is a target binary the host kernel cannot exec), into a registry of its own.
# - The CPU model is pinned (TSPM_QEMU_CPU, default cortex-a72 / cortex-a7).
# - Programs the binary starts are host programs (bash, gst-launch-1.0 in the test fixtures)
#   unless they are target binaries: there is no binfmt_misc here, so before a test binary
#   runs, each target executable beside it (the `tspm-edge` that CARGO_BIN_EXE_* names) is
#   renamed to NAME.qemu-guest and NAME becomes a host script that runs it through this
#   runner. cargo puts the real file back at its next build; this repeats then.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -ge 2 ] || die "usage: qemu-run.sh aarch64|armv7 [--argv0 NAME] BINARY [ARGS...]"
arch_info "$1"; shift
argv0=()
if [ "$1" = --argv0 ]; then argv0=(-0 "$2"); shift 2; fi
exe=$1; shift
[ -d "$SYSROOT" ] || die "no sysroot at $SYSROOT: run cross/build.sh $ARCH_NAME first"
command -v "$QEMU" >/dev/null || die "$QEMU not found: run cross/build.sh (it installs qemu-user)"

elf_machine() { # prints the ELF e_machine of $1, empty if not an ELF file
  local magic; magic=$(head -c 4 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')
  [ "$magic" = 7f454c46 ] || return 0
  od -An -tu2 -j18 -N2 "$1" | tr -d ' '
}
want_machine() { case "$QEMU" in qemu-aarch64) echo 183 ;; qemu-arm) echo 40 ;; esac; }

# Wrap the sibling target executables of a test binary (…/<profile>/deps/NAME-HASH).
exe_dir=$(cd "$(dirname "$exe")" && pwd)
if [ "$(basename "$exe_dir")" = deps ]; then
  bin_dir=$(dirname "$exe_dir")
  for f in "$bin_dir"/*; do
    [[ -f "$f" && -x "$f" && "$f" != *.qemu-guest && "$f" != *.d ]] || continue
    [ "$(elf_machine "$f")" = "$(want_machine)" ] || continue
    mv -f "$f" "$f.qemu-guest"
    tmp=$(mktemp "$f.XXXXXX")
    printf '#!/bin/sh\n# written by cross/qemu-run.sh: runs the %s binary NAME.qemu-guest under qemu-user\nexec %q %q --argv0 "$0" "$0.qemu-guest" "$@"\n' \
      "$ARCH_NAME" "$CROSS_DIR/qemu-run.sh" "$ARCH_NAME" > "$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "$f"
  done
fi

export QEMU_LD_PREFIX=$SYSROOT
export QEMU_CPU=${TSPM_QEMU_CPU:-$(default_qemu_cpu "$ARCH_NAME")}
export GST_PLUGIN_SYSTEM_PATH=$SYSROOT/usr/lib/$GNU/gstreamer-1.0
export GST_PLUGIN_SCANNER=$SYSROOT/usr/lib/$GNU/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner
export GST_REGISTRY_FORK=no
export GST_REGISTRY=$SYSROOT_BASE/$ARCH_NAME.gst-registry.bin
# What this runner set for the guest: a host program a test starts drops these
# (tests/util/mod.rs, host_command); their presence also tells a test it runs emulated.
export TSPM_GUEST_ENV="QEMU_LD_PREFIX QEMU_CPU GST_PLUGIN_SYSTEM_PATH GST_PLUGIN_SCANNER GST_REGISTRY_FORK GST_REGISTRY"
# The host's GST_PLUGIN_PATH (if any) holds host plugins.
unset GST_PLUGIN_PATH GST_PLUGIN_PATH_1_0 GST_PLUGIN_SYSTEM_PATH_1_0
exec "$QEMU" "${argv0[@]}" "$exe" "$@"
