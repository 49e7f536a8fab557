"""Time onnxruntime on the built models (batch 1, the same ONNX files tract runs).

    python models/ort_bench.py DIR [--threads 1] [--runs 50] [--warmup 5]

Prints one JSON object on stdout: {"yamnet.fp32": median_ms, "yamnet.int8": ...,
"efficientnet_lite0.fp32": ..., "efficientnet_lite0.int8": ...}, one key per model file listed
in DIR/manifest.toml (name.precision). Inputs are the first row of
DIR/check_inputs.npz (real data) when present, else zeros. Progress goes to stderr.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

MODELS = [("yamnet", "logmel", (1, 1, 96, 64)), ("efficientnet_lite0", "image", (1, 3, 224, 224))]


def bench(path, name, x, threads, runs, warmup):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        s.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def variants(d, model):
    """(precision, path) of every file of `model`: from DIR/manifest.toml when there is one (so a
    directory of experimental variants, e.g. from int8_pointwise.py, is timed too), else the
    two standard file names."""
    mf = os.path.join(d, "manifest.toml")
    if os.path.exists(mf):
        import tomllib
        with open(mf, "rb") as f:
            entries = tomllib.load(f).get("model", [])
        return [(m["precision"], os.path.join(d, m["file"])) for m in entries if m["name"] == model]
    return [(p, os.path.join(d, f"{model}.{p}.onnx")) for p in ("fp32", "int8")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    ck = os.path.join(args.dir, "check_inputs.npz")
    data = np.load(ck) if os.path.exists(ck) else None
    out = {}
    for model, name, shape in MODELS:
        x = data[name][:1] if data is not None else np.zeros(shape, np.float32)
        for precision, path in variants(args.dir, model):
            if not os.path.exists(path):
                print(f"[ort_bench] missing {path}", file=sys.stderr)
                continue
            ms = bench(path, name, np.ascontiguousarray(x), args.threads, args.runs, args.warmup)
            out[f"{model}.{precision}"] = round(ms, 3)
            print(f"[ort_bench] {model}.{precision}: median {ms:.3f} ms ({args.runs} runs, "
                  f"{args.threads} thread(s))", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
