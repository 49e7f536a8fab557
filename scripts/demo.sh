#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine and runs the main job on the bundled default:
# Debian packages, the model build, a release build, a generated real sample, then `extract`.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo; echo "== $*"; }

say "Debian packages"
bash scripts/install-deps.sh

say "models (bash models/build.sh)"
bash models/build.sh

say "release build (cargo build --release; several minutes the first time)"
cargo build --release --locked

say "sample (scripts/make_sample.py: espeak-ng speech, fluidsynth violin and piano, photos)"
mkdir -p target/sample
[ -f target/sample/sample.webm ] || /usr/bin/python3 scripts/make_sample.py target/sample/sample.webm

say "tspm-edge extract target/sample/sample.webm"
./target/release/tspm-edge extract target/sample/sample.webm --out target/sample/sample.npz --print-classes
/usr/bin/python3 - <<'PY'
import numpy as np
f = np.load("target/sample/sample.npz")
print("features:", ", ".join(f"{k} {list(f[k].shape)}" for k in f.files))
PY
