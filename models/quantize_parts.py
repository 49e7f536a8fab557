"""int8 variants of the TSPM head parts (models/tspm_parts.py), made with the whole head's
recipe (models/export_head.py, build_int8), and the checks they must pass. Used by
models/export_head_parts.py.

The recipe, layer by layer, is the whole head's: static QOperator int8 (QuantizeLinear ->
QLinearMatMul -> DequantizeLinear) on the Linear layers that are weight MatMuls in
tspm_head.fp32.onnx, except the selection path (export_head.TPM_PATH: proj_visual, the TPM's
query and key), which stays float with Softmax, TopK and everything else; uint8 asymmetric
activations (MinMax calibration), int8 symmetric weights with one scale per tensor, except one
scale per output column in the content's input projections (export_head.INPUT_PROJ: proj_audio,
proj_patch; export_head.weights_per_column). The Linears the whole head exports as Gemm (on 2-D
inputs: proj_question, proj_prompt, fuse, answer) stay float there and stay float here.

Cut into parts, some of the quantised Linears see 2-D inputs (the per-second part runs one
second as a row: proj_audio and the QTG keys / values of the second's audio and SPM output), and
the exporter writes those as Gemm, which the quantiser would not touch (it would need the
contrib op QGemm, which tract does not read). So each part's layers are identified by their
weights (a hash of the Linear's weight matrix, whatever the node's name), and the quantised
ones written as Gemm are first rewritten as MatMul + Add -- the form the whole head has them in.

Calibration: the 24 windows of real features build_int8 calibrates the whole head on (the same
draws), each part fed what it gets at runtime from the fp32 parts before it: the valid seconds
for the per-second part, the packed rows (zero in invalid seconds) for the window, rows +
context + the window's question / prompt for the question part.
"""

import hashlib
import logging
import os

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

import export_head
import tspm_parts

N_TOK, H = 14, 512
WROWS = lambda p: tspm_parts.window_rows(p, H)  # noqa: E731  the window part's columns
QROWS = lambda p: tspm_parts.question_rows(p, H, N_TOK)  # noqa: E731  the question part's


def log(msg):
    print(f"[head-parts] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# which layers are int8

def _key(w):
    """Identity of a Linear's weight [out, in]: a hash of its float32 bytes."""
    return hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()


def linear_weights(model):
    """{weight key: Linear module name} of the head, and of the matrices the parts derive
    from its Linears (tspm_parts.derived_weights: the fusion layer's column blocks)."""
    out = {_key(m.weight.detach().numpy()): name for name, m in model.named_modules()
           if isinstance(m, torch.nn.Linear)}
    for name, ws in tspm_parts.derived_weights(model).items():
        out.update({_key(w.numpy()): name for w in ws})
    return out


def whole_head_recipe(model, example):
    """(int8 layers, per-column layers): module names of the whole head's recipe. A Linear is a
    weight MatMul in tspm_head.fp32.onnx when it runs on >= 3-D inputs (on 2-D ones the exporter
    writes Gemm); build_int8 quantises those except the TPM path."""
    ndim, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: ndim.setdefault(name, set()).add(inp[0].dim())))
    with torch.no_grad():
        model(*example)
    for h in hooks:
        h.remove()
    module = lambda node: node.strip("/").rsplit("/", 1)[0].replace("/", ".")  # noqa: E731
    tpm = {module(n) for n in export_head.TPM_PATH}
    per_col = {module(n) for n in export_head.INPUT_PROJ}
    assert tpm | per_col <= set(ndim), "TPM_PATH / INPUT_PROJ name no layer of the head"
    int8 = {n for n, d in ndim.items() if max(d) >= 3} - tpm
    return int8, per_col & int8


def node_layers(m, weights):
    """{node name: Linear module name} of the MatMul / Gemm nodes of `m` that apply a weight."""
    inits = {i.name: i for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]]).T  # x @ W^T
        elif n.op_type == "Gemm" and n.input[1] in inits:
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            w = numpy_helper.to_array(inits[n.input[1]])
            w = w if trans_b else w.T
        else:
            continue
        name = weights.get(_key(w))
        assert name is not None, f"{n.name}: its weight is no Linear's of the head"
        out[n.name] = name
    return out


