#!/usr/bin/env bash
# The training / evaluation data set (models/data/make_dataset.py) in the model build's venv:
#   bash models/data/make_dataset.sh [make_dataset.py options, e.g. --train 400 --data DIR]
# Needs models/data/install-material.sh, models/build.sh and a release build
# (target/release/tspm-edge, or TSPM_EDGE_BIN). Data goes to $TSPM_DATA_DIR or
# ~/.cache/tspm-edge/data. Cached: a second run only does what is missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_DIR="${TSPM_MODEL_DIR:-$HOME/.cache/tspm-edge/models}"
VENV="${TSPM_VENV:-$(dirname "$MODEL_DIR")/venv}"
[ -x "$VENV/bin/python" ] || { echo "[data] no venv at $VENV: run bash models/build.sh" >&2; exit 1; }
exec nice -n 10 "$VENV/bin/python" "$HERE/make_dataset.py" --model-dir "$MODEL_DIR" "$@"
