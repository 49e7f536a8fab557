"""Fast check of a built model dir (run at the end of every build, also on the cached path):
onnxruntime on DIR/check_inputs.npz must reproduce the stored outputs; prints the ImageNet top-1
of the real photos, YAMNet's top classes for the real sounds, and the recorded measurements."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realdata import log  # noqa: E402


def main(argv=None):
    d = (argv or sys.argv[1:])[0]
    import quantize as Q
    ck = np.load(os.path.join(d, "check_inputs.npz"))
    meta = json.load(open(os.path.join(d, "check_inputs.json")))
    rep = json.load(open(os.path.join(d, "build-report.json")))
    cats = open(os.path.join(d, "imagenet_classes.txt")).read().splitlines()
    ycls = open(os.path.join(d, "yamnet_classes.txt")).read().splitlines()
    y = Q.run(os.path.join(d, "yamnet.fp32.onnx"), "logmel", ck["logmel"])
    e = Q.run(os.path.join(d, "efficientnet_lite0.fp32.onnx"), "image", ck["image"])
    yq = Q.run(os.path.join(d, "yamnet.int8.onnx"), "logmel", ck["logmel"])
    eq = Q.run(os.path.join(d, "efficientnet_lite0.int8.onnx"), "image", ck["image"])
    errs = {
        "yamnet_embedding": np.abs(y["embedding"] - ck["yamnet_embedding"]).max(),
        "yamnet_logits": np.abs(y["logits"] - ck["yamnet_logits"]).max(),
        "effnet_pooled": np.abs(e["pooled"] - ck["effnet_pooled"]).max(),
        "effnet_tokens": np.abs(e["tokens"] - ck["effnet_tokens"]).max(),
        "effnet_logits": np.abs(e["logits"] - ck["effnet_logits"]).max(),
    }
    log("verify: onnxruntime fp32 vs check_inputs.npz max|d|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    if max(errs.values()) > 1e-4:
        raise SystemExit("verify: outputs differ from check_inputs.npz")
    tokens_pool = np.abs(e["tokens"].mean(1) - e["pooled"]).max()
    log(f"verify: effnet mean(tokens over 49 cells) vs pooled max|d| {tokens_pool:.1e}")
    eff = rep["efficientnet_lite0"]
    log(f"verify: effnet ONNX vs PyTorch (at build) max|d| {eff['onnx_vs_pytorch_max_abs']}; "
        f"normalisation {eff['chosen_normalisation']} mean={[round(x, 4) for x in eff['mean']]} "
        f"std={[round(x, 4) for x in eff['std']]}")
    for i, src in enumerate(meta["image"]):
        if "(center" not in src:
            continue
        p = np.exp(e["logits"][i] - e["logits"][i].max())
        p /= p.sum()
        k = int(p.argmax())
        kq = int(eq["logits"][i].argmax())
        log(f"  photo {os.path.basename(src.split(' (')[0]):22s} top-1 {cats[k]!r} ({p[k]:.2f}); "
            f"int8 top-1 {cats[kq]!r}")
    seen = set()
    for i, src in enumerate(meta["logmel"]):
        clip = src.split(" @ ")[0]
        if clip in seen:
            continue
        seen.add(clip)
        top = np.argsort(-y["logits"][i])[:2]
        log(f"  sound {clip[:60]:60s} -> {ycls[top[0]]!r}, {ycls[top[1]]!r}")
    for name, emb, lg, got in (("yamnet", "yamnet_embedding", "yamnet_logits", yq),
                               ("efficientnet_lite0", "effnet_pooled", "effnet_logits", eq)):
        c = Q.cosine(ck[emb], got["embedding" if name == "yamnet" else "pooled"])
        agree = (ck[lg].argmax(1) == got["logits"].argmax(1)).mean()
        r = rep[name]
        log(f"verify: {name} int8 ({r['int8_chosen']}) vs fp32 on {len(c)} real inputs: "
            f"mean cos {c.mean():.4f} min {c.min():.4f} top-1 agreement {agree:.3f}")
    import export_text
    export_text.verify(d)


if __name__ == "__main__":
    main()
