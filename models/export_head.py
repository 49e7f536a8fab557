"""Export the TSPM head (models/tspm.py) to ONNX and check it against PyTorch.

    ~/.cache/tspm-edge/venv/bin/python models/export_head.py [--model-dir DIR] [--no-int8]

DIR defaults to $TSPM_MODEL_DIR, else ~/.cache/tspm-edge/models. Writes there:
  tspm_head.fp32.onnx    opset 17, dynamic batch B and window length T (T >= k = 10)
  tspm_head.int8.onnx    static QOperator int8 on the weight MatMuls only (unless --no-int8)
  tspm_head_answers.txt  copy of models/answers.txt (logit index = line index)
  tspm_head_check.npz    inputs + onnxruntime fp32 outputs for the Rust side (tract) to match
  tspm_head_report.json  every number printed below
  manifest-head.toml     the head's [[model]] entries (sha256, inputs, outputs) for the runtime;
                         a later run with the same scripts and files exits in a second
Weights: the trained head committed in models/head/tspm_head.npz (written by models/train.py:
int8 per output row + scales, fp16 vectors; dequantised here) when that file exists, else the
UNTRAINED head (fixed seed; `--untrained` forces it). The int8 calibration and the check cases
use real question / prompt embeddings from calib_text.npz next to the weights when it exists
(random unit vectors otherwise). Exit status 1 if any fp32 check fails.
"""

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import manifest  # noqa: E402
import tspm  # noqa: E402

INPUTS = ["audio", "visual", "patches", "question", "prompt", "valid"]
OUTPUTS = ["logits", "temporal_weights", "selected", "spm_attention"]
N_TOK = 14
SEED = 20240731  # weights; arXiv 2407.20693 went up on 2024-07-30, any fixed value would do
HEAD_WEIGHTS = os.path.join(HERE, "head", "tspm_head.npz")  # trained (models/train.py)
CALIB_TEXT = "calib_text.npz"  # next to the weights: real question/prompt embedding pairs
# What the weights are, for the ONNX doc string and the manifest; set in main().
WEIGHTS_DESC = f"UNTRAINED, seed {SEED}"


