"""Accuracy per question type on the held-out test scenes (models/data/make_dataset.py).

    ~/.cache/tspm-edge/venv/bin/python models/eval.py [--data DIR] [--model-dir DIR]
        [--tract FILE ...] [--split test] [--out models/head/eval_report.json] [--no-ort]
        [--by-template]

Rows of the table (each over the same test questions):
  blind prior       the most frequent training answer for the question's template and slot
                    values (backing off to the template's most frequent answer for value
                    combinations training never asked); sees no clip
  PyTorch           the shipped head (models/head/tspm_head.npz, dequantised) in PyTorch
  PyTorch exact     the best epoch's fp32 weights before the compact form (DIR/full.fp32.pt,
                    not committed), if present
  onnxruntime fp32 / int8   tspm_head.{fp32,int8}.onnx of the model dir, one clip per call
                    with all its questions as the batch, T = the clip's seconds (>= 10)
  tract fp32 / int8 from `tspm-edge eval DIR/test.jsonl` (its JSON, given with --tract; once per
                    head form: the parts, `eval`'s default and what `serve` runs, and the whole
                    head file, `eval --head whole`; the rows name the form)
  ablations         variants retrained by `models/train.py --variant V` (DIR/variants/V.pt):
                    qprompt (question as prompt), alltime (no temporal selection: all seconds),
                    nomerge (no token merging: fixed 14 groups of the 7x7 grid)
For PyTorch and onnxruntime the test clips' tokens are merged again from extract's .npz with the
reference (models/token_merge.py) in float32 -- the values the Rust runtime computes -- rather
than read from the training cache (which stores them as float16).

Prints a Markdown table (accuracy in %, per type and overall, with the number of questions),
int8-vs-fp32 answer agreement and the order check (the shipped head's answers with each clip's
seconds shuffled: how many stay the same); writes every number to --out.
"""

import argparse
import collections
import copy
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402
import tspm  # noqa: E402
from token_merge import merge_tokens  # noqa: E402

TYPE_NAMES = [T.type_name(t) for t in T.TYPES]


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg):
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------

def blind_prior(train_recs, test_recs):
    """Most frequent training answer per (template, slot values), else per template."""
    by_key, by_tid = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for r in train_recs:
        by_key[(r["template_id"], tuple(r["templ_values"]))][r["answer_index"]] += 1
        by_tid[r["template_id"]][r["answer_index"]] += 1
    overall = collections.Counter(r["answer_index"] for r in train_recs)
    pred, backoff = [], 0

    def top(counter):  # ties: the lower answer index
        return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    for r in test_recs:
        key = (r["template_id"], tuple(r["templ_values"]))
        if by_key.get(key):
            pred.append(top(by_key[key]))
        else:
            backoff += 1
            pred.append(top(by_tid[r["template_id"]]) if by_tid.get(r["template_id"]) else top(overall))
    return np.array(pred), backoff


def refresh_patches(split):
    """Replace the float16 cached tokens by float32 ones merged again from extract's .npz."""
    t0 = time.time()
    for c in split.clips:
        raw = split.records[c["rec"][0]]["npz"]
        tok = np.load(raw)["tokens"]
        c["patches"] = np.stack([merge_tokens(tok[t], 14)[0] for t in range(len(tok))])
    log(f"re-merged {len(split.clips)} clips' tokens in float32 ({time.time() - t0:.0f} s)")


