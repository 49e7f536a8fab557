#!/usr/bin/env bash
# Installs the .deb that cross/package.sh built into a Debian bookworm root of the board's
# architecture and checks it: maintainer scripts, files, conffile, user, service enablement,
# then the installed binary under qemu-user on a generated sample, then remove and purge.
#
#   bash cross/test-deb.sh [aarch64|armv7] [--deb PATH] [--keep] [--no-answer]
#
# The root: ~/.cache/tspm-edge/debroot/<arch> (TSPM_DEBROOT_DIR overrides the parent), made
# once by mmdebstrap --variant=minbase with adduser, systemd, libgstreamer1.0-0,
# gstreamer1.0-plugins-base and -good (a stamp remakes it when that list changes).
# The maintainer scripts run for real, emulated: this machine has no binfmt_misc, and
# `dpkg --root --force-script-chrootless` would run postinst's adduser on the host's
# /etc/passwd. So every command in the root runs inside a user namespace of its own (all ids
# mapped 1:1; we are root) with a private binfmt_misc instance (Linux >= 6.7) in which
# qemu-<arch>-static (from Debian's qemu-user-static, downloaded and unpacked, not
# installed) runs the root's binaries: mmdebstrap (root mode) and `chroot ROOT dpkg -i` work
# as on a board, and nothing changes outside the namespace.
# The installed binary then runs through cross/qemu-run.sh with the root as its library and
# GStreamer prefix: --version, `extract` on a 3 s VP8/Vorbis sample made with the host's
# gst-launch-1.0 (the .npz's arrays and shapes are checked) and, unless --no-answer,
# `answer` (text encoder + head), all with the installed /etc/tspm-edge/tspm-edge.toml and
# TSPM_MODEL_DIR=<root>/usr/share/tspm-edge/models.
# --deb: the package (default target/cross/deb/tspm-edge_*_<debarch>.deb, the newest);
# --keep: leave it installed (default: the test ends with remove + purge).
set -euo pipefail
SELF=$(realpath "${BASH_SOURCE[0]}")
# shellcheck source=cross/lib.sh
source "$(dirname "$SELF")/lib.sh"

say() { echo "[deb-test] $*" >&2; }
die() { echo "[deb-test] FAIL: $*" >&2; exit 1; }

DEBROOT_BASE=${TSPM_DEBROOT_DIR:-$CACHE_DIR/debroot}
QEMU_STATIC_DIR=$CACHE_DIR/qemu-static
DEBROOT_PACKAGES=(adduser systemd libgstreamer1.0-0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)

# --- inside the namespace (see ns_run): binfmt for the root's arch, then the command ---------
if [ "${1:-}" = __ns_inner ]; then
  arch_info "$2"; shift 2
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  sed "s|:/usr/libexec/qemu-binfmt/[^:]*:|:$QEMU_STATIC_DIR/${QEMU}-static:|" \
    "$QEMU_STATIC_DIR/${QEMU}.binfmt" > /proc/sys/fs/binfmt_misc/register
  # Not exec: this shell stays PID 1 of the namespace (a systemd tool running as PID 1 would
  # log to /dev/console and /dev/kmsg instead of stderr).
  "$@"
  exit $?
fi
# chroot ROOT CMD inside the namespace, with /proc and a minimal /dev (null, zero, full,
# random, urandom, tty bound from the host; private mounts that go away with the namespace)
# and a clean environment.
if [ "${1:-}" = __chroot ]; then
  root=$2; shift 2
  mount -t tmpfs -o mode=755 tmpfs "$root/dev"
  for n in null zero full random urandom tty; do
    touch "$root/dev/$n"; mount --bind "/dev/$n" "$root/dev/$n"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  mount -t proc proc "$root/proc"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive SYSTEMD_LOG_TARGET=console "$@"
fi

arch=aarch64 deb="" keep=0 answer=1
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64|armv7) arch=$1 ;;
    --deb) [ $# -ge 2 ] || die "--deb needs a path"; deb=$(realpath "$2"); shift ;;
    --keep) keep=1 ;;
    --no-answer) answer=0 ;;
    -h|--help) sed -n '2,27p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
cd "$REPO_DIR"
arch_info "$arch"
ROOT=$DEBROOT_BASE/$arch
if [ -z "$deb" ]; then
  deb=$(ls -t "$REPO_DIR"/target/cross/deb/tspm-edge_*_"$DEB_ARCH".deb 2>/dev/null | head -1 || true)
  [ -n "$deb" ] || die "no target/cross/deb/tspm-edge_*_$DEB_ARCH.deb: run bash cross/package.sh $arch first"
