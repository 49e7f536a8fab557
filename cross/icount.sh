#!/usr/bin/env bash
# ARM cost without a board: aarch64 instructions per inference of each stage, counted under
# qemu-user with the qemu-icount plugin (../shared/tools/qemu-icount), per board CPU.
#
#   bash cross/icount.sh [--no-build] [--board B] [--bin PATH] [--cpus "CPU ..."]
#                        [--stages "STAGE ..."] [--runs N] [--transform T] [--out DIR]
#
# Builds the plugin once into ~/.cache/tspm-edge/qemu-icount (rebuilt when qemu-user's version
# changes), the aarch64 release binary (`cross/build.sh aarch64 --release`; --no-build reuses
# target/cross/dist/aarch64[-B]/tspm-edge, --bin names another), then for every CPU and stage
# runs `tspm-edge bench --stage STAGE --runs R` under `cross/qemu-run.sh` (QEMU_CPU pinned,
# QEMU_PLUGIN set) with R = 1 and R = N, and reports per inference = (count_N - count_1)/(N - 1)
# in millions of guest instructions: load, planning and the warm-up run cancel out. N = --runs
# for the encoders and tspm_window; 10 x --runs for the small stages (log-mel, image prep,
# token merging, tspm_second, tspm_question), whose per-run count is small next to the
# run-to-run spread of the loading part (~0.02 %: hash seeds).
# Writes DIR/<cpu>.txt (one table per CPU), DIR/icount.md (all CPUs side by side, int8/fp32
# ratios, the per-segment total at each precision) and DIR/raw.tsv (every count), default
# DIR = target/cross/icount. Defaults: --cpus "cortex-a72 cortex-a76 neoverse-n1" (Pi 4, Pi 5,
# and for Jetson Orin's Cortex-A78AE, which qemu 7.2 lacks, the Neoverse N1: same hwcaps as
# cortex-a76 there, see cross/README.md), --runs 5, every stage of `bench --stage`.
# --transform T (repeatable) is handed to `bench --transform=T` (every model stage), e.g.
# --transform -conv_nhwc counts the encoders without the default channel-last float convs.
# Models: TSPM_MODEL_DIR or ~/.cache/tspm-edge/models; the tool: TSPM_QEMU_ICOUNT_SRC.
# Counts are instruction counts, not time: stalls and memory do not show. See cross/README.md.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmdline="bash cross/icount.sh$(printf ' %q' "$@")"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
ALL_STAGES="logmel image_prep token_merge yamnet.fp32 yamnet.int8 efficientnet_lite0.fp32
efficientnet_lite0.int8 tspm_second.fp32 tspm_second.int8 tspm_window.fp32 tspm_window.int8
tspm_question.fp32 tspm_question.int8"
transforms=()
build=1 board=generic bin="" cpus="cortex-a72 cortex-a76 neoverse-n1" stages=$ALL_STAGES runs=5
out=$CROSS_TARGET_DIR/icount
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --board) [ $# -ge 2 ] || die "--board needs a value"; board=$2; shift ;;
    --bin) [ $# -ge 2 ] || die "--bin needs a path"; bin=$2; build=0; shift ;;
    --cpus) [ $# -ge 2 ] || die "--cpus needs a list"; cpus=$2; shift ;;
    --stages) [ $# -ge 2 ] || die "--stages needs a list"; stages=$2; shift ;;
    --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift ;;
    --transform) [ $# -ge 2 ] || die "--transform needs a name"; transforms+=("--transform=$2"); shift ;;
    -h|--help) usage 0 ;;
    *) echo "[cross] unknown argument '$1'" >&2; usage 2 ;;
  esac
  shift
done
[[ "$runs" =~ ^[0-9]+$ && "$runs" -ge 2 ]] || die "--runs must be at least 2 (got '$runs')"
arch_info aarch64
cd "$REPO_DIR"

cpu_board() {
  case "$1" in
    cortex-a72) echo "Raspberry Pi 4 (BCM2711)" ;;
    cortex-a76) echo "Raspberry Pi 5 (BCM2712)" ;;
    neoverse-n1) echo "stand-in for Jetson Orin's Cortex-A78AE (same hwcaps as cortex-a76 in qemu 7.2)" ;;
    *) echo "-" ;;
  esac
}

# The plugin, built against the installed qemu's plugin header; a stamp holds that version.
apt_install qemu-user libglib2.0-dev pkg-config dpkg-dev xz-utils
qemu_version=$(dpkg-query -W -f='${Version}' qemu-user)
plugin_dir=$CACHE_DIR/qemu-icount
plugin=$plugin_dir/libicount.so
if [[ ! -f "$plugin" || "$(cat "$plugin_dir/stamp" 2>/dev/null)" != "$qemu_version" ]]; then
  tool=${TSPM_QEMU_ICOUNT_SRC:-$REPO_DIR/../shared/tools/qemu-icount}/build.sh
  [ -f "$tool" ] || die "no $tool (the shared qemu-icount tool)"
  say "building the qemu-icount plugin for qemu-user $qemu_version into $plugin_dir"
  bash "$tool" "$plugin_dir" >&2
  echo "$qemu_version" > "$plugin_dir/stamp"