def ort_predict(path, split, emb, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    pred = np.full(split.n_questions, -1, np.int64)
    t0 = time.time()
    for c in split.clips:
        t_real = len(c["valid"])
        t = max(t_real, 10)
        n = len(c["ans"])

        def pad(x):
            out = np.zeros((t,) + x.shape[1:], np.float32)
            out[:t_real] = x
            return np.broadcast_to(out, (n,) + out.shape).copy()

        valid = np.zeros(t, np.float32)
        valid[:t_real] = 1
        x = dict(audio=pad(c["audio"]), visual=pad(c["visual"]), patches=pad(c["patches"]),
                 question=emb[c["q"]], prompt=emb[c["p"]],
                 valid=np.broadcast_to(valid, (n, t)).copy())
        logits = sess.run(["logits"], x)[0]
        pred[c["rec"]] = logits.argmax(1)
    log(f"onnxruntime {os.path.basename(path)}: {split.n_questions} questions in {time.time() - t0:.0f} s")
    return pred


def load_model(n_answers, state=None, compact=None, d_text=None):
    """d_text: the width of the data set's text embeddings (text.npz) when an experiment's
    differs from MiniLM's 384."""
    dims = dict(tspm.OUR_DIMS)
    if d_text:
        dims.update(d_question=d_text, d_prompt=d_text)
    model = tspm.TSPMHead(n_answers, **dims)
    if compact:
        T.load_compact(model, compact)
    if state:
        sd = torch.load(state)
        if "qtg_slots" in sd:  # trained with --time-slots
            model.enable_time_slots()
        model.load_state_dict(sd)
    return model.eval()


def by_template(recs, prior, head):
    """Accuracy of the blind prior and the head per template: (list of dicts, Markdown)."""
    cells = collections.OrderedDict()
    for r, p, h in zip(recs, prior, head):
        c = cells.setdefault(r["template_id"], dict(
            template_id=r["template_id"], type=T.type_name(r["type"]), template=r["question_content"],
            questions=0, prior_correct=0, head_correct=0))
        c["questions"] += 1
        c["prior_correct"] += int(p == r["answer_index"])
        c["head_correct"] += int(h == r["answer_index"])
    out = [cells[k] for k in sorted(cells)]
    lines = ["| template | type | questions | blind prior | head | points above |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for c in out:
        c["prior_acc"], c["head_acc"] = c["prior_correct"] / c["questions"], c["head_correct"] / c["questions"]
        lines.append(f"| {c['template_id']}: {c['template']} | {c['type']} | {c['questions']} | "
                     f"{100 * c['prior_acc']:.1f} | {100 * c['head_acc']:.1f} | "
                     f"{100 * (c['head_acc'] - c['prior_acc']):+.1f} |")
    return out, "\n".join(lines)


def order_check(model, split, emb, seed=11):
    """How much the head's answers depend on the order of the seconds: every test clip's
    seconds shuffled (one fixed permutation per clip, all arrays alike), same answer as in
    time order on what share of the questions, per type. The spec'd head (no time slots) is
    invariant to the order, so temporal questions get no order information from it."""
    rng = np.random.default_rng(seed)
    shuffled = copy.copy(split)
    shuffled.clips = []
    for c in split.clips:
        perm = rng.permutation(c["audio"].shape[0])
        shuffled.clips.append(dict(c, **{k: c[k][perm] for k in ("audio", "visual", "patches", "valid")}))
    a, b = T.predict(model, split, emb)[0], T.predict(model, shuffled, emb)[0]
    same = a == b
    by_type = collections.defaultdict(list)
    for r, e in zip(split.records, same):
        by_type[T.type_name(r["type"])].append(bool(e))
    out = dict(seed=seed, questions=int(len(same)), same_answer=float(same.mean()),
               by_type={k: float(np.mean(v)) for k, v in by_type.items()})
    log(f"order check (the seconds of each clip shuffled): same answer on {int(same.sum())} of "
        f"{len(same)} questions ({100 * out['same_answer']:.2f} %); Audio-Visual Temporal "
        f"{100 * out['by_type'].get('Audio-Visual Temporal', float('nan')):.2f} %")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=T.default_data_dir())
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("--weights", default=os.path.join(HERE, "head", "tspm_head.npz"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--tract", action="append", default=[],
                    help="JSON printed by `tspm-edge eval` on the same split (repeatable: one "
                         "per head form)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--by-template", action="store_true",
                    help="also print and write accuracy per template (the blind prior and the "
                         "PyTorch head), which shows the templates the head does not learn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "head", "eval_report.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    answers = tspm.read_answers(os.path.join(HERE, "answers.txt"))
    emb, text = T.load_text(args.data)
    train_recs = read_jsonl(os.path.join(args.data, "train.jsonl"))
    split = T.Split(args.data, args.split, "full", text)
    if args.weights and "pos_patch.weight::q8" in np.load(args.weights).files:
        T.ensure_positions(split)  # a --patch-pos experiment's head
    recs = split.records
    log(f"{args.split}: {len(split.clips)} clips, {split.n_questions} questions")
    rows, preds = collections.OrderedDict(), {}

    def add(name, pred, note=""):
        preds[name] = pred
        rows[name] = dict(table=T.accuracy_table(recs, pred), note=note)
        log(f"{name}: {T.fmt_table(rows[name]['table'])}")

    pred, backoff = blind_prior(train_recs, recs)
    add("blind prior", pred, f"{backoff} of {len(recs)} questions backed off to the template")
    refresh_patches(split)
    model = load_model(len(answers), compact=args.weights, d_text=emb.shape[1])
    add("PyTorch (shipped weights)", T.predict(model, split, emb)[0], os.path.relpath(args.weights, os.path.dirname(HERE)))
    order = order_check(model, split, emb)
    exact = os.path.join(args.data, "full.fp32.pt")
    if os.path.exists(exact):
        add("PyTorch (exact fp32 before compacting)", T.predict(load_model(len(answers), state=exact, d_text=emb.shape[1]), split, emb)[0])
    if not args.no_ort:
        for prec in ("fp32", "int8"):
            path = os.path.join(args.model_dir, f"tspm_head.{prec}.onnx")
            # predictions are cached per model file (sha256) and split
            cache = os.path.join(args.data, f"ort_{args.split}_{sha256(path)[:16]}.npy")
            if os.path.exists(cache):
                pred = np.load(cache)
                log(f"onnxruntime {prec}: predictions from {cache}")
            else:
                pred = ort_predict(path, split, emb, args.threads)
                np.save(cache, pred)
            add(f"onnxruntime {prec}", pred, path)
    tract_agree = {}
    for tract in args.tract:
        with open(tract) as f:
            tr = json.load(f)
        form = "parts" if all(h.startswith("tspm_parts") for h in tr["heads"].values()) \
            else "whole head"
        for prec, tab in tr["accuracy"].items():
            table = {k: dict(v) for k, v in tab["by_type"].items()}
            table["overall"] = dict(tab["overall"])
            rows[f"tract {prec} ({form})"] = dict(
                table=table, note=f"tspm-edge eval, {tr['heads'].get(prec, '')}")
        if tr.get("int8_agrees_with_fp32") is not None:
            rows[f"tract int8 ({form})"]["int8_agrees_with_fp32"] = tr["int8_agrees_with_fp32"]
            tract_agree[f"tract int8 vs fp32 ({form})"] = tr["int8_agrees_with_fp32"]
    for v in ("qprompt", "alltime", "nomerge"):
        path = os.path.join(args.data, "variants", f"{v}.pt")
        if not os.path.exists(path):
            log(f"ablation {v}: {path} missing (models/train.py --variant {v})")
            continue
        vs = T.Split(args.data, args.split, v, text)
        if v != "nomerge":
            for c, c32 in zip(vs.clips, split.clips):
                c["patches"] = c32["patches"]
        name = {"qprompt": "ablation: question as prompt", "alltime": "ablation: no temporal selection (all seconds)",
                "nomerge": "ablation: no token merging (fixed groups)"}[v]
        add(name, T.predict(load_model(len(answers), state=path, d_text=emb.shape[1]), vs, emb, all_time=v == "alltime")[0])

    agree = {}
    if "onnxruntime fp32" in preds and "onnxruntime int8" in preds:
        agree["onnxruntime int8 vs fp32"] = float(np.mean(preds["onnxruntime fp32"] == preds["onnxruntime int8"]))
        agree["onnxruntime fp32 vs PyTorch (shipped)"] = float(
            np.mean(preds["onnxruntime fp32"] == preds["PyTorch (shipped weights)"]))
    agree.update(tract_agree)

    # the goal: every type >= 25 points above the blind prior
    prior = rows["blind prior"]["table"]
    goal = {}
    for name, row in rows.items():
        if name == "blind prior":
            continue
        margins = {k: 100 * (row["table"][k]["acc"] - prior[k]["acc"]) for k in TYPE_NAMES + ["overall"]
                   if k in row["table"]}
        row["points_above_prior"] = margins
        goal[name] = all(margins.get(k, -1) >= 25 for k in TYPE_NAMES)

    cols = TYPE_NAMES + ["overall"]
    short = {n: n.replace("Audio-Visual", "AV").replace("Comparative", "Comp.").replace("Counting", "Count.")
                .replace("Existential", "Exist.").replace("Location", "Loc.").replace("Temporal", "Temp.")
             for n in cols}
    lines = ["| | " + " | ".join(short[c] for c in cols) + " |",
             "| --- |" + " ---: |" * len(cols),
             "| questions | " + " | ".join(str(prior[c]["total"]) for c in cols) + " |"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * row['table'][c]['acc']:.1f}" if c in row["table"] else "–" for c in cols) + " |")
    table_md = "\n".join(lines)
    print(table_md)
    for k, v in agree.items():
        print(f"{k}: {100 * v:.2f} % of answers equal")
    for k, v in goal.items():
        print(f"goal (every type >= 25 points above the blind prior): {k}: {'met' if v else 'NOT met'}")
    print(f"order check, the shipped head (each clip's seconds shuffled): same answer on "
          f"{100 * order['same_answer']:.2f} % of the questions")
    report = dict(split=args.split, clips=len(split.clips), questions=split.n_questions, rows=rows,
                  agreement=agree, order_check=order, goal_every_type_25_points=goal, markdown=table_md,
                  data=args.data, model_dir=args.model_dir)
    if args.by_template:
        report["by_template"], md = by_template(recs, preds["blind prior"], preds["PyTorch (shipped weights)"])
        print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
