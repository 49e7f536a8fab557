"""Reproduce the int8 root-cause experiment for YAMNet (onnxruntime only, ~1 minute):
static int8 accuracy vs fp32 as a function of the calibration data.

    DIR/../venv/bin/python models/calib_experiment.py DIR

Calibrating on data that does not look like real log-mel patches (zeros, uniform [0,1),
constant silence) reproduces the 0.2-0.5 mean cosine that spec section 6 recorded for static
int8 YAMNet; real log-mel patches give 0.91-0.99 depending on the recipe.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quantize as Q  # noqa: E402
import realdata as R  # noqa: E402

RECIPES = ["qop-s8-sym-tensor", "qdq-s8-sym-channel", "qop-u8-asym-channel+act"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    args = ap.parse_args()
    audio = R.audio_sets(os.path.join(args.dir, "cache"))
    rs = np.random.RandomState(0)
    calibs = {
        "real log-mel (46 patches)": audio["calib"],
        "golden patch only": audio["eval"][:1],
        "randn N(0,1)": rs.randn(32, 1, 96, 64).astype(np.float32),
        "uniform [0,1)": rs.rand(32, 1, 96, 64).astype(np.float32),
        "zeros": np.zeros((4, 1, 96, 64), np.float32),
        "silence log(0.001)": np.full((4, 1, 96, 64), np.log(0.001), np.float32),
    }
    fp32 = os.path.join(args.dir, "yamnet.fp32.onnx")
    ref = Q.run(fp32, "logmel", audio["eval"])["embedding"]
    with tempfile.TemporaryDirectory() as work:
        for recipe in RECIPES:
            for name, calib in calibs.items():
                out = os.path.join(work, "q.onnx")
                Q.quantize(recipe, fp32, out, "logmel", calib)
                got = Q.run(out, "logmel", audio["eval"])["embedding"]
                c = Q.cosine(ref, got)
                print(f"{recipe:26s} calibration {name:26s}: mean cos {c.mean():.4f} "
                      f"min {c.min():.4f}", flush=True)


if __name__ == "__main__":
    main()
