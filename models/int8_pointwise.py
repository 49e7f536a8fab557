"""int8 only where the matmul is large: quantise the 1x1 (pointwise) convs, keep depthwise (and
the stem conv, Gemm, Add, pooling) float. An experiment for tract on x86/ARM (spec section 6:
tract's int8 depthwise convs become im2col + m = 1 matmuls and cost far more than fp32).

    DIR/../venv/bin/python models/int8_pointwise.py DIR [--out DIR/variants] [--recipes a,b]

Uses the same onnxruntime.quantization API, calibration data and accuracy check as the model
build (quantize.py, realdata.py): YAMNet calibrates on the 46 half-offset patches and is checked
on the 58 eval patches, EfficientNet on the 21 flipped / resized crops and the 21 eval crops.
Writes OUT/<model>.<variant>.onnx and OUT/manifest.toml listing the fp32 files (by relative
path) and every variant (precision = the variant name, `recipe` and `[model.check]` as the build
writes them), plus links to check_inputs.npz and the class files, so the Rust side runs them
unchanged:

    TSPM_MODEL_DIR=OUT tspm-edge check-models     # tract cosine vs tract fp32
    TSPM_MODEL_DIR=OUT tspm-edge bench --only pw  # tract vs onnxruntime (ort_bench.py reads
                                                  # the manifest)

Prints one JSON object (variant -> onnxruntime accuracy vs fp32) on stdout.
"""

import argparse
import json
import os
import sys
import tempfile
import tomllib

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import manifest as manifest_py  # noqa: E402
import quantize as Q  # noqa: E402
import realdata as R  # noqa: E402
from build import sha256  # noqa: E402

P = Q.CalibrationMethod.Percentile
RECIPES = {
    # the shipped recipe (qop-u8-asym-channel+act-pct), restricted to the pointwise convs
    "pw-u8-channel": Q._static(Q.QOP, Q.U8, True, False, Q.CONV_ACT, calib=P),
    # per-tensor weight scales: one requantisation scale per conv instead of one per channel
    "pw-u8-tensor": Q._static(Q.QOP, Q.U8, False, False, Q.CONV_ACT, calib=P),
    # int8 symmetric activations (no u8 -> i8 offset in tract), per-channel weights
    "pw-s8-channel": Q._static(Q.QOP, Q.S8, True, True, Q.CONV_ACT, calib=P),
    # per-tensor weights after cross-layer equalisation into the float depthwise conv that
    # follows each pointwise conv + ReLU (exponent 0.5 / 1 of the equalisation, see equalise)
    "pw-u8-tensor-cle": dict(Q._static(Q.QOP, Q.U8, False, False, Q.CONV_ACT, calib=P), cle=0.5),
    "pw-u8-tensor-cle1": dict(Q._static(Q.QOP, Q.U8, False, False, Q.CONV_ACT, calib=P), cle=1.0),
}
for _r in RECIPES.values():
    _r["desc"] = Q._desc(_r) + (f", cross-layer equalisation (exponent {_r['cle']}) of each "
                                "pointwise conv into the next float depthwise conv" if "cle" in _r else "")


