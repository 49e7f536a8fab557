#!/usr/bin/env python3
"""The training / evaluation data set in one command: scenes -> questions -> features -> texts.

    ~/.cache/tspm-edge/venv/bin/python models/data/make_dataset.py [--data DIR]
        [--train 400] [--val 60] [--test 100] [--min-s 10] [--max-s 30] [--jobs 2]
        [--per-template 3] [--seed 7] [--augment] [--bin target/release/tspm-edge] [--prompts-bin BIN]

(`bash models/data/make_dataset.sh` runs it in the model build's venv.) DIR defaults to
$TSPM_DATA_DIR, else ~/.cache/tspm-edge/data. Every step is cached, so a second run only does
what is missing or out of date:

1. **render** `synth.py` clips per split into DIR/clips/<split>/ (skips clips that exist);
2. **extract** `tspm-edge extract <clip>.webm --out <clip>.npz` -- the serving code path --
   unless the .npz is newer than the clip;
3. **merge** each second's 7x7 token grid down to 14 tokens with the reference token merging
   (`models/token_merge.py`, the algorithm of `src/dsp/token_merge.rs`) and store the head's
   inputs compactly in <clip>.head.npz: `audio` [T,1024] f32, `visual` [T,1280] f32,
   `patches` [T,14,1280] f16 (merged), `pooled14` [T,14,1280] f16 (the no-merging ablation:
   fixed contiguous row-major groups of 3-4 patches), `valid` [T] f32 (1 = a second extract
   wrote: every one of them is real);
4. **questions** `questions.py` per split -> DIR/<split>.questions.json (MUSIC-AVQA records);
5. **prompts** `tspm-edge prompts` on them (the Rust prompt constructor) -> question text and
   declarative prompt per record;
6. **text** MiniLM embeddings of every distinct question text and prompt with
   `minilm.fp32.onnx` in onnxruntime, tokenized with `minilm_tokenizer.json` exactly as
   `src/model/text.rs` does (WordPiece, L = 32, right-padded) -> DIR/text.npz;
7. **eval set** DIR/<split>.jsonl: one line per question with clip, feature files, template,
   values, filled question, prompt, answer and answer index (read by train.py, eval.py and
   `tspm-edge eval`).

Steps 1-3 run `--jobs` worker processes over chunks of clips (render a chunk, extract it,
merge it), with progress lines `[data] ...` on stderr.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
REPO = os.path.dirname(MODELS)
sys.path.insert(0, MODELS)
sys.path.insert(0, HERE)

SPLITS = ("train", "val", "test")
N_TOK = 14
TEXT_L = 32  # src/model/text.rs MAX_TOKENS


def log(msg):
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def default_data_dir():
    return os.environ.get("TSPM_DATA_DIR", os.path.expanduser("~/.cache/tspm-edge/data"))


def default_model_dir():
    return os.environ.get("TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models"))


# ---------------------------------------------------------------- features of one clip

def pooled_groups():
    """The no-merging ablation's 14 fixed groups: contiguous row-major runs of 3-4 patches."""
    return np.array_split(np.arange(49), N_TOK)


def head_inputs(raw_npz, out_npz):
    """<clip>.npz (extract) -> <clip>.head.npz (merged with the reference, see the docstring)."""
    from token_merge import merge_tokens
    d = np.load(raw_npz)
    tokens = d["tokens"]  # [T,49,1280] f32
    merged = np.stack([merge_tokens(tokens[t], N_TOK)[0] for t in range(len(tokens))])
    pooled = np.stack([tokens[:, g].mean(axis=1) for g in pooled_groups()], axis=1)
    part = out_npz[:-4] + ".part.npz"
    np.savez(part, audio=d["audio"].astype(np.float32), visual=d["visual"].astype(np.float32),
             patches=merged.astype(np.float16), pooled14=pooled.astype(np.float16),
             valid=np.ones(len(tokens), np.float32), pts_s=d["pts_s"])
    os.replace(part, out_npz)


def newer(a, b):
    """a exists and is at least as new as b."""
    return os.path.exists(a) and os.path.getmtime(a) >= os.path.getmtime(b)


