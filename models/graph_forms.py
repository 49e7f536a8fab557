"""Graph forms of the fp32 encoders for tract (experiments; same weights, same outputs).

    DIR/../venv/bin/python models/graph_forms.py DIR [--out DIR/variants]

`dw-s1`: every depthwise Conv with stride 2 becomes a stride-1 depthwise Conv (same pads)
followed by a Slice with step 2 on H and W. Same arithmetic for every kept output. Why: tract
0.23.9's x86 depthwise kernel (`x86_64_avx_depthwise_w_f32`) is vectorised only when the input
stride along W is 1; stride-2 depthwise convs run its scalar loop (0.8 GMAC/s, the two slowest
nodes of EfficientNet-Lite0 in `tspm-edge bench --profile`), stride-1 ones reach 3-8 GMAC/s, so
4x the multiply-adds could cost less.

Measured (tract 0.23.9): no effect. tract's declutter folds the step-2 Slice back into the conv's
stride: the optimised plan has the same DepthWiseConv nodes with the same cost as the original
(`bench --profile`), so this form cannot beat the scalar path; kept as a recorded negative result.
The change that does help the stride-2 depthwise convs is tract's `conv_nhwc` transform
(`tspm-edge bench --transform conv_nhwc`).

Appends one [[model]] per variant to OUT/manifest.toml (written by int8_pointwise.py, or
created here with the fp32 entries), checks every variant against fp32 in onnxruntime on the
build's check inputs, and prints {variant: max abs difference} as JSON.
"""

import argparse
import json
import os
import sys
import tomllib

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quantize as Q  # noqa: E402
from build import sha256  # noqa: E402
from int8_pointwise import conv_kinds, toml_entry  # noqa: E402


def dw_stride1(model):
    """Rewrites stride-2 depthwise convs in place; returns how many."""
    kinds = conv_kinds(model)
    g = model.graph
    new_nodes, count = [], 0
    for n in g.node:
        strides = next((list(a.ints) for a in n.attribute if a.name == "strides"), [1, 1])
        if n.op_type != "Conv" or kinds.get(n.name) != "depthwise" or strides != [2, 2]:
            new_nodes.append(n)
            continue
        count += 1
        for a in n.attribute:
            if a.name == "strides":
                a.ints[:] = [1, 1]
        out = n.output[0]
        full = f"{out}__s1"
        n.output[0] = full
        new_nodes.append(n)
        base = n.name or out
        consts = {"starts": [0, 0], "ends": [2**31 - 1, 2**31 - 1], "axes": [2, 3], "steps": [2, 2]}
        names = []
        for k, v in consts.items():
            name = f"{base}__slice_{k}"
            g.initializer.append(numpy_helper.from_array(np.array(v, np.int64), name))
            names.append(name)
        new_nodes.append(helper.make_node("Slice", [full] + names, [out], name=f"{base}__stride2"))
    del g.node[:]
    g.node.extend(new_nodes)
    return count


FORMS = {"dw-s1": dw_stride1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--out")
    ap.add_argument("--models", default="yamnet,efficientnet_lite0")
    args = ap.parse_args(argv)
    d = os.path.abspath(args.dir)
    out = os.path.abspath(args.out or os.path.join(d, "variants"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(d, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)["model"]
    rel = os.path.relpath(d, out)
    mpath = os.path.join(out, "manifest.toml")
    entries = []
    if not os.path.exists(mpath):
        for m in manifest:
            if m["precision"] == "fp32":
                fp = dict(m, file=os.path.join(rel, m["file"]))
                if "classes" in fp:
                    fp["classes"] = os.path.join(rel, fp["classes"])
                entries.append(fp)
    check = np.load(os.path.join(d, "check_inputs.npz"))
    inputs = {"yamnet": "logmel", "efficientnet_lite0": "image"}
    results = {}
    for name in args.models.split(","):
        e = next(m for m in manifest if m["name"] == name and m["precision"] == "fp32")
        src = os.path.join(d, e["file"])
        ref = Q.run(src, inputs[name], check[inputs[name]])
        for form, fn in FORMS.items():
            m = onnx.load(src)
            n = fn(m)
            path = os.path.join(out, f"{name}.fp32-{form}.onnx")
            onnx.save(m, path)
            got = Q.run(path, inputs[name], check[inputs[name]])
            diff = max(float(np.abs(ref[k] - got[k]).max()) for k in ref)
            results[f"{name}.fp32-{form}"] = dict(rewritten=n, max_abs_vs_fp32=diff)
            print(f"[models] {name}.fp32-{form}: {n} convs rewritten, max|d| vs fp32 {diff:.2e}",
                  file=sys.stderr)
            v = dict(e, precision=f"fp32-{form}", file=os.path.basename(path), sha256=sha256(path),
                     recipe=f"graph form {form}: {FORMS[form].__doc__.splitlines()[0]}")
            if "classes" in v:
                v["classes"] = os.path.join(rel, v["classes"])
            entries.append(v)
    with open(mpath, "a") as f:
        if f.tell() == 0:
            f.write("# Experimental variants (models/int8_pointwise.py, models/graph_forms.py).\n\n")
        else:
            f.write("\n\n")
        f.write("\n\n".join(toml_entry(x) for x in entries) + "\n")
    link = os.path.join(out, "check_inputs.npz")
    if not os.path.lexists(link):
        os.symlink(os.path.join(d, "check_inputs.npz"), link)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