def equalise(model, alpha):
    """Cross-layer equalisation for per-tensor weights: for every pointwise Conv -> Relu ->
    depthwise Conv chain, scale output channel i of the pointwise conv (weights and bias) by
    1/s_i and channel i of the depthwise conv's weights by s_i, s_i = (r_i / max r)^alpha with
    r_i = max |W_pw[i]|. ReLU(x / s) = ReLU(x) / s for s > 0, and the depthwise conv is linear
    per channel, so the network computes the same function (up to float rounding) while the
    pointwise weight ranges (quantised per tensor) become equal. Not valid through Clip
    (ReLU6), so EfficientNet-Lite0 is left alone. Returns how many pairs were equalised."""
    kinds = conv_kinds(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    pairs = 0
    for n in g.node:
        if kinds.get(n.name) != "pointwise":
            continue
        nxt = consumers.get(n.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Relu":
            continue
        dw = consumers.get(nxt[0].output[0], [])
        if len(dw) != 1 or kinds.get(dw[0].name) != "depthwise":
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        r = np.abs(w.reshape(len(w), -1)).max(1)
        sc = np.maximum(r / r.max(), 1e-8) ** alpha
        w = w / sc[:, None, None, None]
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), n.input[1]))
        if len(n.input) > 2:
            b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64) / sc
            inits[n.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), n.input[2]))
        wd = numpy_helper.to_array(inits[dw[0].input[1]]).astype(np.float64)
        wd = wd * sc[:, None, None, None]
        inits[dw[0].input[1]].CopyFrom(numpy_helper.from_array(wd.astype(np.float32), dw[0].input[1]))
        pairs += 1
    return pairs


def conv_kinds(model):
    """{conv node name: 'pointwise' | 'depthwise' | 'full'} from the weight shape and group."""
    weights = {i.name: i.dims for i in model.graph.initializer}
    kinds = {}
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        w = list(weights[n.input[1]])
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if w[2:] == [1, 1] and group == 1:
            kinds[n.name] = "pointwise"
        elif group > 1 and w[1] == 1:
            kinds[n.name] = "depthwise"
        else:
            kinds[n.name] = "full"
    return kinds


def pointwise_nodes(path, k_multiple=1):
    """Names of the pointwise convs (those whose input channels, their K, are a multiple of
    `k_multiple`) and of the Relu/Clip that directly consume them (so that the quantiser folds
    the activation into QLinearConv's output range, as in the "+act" recipes)."""
    m = onnx.load(path, load_external_data=False)
    kinds = conv_kinds(m)
    cin = {n.name: d.dims[1] for n in m.graph.node for d in m.graph.initializer
           if n.op_type == "Conv" and d.name == n.input[1]}
    pw = {n for n, k in kinds.items() if k == "pointwise" and cin[n] % k_multiple == 0}
    outputs = {n.output[0]: n.name for n in m.graph.node if n.name in pw}
    acts = [n.name for n in m.graph.node
            if n.op_type in ("Relu", "Clip") and n.input[0] in outputs]
    counts = {k: sum(1 for v in kinds.values() if v == k) for k in ("pointwise", "depthwise", "full")}
    return sorted(pw) + acts, counts


