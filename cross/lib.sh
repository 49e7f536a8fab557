# Shared by the scripts in cross/: paths, the architecture table, the Debian packages, the
# sysroots and the cargo environment of a cross build. Sourced, never run.
# shellcheck shell=bash

CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CROSS_DIR/.." && pwd)
CACHE_DIR=${TSPM_CROSS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tspm-edge}
# Sysroots live outside the clone (they are ~1 GB each and outlive it); one folder per arch.
SYSROOT_BASE=${TSPM_SYSROOT_DIR:-$CACHE_DIR/sysroot}
# A target dir of its own, so a cross build never disturbs the native one.
CROSS_TARGET_DIR=${TSPM_CROSS_TARGET_DIR:-$REPO_DIR/target/cross}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

say() { echo "[cross] $*" >&2; }
die() { echo "[cross] error: $*" >&2; exit 1; }

# arch name → Rust target triple, Debian architecture, GNU triple, qemu-user binary.
arch_info() {
  case "$1" in
    aarch64) TRIPLE=aarch64-unknown-linux-gnu DEB_ARCH=arm64 GNU=aarch64-linux-gnu QEMU=qemu-aarch64 ;;
    armv7)   TRIPLE=armv7-unknown-linux-gnueabihf DEB_ARCH=armhf GNU=arm-linux-gnueabihf QEMU=qemu-arm ;;
    *) die "unknown architecture '$1' (expected aarch64 or armv7)" ;;
  esac
  SYSROOT=$SYSROOT_BASE/$1 ARCH_NAME=$1
  TRIPLE_UPPER=$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')
  TRIPLE_LOWER=$(echo "$TRIPLE" | tr '-' '_')
}

# Host packages: the cross linkers, qemu-user, mmdebstrap (+ what the native build already needs).
HOST_PACKAGES=(
  gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user mmdebstrap pkg-config
  ca-certificates
)

# Target packages in each sysroot (Debian bookworm main). The libraries the binary links, and
# the GStreamer plugins the tests and `extract` use at run time (base: decodebin, audioconvert,
# videoconvert, vorbis, ogg, app; good: vpx, matroska, wavparse), with their dependencies.
SYSROOT_PACKAGES=(
  libc6 libc6-dev libgcc-s1 libstdc++6
  libglib2.0-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good
)
DEBIAN_SUITE=${TSPM_DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${TSPM_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# apt-get with retries: apt can fail once when another apt run holds the lock or cleans its cache.
apt_install() {
  local missing=() p attempt
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "apt-get install ${missing[*]}"
  for attempt in 1 2 3 4; do
    if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; then
      return 0
    fi
    say "apt-get failed (attempt $attempt), retrying in 15 s"; sleep 15
  done
  die "apt-get install ${missing[*]} failed 4 times"
}

ensure_rust_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE"; then
    say "rustup target add $TRIPLE"
    rustup target add "$TRIPLE"
  fi
}

# A sysroot of Debian bookworm for $DEB_ARCH at $SYSROOT, made once and reused: the packages
# are unpacked (mmdebstrap --variant=extract), never configured, so no emulation is needed.
# A stamp holding the package list and suite makes a changed list rebuild it.
ensure_sysroot() {
  local want stamp="$SYSROOT/.tspm-sysroot-stamp"
  want="$DEBIAN_SUITE $DEB_ARCH ${SYSROOT_PACKAGES[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "sysroot $SYSROOT is current"
    return 0
  fi
  say "making the $DEB_ARCH sysroot at $SYSROOT (mmdebstrap --variant=extract, Debian $DEBIAN_SUITE main)"
  mkdir -p "$SYSROOT_BASE"
  local tmp="$SYSROOT.new.$$" attempt ok=0 includes
  includes=$(IFS=,; echo "${SYSROOT_PACKAGES[*]}")
  for attempt in 1 2 3; do
    rm -rf "$tmp"
    if mmdebstrap --quiet --variant=extract --architectures="$DEB_ARCH" --components=main \
        --include="$includes" "$DEBIAN_SUITE" "$tmp" "$DEBIAN_MIRROR"; then
      ok=1; break
    fi
    say "mmdebstrap failed (attempt $attempt), retrying in 15 s"; sleep 15
  done
  [ $ok = 1 ] || die "mmdebstrap for $DEB_ARCH failed 3 times"
  # Absolute symlinks (libz.so -> /lib/...) would resolve on the host: make them relative.
  local link dest
  while IFS= read -r -d '' link; do
    dest=$(readlink "$link")
    ln -sfnr "$tmp$dest" "$link"
  done < <(find "$tmp" -type l -lname '/*' -print0)
  echo "$want" > "$tmp/.tspm-sysroot-stamp"
  rm -rf "$SYSROOT"
  mv "$tmp" "$SYSROOT"
  say "sysroot ready: $(du -sh "$SYSROOT" | cut -f1)"
}

# RUSTFLAGS per board. Pi 4's BCM2711 has no ARMv8 crypto extensions: LLVM's cortex-a72
# enables aes/sha2, which would make the sha2 crate use instructions the board lacks (SIGILL),
# and qemu's cortex-a72 has them, so qemu would not notice. Pi 5 (BCM2712) and Orin have them.
board_rustflags() {
  local arch=$1 board=$2
  case "$arch/$board" in
    */generic|*/) echo "" ;;
    aarch64/pi4) echo "-C target-cpu=cortex-a72 -C target-feature=-aes,-sha2" ;;
    aarch64/pi5) echo "-C target-cpu=cortex-a76" ;;
    aarch64/orin) echo "-C target-cpu=cortex-a78ae" ;;
    armv7/pi4) echo "-C target-cpu=cortex-a72 -C target-feature=+neon,-aes,-sha2" ;;
    armv7/pi3|armv7/pi2) echo "-C target-cpu=cortex-a7 -C target-feature=+neon" ;;
    armv7/pi5) echo "-C target-cpu=cortex-a76 -C target-feature=+neon" ;;
    *) die "no board '$board' for $arch (aarch64: generic pi4 pi5 orin; armv7: generic pi2 pi3 pi4 pi5)" ;;
  esac
}