fi
cpu_models=$("$QEMU" -cpu help || true)   # lists the models, exits 1
for cpu in $cpus; do
  grep -qx "  $cpu" <<<"$cpu_models" \
    || die "$QEMU $($QEMU --version | head -1 | awk '{print $3}') has no CPU model '$cpu' (see: $QEMU -cpu help)"
done

# The binary.
if [ -z "$bin" ]; then
  if [ $build = 1 ]; then
    bash "$CROSS_DIR/build.sh" aarch64 --release --board "$board"
  fi
  bin=$CROSS_TARGET_DIR/dist/aarch64; [ "$board" = generic ] || bin+=-$board
  bin+=/tspm-edge
fi
[ -f "$bin" ] || die "no $bin: run without --no-build"
[ "$(od -An -tu2 -j18 -N2 "$bin" | tr -d ' ')" = 183 ] || die "$bin is not an aarch64 ELF executable"
bench_help=$("$CROSS_DIR/qemu-run.sh" aarch64 "$bin" bench --help)
grep -q -- '--stage' <<<"$bench_help" \
  || die "$bin has no 'bench --stage' (built from an older source?)"

# The models (built natively by models/build.sh; ONNX is platform independent).
models=${TSPM_MODEL_DIR:-$CACHE_DIR/models}
need=(manifest.toml); [[ "$stages" == *tspm_* ]] && need+=(manifest-head-parts.toml)
for f in "${need[@]}"; do
  [ -f "$models/$f" ] || die "no $models/$f: run bash models/build.sh first"
done

mkdir -p "$out"
raw=$out/raw.tsv
printf 'cpu\tstage\truns\tinsns\tvcpus\twall_s\n' > "$raw"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# count CPU STAGE RUNS: guest instructions of one `bench --stage` process; appends to raw.tsv.
count() {
  local cpu=$1 stage=$2 r=$3 mode=inline line insns vcpus start
  while :; do
    start=$EPOCHREALTIME
    local opt=$plugin,out=$tmp/count; [ $mode = cb ] && opt+=,mode=cb
    if ! QEMU_PLUGIN=$opt TSPM_QEMU_CPU=$cpu TSPM_MODEL_DIR=$models RUST_LOG=warn \
        "$CROSS_DIR/qemu-run.sh" aarch64 "$bin" bench --stage "$stage" --runs "$r" \
        "${transforms[@]}" > "$tmp/log" 2>&1; then
      cat "$tmp/log" >&2
      die "bench --stage $stage --runs $r failed under $QEMU -cpu $cpu"
    fi
    line=$(cat "$tmp/count")
    insns=$(awk '{print $3}' <<<"$line"); vcpus=$(awk '{print $7}' <<<"$line")
    # The inline counter is exact for one guest thread only; with more, count atomically.
    if [[ "$vcpus" -gt 1 && $mode = inline ]]; then mode=cb; continue; fi
    break
  done
  printf '%s\t%s\t%s\t%s\t%s\t%.1f\n' "$cpu" "$stage" "$r" "$insns" "$vcpus" \
    "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{print b - a}')" >> "$raw"
  echo "$insns"
}

# Runs of the second count: the small stages get 10x, so that the spread of the loading part
# (~0.2 M for a model load, hash seeds) stays a few tenths of a percent of the difference.
stage_runs() {
  case "$1" in
    logmel|image_prep|token_merge|tspm_second.*|tspm_question.*) echo $((runs * 10)) ;;
    *) echo "$runs" ;;
  esac
}

total_start=$SECONDS
for cpu in $cpus; do
  say "$cpu: $(wc -w <<<"$stages") stages, runs 1 and $runs ($((runs * 10)) for the small ones)"
  for stage in $stages; do
    n=$(stage_runs "$stage")
    c1=$(count "$cpu" "$stage" 1)
    cn=$(count "$cpu" "$stage" "$n")
    say "  $cpu $stage: $(awk -v a="$c1" -v b="$cn" -v n="$n" 'BEGIN{printf "%.3f M per run", (b-a)/(n-1)/1e6}')"
  done
done
say "counted in $((SECONDS - total_start)) s"

# Tables from raw.tsv.
{
  echo "qemu $($QEMU --version | head -1 | awk '{print $3}'), tract $(sed -n '/^name = "tract-linalg"$/{n;s/version = "\(.*\)"/\1/p;q}' Cargo.lock)," \
       "binary $(basename "$(dirname "$bin")")/tspm-edge ($(stat -c %s "$bin") bytes), $(date -u +%F)"
  echo "command: $cmdline"
} > "$tmp/header"
awk -F'\t' -v cpus="$cpus" -v out="$out" -v header="$tmp/header" -v boards="$(for c in $cpus; do echo "$c=$(cpu_board "$c")"; done)" '
NR == 1 { next }
{ key = $1 SUBSEP $2; if ($3 == 1) c1[key] = $4; else { cn[key] = $4; nr[key] = $3 }
  if (!($2 in seen)) { seen[$2] = 1; order[++ns] = $2 } }