def row_vector_operands(m):
    """In place: a 1-D constant [C] that an elementwise Add / Mul / Sub broadcasts over 2-D rows
    [R, C] (the biases the quantiser writes after each DequantizeLinear) becomes a [1, C]
    constant; the result is the same. tract 0.23.9 broadcasts a 1-D operand over 2-D rows on a
    slow generic path: a [120, 512] Add + Relu took 0.074 ms with a [512] bias and 0.019 ms
    with a [1, 512] one (standalone files, 2,000 runs each). Returns how many it changed."""
    inferred = onnx.shape_inference.infer_shapes(m)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in
            list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
            if v.type.tensor_type.HasField("shape")}
    inits = {i.name: i for i in m.graph.initializer}
    uses = {}
    for n in m.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    changed = 0
    for n in m.graph.node:
        if n.op_type not in ("Add", "Mul", "Sub") or len(n.input) != 2:
            continue
        for i, x in enumerate(n.input):
            other = n.input[1 - i]
            if x in inits and len(inits[x].dims) == 1 and rank.get(other) == 2 and uses[x] == 1:
                w = numpy_helper.to_array(inits[x])
                inits[x].CopyFrom(numpy_helper.from_array(w.reshape(1, -1), x))
                changed += 1
    return changed


def gemms_to_matmuls(m, layers, int8_layers):
    """In place: each Gemm whose layer is int8 becomes MatMul(x, W^T) + Add(bias), the form the
    whole head has that layer in (so the quantiser treats it as there). Returns {MatMul node
    name: layer} for every weight MatMul of the result."""
    inits = {i.name: i for i in m.graph.initializer}
    names = {n.name for n in m.graph.node}
    new_nodes, made = [], {}
    for n in m.graph.node:
        if n.op_type != "Gemm" or layers.get(n.name) not in int8_layers:
            new_nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0) and len(n.input) == 3, f"{n.name}: unexpected Gemm"
        layer = layers[n.name]
        w_name = f"{layer}.weight_T"
        if w_name not in made:
            w = numpy_helper.to_array(inits[n.input[1]])
            w = w.T if attrs.get("transB", 0) else w  # -> [in, out]
            made[w_name] = numpy_helper.from_array(np.ascontiguousarray(w), w_name)
        base, i = "/" + layer.replace(".", "/"), 0
        mm = f"{base}/MatMul"
        while mm in names:
            i += 1
            mm = f"{base}_{i}/MatMul"
        names.add(mm)
        new_nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [mm + "_output_0"],
                                          name=mm))
        new_nodes.append(helper.make_node("Add", [mm + "_output_0", n.input[2]], list(n.output),
                                          name=mm[:-len("MatMul")] + "Add"))
        layers[mm] = layer
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    m.graph.initializer.extend(made.values())
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.checker.check_model(m)
    return {n.name: layers[n.name] for n in m.graph.node
            if n.op_type == "MatMul" and n.name in layers}