def do_chunk(job):
    """Render, extract and merge clips [start, start + count) of one split. Returns timings."""
    split, start, count, a = job
    out = os.path.join(a["data"], "clips", split)
    os.makedirs(out, exist_ok=True)
    t = {"render": 0.0, "extract": 0.0, "merge": 0.0, "media_s": 0.0, "clips": 0}
    t0 = time.time()
    cmd = [sys.executable, os.path.join(HERE, "synth.py"), "--out", out, "--split", split,
           "--count", str(count), "--start", str(start), "--min-s", str(a["min_s"]),
           "--max-s", str(a["max_s"]), "--seed", str(a["seed"])] + (["--augment"] if a["augment"] else [])
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"synth.py {split} {start}+{count} failed:\n{r.stderr[-2000:]}")
    t["render"] = time.time() - t0
    for i in range(start, start + count):
        clip = os.path.join(out, f"{split}-{i:05d}")
        webm, raw, head = clip + ".webm", clip + ".npz", clip + ".head.npz"
        with open(clip + ".json") as f:
            t["media_s"] += json.load(f)["duration_s"]
        t["clips"] += 1
        if not newer(raw, webm):
            t0 = time.time()
            part = clip + ".part.npz"
            r = subprocess.run([a["bin"], "extract", webm, "--out", part],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "RUST_LOG": "warn"})
            if r.returncode != 0:
                raise RuntimeError(f"tspm-edge extract {webm} failed:\n{r.stderr[-2000:]}")
            os.replace(part, raw)
            t["extract"] += time.time() - t0
        if not newer(head, raw):
            t0 = time.time()
            head_inputs(raw, head)
            t["merge"] += time.time() - t0
    return split, start, count, t


def clips_step(a, counts):
    jobs = []
    for split in SPLITS:
        for start in range(0, counts[split], a["chunk"]):
            jobs.append((split, start, min(a["chunk"], counts[split] - start), a))
    if not jobs:
        return {}
    total = sum(counts.values())
    log(f"clips: {total} ({', '.join(f'{s} {counts[s]}' for s in SPLITS)}), {len(jobs)} chunks of "
        f"<= {a['chunk']}, {a['jobs']} workers: render (synth.py) -> extract ({a['bin']}) -> merge")
    sums = {"render": 0.0, "extract": 0.0, "merge": 0.0, "media_s": 0.0, "clips": 0}
    t_start = time.time()
    with ProcessPoolExecutor(max_workers=a["jobs"]) as ex:
        futs = [ex.submit(do_chunk, j) for j in jobs]
        for fut in as_completed(futs):
            split, start, count, t = fut.result()
            for k in sums:
                sums[k] += t[k]
            done, wall = sums["clips"], time.time() - t_start
            eta = wall / done * (total - done)
            log(f"{split} {start}..{start + count - 1} done ({t['media_s']:.0f} media s: render "
                f"{t['render']:.0f} s, extract {t['extract']:.0f} s, merge {t['merge']:.0f} s); "
                f"{done}/{total} clips, {wall / 60:.1f} min, ~{eta / 60:.1f} min left")
    wall = time.time() - t_start
    log(f"clips: {sums['clips']} clips, {sums['media_s'] / 60:.1f} media min in {wall / 60:.1f} min "
        f"wall; worker time render {sums['render'] / 60:.1f} min, extract "
        f"{sums['extract'] / 60:.1f} min, merge {sums['merge'] / 60:.1f} min")
    return dict(wall_s=wall, **sums)


# ---------------------------------------------------------------- questions, prompts, text

def questions_step(a, split):
    out = os.path.join(a["data"], f"{split}.questions.json")
    clip_dir = os.path.join(a["data"], "clips", split)
    gts = glob.glob(os.path.join(clip_dir, f"{split}-*.json"))
    if os.path.exists(out) and all(newer(out, g) for g in gts) and newer(out, os.path.join(HERE, "questions.py")):
        return out
    r = subprocess.run([sys.executable, os.path.join(HERE, "questions.py"), clip_dir, "--out", out,
                        "--per-template", str(a["per_template"]), "--seed", str(a["seed"])],
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"questions.py failed:\n{r.stderr[-2000:]}")
    log(f"questions {split}: {r.stderr.strip().splitlines()[0]}")
    return out


