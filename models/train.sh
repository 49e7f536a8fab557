#!/usr/bin/env bash
# Reproduces the trained TSPM head in models/head/ from nothing but Debian packages and this
# repository: data set -> training (+ the three ablations) -> ONNX export -> evaluation
# (PyTorch, onnxruntime, and tract through `tspm-edge eval`). CI does not run it.
#
#   bash models/train.sh [--skip-ablations] [--epochs N]
#
# Environment: TSPM_DATA_DIR (default ~/.cache/tspm-edge/data), TSPM_MODEL_DIR (default
# ~/.cache/tspm-edge/models: the trained head is exported there), TSPM_EDGE_BIN (default
# target/release/tspm-edge; it must have the `eval` subcommand for the tract rows).
# Needs: bash scripts/install-deps.sh, bash models/build.sh, bash models/data/install-material.sh,
# cargo build --release. Measured on the 2-core box: see models/head/README.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DATA="${TSPM_DATA_DIR:-$HOME/.cache/tspm-edge/data}"
MODEL_DIR="${TSPM_MODEL_DIR:-$HOME/.cache/tspm-edge/models}"
VENV="${TSPM_VENV:-$(dirname "$MODEL_DIR")/venv}"
BIN="${TSPM_EDGE_BIN:-$REPO/target/release/tspm-edge}"
ABLATIONS=1
EPOCHS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-ablations) ABLATIONS=0; shift ;;
    --epochs) EPOCHS=(--epochs "$2"); shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "[train.sh] unknown argument: $1" >&2; exit 2 ;;
  esac
done
log() { echo "[train.sh] $*"; }
PY="$VENV/bin/python"
[ -x "$PY" ] || { log "no venv at $VENV: run bash models/build.sh"; exit 1; }
[ -x "$BIN" ] || { log "no $BIN: cargo build --release"; exit 1; }

# Debian's python3-torch calls the generic libblas.so.3 (BLAS_INFO=generic). With the reference
# BLAS (libblas3) a 512x1024x512 matmul runs at ~2 GFLOP/s, with OpenBLAS at ~75: training
# needs OpenBLAS. If the system's libblas.so.3 is not OpenBLAS, unpack Debian's
# libopenblas0-pthread (apt-get download, not installed) under the cache and put it first on
# LD_LIBRARY_PATH for these processes only.
if ! ldconfig -p | grep -q 'libopenblas'; then
  OBL="$(dirname "$MODEL_DIR")/openblas"
  if [ -z "$(find "$OBL" -name libblas.so.3 2>/dev/null | head -1)" ]; then
    log "unpacking Debian libopenblas0-pthread into $OBL"
    mkdir -p "$OBL" && (cd "$OBL" && apt-get download libopenblas0-pthread >/dev/null 2>&1 \
      && dpkg-deb -x libopenblas0-pthread_*.deb root)
  fi
  LIB="$(dirname "$(find "$OBL" -name libblas.so.3 | head -1)")"
  export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export OPENBLAS_NUM_THREADS=1 TSPM_DATA_DIR="$DATA" TSPM_MODEL_DIR="$MODEL_DIR"

t0=$(date +%s)
bash "$HERE/data/install-material.sh"
log "data set -> $DATA"
nice -n 10 "$PY" "$HERE/data/make_dataset.py" --data "$DATA" --model-dir "$MODEL_DIR" --bin "$BIN"
log "training the head (models/train.py) -> models/head/, export -> $MODEL_DIR"
nice -n 10 "$PY" -W ignore "$HERE/train.py" --data "$DATA" --model-dir "$MODEL_DIR" "${EPOCHS[@]}"
if [ "$ABLATIONS" = 1 ]; then
  for v in qprompt alltime nomerge; do
    log "ablation $v"
    nice -n 10 "$PY" -W ignore "$HERE/train.py" --data "$DATA" --variant "$v" "${EPOCHS[@]}"
  done
fi
TRACT=()
if "$BIN" eval --help >/dev/null 2>&1; then
  # The head's parts (what `serve` runs) and the whole head file.
  log "tract: $BIN eval $DATA/test.jsonl (the parts, then --head whole)"
  nice -n 10 "$BIN" eval "$DATA/test.jsonl" > "$DATA/tract_eval_parts.json"
  nice -n 10 "$BIN" eval --head whole "$DATA/test.jsonl" > "$DATA/tract_eval.json"
  TRACT=(--tract "$DATA/tract_eval_parts.json" --tract "$DATA/tract_eval.json")
else
  log "$BIN has no eval subcommand: tract rows skipped"
fi
nice -n 10 "$PY" "$HERE/eval.py" --data "$DATA" --model-dir "$MODEL_DIR" "${TRACT[@]}"
log "done in $(( ($(date +%s) - t0) / 60 )) min"
