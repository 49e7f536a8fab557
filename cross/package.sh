#!/usr/bin/env bash
# Debian packages for the boards: one .deb per architecture (arm64 for aarch64, armhf for armv7).
#
#   bash cross/package.sh [aarch64|armv7|all] [--no-build] [--fast]
#
# Per architecture: `cross/build.sh ARCH --release` (skipped with --no-build, which packages
# the stripped binary already in target/cross/dist/<arch>/), then stages under
# target/cross/deb/stage/: that binary; the packaged configuration (config/tspm-edge.toml with
# models.dir = /usr/share/tspm-edge/models, api.socket = /run/tspm-edge/api.sock and
# api.group = tspm-edge); the models from TSPM_MODEL_DIR (default ~/.cache/tspm-edge/models,
# what `bash models/build.sh` writes): every manifest*.toml, every file they list
# (sha256-checked) and the class, tokenizer and answer files they name. It checks the
# binary's libraries against `depends` in Cargo.toml, then runs `cargo deb --target <triple>
# --no-build` (cargo-deb, pinned below) with the [package.metadata.deb] of Cargo.toml. Writes
# target/cross/deb/tspm-edge_<version>-1_<arm64|armhf>.deb. --fast: lighter compression.
# Test a package with `bash cross/test-deb.sh ARCH`. See cross/README.md, "Packages".
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CARGO_DEB_VERSION=3.8.0

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
arches=() build=1 fast=()
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64|armv7) arches+=("$1") ;;
    all) arches+=(aarch64 armv7) ;;
    --no-build) build=0 ;;
    --fast) fast=(--fast) ;;
    -h|--help) usage 0 ;;
    *) echo "[deb] unknown argument '$1'" >&2; usage 2 ;;
  esac
  shift
done
[ ${#arches[@]} -gt 0 ] || arches=(aarch64)
cd "$REPO_DIR"

say() { echo "[deb] $*" >&2; }
die() { echo "[deb] error: $*" >&2; exit 1; }

MODEL_DIR=${TSPM_MODEL_DIR:-$HOME/.cache/tspm-edge/models}
# Fixed paths: Cargo.toml's assets name target/cross/deb/stage/ relative to the crate root.
DEB_DIR=$REPO_DIR/target/cross/deb
STAGE=$DEB_DIR/stage

ensure_cargo_deb() {
  if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    say "cargo install cargo-deb --version $CARGO_DEB_VERSION --locked"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
  fi
}

# The [package.metadata.deb] depends line of Cargo.toml.
declared_depends() {
  sed -n '/^\[package\.metadata\.deb\]/,/^\[/s/^depends = "\(.*\)"$/\1/p' Cargo.toml
}

# Every NEEDED library of the binary must come from a package in `depends`, and libc6's
# declared minimum must cover the newest GLIBC_ symbol version the binary uses.
check_depends() {
  local bin=$1 depends so pkg glibc declared
  depends=$(declared_depends)
  [ -n "$depends" ] || die "no depends line in [package.metadata.deb] of Cargo.toml"
  for so in $("$GNU-readelf" -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case "$so" in
      libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux*) pkg=libc6 ;;
      libgcc_s.so.1) pkg=libgcc-s1 ;;
      libglib-2.0.so.0|libgobject-2.0.so.0|libgio-2.0.so.0|libgmodule-2.0.so.0) pkg=libglib2.0-0 ;;
      libgstreamer-1.0.so.0|libgstbase-1.0.so.0|libgstcontroller-1.0.so.0|libgstnet-1.0.so.0) pkg=libgstreamer1.0-0 ;;
      libgst*-1.0.so.0) pkg=libgstreamer-plugins-base1.0-0 ;;
      libasound.so.2) pkg=libasound2 ;;
      *) die "the binary needs $so: add its package to depends in Cargo.toml and to check_depends in $0" ;;
    esac
    grep -Eq "(^|, )$pkg( |,|$)" <<<"$depends" || die "the binary needs $so ($pkg), which depends in Cargo.toml lacks"
  done
  glibc=$("$GNU-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  declared=$(sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$depends")
  [ -n "$declared" ] || die "depends in Cargo.toml has no libc6 (>= X)"
  dpkg --compare-versions "$declared" ge "$glibc" \
    || die "the binary uses GLIBC_$glibc symbols; depends says libc6 (>= $declared)"
  say "depends cover the binary's libraries (newest glibc symbol: GLIBC_$glibc)"
}

