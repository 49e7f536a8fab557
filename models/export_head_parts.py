"""Export the TSPM head as the three parts the runtime runs (models/tspm_parts.py) and check
that, composed, they give the whole head's outputs.

    ~/.cache/tspm-edge/venv/bin/python models/export_head_parts.py [--model-dir DIR] [--force]

DIR defaults to $TSPM_MODEL_DIR, else ~/.cache/tspm-edge/models. Writes there:
  tspm_second.fp32.onnx    per second:  audio [N,1024], visual [N,1280], patches [N,14,1280]
                           -> packed [N,F]            (F = 8*512 + 14 = 4110)
  tspm_window.fp32.onnx    per window:  packed [N,T,F], valid [N,T] -> context [N,1024]
  tspm_question.fp32.onnx  per question: packed, valid, context, question [N,384],
                           prompt [N,384] -> logits, temporal_weights, selected, spm_attention
  manifest-head-parts.toml the parts' [[model]] entries (sha256, inputs, outputs)
  tspm_head_parts_report.json
The weights are the ones models/export_head.py exports (models/head/tspm_head.npz when it
exists, else the untrained seed head). Checks (exit status 1 if one fails): the parts composed
in PyTorch equal TSPMHead.forward, and the three ONNX files composed in onnxruntime match
PyTorch's whole head to <= 1e-4 on the logits with the same selected seconds, at T = 10, 30 and
60 with all, some and fewer than k valid seconds. A later run with the same inputs exits in a
second.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_head  # noqa: E402
import tspm  # noqa: E402
import tspm_parts  # noqa: E402

H, N_TOK = 512, 14
F = tspm_parts.row_len(H, N_TOK)
MANIFEST = "manifest-head-parts.toml"
PARTS = {
    "tspm_second": dict(
        inputs=[("audio", ["N", 1024]), ("visual", ["N", 1280]), ("patches", ["N", N_TOK, 1280])],
        outputs=[("packed", ["N", F])],
        doc="per second: the question-independent part of the TSPM head for one second"),
    "tspm_window": dict(
        inputs=[("packed", ["N", "T", F]), ("valid", ["N", "T"])],
        outputs=[("context", ["N", 2 * H])],
        doc="per window: the AV layer over all seconds and its means over the valid ones"),
    "tspm_question": dict(
        inputs=[("packed", ["N", "T", F]), ("valid", ["N", "T"]), ("context", ["N", 2 * H]),
                ("question", ["N", 384]), ("prompt", ["N", 384])],
        outputs=[("logits", ["N", "A"]), ("temporal_weights", ["N", "T"]),
                 ("selected", ["N", 10]), ("spm_attention", ["N", 10, N_TOK])],
        doc="per question: TPM selection, QTG attention and the answer MLP"),
}


def log(msg):
    print(f"[head-parts] {msg}", flush=True)


def stamp(weights):
    h = hashlib.sha256()
    files = ["tspm.py", "tspm_parts.py", "export_head_parts.py", "answers.txt"]
    for f in files + ([weights] if weights else []):
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(os.path.basename(f).encode() + b"\0" + fh.read())
    return h.hexdigest()


def up_to_date(model_dir, weights):
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.exists(path):
        return False
    text = open(path).read()
    if f"# inputs-stamp = {stamp(weights)}" not in text:
        return False
    files = [ln.split('"')[1] for ln in text.splitlines() if ln.startswith("file = ")]
    shas = [ln.split('"')[1] for ln in text.splitlines() if ln.startswith("sha256 = ")]
    return all(os.path.exists(os.path.join(model_dir, f))
               and export_head.sha256(os.path.join(model_dir, f)) == s
               for f, s in zip(files, shas))


def export_part(module, name, example, path, k):
    spec = PARTS[name]
    in_names = [n for n, _ in spec["inputs"]]
    out_names = [n for n, _ in spec["outputs"]]
    dyn = {}
    for n, shape in spec["inputs"] + spec["outputs"]:
        dyn[n] = {i: d for i, d in enumerate(shape) if isinstance(d, str) and d != "A"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, tuple(example), buf, opset_version=17, input_names=in_names,
                          output_names=out_names, dynamic_axes=dyn, do_constant_folding=True)
    m = onnx.load_from_string(buf.getvalue())
    export_head.state_output_dims(m, {"selected": ["N", k], "spm_attention": ["N", k, N_TOK]})
    m.producer_name = "tspm-edge models/export_head_parts.py"
    m.doc_string = f"TSPM head part '{name}': {spec['doc']}. {export_head.WEIGHTS_DESC}."
    export_head.drop_initializer_identities(m)
    export_head.name_output_nodes(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


def run_parts(sessions, x):
    """The runtime's composition in onnxruntime: second per second, window, question."""
    b, t = x["valid"].shape
    packed = sessions["tspm_second"].run(None, {
        "audio": x["audio"].reshape(b * t, -1), "visual": x["visual"].reshape(b * t, -1),
        "patches": x["patches"].reshape(b * t, N_TOK, -1)})[0].reshape(b, t, F)
    packed = np.where(x["valid"][..., None] > 0.5, packed, 0).astype(np.float32)
    context = sessions["tspm_window"].run(None, {"packed": packed, "valid": x["valid"]})[0]
    return sessions["tspm_question"].run(None, {
        "packed": packed, "valid": x["valid"], "context": context,
        "question": x["question"], "prompt": x["prompt"]})