fi
[ "$(dpkg-deb --field "$deb" Architecture)" = "$DEB_ARCH" ] || die "$deb is not an $DEB_ARCH package"
T0=$SECONDS
step_start=""
step() { # a heading; the time the previous step took
  [ -z "$step_start" ] || say "   ($((SECONDS - step_start)) s)"
  step_start=$SECONDS; say "== $*"
}

# ns_run CMD...: CMD as root of a new user + mount + pid namespace, ids mapped 1:1, with a
# private binfmt_misc where qemu-<arch>-static runs the root's binaries.
ns_run() {
  local sync pid me i
  sync=$(mktemp -u "${TMPDIR:-/tmp}/tspm-deb-ns.XXXXXX")
  mkfifo "$sync"
  unshare --user --mount --propagation private -- \
    bash -c 'read -r _ < "$0"; rm -f "$0"; exec "$@"' "$sync" \
    unshare --pid --fork --mount-proc -- bash "$SELF" __ns_inner "$ARCH_NAME" "$@" &
  pid=$!
  me=$(readlink /proc/self/ns/user)
  for i in $(seq 200); do
    [ "$(readlink "/proc/$pid/ns/user" 2>/dev/null)" != "$me" ] && break
    sleep 0.05
  done
  echo "0 0 4294967295" > "/proc/$pid/uid_map"
  echo "0 0 4294967295" > "/proc/$pid/gid_map"
  echo go > "$sync"
  wait "$pid"
}
in_root() { ns_run bash "$SELF" __chroot "$ROOT" "$@"; }

# --- host side -----------------------------------------------------------------------------
step "host tools"
apt_install mmdebstrap arch-test qemu-user gstreamer1.0-tools gstreamer1.0-plugins-base \
  gstreamer1.0-plugins-good python3
[ -f /proc/sys/fs/binfmt_misc/status ] && [ -n "$(ls /proc/sys/fs/binfmt_misc 2>/dev/null | grep -v -e register -e status)" ] \
  && say "note: the host has binfmt_misc entries; the namespace uses its own instance anyway"
if [ ! -x "$QEMU_STATIC_DIR/${QEMU}-static" ] || [ ! -f "$QEMU_STATIC_DIR/${QEMU}.binfmt" ]; then
  say "qemu-user-static: apt-get download + unpack ${QEMU}-static (not installed)"
  tmp=$(mktemp -d); mkdir -p "$QEMU_STATIC_DIR"
  (cd "$tmp" && apt-get download -q qemu-user-static >/dev/null 2>&1) \
    || { $SUDO apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q qemu-user-static); }
  dpkg-deb --fsys-tarfile "$tmp"/qemu-user-static_*.deb \
    | tar -x -C "$tmp" "./usr/bin/${QEMU}-static" "./usr/lib/binfmt.d/${QEMU}.conf"
  install -m 755 "$tmp/usr/bin/${QEMU}-static" "$QEMU_STATIC_DIR/${QEMU}-static"
  install -m 644 "$tmp/usr/lib/binfmt.d/${QEMU}.conf" "$QEMU_STATIC_DIR/${QEMU}.binfmt"
  rm -rf "$tmp"
fi
ns_run "$QEMU_STATIC_DIR/${QEMU}-static" --version | head -1 >/dev/null \
  || die "cannot run a private binfmt_misc in a user namespace here (needs Linux >= 6.7)"

# --- the root ------------------------------------------------------------------------------
step "Debian $DEBIAN_SUITE $DEB_ARCH root at $ROOT"
want="$DEBIAN_SUITE $DEB_ARCH minbase ${DEBROOT_PACKAGES[*]}"
if [[ -f "$ROOT/.tspm-debroot-stamp" && "$(cat "$ROOT/.tspm-debroot-stamp")" == "$want" ]]; then
  say "current ($(du -sh "$ROOT" 2>/dev/null | cut -f1))"