# The models: every manifest*.toml of the model folder (the model layer reads manifest.toml,
# manifest-head.toml, manifest-head-parts.toml and manifest-text-table.toml), every file they list and the class,
# tokenizer and answer files their entries name. Copied, then the copies are checked against
# the manifests' sha256: a model folder that is being rebuilt while this runs is caught here,
# not on a board.
stage_models() {
  local dest=$STAGE/models f files
  [ -f "$MODEL_DIR/manifest.toml" ] || die "no models at $MODEL_DIR: run \`bash models/build.sh\` first"
  mkdir -p "$dest"
  files=$(/usr/bin/python3 - "$MODEL_DIR" <<'PY'
import pathlib, sys, tomllib
src = pathlib.Path(sys.argv[1])
files = []
for path in sorted(src.glob("manifest*.toml")):
    files.append(path.name)
    manifest = tomllib.loads(path.read_text())
    for m in manifest.get("model", []):
        files.append(m["file"])
        files += [m[k] for k in ("classes", "tokenizer", "answers") if k in m]
    if "text_table" in manifest:
        files += [manifest["text_table"]["file"], manifest["text_table"]["keys"]]
missing = [f for f in files if not (src / f).is_file()]
if missing:
    sys.exit(f"listed in the manifests but missing from {src}: {', '.join(missing)}")
print("\n".join(dict.fromkeys(files)))
PY
) || die "the model folder $MODEL_DIR does not match its manifests"
  for f in $files; do cp -f "$MODEL_DIR/$f" "$dest/$f"; done
  check_models "$dest" || die "the staged models do not match their manifests (is models/build.sh running?)"
  say "models staged: $(wc -w <<<"$files") files, $(du -sh --apparent-size "$dest" | cut -f1)"
}

# check_models DIR: every file the manifests in DIR list has the listed sha256, the files the
# entries name exist, and every model has an fp32 entry: precision = auto needs it (it is the
# reference and the fallback; without it `auto` stops with "has no <model> model at fp32
# precision"), while int8 is optional. Prints one line per model file.
check_models() {
  /usr/bin/python3 - "$1" <<'PY'
import hashlib, pathlib, sys, tomllib
d = pathlib.Path(sys.argv[1])
names, fp32 = set(), set()
def sha256(f):
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
for path in sorted(d.glob("manifest*.toml")):
    manifest = tomllib.loads(path.read_text())
    t = manifest.get("text_table")
    for key, sha in (("file", "sha256"), ("keys", "keys_sha256")) if t else ():
        if sha256(d / t[key]) != t[sha]:
            sys.exit(f"{d / t[key]}: sha256 differs from {path.name}")
    for m in manifest.get("model", []):
        f = d / m["file"]
        digest = sha256(f)
        if digest != m.get("sha256"):
            sys.exit(f"{f}: sha256 {digest}, {path.name} says {m.get('sha256')}")
        for k in ("classes", "tokenizer", "answers"):
            if k in m and not (d / m[k]).is_file():
                sys.exit(f"{d / m[k]} (named by {m['name']} {m['precision']}) is missing")
        names.add(m["name"])
        if m["precision"] == "fp32":
            fp32.add(m["name"])
        print(f"  {path.name:<25} {m['name']:>18} {m['precision']:<5} {m['file']:<30} "
              f"{f.stat().st_size:>11,} bytes", file=sys.stderr)
if names - fp32:
    sys.exit(f"no fp32 entry for {', '.join(sorted(names - fp32))}: `auto` precision needs it")
if not {"yamnet", "efficientnet_lite0", "minilm", "tspm_head"} <= names:
    sys.exit(f"the encoders, the text encoder and the head are not all there: {sorted(names)}")
PY
}