def quantize_part(fp32_path, out_path, weights, int8_layers, per_col_layers, calib, doc):
    """Writes the int8 variant of the part `fp32_path` to `out_path`; returns a summary."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    logging.getLogger().setLevel(logging.ERROR)

    class Reader(CalibrationDataReader):
        def __init__(self, data):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    m = onnx.load(fp32_path)
    layers = node_layers(m, weights)
    mms = gemms_to_matmuls(m, layers, int8_layers)
    prepared, tmp = out_path + ".prep.onnx", out_path + ".tmp"
    onnx.save(m, prepared)
    q_nodes = sorted(n for n, layer in mms.items() if layer in int8_layers)
    col_nodes = sorted(n for n, layer in mms.items() if layer in per_col_layers)
    float_layers = sorted({layer for layer in layers.values() if layer not in int8_layers})
    try:
        if q_nodes:
            quantize_static(prepared, tmp, Reader(calib), quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=["MatMul"], nodes_to_quantize=q_nodes,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=False, extra_options={"WeightSymmetric": True})
            if col_nodes:
                export_head.weights_per_column(tmp, prepared, col_nodes)
            q = onnx.load(tmp)
        else:
            q = onnx.load(prepared)
    finally:
        for p in (prepared, tmp):
            if os.path.exists(p):
                os.remove(p)
    export_head.name_output_nodes(q)
    row_vector_operands(q)
    q.producer_name = "tspm-edge models/export_head_parts.py"
    q.doc_string = doc
    onnx.checker.check_model(q, full_check=True)
    onnx.save(q, out_path)
    n_q = sum(n.op_type == "QLinearMatMul" for n in q.graph.node)
    assert n_q == len(q_nodes), f"{out_path}: {n_q} QLinearMatMul for {len(q_nodes)} MatMuls"
    return dict(int8_matmuls=len(q_nodes), per_column=col_nodes,
                int8_layers=sorted({mms[n] for n in q_nodes}), float_layers=float_layers,
                size_bytes=os.path.getsize(out_path),
                ops=sorted({n.op_type for n in q.graph.node}))


# ---------------------------------------------------------------------------------------------
# inputs

def part_calibration(sessions, windows):
    """{part: [feed, ...]}: what each part gets at runtime, from the fp32 parts before it."""
    out = {"tspm_second": [], "tspm_window": [], "tspm_question": []}
    for x in windows:
        v = x["valid"][0] > 0.5
        sec = {"audio": x["audio"][0][v], "visual": x["visual"][0][v],
               "patches": x["patches"][0][v]}
        out["tspm_second"].append(sec)
        rows = sessions["tspm_second"].run(None, sec)[0]
        packed = np.zeros((1, v.size, rows.shape[1]), np.float32)
        packed[0, v] = rows
        wx = {"packed": WROWS(packed), "valid": x["valid"]}
        out["tspm_window"].append(wx)
        context = sessions["tspm_window"].run(None, wx)[0]
        out["tspm_question"].append(dict(packed=QROWS(packed), valid=x["valid"],
                                         context=context, question=x["question"],
                                         prompt=x["prompt"]))
    return out


# ---------------------------------------------------------------------------------------------
# checks

def cosines(a, b):
    """Row-wise cosine of two [n, d] arrays."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def figures(ref_logits, got_logits, ref_sel=None, got_sel=None):
    """Top-1 agreement, logits cosine and max |d| of [n, A] logits (+ selected equality)."""
    cos = cosines(ref_logits, got_logits)
    out = dict(n=int(len(ref_logits)),
               top1_agreement=float(np.mean(ref_logits.argmax(1) == got_logits.argmax(1))),
               answers_changed=int(np.sum(ref_logits.argmax(1) != got_logits.argmax(1))),
               logits_cos_mean=float(cos.mean()), logits_cos_min=float(cos.min()),
               logits_maxabs_mean=float(np.abs(ref_logits - got_logits).max(1).mean()),
               logits_maxabs_max=float(np.abs(ref_logits - got_logits).max()))
    if ref_sel is not None:
        out["selected_equal"] = float(np.mean(np.all(ref_sel == got_sel, axis=1)))
    return out


def part_figures(name, ref, got):
    cos = cosines(ref, got)
    return dict(output=name, n=int(len(ref)), cos_mean=float(cos.mean()),
                cos_min=float(cos.min()), maxabs_max=float(np.abs(ref - got).max()))


class TestSet:
    """The held-out test questions models/eval.py scores the whole head on (4,854 questions of
    100 test scenes; the int8 head's 99.79 % agreement is on them), when the data set is built
    (DIR/test.jsonl, models/train.sh): the clips' features with their tokens merged again in
    float32 from extract's .npz (eval.refresh_patches: the values the Rust runtime computes), T =
    the clip's seconds (at least 10, zero-padded, valid = 0 there), all its questions as the
    batch -- exactly eval.ort_predict's inputs."""

    def __init__(self, data_dir):
        import eval as ev
        import train
        self.data_dir = data_dir
        self.emb, text = train.load_text(data_dir)
        self.split = train.Split(data_dir, "test", "full", text)
        ev.refresh_patches(self.split)

    @staticmethod
    def exists(data_dir):
        return all(os.path.exists(os.path.join(data_dir, f)) for f in ("test.jsonl", "text.npz"))

    def clips(self):
        for c in self.split.clips:
            t_real = len(c["valid"])
            t = max(t_real, 10)
            valid = np.zeros((1, t), np.float32)
            valid[0, :t_real] = 1
            yield c, dict(audio=c["audio"].astype(np.float32),
                          visual=c["visual"].astype(np.float32),
                          patches=c["patches"].astype(np.float32), valid=valid,
                          question=self.emb[c["q"]].astype(np.float32),
                          prompt=self.emb[c["p"]].astype(np.float32))

    def cached(self, model_path):
        """eval.py's cached onnxruntime predictions of a whole-head file, if it made them."""
        p = os.path.join(self.data_dir, f"ort_test_{export_head.sha256(model_path)[:16]}.npy")
        return np.load(p) if os.path.exists(p) else None


