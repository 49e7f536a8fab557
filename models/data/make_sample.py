#!/usr/bin/python3
"""The demo sample: one held-out test scene, rendered at set-up time, with its questions.

    /usr/bin/python3 models/data/make_sample.py [--out DIR] [--index 22] [--bin tspm-edge]

Renders test clip `--index` of the data set (synth.py draws a clip from its seed, split and
index alone, so this is the scene `make_dataset.py` renders under that name -- the file bytes
differ, webmmux writes a random segment id; test material only: sounds and pictures the head
never trained on) to DIR/avqa-sample.webm with its ground truth
DIR/avqa-sample.json, and writes DIR/avqa-sample-questions.tsv: per question of
`questions.py` for that clip, the question text as the Rust prompt constructor fills it
(`tspm-edge prompts`), a tab, and the ground-truth answer. DIR defaults to
~/.cache/tspm-edge/sample. Then:

    tspm-edge answer ~/.cache/tspm-edge/sample/avqa-sample.webm \\
        -q "Is the accordion on the left louder than the trumpet on the middle?"

Clip 22 (17 s, indoor): accordion left, trumpet middle, electric bass right, all three
sounding the whole clip (accordion -25.5 dBFS, trumpet -33.5, electric bass -20.1). Needs the
packages of install-material.sh.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import questions as Q  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/tspm-edge/sample"))
    ap.add_argument("--index", type=int, default=22)
    ap.add_argument("--seed", type=int, default=7, help="the data set's seed (make_dataset.py)")
    ap.add_argument("--bin", default=os.environ.get("TSPM_EDGE_BIN", os.path.join(REPO, "target", "release", "tspm-edge")),
                    help="tspm-edge binary with the `prompts` subcommand")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    media = os.path.join(args.out, "avqa-sample.webm")
    gt_path = os.path.join(args.out, "avqa-sample.json")
    with tempfile.TemporaryDirectory(prefix="sample-") as tmp:
        subprocess.run([sys.executable, os.path.join(HERE, "synth.py"), "--out", tmp, "--split", "test",
                        "--start", str(args.index), "--count", "1", "--seed", str(args.seed),
                        "--min-s", "10", "--max-s", "30"], check=True)
        name = f"test-{args.index:05d}"
        shutil.copyfile(os.path.join(tmp, name + ".webm"), media)
        with open(os.path.join(tmp, name + ".json")) as f:
            gt = json.load(f)
        gt["media"] = os.path.basename(media)
        with open(gt_path, "w") as f:
            json.dump(gt, f, indent=1)
        records = Q.questions_for_scene(gt, per_template=3, seed=args.seed)
        rec_path = os.path.join(tmp, "questions.json")
        with open(rec_path, "w") as f:
            json.dump(records, f)
        lines = []
        if os.path.exists(args.bin):
            out = subprocess.run([args.bin, "prompts", rec_path], check=True, stdout=subprocess.PIPE,
                                 text=True).stdout
            text = {p["question_id"]: p["question"] for p in map(json.loads, out.splitlines())}
            lines = [f"{text[r['question_id']]}\t{r['anser']}" for r in records]
        else:
            print(f"make_sample: {args.bin} not found; questions written as templates", file=sys.stderr)
            lines = [f"{r['question_content']} {r['templ_values']}\t{r['anser']}" for r in records]
    with open(os.path.join(args.out, "avqa-sample-questions.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"sample: {media} ({gt['duration_s']:.0f} s), {len(lines)} questions with ground truth in "
          f"{os.path.join(args.out, 'avqa-sample-questions.tsv')}", file=sys.stderr)


if __name__ == "__main__":
    main()
