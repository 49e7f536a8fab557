#!/usr/bin/env bash
# The test command: the whole suite against the real models (build them first with
# `bash models/build.sh`; TSPM_MODEL_DIR selects a non-default directory).
set -euo pipefail
cd "$(dirname "$0")/.."
export G_DEBUG="${G_DEBUG:-fatal_warnings}"
# `alsa`: the direct ALSA backend is tested too (through an ALSA file PCM); `v4l`: the direct
# V4L2 backend (conversions, format choice, and a missing device; no camera is needed).
cargo test --locked --all-targets --features alsa,v4l