else
  mkdir -p "$DEBROOT_BASE"
  tmp="$ROOT.new.$$"
  rm -rf "$tmp" "$ROOT"
  ok=0
  for attempt in 1 2 3; do
    rm -rf "$tmp"
    if ns_run nice -n 10 mmdebstrap --quiet --mode=root --variant=minbase \
        --architectures="$DEB_ARCH" --components=main \
        --include="$(IFS=,; echo "${DEBROOT_PACKAGES[*]}")" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        "$DEBIAN_SUITE" "$tmp" "$DEBIAN_MIRROR"; then
      ok=1; break
    fi
    say "mmdebstrap failed (attempt $attempt), retrying in 15 s"; sleep 15
  done
  [ $ok = 1 ] || die "mmdebstrap for $DEB_ARCH failed 3 times"
  echo "$want" > "$tmp/.tspm-debroot-stamp"
  mv "$tmp" "$ROOT"
  say "made ($(du -sh "$ROOT" | cut -f1))"
fi

# --- install ------------------------------------------------------------------------------
step "install $(basename "$deb") ($(stat -c %s "$deb") bytes) with dpkg -i in the root"
dpkgq() { dpkg-query --admindir="$ROOT/var/lib/dpkg" "$@"; }
if dpkgq -W -f='${db:Status-Abbrev}' tspm-edge 2>/dev/null | grep -q '^.[^n]'; then
  say "a tspm-edge from an earlier run is there: purging it first"
  if ! in_root dpkg --purge tspm-edge; then
    # An earlier package with broken maintainer scripts: drop them, purge by force.
    say "its maintainer scripts failed: purging without them"
    rm -f "$ROOT"/var/lib/dpkg/info/tspm-edge.{prerm,postrm,postinst}
    in_root dpkg --purge --force-remove-reinstreq tspm-edge
  fi
fi
cp -f "$deb" "$ROOT/tmp/tspm-edge.deb"
in_root dpkg -i /tmp/tspm-edge.deb
rm -f "$ROOT/tmp/tspm-edge.deb"

step "check what landed"
fails=0
check() { # check DESCRIPTION TEST...
  local what=$1; shift
  if "$@"; then say "ok   $what"; else say "FAIL $what"; fails=$((fails + 1)); fi
}
status=$(dpkgq -W -f='${db:Status-Abbrev} ${Version}' tspm-edge)
check "dpkg status: $status" grep -q '^ii ' <<<"$status"
bin=$ROOT/usr/bin/tspm-edge
check "/usr/bin/tspm-edge, mode 755, $arch ELF" bash -c \
  "[ \"\$(stat -c %a '$bin')\" = 755 ] && [ \"\$(od -An -tu2 -j18 -N2 '$bin' | tr -d ' ')\" = $([ "$arch" = aarch64 ] && echo 183 || echo 40) ]"
check "/etc/tspm-edge/tspm-edge.toml is a conffile" \
  grep -qx /etc/tspm-edge/tspm-edge.toml "$ROOT/var/lib/dpkg/info/tspm-edge.conffiles"
check "config: models.dir = /usr/share/tspm-edge/models" \
  grep -qx 'dir = "/usr/share/tspm-edge/models"' "$ROOT/etc/tspm-edge/tspm-edge.toml"
models=$ROOT/usr/share/tspm-edge/models
check "models: every file the manifests list (models and the text table), with its sha256, + class/tokenizer/answer files" \
  /usr/bin/python3 - "$models" <<'PY'