# Precision per board: "audio visual head" for models.audio_precision, visual_precision and
# head_precision, decided by aarch64 instructions per inference under qemu (cross/icount.sh,
# table in cross/README.md, "Precision on the boards"), not by timing: under qemu `auto` times
# the emulator; by the rule `auto` applies (models.auto_fp32_min_speedup = 1.5: int8 unless
# fp32 is at least 1.5x as fast). Encoders fp32 everywhere (tract's int8 costs 6.5-8.2x fp32);
# the head int8 everywhere: its int8 parts cost 0.45-0.55x fp32 per second / window with the
# dot product (Pi 5; Orin's A78AE has it too) and 1.24-1.28x without (Pi 4), and hold half
# the memory. The generic package's head stays "auto" (on a board `auto` times the board's own
# CPU, which a count does not show). armv7: not counted, all "auto".
board_precision() {
  case "$1/$2" in
    aarch64/pi4|aarch64/pi5|aarch64/orin) echo "fp32 fp32 int8" ;;
    aarch64/*) echo "fp32 fp32 auto" ;;
    *) echo "auto auto auto" ;;
  esac
}

# The qemu CPU model the runner pins (never qemu's default `max`: it advertises SVE2/SME and
# tract would pick kernels no board has). Pi 4 / Pi 2 are the lowest boards of each arch.
default_qemu_cpu() {
  case "$1" in aarch64) echo cortex-a72 ;; armv7) echo cortex-a7 ;; esac
}

# Exports what cargo needs to build for $TRIPLE against $SYSROOT and run under qemu-user.
# Only target-specific variables: the host parts of the build (build scripts, proc macros)
# and the native build are unaffected.
cross_env() {
  local arch=$1 board=${2:-generic}
  export CARGO_TARGET_DIR=$CROSS_TARGET_DIR
  # The linker ($GNU-gcc) and the runner (cross/qemu-run.sh) are in .cargo/config.toml.
  local flags="-C link-arg=--sysroot=$SYSROOT"
  flags+=" -C link-arg=-Wl,-rpath-link,$SYSROOT/lib/$GNU -C link-arg=-Wl,-rpath-link,$SYSROOT/usr/lib/$GNU"
  local bf; bf=$(board_rustflags "$arch" "$board")
  [ -n "$bf" ] && flags+=" $bf"
  export "CARGO_TARGET_${TRIPLE_UPPER}_RUSTFLAGS=$flags"
  export "CC_${TRIPLE_LOWER}=$GNU-gcc" "CXX_${TRIPLE_LOWER}=$GNU-g++" "AR_${TRIPLE_LOWER}=$GNU-ar"
  export "CFLAGS_${TRIPLE_LOWER}=--sysroot=$SYSROOT"
  # jemalloc's Makefile runs `$CC -MM $CPPFLAGS` without CFLAGS (tikv-jemalloc-sys reads the
  # target-prefixed CPPFLAGS): without the sysroot there, the cross gcc reads the host's headers.
  export "${TRIPLE_UPPER}_CPPFLAGS=--sysroot=$SYSROOT"
  export "PKG_CONFIG_SYSROOT_DIR_${TRIPLE_LOWER}=$SYSROOT"
  export "PKG_CONFIG_LIBDIR_${TRIPLE_LOWER}=$SYSROOT/usr/lib/$GNU/pkgconfig:$SYSROOT/usr/share/pkgconfig"
  export "PKG_CONFIG_PATH_${TRIPLE_LOWER}="
  export PKG_CONFIG_ALLOW_CROSS=1
  export TSPM_CROSS_BOARD=$board
  # Full debug info makes 500 MB test binaries that are slow to link and to load under qemu;
  # line tables keep backtraces readable. Only the cross target dir sees this.
  export CARGO_PROFILE_DEV_DEBUG=${TSPM_CROSS_DEBUG:-line-tables-only}
}