# The configuration the package installs as a conffile: the built-in default with the
# package's paths and the architecture's precisions (cross/lib.sh, board_precision: one
# package serves every board of the architecture), under a header that says what it is.
stage_config() {
  local out=$STAGE/tspm-edge.toml audio visual head
  read -r audio visual head <<<"$(board_precision "$ARCH_NAME" generic)"
  {
    cat <<'EOF'
# tspm-edge configuration of the tspm-edge service, installed by the tspm-edge package as
# /etc/tspm-edge/tspm-edge.toml (a conffile: an upgrade keeps your changes). Apply a change
# with `sudo systemctl restart tspm-edge`. The service runs
#   /usr/bin/tspm-edge --config /etc/tspm-edge/tspm-edge.toml serve
# Every key not set here takes the built-in default (`tspm-edge print-default-config`). The
# package sets models.dir (the models it installs), api.socket (where `tspm-edge ask` finds
# the service: pass `--config /etc/tspm-edge/tspm-edge.toml` or set TSPM_EDGE_CONFIG) and
# api.group (members of group tspm-edge may use the socket: `sudo adduser $USER tspm-edge`).

EOF
    # The default's own header (up to the first table) describes the built-in default.
    sed -n '/^\[/,$p' config/tspm-edge.toml \
      | sed -e 's|^dir = "~/.cache/tspm-edge/models"$|dir = "/usr/share/tspm-edge/models"|' \
            -e 's|^socket = ""$|socket = "/run/tspm-edge/api.sock"|' \
            -e 's|^group = ""$|group = "tspm-edge"|' \
            -e "s|^audio_precision = \"auto\"$|audio_precision = \"$audio\"|" \
            -e "s|^visual_precision = \"auto\"$|visual_precision = \"$visual\"|" \
            -e "s|^head_precision = \"auto\"$|head_precision = \"$head\"|" \
      | if [ "$ARCH_NAME" = aarch64 ]; then
          sed -e '/^audio_precision = /i\
# The package sets the encoders to fp32 on aarch64: by aarch64 instructions per inference\
# (cross/icount.sh, qemu Cortex-A72 / A76) tract'"'"'s int8 YAMNet costs 6.5-7.3x its fp32 and\
# int8 EfficientNet-Lite0 8.1-8.2x, on the Pi 4 and the Pi 5 alike.' \
              -e '/^head_precision = /i\
# The package leaves the head on "auto": by the same count its int8 parts cost about half of\
# fp32 with the dot product (Pi 5, Jetson Orin) and a quarter more without it (Pi 4), which\
# is below auto_fp32_min_speedup: "auto" is expected to take int8 (half the memory) on all\
# of them. Set "int8" to skip the one-off timing at the first start.'
        else cat; fi
  } > "$out"
  local want
  for want in 'dir = "/usr/share/tspm-edge/models"' 'socket = "/run/tspm-edge/api.sock"' 'group = "tspm-edge"' \
      "audio_precision = \"$audio\"" "visual_precision = \"$visual\"" "head_precision = \"$head\""; do
    [ "$(grep -cxF "$want" "$out")" = 1 ] \
      || die "config/tspm-edge.toml changed shape: could not set '$want' exactly once"
  done
  say "config staged: $out"
}

ensure_cargo_deb
mkdir -p "$DEB_DIR"
for arch in "${arches[@]}"; do
  arch_info "$arch"
  start=$SECONDS
  if [ $build = 1 ]; then
    bash "$CROSS_DIR/build.sh" "$arch" --release
  fi
  build_s=$((SECONDS - start)); start=$SECONDS
  bin=$CROSS_TARGET_DIR/dist/$arch/tspm-edge
  [ -f "$bin" ] || die "no $bin: run without --no-build (or bash cross/build.sh $arch --release)"
  [ "$(od -An -tu2 -j18 -N2 "$bin" | tr -d ' ')" = "$([ "$arch" = aarch64 ] && echo 183 || echo 40)" ] \
    || die "$bin is not a $arch ELF executable"
  rm -rf "$STAGE"; mkdir -p "$STAGE"
  cp -f "$bin" "$STAGE/tspm-edge"
  check_depends "$STAGE/tspm-edge"
  stage_config
  stage_models
  version=$(awk -F'"' '/^\[/ { sec = $0 } sec == "[package]" && /^version = / { print $2; exit }' Cargo.toml)
  out=$DEB_DIR/tspm-edge_${version}-1_${DEB_ARCH}.deb
  say "$arch: cargo deb --target $TRIPLE --no-build → $out"
  # --no-strip: the binary is already stripped (cross/build.sh, with the target's strip).
  cargo deb --target "$TRIPLE" --no-build --no-strip "${fast[@]}" --output "$out"
  rm -rf "$STAGE"
  say "$arch: $(basename "$out"): $(stat -c %s "$out") bytes ($(du -h --apparent-size "$out" | cut -f1)); build ${build_s} s, staging + cargo deb $((SECONDS - start)) s"
  dpkg-deb --field "$out" Package Version Architecture Installed-Size Depends Recommends Suggests >&2
done