import hashlib, pathlib, sys, tomllib
d = pathlib.Path(sys.argv[1]); n = 0
for path in sorted(d.glob("manifest*.toml")):
    manifest = tomllib.loads(path.read_text())
    # The text table's manifest lists one table (its rows and their keys), not models.
    if "text_table" in manifest:
        t = manifest["text_table"]
        for f, sha in ((t["file"], t["sha256"]), (t["keys"], t["keys_sha256"])):
            data = (d / f).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha, f
            print(f"       {path.name}: {f} {len(data):,} bytes", file=sys.stderr)
    for m in manifest.get("model", []):
        data = (d / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"], m["file"]
        for k in ("classes", "tokenizer", "answers"):
            if k in m:
                assert (d / m[k]).is_file(), m[k]
        n += 1
        print(f"       {path.name}: {m['name']} {m['precision']}: {m['file']} {len(data):,} bytes",
              file=sys.stderr)
assert n >= 7, n
PY
unit=$ROOT/usr/lib/systemd/system/tspm-edge.service
check "unit /usr/lib/systemd/system/tspm-edge.service" test -f "$unit"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exe=${exec_start%% *}
conf=$(sed -n 's/.*--config \([^ ]*\).*/\1/p' <<<"$exec_start")
check "unit ExecStart=$exec_start: $exe and $conf are in the package" \
  test -x "$ROOT$exe" -a -f "$ROOT$conf"
check "unit enabled: multi-user.target.wants/tspm-edge.service" \
  test -L "$ROOT/etc/systemd/system/multi-user.target.wants/tspm-edge.service"
check "unit Documentation= file exists" test -f "$ROOT/usr/share/doc/tspm-edge/README.md"
check "copyright file" test -f "$ROOT/usr/share/doc/tspm-edge/copyright"
pw=$(grep '^tspm-edge:' "$ROOT/etc/passwd" || true)
uid=$(cut -d: -f3 <<<"$pw")
check "system user: $pw" bash -c "[ -n '$uid' ] && [ '$uid' -lt 1000 ] && grep -q ':/nonexistent:/usr/sbin/nologin\$' <<<'$pw'"
check "group tspm-edge" grep -q '^tspm-edge:' "$ROOT/etc/group"
for g in video audio; do
  check "user in group $g: $(grep "^$g:" "$ROOT/etc/group")" grep -Eq "^$g:[^:]*:[0-9]+:(.*,)?tspm-edge(,|$)" "$ROOT/etc/group"
done
# As systemd/verify.sh: any finding fails (here against the installed binary and config).
findings=$(in_root systemd-analyze verify /usr/lib/systemd/system/tspm-edge.service 2>&1) && rc=0 || rc=$?
[ -z "$findings" ] || sed 's/^/       /' <<<"$findings" >&2
check "systemd-analyze verify of the installed unit, in the root (exit $rc, no findings)" \
  test "$rc" = 0 -a -z "$findings"

step "reinstall over an edited conffile (an upgrade's path: prerm upgrade, postinst configure <old>)"
echo "# local edit by cross/test-deb.sh" >> "$ROOT/etc/tspm-edge/tspm-edge.toml"
cp -f "$deb" "$ROOT/tmp/tspm-edge.deb"
in_root dpkg -i /tmp/tspm-edge.deb
rm -f "$ROOT/tmp/tspm-edge.deb"
check "the local edit of the conffile survived" grep -qx "# local edit by cross/test-deb.sh" "$ROOT/etc/tspm-edge/tspm-edge.toml"
check "still one tspm-edge user" test "$(grep -c '^tspm-edge:' "$ROOT/etc/passwd")" = 1

# --- run the installed binary -----------------------------------------------------------
step "run the installed binary: cross/qemu-run.sh $arch $bin (libraries and GStreamer from the root)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run_installed() {
  TSPM_SYSROOT_DIR=$DEBROOT_BASE TSPM_MODEL_DIR=$models CACHE_DIRECTORY=$work/cache \
    "$CROSS_DIR/qemu-run.sh" "$arch" "$bin" --config "$ROOT/etc/tspm-edge/tspm-edge.toml" "$@"
}
mkdir -p "$work/cache"
version_out=$(run_installed --version)
say "--version: $version_out"
check "--version prints tspm-edge $(dpkg-deb --field "$deb" Version | sed 's/-[^-]*$//')" \
  grep -q "tspm-edge $(dpkg-deb --field "$deb" Version | sed 's/-[^-]*$//')" <<<"$version_out"

say "sample: 3 s, 320x240 10 fps VP8 test pattern + 440 Hz Vorbis 48 kHz stereo, WebM (host gst-launch-1.0)"
env -u GST_PLUGIN_SYSTEM_PATH -u GST_REGISTRY -u GST_REGISTRY_FORK gst-launch-1.0 -q webmmux name=mux \
  videotestsrc num-buffers=30 pattern=smpte ! video/x-raw,width=320,height=240,framerate=10/1 \
    ! vp8enc deadline=1 ! queue ! mux. \
  audiotestsrc num-buffers=60 samplesperbuffer=2400 freq=440 volume=0.5 \
    ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! vorbisenc ! queue ! mux. \
  mux. ! filesink location="$work/sample.webm" >/dev/null
say "sample.webm: $(stat -c %s "$work/sample.webm") bytes"

t=$SECONDS rc=0
run_installed extract "$work/sample.webm" --out "$work/sample.npz" --print-classes > "$work/extract.log" 2>&1 || rc=$?
extract_s=$((SECONDS - t))
sed 's/^/       /' "$work/extract.log" >&2
say "extract: exit $rc, ${extract_s} s under qemu"
check "extract exited 0 and wrote sample.npz" test $rc = 0 -a -s "$work/sample.npz"
check "sample.npz: audio [3,1024], audio_logits [3,521], visual [3,1280], tokens [3,49,1280], pts_s [3], has_frame [3]; finite" \
  /usr/bin/python3 - "$work/sample.npz" <<'PY'