def prompts_step(a, qfile):
    r = subprocess.run([a["prompts_bin"], "prompts", qfile], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{a['prompts_bin']} prompts {qfile} failed:\n{r.stderr[-2000:]}")
    return {p["question_id"]: p for p in map(json.loads, r.stdout.splitlines())}


class MiniLM:
    """MiniLM sentence embeddings as src/model/text.rs makes them: the shipped tokenizer.json
    truncated and padded to L = 32, minilm.fp32.onnx (mean pooling and L2 norm in the graph)."""

    def __init__(self, model_dir, threads=1):
        import onnxruntime as ort
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "minilm_tokenizer.json"))
        self.tok.enable_truncation(max_length=TEXT_L)
        self.tok.enable_padding(length=TEXT_L, pad_id=0, pad_token="[PAD]")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(os.path.join(model_dir, "minilm.fp32.onnx"), so,
                                         providers=["CPUExecutionProvider"])

    def embed(self, texts, batch=64):
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok.encode_batch(texts[i:i + batch])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            out.append(self.sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


def text_step(a, texts):
    path = os.path.join(a["data"], "text.npz")
    have = {}
    if os.path.exists(path):
        d = np.load(path)
        have = dict(zip(d["texts"].tolist(), d["emb"]))
    todo = sorted(set(texts) - set(have))
    if todo:
        t0 = time.time()
        emb = MiniLM(a["model_dir"]).embed(todo)
        have.update(zip(todo, emb))
        log(f"text: embedded {len(todo)} new sentences in {time.time() - t0:.1f} s")
    keys = sorted(have)
    np.savez(path[:-4] + ".part.npz", texts=np.array(keys), emb=np.stack([have[k] for k in keys]))
    os.replace(path[:-4] + ".part.npz", path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_dir())
    ap.add_argument("--model-dir", default=default_model_dir())
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--min-s", type=int, default=10)
    ap.add_argument("--max-s", type=int, default=30)
    ap.add_argument("--per-template", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--augment", action="store_true",
                    help="synth.py --augment: random equaliser and picture looks in the training split "
                         "(clips that exist are kept: use a fresh --data DIR)")
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--bin", default=os.environ.get("TSPM_EDGE_BIN", os.path.join(REPO, "target", "release", "tspm-edge")),
                    help="tspm-edge binary for `extract`")
    ap.add_argument("--prompts-bin", default=None,
                    help="tspm-edge binary for `prompts` (default: --bin if it has the subcommand, "
                         "else target/debug/tspm-edge)")
    args = ap.parse_args()
    a = dict(vars(args))
    a["data"] = os.path.abspath(os.path.expanduser(a["data"]))
    for key in ("bin", "prompts_bin"):
        if a[key]:
            a[key] = os.path.abspath(a[key])
    if not os.path.exists(a["bin"]):
        sys.exit(f"make_dataset: {a['bin']} not found (cargo build --release)")
    if a["prompts_bin"] is None:
        ok = subprocess.run([a["bin"], "prompts", "--help"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode == 0
        a["prompts_bin"] = a["bin"] if ok else os.path.join(REPO, "target", "debug", "tspm-edge")
    os.makedirs(a["data"], exist_ok=True)
    t_all = time.time()
    counts = {"train": args.train, "val": args.val, "test": args.test}
    stats = {"args": {k: v for k, v in a.items()}, "counts": counts}
    stats["clips"] = clips_step(a, counts)

    texts, per_split = set(), {}
    for split in SPLITS:
        if not counts[split]:
            continue
        qfile = questions_step(a, split)
        with open(qfile) as f:
            records = json.load(f)
        prompted = prompts_step(a, qfile)
        per_split[split] = (records, prompted)
        for p in prompted.values():
            texts.update((p["question"], p["prompt"]))
    text_step(a, sorted(texts))

    answers = [ln.strip() for ln in open(os.path.join(MODELS, "answers.txt")) if ln.strip()]
    for split, (records, prompted) in per_split.items():
        path = os.path.join(a["data"], f"{split}.jsonl")
        with open(path + ".part", "w") as f:
            for r in records:
                p = prompted[r["question_id"]]
                assert p["template_id"] == r["template_id"], (r, p)
                clip = os.path.join(a["data"], "clips", split, r["clip_id"])
                line = {"clip_id": r["clip_id"], "npz": clip + ".npz", "head_npz": clip + ".head.npz",
                        "question_id": r["question_id"], "type": json.loads(r["type"]),
                        "template_id": r["template_id"], "question_content": r["question_content"],
                        "templ_values": json.loads(r["templ_values"]), "question": p["question"],
                        "prompt": p["prompt"], "answer": r["anser"],
                        "answer_index": answers.index(r["anser"])}
                f.write(json.dumps(line) + "\n")
        os.replace(path + ".part", path)
        log(f"{split}: {len(records)} questions over {len({r['clip_id'] for r in records})} clips -> {path}")
    stats["wall_s"] = time.time() - t_all
    with open(os.path.join(a["data"], "dataset.json"), "w") as f:
        json.dump(stats, f, indent=1)
    log(f"done in {stats['wall_s'] / 60:.1f} min -> {a['data']}")


if __name__ == "__main__":
    main()