def log(msg):
    print(f"[head] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# inputs

class Features:
    """Random-but-realistic per-second features. If the encoder build left check_inputs.npz in
    DIR (real YAMNet embeddings and EfficientNet-Lite0 pooled/tokens of real sounds and photos),
    each second takes a random real row with 5 % multiplicative jitter (so no two seconds tie);
    tokens are the 7x7 grid merged to 14 by averaging contiguous row-major groups (3-4 tokens).
    Otherwise: ReLU'd Gaussians with similar sparsity. Question/prompt: random unit vectors
    (MiniLM sentence embeddings are L2-normalised)."""

    def __init__(self, model_dir=None, text_path=None):
        path = os.path.join(model_dir, "check_inputs.npz") if model_dir else ""
        self.real = bool(path) and os.path.exists(path)
        if self.real:
            d = np.load(path)
            self.audio = d["yamnet_embedding"].astype(np.float32)
            self.visual = d["effnet_pooled"].astype(np.float32)
            toks = d["effnet_tokens"].astype(np.float32)  # [21,49,1280]
            groups = np.array_split(np.arange(49), N_TOK)
            self.tokens = np.stack([toks[:, g].mean(axis=1) for g in groups], axis=1)
        self.source = ("real encoder outputs from check_inputs.npz" if self.real
                       else "synthetic ReLU(Gaussian)")
        self.text = None
        if text_path and os.path.exists(text_path):
            t = np.load(text_path)
            self.text = (t["question"].astype(np.float32), t["prompt"].astype(np.float32))
            self.source += f"; question/prompt: {len(self.text[0])} real MiniLM pairs from {text_path}"

    def make(self, rng, b, t, valid=None, nan_invalid=False):
        def jitter(x):
            return np.maximum(x * (1 + 0.05 * rng.standard_normal(x.shape)), 0).astype(np.float32)

        if self.real:
            ia = rng.integers(0, len(self.audio), size=(b, t))
            iv = rng.integers(0, len(self.visual), size=(b, t))
            audio, visual, patches = jitter(self.audio[ia]), jitter(self.visual[iv]), \
                jitter(self.tokens[iv])
        else:
            audio = np.maximum(rng.standard_normal((b, t, 1024)) - 0.7, 0).astype(np.float32)
            visual = np.maximum(rng.standard_normal((b, t, 1280)), 0).astype(np.float32)
            patches = np.maximum(rng.standard_normal((b, t, N_TOK, 1280)) - 0.5, 0) \
                .astype(np.float32)

        def unit(n):
            x = rng.standard_normal((b, n)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        if valid is None:
            valid = np.ones((b, t), np.float32)
        if self.text is not None:  # a real (question, prompt) pair per row
            j = rng.integers(0, len(self.text[0]), size=b)
            question, prompt = self.text[0][j], self.text[1][j]
        else:
            question, prompt = unit(384), unit(384)
        x = dict(audio=audio, visual=visual, patches=patches, question=question,
                 prompt=prompt, valid=valid.astype(np.float32))
        if nan_invalid:  # what a caller might leave in missing seconds
            inv = valid < 0.5
            for name in ("audio", "visual", "patches"):
                x[name] = x[name].copy()
                x[name][inv] = np.nan
        return x


def torch_run(model, x, masked=True):
    with torch.inference_mode():
        args = [torch.from_numpy(x[n]) for n in INPUTS[:5]]
        out = model(*args, torch.from_numpy(x["valid"]) if masked else None)
    return [o.numpy() for o in out]


def session(path, threads=1, quiet=False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4 if quiet else 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# export

def export(model, path):
    rng = np.random.default_rng(0)
    ex = Features().make(rng, 1, 20)  # synthetic; T=20 > k so no shape is special-cased
    args = tuple(torch.from_numpy(ex[n]) for n in INPUTS)
    dyn = {"audio": {0: "B", 1: "T"}, "visual": {0: "B", 1: "T"}, "patches": {0: "B", 1: "T"},
           "question": {0: "B"}, "prompt": {0: "B"}, "valid": {0: "B", 1: "T"},
           "logits": {0: "B"}, "temporal_weights": {0: "B", 1: "T"}, "selected": {0: "B"},
           "spm_attention": {0: "B"}}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # constants created with torch.tensor (0, -inf) are meant to be trace constants
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, args, buf, opset_version=17, input_names=INPUTS,
                          output_names=OUTPUTS, dynamic_axes=dyn, do_constant_folding=True)
    m = onnx.load_from_string(buf.getvalue())
    # the exporter names the constant output dims after internal nodes; state them
    state_output_dims(m, {"selected": ["B", model.k], "spm_attention": ["B", model.k, N_TOK]})
    m.producer_name, m.doc_string = "tspm-edge models/export_head.py", (
        "TSPM answer head (spec/tspm.md §2), %s. Inputs: audio [B,T,1024], "
        "visual [B,T,1280], patches [B,T,14,1280], question [B,384], prompt [B,384], valid [B,T] "
        "(1 = real second); T >= 10. Outputs: logits [B,A], temporal_weights [B,T], "
        "selected [B,10] int64 (ascending; padding slots repeat slot 0), spm_attention [B,10,14]."
        % WEIGHTS_DESC)
    drop_initializer_identities(m)
    name_output_nodes(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return m


def state_output_dims(m, fixed):
    """Sets the dims of the outputs named in `fixed` (name -> [dim_param or dim_value, ...]):
    the exporter names constant output dims after internal nodes."""
    for o in m.graph.output:
        for d, v in zip(o.type.tensor_type.shape.dim, fixed.get(o.name, [])):
            d.Clear()
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v


def name_output_nodes(m):
    """Give each node that produces a graph output the output's name: tract labels outputs by
    their producing node, and the runtime checks output names against the manifest."""
    outs = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o in outs:
                n.name = o


def drop_initializer_identities(m):
    """The exporter deduplicates equal initializers (shared AV weights, and with untrained
    weights the all-ones / all-zeros LayerNorm parameters) and re-creates the duplicates with
    Identity nodes. Point their consumers at the initializer itself and drop the Identity: a
    weight MatMul then has a plain initializer input (the int8 quantiser needs that)."""
    inits = {i.name for i in m.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in m.graph.node
             if n.op_type == "Identity" and n.input[0] in inits}
    outs = {o.name for o in m.graph.output}
    assert not (set(alias) & outs)
    keep = [n for n in m.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del m.graph.node[:]
    m.graph.node.extend(keep)


def graph_summary(m):
    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_init = sum(int(np.prod(i.dims)) for i in m.graph.initializer
                 if i.data_type == onnx.TensorProto.FLOAT)

    def io_desc(vs):
        out = []
        for v in vs:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
        return out

    return dict(ops=ops, float_initializer_params=n_init, inputs=io_desc(m.graph.input),
                outputs=io_desc(m.graph.output))


# ---------------------------------------------------------------------------------------------
# checks

def compare(ref, got):
    """max |d| of logits / temporal_weights / spm_attention, and selected equality."""
    return dict(logits=float(np.abs(ref[0] - got[0]).max()),
                temporal_weights=float(np.abs(ref[1] - got[1]).max()),
                selected_equal=bool(np.array_equal(ref[2], got[2])),
                spm_attention=float(np.abs(ref[3] - got[3]).max()))


def valid_patterns(rng, t, k=10):
    """name -> valid [1,t]"""
    pats = {"all valid": np.ones((1, t), np.float32)}
    v = (rng.random((1, t)) > 0.3).astype(np.float32)
    v[0, rng.choice(t, size=k, replace=False)] = 1  # keep >= k valid
    pats["~30% invalid (random)"] = v
    if t > k:
        v = np.ones((1, t), np.float32)
        v[0, : t - k - 1 if t > k + 1 else 1] = 0  # window not yet full: only the newest valid
        pats["window filling (oldest invalid)"] = v
    v = np.zeros((1, t), np.float32)
    v[0, np.sort(rng.choice(t, size=4, replace=False))] = 1
    pats["4 valid < k"] = v
    return pats


def check_fp32(model, path, feats, report):
    ok = True
    sess = session(path)
    rng = np.random.default_rng(1)
    rows = []
    for t in (10, 30, 60):
        for name, valid in valid_patterns(rng, t).items():
            x = feats.make(rng, 1, t, valid)
            ref = torch_run(model, x)
            got = sess.run(None, x)
            c = compare(ref, got)
            # padding contract: real slots first (ascending), padding repeats slot 0
            n_real = min(10, int((valid > 0.5).sum()))
            sel = got[2][0]
            contract = (np.all(np.diff(sel[:n_real]) > 0) and np.all(valid[0, sel] > 0.5)
                        and np.all(sel[n_real:] == sel[0])
                        and abs(float(got[1][0].sum()) - 1) < 1e-5
                        and float(np.abs(got[1][0][valid[0] < 0.5]).max(initial=0)) == 0.0
                        and np.all(np.isfinite(got[0])))
            # NaN in invalid seconds must not change anything
            xn = feats.make(np.random.default_rng(99), 1, t, valid, nan_invalid=True)
            xz = {kk: (np.nan_to_num(vv, nan=0.0) if vv.dtype == np.float32 else vv)
                  for kk, vv in xn.items()}
            gn, gz = sess.run(None, xn), sess.run(None, xz)
            nan_ok = bool(np.all(np.isfinite(gn[0]))) and compare(gz, gn)["logits"] == 0.0
            good = (c["logits"] <= 1e-4 and c["selected_equal"] and c["temporal_weights"] <= 1e-5
                    and c["spm_attention"] <= 1e-5 and contract and nan_ok)
            ok &= good
            rows.append(dict(T=t, valid=name, n_valid=int((valid > 0.5).sum()), **c,
                             slot_contract=bool(contract), nan_in_invalid_ignored=nan_ok,
                             ok=bool(good)))
            log(f"T={t:2d} {name:32s} logits max|d| {c['logits']:.2e}  weights {c['temporal_weights']:.1e}"
                f"  spm {c['spm_attention']:.1e}  selected {'==' if c['selected_equal'] else '!='}"
                f"  slots {'ok' if contract else 'BAD'}  NaN-invalid {'ok' if nan_ok else 'BAD'}"
                f"  sel={sel.tolist()}{'' if good else '  <-- FAIL'}")
    report["fp32_vs_torch"] = rows

    # batch 2 (dynamic B): rows of a batch are independent
    x = feats.make(rng, 2, 30, np.stack([valid_patterns(rng, 30)["~30% invalid (random)"][0],
                                         np.ones(30, np.float32)]))
    ref, got = torch_run(model, x), sess.run(None, x)
    c = compare(ref, got)
    one = sess.run(None, {kk: vv[1:] for kk, vv in x.items()})
    c["row1_alone_vs_in_batch_logits"] = float(np.abs(one[0] - got[0][1:]).max())
    good = c["logits"] <= 1e-4 and c["selected_equal"] and c["row1_alone_vs_in_batch_logits"] <= 1e-5
    ok &= good
    report["batch2"] = c
    log(f"B=2 T=30: logits max|d| {c['logits']:.2e}, selected {'==' if c['selected_equal'] else '!='}, "
        f"row alone vs in batch {c['row1_alone_vs_in_batch_logits']:.1e}{'' if good else '  <-- FAIL'}")

    # all valid == unmasked
    rows = []
    for t in (10, 30, 60):
        x = feats.make(rng, 1, t)
        un = torch_run(model, x, masked=False)
        ms = torch_run(model, x, masked=True)
        on = sess.run(None, x)
        a, b = compare(un, ms), compare(un, on)
        good = a["selected_equal"] and b["selected_equal"] and a["logits"] <= 1e-6 \
            and b["logits"] <= 1e-4
        ok &= good
        rows.append(dict(T=t, torch_masked_vs_unmasked=a, onnx_allvalid_vs_torch_unmasked=b))
        log(f"all-valid == unmasked, T={t}: torch masked vs unmasked logits {a['logits']:.1e} "
            f"(weights {a['temporal_weights']:.1e}, selected {'==' if a['selected_equal'] else '!='}); "
            f"ONNX vs torch unmasked {b['logits']:.1e}{'' if good else '  <-- FAIL'}")
    report["all_valid_equals_unmasked"] = rows

    # T < k must be refused by the graph (TopK with k > T)
    x = feats.make(rng, 1, 9)
    try:
        session(path, quiet=True).run(None, x)
        report["t_below_k"] = "ran (unexpected)"
    except Exception as e:  # noqa: BLE001
        report["t_below_k"] = f"error: {str(e).splitlines()[0][:160]}"
    log(f"T=9 (< k) in onnxruntime: {report['t_below_k']}")
    return ok


def time_ms(fn, runs, warmup=5):
    """(median, min) wall-clock ms of `runs` calls of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts)), float(np.min(ts))


def timings(model, path, feats, runs, report, int8_path=None):
    torch.set_num_threads(1)
    x = feats.make(np.random.default_rng(5), 1, 60)
    args = [torch.from_numpy(x[n]) for n in INPUTS]

    def med(fn):
        return time_ms(fn, runs)

    with torch.inference_mode():
        pt = med(lambda: model(*args))
    res = {"torch_fp32": pt}
    s = session(path)
    res["ort_fp32"] = med(lambda: s.run(None, x))
    if int8_path:
        s8 = session(int8_path)
        res["ort_int8"] = med(lambda: s8.run(None, x))
    report["timing_ms_T60_B1_1thread"] = {k: dict(median=v[0], min=v[1]) for k, v in res.items()}
    report["timing_runs"] = runs
    for k, v in res.items():
        log(f"timing T=60 B=1 1 thread, {k}: median {v[0]:.2f} ms (min {v[1]:.2f}) over {runs} runs")


# ---------------------------------------------------------------------------------------------
# int8

TPM_PATH = ["/proj_visual/MatMul", "/tpm/attn/q/MatMul", "/tpm/attn/k/MatMul"]
# the content's input projections: their weights get one int8 scale per output column
INPUT_PROJ = ["/proj_audio/MatMul", "/proj_patch/MatMul"]


def weight_matmuls(m):
    inits = {i.name for i in m.graph.initializer}
    consts = {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    w, act = [], []
    for n in m.graph.node:
        if n.op_type == "MatMul":
            (w if any(i in inits or i in consts for i in n.input) else act).append(n.name)
    return w, act


def weights_per_column(path, fp32_path, nodes):
    """In the QOperator file `path`, give the QLinearMatMul of each MatMul in `nodes` int8
    weights with one symmetric scale per output column (max |w| / 127, zero point 0) made from
    the fp32 weights, in place of the quantiser's one scale per tensor. Same ops, same form
    (QLinearMatMul's b_scale / b_zero_point may be 1-D over the columns; tract reads both)."""
    from onnx import numpy_helper
    w32 = {i.name: i for i in onnx.load(fp32_path).graph.initializer}
    m = onnx.load(path)
    todo, made = set(nodes), set()
    for n in m.graph.node:
        if n.op_type != "QLinearMatMul" or n.name[:-len("_quant")] not in todo:
            continue
        base = n.input[3][:-len("_quantized")]  # the quantiser's name for the weight's int8 form
        if base not in made:
            w = numpy_helper.to_array(w32[base]).astype(np.float32)  # [K, N]
            scale = np.abs(w).max(axis=0) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            m.graph.initializer.extend([
                numpy_helper.from_array(q, base + "_quantized_col"),
                numpy_helper.from_array(scale.astype(np.float32), base + "_scale_col"),
                numpy_helper.from_array(np.zeros(w.shape[1], np.int8), base + "_zero_point_col")])
            made.add(base)
        n.input[3], n.input[4], n.input[5] = (base + "_quantized_col", base + "_scale_col",
                                              base + "_zero_point_col")
        todo.discard(n.name[:-len("_quant")])
    assert not todo, f"not quantised, cannot set per-column weights: {sorted(todo)}"
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.save(m, path)


def calib_windows(feats):
    """The 24 windows of real features the int8 head (and its parts) are calibrated on."""
    rng = np.random.default_rng(123)
    out = []
    for j in range(24):
        t = 60
        valid = np.ones((1, t), np.float32)
        if j % 3 == 1:
            valid = (rng.random((1, t)) > 0.3).astype(np.float32)
            valid[0, :10] = 1
        out.append(feats.make(rng, 1, t, valid))
    return out


def eval_windows(feats):
    """The 64 check windows the int8 head (and its parts) are scored on against fp32."""
    rng = np.random.default_rng(456)
    out = []
    for j in range(64):
        t = int(rng.choice([10, 30, 60]))
        valid = np.ones((1, t), np.float32)
        if j % 2:
            valid = (rng.random((1, t)) > 0.3).astype(np.float32)
            valid[0, rng.choice(t, size=min(t, 10), replace=False)] = 1
        out.append(feats.make(rng, 1, t, valid))
    return out


def build_int8(fp32_path, out_path, feats, report):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    logging.getLogger().setLevel(logging.ERROR)
    m = onnx.load(fp32_path)
    w_mm, act_mm = weight_matmuls(m)
    log(f"int8: {len(w_mm)} weight MatMuls quantised; {len(act_mm)} activation MatMuls "
        "(QK^T, softmax@V) and everything else stay float")

    class Reader(CalibrationDataReader):
        def __init__(self, data):
            self.data, self.i = data, 0

        def get_next(self):
            if self.i >= len(self.data):
                return None
            self.i += 1
            return self.data[self.i - 1]

        def rewind(self):
            self.i = 0

    calib = calib_windows(feats)
    evals = eval_windows(feats)
    s32 = session(fp32_path)
    ref = [s32.run(None, x) for x in evals]

    # Shipped: static QOperator (QuantizeLinear -> QLinearMatMul -> DequantizeLinear), uint8
    # asymmetric activations (MinMax), int8 symmetric weights, the selection path float, and the
    # two input projections of the content (audio, patch tokens) with one weight scale PER
    # OUTPUT COLUMN instead of one per tensor. Why: tspm_head.npz stores every matrix as int8
    # with one scale per output row (= per column of the ONNX weight), so per-column int8 gives
    # back the shipped weights exactly, while one scale per tensor re-rounds them, worst on the
    # input projections (the input standardisation is folded into them: mean relative weight
    # error 9 % audio, 20 % patches, < 1 % in the 512x512 layers). Per-layer sensitivity on the
    # held-out test set (int8 only in that group, per tensor): proj_audio alone 65 answers
    # changed, AV layer 8, QTG 6, SPM self 1, SPM cross 0. Per column everywhere is as accurate but
    # makes tract 0.23.9's int8 head as slow as its fp32 (31 ms vs 22 ms at T = 60), hence only
    # there.
    # Measured on the 4,854 held-out test questions (models/eval.py's questions and inputs):
    # argmax agreement with fp32 in onnxruntime 1.32; ms at T = 60, B = 1, one thread:
    # onnxruntime median / tract mean on-CPU (`tspm-edge bench --cpu-time`); fp32 18.9 / 31 ms,
    # 46.9 MB (the selection path stays float in all but the last):
    #   per tensor (shipped before)                  98.76 %   9.2 / 22 ms  21.4 MB
    #   per tensor, input projections float          99.75 %  10.9 / 23 ms  25.0 MB
    #   per column everywhere                        99.73 %   9.3 / 31 ms  21.5 MB
    #   per column on the input projections (this)   99.79 %   9.1 / 23 ms  21.4 MB
    #   per column everywhere, selection path int8   98.17 %     --         18.0 MB
    # Calibrating on real training clips instead of check_inputs.npz rows (per column: 99.75 %),
    # percentile 99.999 (99.71 %) or entropy (same file as MinMax) changed nothing that counts;
    # dynamic int8 (DynamicQuantizeLinear + MatMulInteger, per column) gave 99.84 % and 8.8 ms in
    # onnxruntime but is as slow as fp32 in tract. tract gives onnxruntime's int8 answer on every
    # test question. models/head/README.md has the table.
    recipes = {
        "qop-u8-asym-tensor-tpmfloat": dict(per_channel=False, exclude=TPM_PATH),
        "qop-u8-asym-channel-tpmfloat": dict(per_channel=True, exclude=TPM_PATH),
        "qop-u8-asym-tensor-projcolumn-tpmfloat": dict(per_channel=False, exclude=TPM_PATH,
                                                       per_column=INPUT_PROJ),
    }
    shipped = "qop-u8-asym-tensor-projcolumn-tpmfloat"
    results = {}

    tmp = out_path + ".tmp"
    for name, r in recipes.items():
        r = dict(r)
        exclude = r.pop("exclude", [])
        per_column = r.pop("per_column", [])
        quantize_static(fp32_path, tmp, Reader(calib), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["MatMul"],
                        nodes_to_quantize=[n for n in w_mm if n not in exclude],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True}, **r)
        if per_column:
            weights_per_column(tmp, fp32_path, per_column)
        q = onnx.load(tmp)
        ops = sorted({n.op_type for n in q.graph.node})
        s8 = session(tmp)
        agree, sel_agree, overlap, cos, maxd = [], [], [], [], []
        for x, rf in zip(evals, ref):
            g = s8.run(None, x)
            agree.append(int(np.argmax(g[0])) == int(np.argmax(rf[0])))
            sel_agree.append(np.array_equal(g[2], rf[2]))
            overlap.append(len(set(g[2].ravel().tolist()) & set(rf[2].ravel().tolist()))
                           / len(set(rf[2].ravel().tolist())))
            a, b = rf[0].ravel(), g[0].ravel()
            cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            maxd.append(float(np.abs(a - b).max()))
        x60 = calib[0]
        for _ in range(3):
            s8.run(None, x60)
        ts = []
        for _ in range(15):
            t0 = time.perf_counter()
            s8.run(None, x60)
            ts.append((time.perf_counter() - t0) * 1e3)
        res = dict(ort_ms_T60=float(np.median(ts)),
                   argmax_agreement=float(np.mean(agree)), selected_equal=float(np.mean(sel_agree)),
                   selected_overlap=float(np.mean(overlap)),
                   logits_cos_mean=float(np.mean(cos)), logits_cos_min=float(np.min(cos)),
                   logits_maxabs_mean=float(np.mean(maxd)), ops=ops,
                   size_bytes=os.path.getsize(tmp))
        results[name] = res
        log(f"int8 {name}: argmax agreement {res['argmax_agreement']:.3f}, selected equal "
            f"{res['selected_equal']:.3f} (overlap {res['selected_overlap']:.3f}), logits cos mean {res['logits_cos_mean']:.4f} "
            f"(min {res['logits_cos_min']:.4f}), size {res['size_bytes'] / 1e6:.1f} MB, onnxruntime "
            f"{res['ort_ms_T60']:.1f} ms at T=60 (median of 15)")
        if name == shipped:
            shutil.copyfile(tmp, out_path)
    os.remove(tmp)
    best = shipped
    spread = [float(np.sort(r[0].ravel())[-1] - np.sort(r[0].ravel())[-2]) for r in ref]
    report["int8"] = dict(recipes=results, shipped=best, eval_cases=len(evals),
                          calib_cases=len(calib),
                          fp32_top1_top2_gap_median=float(np.median(spread)),
                          weight_matmuls=len(w_mm), activation_matmuls_float=len(act_mm))
    log(f"int8: shipped {best} -> {out_path} (fp32 logits top1-top2 gap median "
        f"{np.median(spread):.3f}" + ("" if WEIGHTS_DESC.startswith("trained") else
                                     ": an untrained head has flat logits, so argmax agreement "
                                     "is a weak test until trained weights exist") + ")")


def check_npz(path, sess, feats, sess8=None):
    """Cases for tract: inputs + onnxruntime fp32 outputs (+ int8 outputs as `int8_<name>`)."""
    rng = np.random.default_rng(7)
    cases = {}
    v30 = valid_patterns(np.random.default_rng(8), 30)["~30% invalid (random)"]
    v60 = np.zeros((1, 60), np.float32)
    v60[0, 53:] = 1  # 7 newest seconds valid: fewer than k
    for name, t, valid in (("t10", 10, None), ("t30_masked", 30, v30), ("t60", 60, None),
                           ("t60_7valid", 60, v60)):
        x = feats.make(rng, 1, t, valid)
        out = sess.run(None, x)
        for kk, vv in x.items():
            cases[f"{name}/{kk}"] = vv
        for kk, vv in zip(OUTPUTS, out):
            cases[f"{name}/{kk}"] = vv
        if sess8 is not None:
            for kk, vv in zip(OUTPUTS, sess8.run(None, x)):
                cases[f"{name}/int8_{kk}"] = vv
    np.savez(path, **cases)
    return sorted({k.split("/")[0] for k in cases})


def check_answers(answers, report):
    """Every `anser` in the MUSIC-AVQA records (../shared/data/music-avqa/*.json) must be in
    the vocabulary. Returns False if one is missing."""
    import glob
    data_dir = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "music-avqa"))
    files = sorted(glob.glob(os.path.join(data_dir, "*.json")))
    if not files:
        log(f"answers: no records under {data_dir}; vocabulary not checked")
        return True
    vocab, ok, seen = set(answers), True, set()
    assert len(vocab) == len(answers), "duplicate answers in answers.txt"
    rows = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            recs = json.load(fh)
        counts = {}
        for r in recs:
            counts[r["anser"]] = counts.get(r["anser"], 0) + 1
        missing = sorted(set(counts) - vocab)
        ok &= not missing
        seen |= set(counts)
        rows[os.path.basename(f)] = dict(records=len(recs), distinct_answers=len(counts),
                                         missing_from_vocab=missing)
        log(f"answers: {os.path.basename(f)}: {len(recs)} records, {len(counts)} distinct answers, "
            f"{'all in answers.txt' if not missing else 'MISSING ' + str(missing)}")
    unused = [a for a in answers if a not in seen]
    report["answers_check"] = dict(files=rows, vocab=len(answers), never_in_data=unused)
    log(f"answers: vocabulary {len(answers)}; in no record: {unused}")
    return ok


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


HEAD_IO = {
    "input": [("audio", ["N", "T", 1024]), ("visual", ["N", "T", 1280]),
              ("patches", ["N", "T", 14, 1280]), ("question", ["N", 384]),
              ("prompt", ["N", 384]), ("valid", ["N", "T"])],
    "output": [("logits", ["N", "A"]), ("temporal_weights", ["N", "T"]),
               ("selected", ["N", 10]), ("spm_attention", ["N", 10, 14])],
}


def calib_text(weights):
    return os.path.join(os.path.dirname(weights), CALIB_TEXT) if weights else None


def inputs_stamp(weights=None):
    """Hash of everything the head files are made from (the weights file when trained)."""
    h = hashlib.sha256()
    files = ["tspm.py", "export_head.py", "answers.txt"]
    if weights:
        calib = calib_text(weights)
        files += [weights] + ([calib] if os.path.exists(calib) else [])
    for f in files:
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(os.path.basename(f).encode() + b"\0" + fh.read())
    return h.hexdigest()


def int8_reductions_line(path):
    """The manifest line naming `path`'s int8 reduction lengths (none when unknown)."""
    ks = manifest.int8_reductions(path)
    return [] if ks is None else [f"int8_k = [{', '.join(map(str, ks))}]"]


def write_manifest(model_dir, files, n_answers, report, weights=None):
    """DIR/manifest-head.toml: the head's entries in the runtime's manifest format."""
    lines = ["# TSPM head. Written by models/export_head.py; read with manifest.toml.",
             f"# inputs-stamp = {inputs_stamp(weights)}", ""]
    for precision, path in files:
        lines += ["[[model]]", 'name = "tspm_head"', f'precision = "{precision}"',
                  f'file = "{os.path.basename(path)}"', f'sha256 = "{sha256(path)}"',
                  f'source = "models/tspm.py (this repository), {WEIGHTS_DESC}"',
                  'licence = "Apache-2.0"', 'answers = "tspm_head_answers.txt"']
        if precision == "int8":
            r8 = report.get("int8", {})
            agree = r8.get("recipes", {}).get(r8.get("shipped"), {}).get("argmax_agreement")
            lines.append('recipe = "static QOperator int8 on weight MatMuls (uint8 activations, '
                         'int8 weights per tensor, per output column in the audio and patch '
                         'projections); Softmax and the selection path float"')
            lines += int8_reductions_line(path)
            if agree is not None:
                lines += ["[model.check]", f"mean_cosine = {float(agree):.4f}",
                          f"top1_agreement = {float(agree):.4f}"]
        for kind, specs in HEAD_IO.items():
            for name, shape in specs:
                shape = [n_answers if d == "A" else d for d in shape]
                dtype = "i64" if name == "selected" else "f32"
                dims = ", ".join(f'"{d}"' if isinstance(d, str) else str(d) for d in shape)
                lines += [f"[[model.{kind}]]", f'name = "{name}"', f"shape = [{dims}]",
                          f'dtype = "{dtype}"']
        lines.append("")
    with open(os.path.join(model_dir, "manifest-head.toml"), "w") as f:
        f.write("\n".join(lines))


def up_to_date(model_dir, weights=None):
    path = os.path.join(model_dir, "manifest-head.toml")
    if not os.path.exists(path):
        return False
    text = open(path).read()
    if f"# inputs-stamp = {inputs_stamp(weights)}" not in text:
        return False
    for line in text.splitlines():
        if line.startswith("file = "):
            f = os.path.join(model_dir, line.split('"')[1])
            want = next(l for l in text.splitlines()[text.splitlines().index(line):]
                        if l.startswith("sha256 = ")).split('"')[1]
            if not os.path.exists(f) or sha256(f) != want:
                return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--weights", default=HEAD_WEIGHTS if os.path.exists(HEAD_WEIGHTS) else None,
                    help="trained weights (models/train.py's compact .npz); default "
                         "models/head/tspm_head.npz when it exists")
    ap.add_argument("--untrained", action="store_true", help="export the seed head")
    args = ap.parse_args()
    global WEIGHTS_DESC
    weights = None if args.untrained else args.weights
    os.makedirs(args.model_dir, exist_ok=True)
    if not args.force and up_to_date(args.model_dir, weights):
        log(f"head files in {args.model_dir} are up to date (manifest-head.toml)")
        return 0
    torch.set_num_threads(1)
    report = {"versions": dict(torch=torch.__version__, onnx=onnx.__version__,
                               onnxruntime=ort.__version__, numpy=np.__version__)}

    answers = tspm.read_answers(os.path.join(HERE, "answers.txt"))
    torch.manual_seed(SEED)
    model = tspm.TSPMHead(len(answers), **tspm.OUR_DIMS).eval()
    if weights:
        from train import load_compact
        meta = load_compact(model, weights)
        if hasattr(model, "pos_patch"):  # the ONNX head has no positions input
            raise SystemExit(f"{weights}: a --patch-pos experiment's head cannot be exported")
        model.eval()
        WEIGHTS_DESC = (f"trained ({os.path.basename(weights)} sha256 {sha256(weights)[:12]}, "
                        f"best epoch {meta.get('best_epoch')}, see models/head/train_report.json)")
        report["weights"] = dict(file=weights, sha256=sha256(weights), meta=meta)
    else:
        report["weights"] = dict(untrained_seed=SEED)
    n_ours = tspm.count_params(model)
    n_paper = tspm.count_params(tspm.TSPMHead(len(answers), **tspm.PAPER_DIMS))
    report["params"] = dict(ours=n_ours, paper_dims=n_paper,
                            breakdown=tspm.param_breakdown(model), answers=len(answers))
    log(f"TSPM head, {WEIGHTS_DESC}, A={len(answers)}: {n_ours:,} parameters with our "
        f"input dims 1024/1280/1280/384/384; {n_paper:,} with the paper's 128/768/1024/768/768")

    ok = check_answers(answers, report)

    fp32 = os.path.join(args.model_dir, "tspm_head.fp32.onnx")
    t0 = time.time()
    m = export(model, fp32)
    g = graph_summary(m)
    report["graph"] = g
    log(f"exported {fp32} ({os.path.getsize(fp32) / 1e6:.1f} MB, {time.time() - t0:.1f} s); "
        f"{g['float_initializer_params']:,} weights in the graph (TPM's unused output branch is "
        "pruned)")
    log("ops: " + ", ".join(f"{k} {v}" for k, v in sorted(g["ops"].items())))
    for kind in ("inputs", "outputs"):
        log(f"{kind}: " + "; ".join(f"{n} {dt} {d}" for n, dt, d in g[kind]))

    feats = Features(args.model_dir, calib_text(weights))
    report["check_inputs"] = feats.source
    log(f"check inputs: {feats.source}")
    ok &= check_fp32(model, fp32, feats, report)

    int8 = None
    if not args.no_int8:
        int8 = os.path.join(args.model_dir, "tspm_head.int8.onnx")
        build_int8(fp32, int8, feats, report)
        m8 = onnx.load(int8)
        name_output_nodes(m8)
        onnx.save(m8, int8)
    timings(model, fp32, feats, args.runs, report, int8)

    shutil.copyfile(os.path.join(HERE, "answers.txt"),
                    os.path.join(args.model_dir, "tspm_head_answers.txt"))
    npz = os.path.join(args.model_dir, "tspm_head_check.npz")
    report["check_npz_cases"] = check_npz(npz, session(fp32), feats,
                                          session(int8) if int8 else None)
    log(f"wrote {npz}: cases {report['check_npz_cases']} (keys '<case>/<input or output name>')")
    report["files"] = {os.path.basename(p): sha256(p) for p in (fp32, int8, npz) if p}
    report["ok"] = bool(ok)
    with open(os.path.join(args.model_dir, "tspm_head_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if ok:
        write_manifest(args.model_dir, [("fp32", fp32)] + ([("int8", int8)] if int8 else []),
                       len(answers), report, weights)
    log("all checks passed (answers vocabulary, fp32 ONNX vs PyTorch)" if ok
        else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