import array, ast, math, struct, sys, zipfile
T = 3
want = {"audio": (T, 1024), "audio_logits": (T, 521), "visual": (T, 1280),
        "tokens": (T, 49, 1280), "pts_s": (T,), "has_frame": (T,)}
got = {}
with zipfile.ZipFile(sys.argv[1]) as z:
    for member in z.namelist():
        raw = z.read(member)
        assert raw[:6] == b"\x93NUMPY", member
        if raw[6] == 1:
            n, off = struct.unpack("<H", raw[8:10])[0], 10
        else:
            n, off = struct.unpack("<I", raw[8:12])[0], 12
        head = ast.literal_eval(raw[off:off + n].decode("latin1"))
        name = member[:-4] if member.endswith(".npy") else member
        got[name] = head
        body = raw[off + n:]
        desc = head["descr"]
        print(f"       {name}: {desc} {list(head['shape'])}", file=sys.stderr)
        if desc == "<f4":
            a = array.array("f"); a.frombytes(body)
            assert all(math.isfinite(x) for x in a), f"{name} has non-finite values"
            if name in ("audio", "visual"):
                assert any(x != 0 for x in a), f"{name} is all zeros"
            if name == "pts_s":
                assert [round(x, 3) for x in a] == [0.0, 1.0, 2.0], list(a)
for name, shape in want.items():
    assert name in got, f"{name} missing (have {sorted(got)})"
    assert tuple(got[name]["shape"]) == shape, f"{name}: {got[name]['shape']} != {shape}"
PY

if [ $answer = 1 ]; then
  t=$SECONDS rc=0
  run_installed answer "$work/sample.webm" -q "How many instruments are sounding in the video?" \
    > "$work/answer.log" 2>&1 || rc=$?
  answer_s=$((SECONDS - t))
  sed 's/^/       /' "$work/answer.log" >&2
  say "answer: exit $rc, ${answer_s} s under qemu"
  ans=$(sed -n 's/^A: \(.*\) ([0-9.]* %)$/\1/p' "$work/answer.log")
  check "answer exited 0 with an answer from tspm_head_answers.txt ('$ans')" \
    bash -c "[ $rc = 0 ] && [ -n '$ans' ] && grep -qxF '$ans' '$models/tspm_head_answers.txt'"
fi
if [ -f "$work/cache/precision-cache.toml" ]; then
  say "precision verdicts under qemu (emulated CPU: says nothing about a board):"
  grep -E '^\[|chosen|_ms' "$work/cache/precision-cache.toml" | sed 's/^/       /' >&2
fi

# --- remove, purge -----------------------------------------------------------------------
if [ $keep = 1 ]; then
  say "--keep: tspm-edge stays installed in $ROOT"
else
  step "dpkg --remove"
  in_root dpkg --remove tspm-edge
  check "removed: binary and models gone" test ! -e "$bin" -a ! -e "$models"
  check "removed: conffile kept" test -f "$ROOT/etc/tspm-edge/tspm-edge.toml"
  check "removed: user kept" grep -q '^tspm-edge:' "$ROOT/etc/passwd"
  check "removed: dpkg status rc" grep -q '^rc' <<<"$(dpkgq -W -f='${db:Status-Abbrev}' tspm-edge)"
  step "dpkg --purge"
  in_root dpkg --purge tspm-edge
  check "purged: /etc/tspm-edge gone" test ! -e "$ROOT/etc/tspm-edge"
  check "purged: user and group gone" bash -c "! grep -q '^tspm-edge:' '$ROOT/etc/passwd' && ! grep -q '^tspm-edge:' '$ROOT/etc/group' && ! grep -Eq '[:,]tspm-edge(,|\$)' '$ROOT/etc/group'"
  check "purged: enablement symlink gone" test ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/tspm-edge.service"
  check "purged: no /usr/share/tspm-edge left" test ! -e "$ROOT/usr/share/tspm-edge"
fi

step "summary"
say "$(basename "$deb"): $(stat -c %s "$deb") bytes; installed size $(dpkg-deb --field "$deb" Installed-Size) KiB"
say "total $((SECONDS - T0)) s; extract under qemu ${extract_s} s${answer_s:+; answer ${answer_s} s}"
[ $fails = 0 ] || die "$fails check(s) failed"
say "PASS"
