#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine and runs the main job on the bundled default:
# Debian packages, the model build, a release build, a generated real sample, then `extract`;
# then a held-out test scene of the training material (models/data/) and `answer` over it,
# checked against the scene's ground truth.
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

say "AVQA sample (models/data/make_sample.py: a held-out test scene rendered from Debian material)"
bash models/data/install-material.sh
[ -f target/sample/avqa-sample.webm ] ||
  /usr/bin/python3 models/data/make_sample.py --out target/sample --bin target/release/tspm-edge

say "tspm-edge answer target/sample/avqa-sample.webm (every question of the scene, vs its ground truth)"
args=()
while IFS=$'\t' read -r q _; do args+=(-q "$q"); done < target/sample/avqa-sample-questions.tsv
./target/release/tspm-edge answer target/sample/avqa-sample.webm "${args[@]}" --json \
  > target/sample/avqa-sample-answers.jsonl
/usr/bin/python3 - <<'PY'
import json
truth = [l.rstrip("\n").split("\t") for l in open("target/sample/avqa-sample-questions.tsv") if l.strip()]
got = [json.loads(l) for l in open("target/sample/avqa-sample-answers.jsonl")]
right = 0
for (q, want), a in zip(truth, got):
    ok = a["answer"] == want
    right += ok
    print(f"{'ok ' if ok else 'BAD'} {q}  ->  {a['answer']} ({a['probability'] * 100:.0f} %), truth: {want}")
print(f"{right}/{len(got)} answers match the scene's ground truth (head: {got[0]['head'] if got else '-'})")
PY