def run_clip(s, x):
    """One clip through three part sessions, as the runtime runs them: -> (rows [t_real, F],
    context [1, H], question outputs for the clip's n questions)."""
    rows = s["tspm_second"].run(None, {"audio": x["audio"], "visual": x["visual"],
                                       "patches": x["patches"]})[0]
    t = x["valid"].shape[1]
    packed = np.zeros((1, t, rows.shape[1]), np.float32)
    packed[0, :len(rows)] = rows
    context = s["tspm_window"].run(None, {"packed": WROWS(packed), "valid": x["valid"]})[0]
    n = len(x["question"])
    q_rows = QROWS(packed)
    out = s["tspm_question"].run(None, {
        "packed": np.broadcast_to(q_rows, (n,) + q_rows.shape[1:]).copy(),
        "valid": np.broadcast_to(x["valid"], (n, t)).copy(),
        "context": np.broadcast_to(context, (n, context.shape[1])).copy(),
        "question": x["question"], "prompt": x["prompt"]})
    return rows, context, packed, out


def check_test_set(ts, s32, s8):
    """int8 parts vs fp32 parts on every test question: the composed answers, and each part
    alone on the fp32 parts' inputs. Returns (figures, int8 predictions, fp32 predictions)."""
    n_q = ts.split.n_questions
    lg32 = np.zeros((n_q, 0), np.float32)
    lg8 = lg32
    sel32, sel8 = [], []
    rows32, rows8, ctx32, ctx8_alone, q8_alone, q32_alone = [], [], [], [], [], []
    idx = []
    for c, x in ts.clips():
        r32, c32, p32, o32 = run_clip(s32, x)
        r8, _, _, o8 = run_clip(s8, x)
        if lg32.shape[1] == 0:
            lg32 = np.zeros((n_q, o32[0].shape[1]), np.float32)
            lg8 = lg32.copy()
        lg32[c["rec"]], lg8[c["rec"]] = o32[0], o8[0]
        idx.append(c["rec"])
        sel32.append(o32[2])
        sel8.append(o8[2])
        rows32.append(r32)
        rows8.append(r8)
        ctx32.append(c32)
        # each part alone, on the fp32 parts' inputs
        # (the per-second part's inputs are the features: its composed rows are "alone")
        ctx8_alone.append(s8["tspm_window"].run(None, {"packed": WROWS(p32),
                                                        "valid": x["valid"]})[0])
        n = len(x["question"])
        q32 = QROWS(p32)
        qx = {"packed": np.broadcast_to(q32, (n,) + q32.shape[1:]).copy(),
              "valid": np.broadcast_to(x["valid"], (n, x["valid"].shape[1])).copy(),
              "context": np.broadcast_to(c32, (n, c32.shape[1])).copy(),
              "question": x["question"], "prompt": x["prompt"]}
        q8_alone.append(s8["tspm_question"].run(["logits"], qx)[0])
        q32_alone.append(o32[0])
    order = np.concatenate(idx)
    composed = figures(lg32, lg8, np.concatenate(sel32), np.concatenate(sel8))
    composed["n_clips"] = len(ctx32)
    alone = {
        "tspm_second": part_figures("packed rows (seconds)", np.concatenate(rows32),
                                    np.concatenate(rows8)),
        "tspm_window": part_figures("context (windows)", np.concatenate(ctx32),
                                    np.concatenate(ctx8_alone)),
        "tspm_question": dict(part_figures("logits (questions)", np.concatenate(q32_alone),
                                           np.concatenate(q8_alone)),
                              **{k: v for k, v in figures(np.concatenate(q32_alone),
                                                          np.concatenate(q8_alone)).items()
                                 if k in ("top1_agreement", "answers_changed")}),
    }
    assert len(order) == n_q
    return dict(composed_int8_vs_fp32_parts=composed, each_part_alone=alone), \
        lg8.argmax(1), lg32.argmax(1)