function per(cpu, st,   k) { k = cpu SUBSEP st
  if (!(k in c1) || !(k in cn)) return -1
  return (cn[k] - c1[k]) / (nr[k] - 1) / 1e6 }
function fmt(v) { return v < 0 ? "-" : (v < 10 ? sprintf("%.3f", v) : sprintf("%.1f", v)) }
function has(cpu, st) { return per(cpu, st) >= 0 }
END {
  nc = split(cpus, cl, " ")
  split(boards, bl, "\n"); for (i in bl) { split(bl[i], kv, "="); bname[kv[1]] = kv[2] }
  while ((getline l < header) > 0) hdr = hdr l "\n"
  # One plain-text table per CPU.
  for (i = 1; i <= nc; i++) {
    cpu = cl[i]; f = out "/" cpu ".txt"
    printf "%s", hdr > f
    printf "aarch64 instructions, qemu -cpu %s (%s); per run = (count at runs=N - count at runs=1) / (N - 1)\n", cpu, bname[cpu] > f
    printf "%-26s %5s %14s %14s %14s\n", "stage", "N", "runs=1 (M)", "runs=N (M)", "per run (M)" > f
    for (j = 1; j <= ns; j++) { st = order[j]; k = cpu SUBSEP st
      printf "%-26s %5d %14.1f %14.1f %14s\n", st, nr[k], c1[k] / 1e6, cn[k] / 1e6, fmt(per(cpu, st)) > f }
    close(f)
  }
  # Markdown: every CPU side by side.
  f = out "/icount.md"
  printf "%s\n", hdr > f
  printf "Millions of aarch64 instructions per run (per inference): (count with --runs N - count with --runs 1) / (N - 1), N in %s.txt.\n\n", cl[1] > f
  line = "| stage |"; sep = "| --- |"
  for (i = 1; i <= nc; i++) { line = line " " cl[i] " |"; sep = sep " ---: |" }
  print line > f; print sep > f
  for (j = 1; j <= ns; j++) { st = order[j]; line = "| `" st "` |"
    for (i = 1; i <= nc; i++) line = line " " fmt(per(cl[i], st)) " |"
    print line > f }
  # int8 / fp32 per model.
  nm = split("yamnet efficientnet_lite0 tspm_second tspm_window tspm_question", models, " ")
  for (m = 1; m <= nm; m++) { line = "| " models[m] " int8 / fp32 |"; any = 0
    for (i = 1; i <= nc; i++) {
      if (has(cl[i], models[m] ".fp32") && has(cl[i], models[m] ".int8") && per(cl[i], models[m] ".fp32") > 0) {
        line = line " " sprintf("%.2f", per(cl[i], models[m] ".int8") / per(cl[i], models[m] ".fp32")) " |"; any = 1
      } else line = line " - |" }
    if (any) print line > f }
  # One second of video: log-mel + image prep + both encoders, at each precision pair.
  np = split("fp32 fp32,int8 int8,fp32 int8,int8 fp32", pairs, ",")
  for (p = 1; p <= np; p++) { split(pairs[p], pp, " ")
    line = "| segment: log-mel + image prep + yamnet." pp[1] " + efficientnet_lite0." pp[2] " |"; any = 0
    for (i = 1; i <= nc; i++) { c = cl[i]
      if (has(c, "logmel") && has(c, "image_prep") && has(c, "yamnet." pp[1]) && has(c, "efficientnet_lite0." pp[2])) {
        line = line " " fmt(per(c, "logmel") + per(c, "image_prep") + per(c, "yamnet." pp[1]) + per(c, "efficientnet_lite0." pp[2])) " |"; any = 1
      } else line = line " - |" }
    if (any) print line > f }
  # The head, whose three parts share one precision: a second entering the window, then the
  # first question on it (the window part runs once per window version, then the question part).
  for (p = 1; p <= 2; p++) { pr = p == 1 ? "fp32" : "int8"
    line = "| head " pr ": tspm_second + tspm_window + tspm_question |"; any = 0
    for (i = 1; i <= nc; i++) { c = cl[i]
      if (has(c, "tspm_second." pr) && has(c, "tspm_window." pr) && has(c, "tspm_question." pr)) {
        line = line " " fmt(per(c, "tspm_second." pr) + per(c, "tspm_window." pr) + per(c, "tspm_question." pr)) " |"; any = 1
      } else line = line " - |" }
    if (any) print line > f }
  close(f)
}' "$raw"
for cpu in $cpus; do cat "$out/$cpu.txt"; echo; done
cat "$out/icount.md"
say "written: $out/icount.md, $out/<cpu>.txt, $out/raw.tsv"
