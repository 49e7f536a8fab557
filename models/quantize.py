"""int8 recipes (onnxruntime.quantization) and their accuracy check against fp32 on real inputs.

Every recipe restricts quantisation to Conv / MatMul (tract 0.23 lacks QLinearAdd, QGemm, and
QDQ around Softmax is unsafe there): Gemm, GlobalAveragePool, Add, Clip/Relu stay float.
"""

import logging
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_dynamic, quantize_static)

import realdata

# onnxruntime.quantization logs advice ("run pre-processing", "use QDQ on x64") on the root
# logger for every call; the build prints its own measurements instead.
logging.getLogger().setLevel(logging.ERROR)



class ArrayReader(CalibrationDataReader):
    def __init__(self, name, data, batch=1):
        self.name, self.data, self.batch, self.i = name, data, batch, 0

    def get_next(self):
        if self.i >= len(self.data):
            return None
        x = self.data[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: x}

    def rewind(self):
        self.i = 0


# name -> recipe.  `desc` goes into the manifest / README verbatim.
# ops: op_types_to_quantize. "+act" recipes also list Relu/Clip: the quantiser then folds the
# activation into the QLinearConv output range ([0, max] / [0, 6]) instead of quantising the
# pre-activation conv output, whose range is dominated by negative values that ReLU discards.
# Relu/Clip never become new op types (no QLinearRelu); Add/Gemm/GlobalAveragePool stay float.
CONV = ["Conv", "MatMul"]
CONV_ACT = ["Conv", "MatMul", "Relu", "Clip"]


def _static(fmt, act, per_channel, sym_act, ops, calib=CalibrationMethod.MinMax, extra=None):
    return dict(kind="static", fmt=fmt, act=act, weight=QuantType.QInt8, per_channel=per_channel,
                sym_act=sym_act, ops=ops, calib=calib, extra=extra or {})


def _desc(r):
    if r["kind"] == "dynamic":
        return (f"quantize_dynamic, ops {'/'.join(r['ops'])}, uint8 weights "
                f"{'per-channel' if r['per_channel'] else 'per-tensor'} "
                "(ConvInteger/MatMulInteger + DynamicQuantizeLinear)")
    fmt = "QOperator (QLinearConv)" if r["fmt"] == QuantFormat.QOperator else "QDQ"
    act = ("int8 symmetric" if r["sym_act"] else "int8 asymmetric") if r["act"] == QuantType.QInt8 \
        else ("uint8 symmetric" if r["sym_act"] else "uint8 asymmetric")
    calib = {CalibrationMethod.MinMax: "MinMax", CalibrationMethod.Percentile: "Percentile 99.999",
             CalibrationMethod.Entropy: "Entropy"}[r["calib"]]
    return (f"quantize_static {fmt}, ops {'/'.join(r['ops'])}, {act} activations, int8 symmetric "
            f"weights {'per-channel' if r['per_channel'] else 'per-tensor'}, {calib} calibration")


QOP, QDQ, S8, U8 = QuantFormat.QOperator, QuantFormat.QDQ, QuantType.QInt8, QuantType.QUInt8
RECIPES = {
    "dynamic-u8": dict(kind="dynamic", weight=QuantType.QUInt8, per_channel=False, ops=CONV),
    "qop-s8-sym-tensor": _static(QOP, S8, False, True, CONV),
    "qop-s8-sym-channel": _static(QOP, S8, True, True, CONV),
    "qop-u8-asym-channel": _static(QOP, U8, True, False, CONV),
    "qdq-s8-sym-channel": _static(QDQ, S8, True, True, CONV),
    "qop-s8-sym-channel+act": _static(QOP, S8, True, True, CONV_ACT),
    "qop-u8-asym-channel+act": _static(QOP, U8, True, False, CONV_ACT),
    "qop-u8-asym-channel+act-pct": _static(QOP, U8, True, False, CONV_ACT,
                                           calib=CalibrationMethod.Percentile),
    "qdq-u8-asym-channel+act": _static(QDQ, U8, True, False, CONV_ACT),
}
for _r in RECIPES.values():
    _r["desc"] = _desc(_r)


def quantize(recipe, fp32_path, out_path, input_name, calib):
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    ops = r.get("ops", CONV)
    exclude = r.get("exclude", [])
    if callable(exclude):
        exclude = exclude(onnx.load(fp32_path, load_external_data=False))
    if r["kind"] == "dynamic":
        quantize_dynamic(fp32_path, out_path, op_types_to_quantize=ops, nodes_to_exclude=exclude,
                         per_channel=r["per_channel"], weight_type=r["weight"])
        return
    extra = {"ActivationSymmetric": r["sym_act"], "WeightSymmetric": True}
    extra.update(r.get("extra", {}))
    quantize_static(fp32_path, out_path, ArrayReader(input_name, calib),
                    quant_format=r["fmt"], op_types_to_quantize=ops, nodes_to_exclude=exclude,
                    per_channel=r["per_channel"], activation_type=r["act"],
                    weight_type=r["weight"], calibrate_method=r.get("calib", CalibrationMethod.MinMax),
                    extra_options=extra)


def session(path, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run(path, input_name, x, batch=16):
    s = session(path, threads=os.cpu_count() or 1)
    outs = None
    for i in range(0, len(x), batch):
        o = s.run(None, {input_name: x[i:i + batch]})
        outs = [[] for _ in o] if outs is None else outs
        for acc, v in zip(outs, o):
            acc.append(v)
    names = [o.name for o in s.get_outputs()]
    return {n: np.concatenate(v) for n, v in zip(names, outs)}


def cosine(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def compare(ref, got, emb, logits):
    c = cosine(ref[emb], got[emb])
    agree = (ref[logits].argmax(1) == got[logits].argmax(1)).mean()
    return dict(mean_cosine=round(float(c.mean()), 4), min_cosine=round(float(c.min()), 4),
                top1_agreement=round(float(agree), 4), inputs=int(len(c)))


def try_recipes(fp32_path, input_name, calib, evalx, emb, logits, recipes, work):
    """Quantise with each recipe into `work`, compare to fp32 on evalx. Returns {recipe: result}.
    `recipes`: names from RECIPES, or a dict name -> recipe dict."""
    ref = run(fp32_path, input_name, evalx)
    results = {}
    for name in recipes:
        recipe = recipes[name] if isinstance(recipes, dict) else name
        out = os.path.join(work, f"{name}.onnx")
        t0 = time.time()
        try:
            quantize(recipe, fp32_path, out, input_name, calib)
            got = run(out, input_name, evalx)
            res = compare(ref, got, emb, logits)
        except Exception as e:  # a recipe that onnxruntime cannot build or run is recorded
            res = dict(error=f"{type(e).__name__}: {e}"[:300])
        res["seconds"] = round(time.time() - t0, 1)
        results[name] = res
        realdata.log(f"  int8 {os.path.basename(fp32_path)} {name}: {res}")
    return results