def quantize_pointwise(recipe, fp32, out, input_name, calib, k_multiple=1):
    nodes, _ = pointwise_nodes(fp32, k_multiple)
    r = RECIPES[recipe]
    if "cle" in r:
        m = onnx.load(fp32)
        pairs = equalise(m, r["cle"])
        R.log(f"  {recipe}: equalised {pairs} pointwise/depthwise pairs")
        fp32 = out + ".cle.onnx"
        onnx.save(m, fp32)
    extra = {"ActivationSymmetric": r["sym_act"], "WeightSymmetric": True}
    Q.quantize_static(fp32, out, Q.ArrayReader(input_name, calib), quant_format=r["fmt"],
                      op_types_to_quantize=r["ops"], nodes_to_quantize=nodes,
                      per_channel=r["per_channel"], activation_type=r["act"],
                      weight_type=r["weight"], calibrate_method=r["calib"], extra_options=extra)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def toml_entry(e):
    """One [[model]] table (scalars, then sub-tables and arrays of tables, as manifest.py does)."""
    lines = ["[[model]]"]
    for k, v in e.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict))):
            lines.append(f"{k} = {toml_value(v)}")
    for k, v in e.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for t in v:
                lines.append(f"[[model.{k}]]")
                lines += [f"{a} = {toml_value(b)}" for a, b in t.items()]
        elif isinstance(v, dict):
            lines.append(f"[model.{k}]")
            lines += [f"{a} = {toml_value(b)}" for a, b in v.items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--out", help="output directory (default DIR/variants)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, from: " + ", ".join(RECIPES))
    ap.add_argument("--models", default="yamnet,efficientnet_lite0")
    ap.add_argument("--k-multiple", type=int, default=1,
                    help="only the pointwise convs whose K (input channels) is a multiple of this "
                         "(64: what tract's Intel AMX int8 kernel can run)")
    args = ap.parse_args(argv)
    d = os.path.abspath(args.dir)
    out = os.path.abspath(args.out or os.path.join(d, "variants"))
    os.makedirs(out, exist_ok=True)
    cache = os.path.join(d, "cache")
    with open(os.path.join(d, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)["model"]
    report = json.load(open(os.path.join(d, "build-report.json")))
    wanted = args.models.split(",")
    data = {}
    if "yamnet" in wanted:
        a = R.audio_sets(cache)
        data["yamnet"] = ("logmel", a["calib"], a["eval"], "embedding", "logits")
    if "efficientnet_lite0" in wanted:
        e = report["efficientnet_lite0"]
        im = R.image_sets(cache, e["mean"], e["std"])
        data["efficientnet_lite0"] = ("image", im["calib"], im["eval"], "pooled", "logits")

    entries, results = [], {}
    rel = os.path.relpath(d, out)
    for m in manifest:
        if m["precision"] == "fp32":  # every fp32 model: the runtime loads both encoders
            fp = dict(m, file=os.path.join(rel, m["file"]))
            if "classes" in fp:
                fp["classes"] = os.path.join(rel, fp["classes"])
            entries.append(fp)
    for name in wanted:
        fp32_entry = next(m for m in manifest if m["name"] == name and m["precision"] == "fp32")
        fp32 = os.path.join(d, fp32_entry["file"])
        input_name, calib, evalx, emb, logits = data[name]
        nodes, counts = pointwise_nodes(fp32, args.k_multiple)
        R.log(f"{name}: convs {counts}; quantising {len(nodes)} nodes (pointwise convs + their Relu/Clip)")
        ref = Q.run(fp32, input_name, evalx)
        for recipe in args.recipes.split(","):
            path = os.path.join(out, f"{name}.{recipe}.onnx")
            with tempfile.TemporaryDirectory() as work:
                tmp = os.path.join(work, "q.onnx")
                quantize_pointwise(recipe, fp32, tmp, input_name, calib, args.k_multiple)
                os.replace(tmp, path)
            res = Q.compare(ref, Q.run(path, input_name, evalx), emb, logits)
            results[f"{name}.{recipe}"] = res
            R.log(f"  {name}.{recipe}: {res}")
            ops = sorted({n.op_type for n in onnx.load(path, load_external_data=False).graph.node})
            e = {k: v for k, v in fp32_entry.items() if k not in ("check",)}
            ks = manifest_py.int8_reductions(path)
            if ks is not None:  # the runtime's AMX int8 gate (README: "Intel AMX int8 …")
                e["int8_k"] = ks
            e.update(precision=recipe, file=os.path.basename(path), sha256=sha256(path), ops=ops,
                     recipe=f"{recipe}: {RECIPES[recipe]['desc']}, only the {counts['pointwise']} "
                            "pointwise (1x1) convs and their Relu/Clip; depthwise and stem convs float",
                     check=dict(res, runtime="onnxruntime", reference="fp32 ONNX on the same real inputs"))
            if "classes" in e:
                e["classes"] = os.path.join(rel, e["classes"])
            entries.append(e)
    with open(os.path.join(out, "manifest.toml"), "w") as f:
        f.write("# Experimental variants written by models/int8_pointwise.py (not shipped).\n\n")
        f.write("\n\n".join(toml_entry(e) for e in entries) + "\n")
    link = os.path.join(out, "check_inputs.npz")
    if not os.path.lexists(link):
        os.symlink(os.path.join(d, "check_inputs.npz"), link)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
