"""Time onnxruntime on the built models (batch 1, the same ONNX files tract runs), and the
question side's obvious alternatives.

    python models/ort_bench.py DIR [--threads 1] [--runs 50] [--warmup 5] [--question-side]

Prints one JSON object on stdout: {"yamnet.fp32": median_ms, "yamnet.int8": ...,
"efficientnet_lite0.fp32": ..., "efficientnet_lite0.int8": ...}, one key per model file listed
in DIR/manifest.toml (name.precision). Inputs are the first row of
DIR/check_inputs.npz (real data) when present, else zeros. Progress goes to stderr.

--question-side adds: "minilm.<precision>" (one question of 32 tokens, from minilm_check.npz),
"tspm_head.<precision>" (T = 60, the t60 case of tspm_head_check.npz), the head's parts
"tspm_second.<precision>" (one second), "tspm_window.<precision>" and
"tspm_question.<precision>" (T = 60) on the same features, "tspm_head.torch"
(the same head in PyTorch: models/tspm.py with the trained weights models/head/tspm_head.npz,
or the untrained seed head when they are absent) and "token_merge.numpy" (models/token_merge.py,
the Python reference, on one real 7x7 EfficientNet grid of check_inputs.npz, 49 -> 14).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

# inputs come from check_inputs.npz (the build's real inputs, at the encoder's size)
MODELS = [("yamnet", "logmel"), ("efficientnet_lite0", "image")]


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


def median_ms(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def question_side(d, args, out):
    """Text encoder, head (onnxruntime and PyTorch) and token merging (numpy reference)."""
    here = os.path.dirname(os.path.abspath(__file__))
    t = np.load(os.path.join(d, "minilm_check.npz"))
    feed = {"input_ids": t["input_ids"][:1], "attention_mask": t["attention_mask"][:1]}
    for precision, path in variants(d, "minilm"):
        s = session(path, args.threads)
        out[f"minilm.{precision}"] = round(median_ms(lambda: s.run(None, feed), args.runs,
                                                     args.warmup), 3)
    h = np.load(os.path.join(d, "tspm_head_check.npz"))
    names = ["audio", "visual", "patches", "question", "prompt", "valid"]
    x = {n: h[f"t60/{n}"] for n in names}
    for precision, path in variants(d, "tspm_head"):
        s = session(path, args.threads)
        out[f"tspm_head.{precision}"] = round(median_ms(lambda: s.run(None, x), args.runs,
                                                        args.warmup), 3)
    # The parts the runtime runs (export_head_parts.py): one second; window and question at T=60.
    f = None
    for precision, path in variants(d, "tspm_second"):
        s = session(path, args.threads)
        one = {"audio": x["audio"][0, :1], "visual": x["visual"][0, :1],
               "patches": x["patches"][0, :1]}
        out[f"tspm_second.{precision}"] = round(median_ms(lambda: s.run(None, one), args.runs,
                                                          args.warmup), 3)
        packed = s.run(None, {"audio": x["audio"][0], "visual": x["visual"][0],
                              "patches": x["patches"][0]})[0][None]
        f = packed
    if f is not None:
        for precision, path in variants(d, "tspm_window"):
            s = session(path, args.threads)
            # the window part reads the rows' last columns (models/tspm_parts.py)
            wx = {"packed": f[..., f.shape[-1] - s.get_inputs()[0].shape[-1]:].copy(),
                  "valid": x["valid"]}
            out[f"tspm_window.{precision}"] = round(median_ms(lambda: s.run(None, wx), args.runs,
                                                              args.warmup), 3)
            context = s.run(None, wx)[0]
        for precision, path in variants(d, "tspm_question"):
            s = session(path, args.threads)
            # the question part reads the rows' first columns
            qx = {"packed": f[..., :s.get_inputs()[0].shape[-1]].copy(), "valid": x["valid"],
                  "context": context,
                  "question": x["question"], "prompt": x["prompt"]}
            out[f"tspm_question.{precision}"] = round(median_ms(lambda: s.run(None, qx),
                                                                args.runs, args.warmup), 3)
    import torch
    sys.path.insert(0, here)
    import tspm
    torch.set_num_threads(args.threads)
    answers = tspm.read_answers(os.path.join(here, "answers.txt"))
    model = tspm.TSPMHead(len(answers), **tspm.OUR_DIMS).eval()
    weights = os.path.join(here, "head", "tspm_head.npz")
    if os.path.exists(weights):
        from train import load_compact
        load_compact(model, weights)
        model.eval()
    targs = [torch.from_numpy(x[n]) for n in names]
    with torch.inference_mode():
        out["tspm_head.torch"] = round(median_ms(lambda: model(*targs), max(3, args.runs // 5),
                                                 2), 3)
    import token_merge
    grid = np.load(os.path.join(d, "check_inputs.npz"))["effnet_tokens"][0]
    out["token_merge.numpy"] = round(median_ms(lambda: token_merge.merge_tokens(grid, 14),
                                               args.runs, args.warmup), 3)
    for k in ("minilm", "tspm_", "token_merge"):
        for key, v in out.items():
            if key.startswith(k):
                print(f"[ort_bench] {key}: median {v:.3f} ms", file=sys.stderr)


def variants(d, model):
    """(precision, path) of every file of `model`: from DIR/manifest.toml when there is one (so a
    directory of experimental variants, e.g. from int8_pointwise.py, is timed too), else the
    two standard file names."""
    mf = os.path.join(d, "manifest.toml")
    if os.path.exists(mf):
        import tomllib
        entries = []
        # the head's entries live in their own files (export_head.py, export_head_parts.py)
        for name in ("manifest.toml", "manifest-head.toml", "manifest-head-parts.toml"):
            if os.path.exists(os.path.join(d, name)):
                with open(os.path.join(d, name), "rb") as f:
                    entries += tomllib.load(f).get("model", [])
        return [(m["precision"], os.path.join(d, m["file"])) for m in entries if m["name"] == model]
    return [(p, os.path.join(d, f"{model}.{p}.onnx")) for p in ("fp32", "int8")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--question-side", action="store_true",
                    help="also the text encoder, the head (+ PyTorch) and token merging")
    args = ap.parse_args()
    ck = os.path.join(args.dir, "check_inputs.npz")
    if not os.path.exists(ck):
        raise SystemExit(f"{ck} is missing: run models/build.sh first")
    data = np.load(ck)
    out = {}
    for model, name in MODELS:
        x = data[name][:1]
        for precision, path in variants(args.dir, model):
            if not os.path.exists(path):
                print(f"[ort_bench] missing {path}", file=sys.stderr)
                continue
            ms = bench(path, name, np.ascontiguousarray(x), args.threads, args.runs, args.warmup)
            out[f"{model}.{precision}"] = round(ms, 3)
            print(f"[ort_bench] {model}.{precision}: median {ms:.3f} ms ({args.runs} runs, "
                  f"{args.threads} thread(s))", file=sys.stderr)
    if args.question_side:
        question_side(args.dir, args, out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