def write_manifest(model_dir, weights, n_answers, checks):
    lines = ["# TSPM head in three parts (second / window / question). Written by",
             "# models/export_head_parts.py; read with manifest.toml.",
             f"# inputs-stamp = {stamp(weights)}", ""]
    for name, spec in PARTS.items():
        path = os.path.join(model_dir, f"{name}.fp32.onnx")
        lines += ["[[model]]", f'name = "{name}"', 'precision = "fp32"',
                  f'file = "{os.path.basename(path)}"', f'sha256 = "{export_head.sha256(path)}"',
                  f'source = "models/tspm_parts.py (this repository), {export_head.WEIGHTS_DESC}"',
                  'licence = "Apache-2.0"']
        if name == "tspm_question":
            lines.append('answers = "tspm_head_answers.txt"')
            lines.append(f"# composed vs the whole head in PyTorch, max |d| logits: {checks:.2e}")
        for kind, key in (("input", "inputs"), ("output", "outputs")):
            for n, shape in spec[key]:
                shape = [n_answers if d == "A" else d for d in shape]
                dims = ", ".join(f'"{d}"' if isinstance(d, str) else str(d) for d in shape)
                lines += [f"[[model.{kind}]]", f'name = "{n}"', f"shape = [{dims}]",
                          f'dtype = "{"i64" if n == "selected" else "f32"}"']
        lines.append("")
    with open(os.path.join(model_dir, MANIFEST), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--untrained", action="store_true")
    args = ap.parse_args()
    weights = None if args.untrained or not os.path.exists(export_head.HEAD_WEIGHTS) \
        else export_head.HEAD_WEIGHTS
    os.makedirs(args.model_dir, exist_ok=True)
    if not args.force and up_to_date(args.model_dir, weights):
        log(f"head parts in {args.model_dir} are up to date ({MANIFEST})")
        return 0
    torch.set_num_threads(1)
    answers = tspm.read_answers(os.path.join(HERE, "answers.txt"))
    torch.manual_seed(export_head.SEED)
    model = tspm.TSPMHead(len(answers), **tspm.OUR_DIMS).eval()
    if weights:
        from train import load_compact
        meta = load_compact(model, weights)
        model.eval()
        export_head.WEIGHTS_DESC = (
            f"trained ({os.path.basename(weights)} sha256 {export_head.sha256(weights)[:12]}, "
            f"best epoch {meta.get('best_epoch')})")
    log(f"weights: {export_head.WEIGHTS_DESC}; packed row F = {F}")

    feats = export_head.Features(args.model_dir, export_head.calib_text(weights))
    rng = np.random.default_rng(3)
    ex = feats.make(rng, 1, 20)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    second = tspm_parts.SecondPart(model).eval()
    window = tspm_parts.WindowPart(model).eval()
    question = tspm_parts.QuestionPart(model).eval()
    with torch.no_grad():
        pk = second(t(ex["audio"][0]), t(ex["visual"][0]), t(ex["patches"][0]))[None]
        ctx = window(pk, t(ex["valid"]))
    examples = {
        "tspm_second": (t(ex["audio"][0]), t(ex["visual"][0]), t(ex["patches"][0])),
        "tspm_window": (pk, t(ex["valid"])),
        "tspm_question": (pk, t(ex["valid"]), ctx, t(ex["question"]), t(ex["prompt"])),
    }
    sessions = {}
    for name, module in (("tspm_second", second), ("tspm_window", window),
                         ("tspm_question", question)):
        path = os.path.join(args.model_dir, f"{name}.fp32.onnx")
        t0 = time.time()
        export_part(module, name, examples[name], path, model.k)
        sessions[name] = export_head.session(path)
        log(f"exported {path} ({os.path.getsize(path) / 1e6:.1f} MB, {time.time() - t0:.1f} s)")

    ok, worst, rows = True, 0.0, []
    for tt in (10, 30, 60):
        for name, valid in export_head.valid_patterns(rng, tt).items():
            x = feats.make(rng, 1, tt, valid)
            args_t = [t(x[n]) for n in export_head.INPUTS]
            with torch.no_grad():
                ref = [o.numpy() for o in model(*args_t)]
                comp = [o.numpy() for o in tspm_parts.compose(model, *args_t)]
            got = run_parts(sessions, x)
            d_torch = float(np.abs(ref[0] - comp[0]).max())
            d_ort = float(np.abs(ref[0] - got[0]).max())
            same = bool(np.array_equal(ref[2], got[2]) and np.array_equal(ref[2], comp[2]))
            d_w = float(np.abs(ref[1] - got[1]).max())
            d_s = float(np.abs(ref[3] - got[3]).max())
            good = d_torch <= 1e-5 and d_ort <= 1e-4 and same and d_w <= 1e-5 and d_s <= 1e-5
            ok &= good
            worst = max(worst, d_ort)
            rows.append(dict(T=tt, valid=name, torch_parts=d_torch, ort_parts=d_ort,
                             weights=d_w, spm=d_s, selected_equal=same, ok=good))
            log(f"T={tt:2d} {name:32s} logits: parts in torch {d_torch:.1e}, parts in "
                f"onnxruntime {d_ort:.1e}; weights {d_w:.1e}; spm {d_s:.1e}; selected "
                f"{'==' if same else '!='}{'' if good else '  <-- FAIL'}")

    # Timing, one thread, T = 60: what each part costs against the whole head.
    x = feats.make(np.random.default_rng(5), 1, 60)
    b, tt = x["valid"].shape
    per_second = {"audio": x["audio"][0, :1], "visual": x["visual"][0, :1],
                  "patches": x["patches"][0, :1]}
    packed = sessions["tspm_second"].run(None, {
        "audio": x["audio"][0], "visual": x["visual"][0], "patches": x["patches"][0]})[0][None]
    context = sessions["tspm_window"].run(None, {"packed": packed, "valid": x["valid"]})[0]
    qx = {"packed": packed, "valid": x["valid"], "context": context,
          "question": x["question"], "prompt": x["prompt"]}
    whole = export_head.session(os.path.join(args.model_dir, "tspm_head.fp32.onnx")) \
        if os.path.exists(os.path.join(args.model_dir, "tspm_head.fp32.onnx")) else None

    def med(fn, runs=30):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(ts))

    timing = {
        "second (1 s)": med(lambda: sessions["tspm_second"].run(None, per_second)),
        "window (T=60)": med(lambda: sessions["tspm_window"].run(
            None, {"packed": packed, "valid": x["valid"]})),
        "question (T=60)": med(lambda: sessions["tspm_question"].run(None, qx)),
    }
    if whole is not None:
        timing["whole head (T=60)"] = med(lambda: whole.run(None, x))
    for k_, v in timing.items():
        log(f"onnxruntime 1 thread, {k_}: median {v:.2f} ms")

    report = dict(weights=export_head.WEIGHTS_DESC, packed_row=F, checks=rows,
                  ort_timing_ms=timing, ok=bool(ok))
    with open(os.path.join(args.model_dir, "tspm_head_parts_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if ok:
        write_manifest(args.model_dir, weights, len(answers), worst)
        log(f"all checks passed; wrote {MANIFEST}")
    else:
        log("SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
