"""Probes: what the head's input features carry, measured apart from the head.

    ~/.cache/tspm-edge/venv/bin/python models/probe.py [--data DIR] [--model-dir DIR] [visual|comparative ...]

Two questions behind models/head/README.md's "why the goal stays out of reach":

visual       Do EfficientNet-Lite0's features of a clip tell which instruments are in the
             picture, for the training material's pictures (validation clips) and for the test
             split's other pictures? A linear multi-label probe per clip (the mean of its frames'
             `visual` features, standardized on the training clips), trained on the training
             clips, reports per-instrument AUC and how often its n highest scores are exactly the
             clip's n visible instruments (n given). Once on the pooled features, once on the
             ImageNet logits of them (the classifier in efficientnet_lite0.fp32.onnx).
comparative  Can a model built for Audio Comparative alone ("Is the <X> louder / more rhythmic
             than / playing longer than the <Y>?") answer it from the clip's YAMNet embeddings?
             Input: the mean, std and max over the clip's seconds (standardized) and the two
             instruments and the kind of comparison as one-hot vectors (no sentence embedding);
             a gated two-layer MLP (256), Adam 1e-3, weight decay 1e-3, 300 full-batch epochs,
             trained on the training split's questions of that type. Reports the accuracy at the
             last epoch and at the best validation epoch (optimistic: chosen on validation).

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
    insts = sorted(set().union(*splits["train"][1]))
    labels = {s: np.array([[i in v for i in insts] for v in splits[s][1]], np.float32) for s in splits}
    print(f"visual: {len(insts)} instruments; clips train {len(labels['train'])}, val "
          f"{len(labels['val'])}, test {len(labels['test'])}")
    for name, f in (("pooled [1280]", lambda x: x), ("ImageNet logits [1000]", lambda x: x @ w.T + b)):
        torch.manual_seed(0)
        x = {s: f(splits[s][0]) for s in splits}
        mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-2
        x = {s: torch.tensor((v - mu) / sd, dtype=torch.float32) for s, v in x.items()}
        lin = torch.nn.Linear(x["train"].shape[1], len(insts))
        opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-4)
        y = torch.tensor(labels["train"])
        for _ in range(400):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(lin(x["train"]), y).backward()
            opt.step()
        out = []
        for s in ("train", "val", "test"):
            with torch.no_grad():
                p = lin(x[s]).numpy()
            lab = labels[s]
            aucs = [auc(p[lab[:, j] == 1, j], p[lab[:, j] == 0, j])
                    for j in range(len(insts)) if 0 < lab[:, j].sum() < len(lab)]
            n = lab.sum(1).astype(int)
            exact = np.mean([set(np.argsort(-p[i])[:n[i]]) == set(np.flatnonzero(lab[i])) for i in range(len(lab))])
            out.append(f"{s} AUC {np.mean(aucs):.3f}, top-n = the visible set {100 * exact:.1f} %")
        print(f"  {name}: " + "; ".join(out))


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=T.default_data_dir())
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("probes", nargs="*", help="visual, comparative (default: both)")
    args = ap.parse_args()
    args.probes = args.probes or ["visual", "comparative"]
    for p in args.probes:
        if p not in ("visual", "comparative"):
            ap.error(f"unknown probe {p!r}: expected visual or comparative")
    torch.set_num_threads(1)
    for p in args.probes:
        {"visual": visual, "comparative": comparative}[p](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
