"""Text embedding table for tspm-edge: every question and prompt the templates can make.

    ~/.cache/tspm-edge/venv/bin/python models/export_text_table.py [--model-dir DIR] [--force]

Why: a question must match one of the 33 templates, and every slot takes a value from a
closed vocabulary, so the set of texts the text encoder is ever asked to embed is finite:
22,808 distinct question texts and prompts. Embedding them once at build time turns the
text encoder into a lookup (microseconds, no MiniLM in the daemon's memory). The runtime
keeps the encoder for `models.text = "encoder"`.

Input: models/data/question_texts.txt.gz, one text per line, sorted: what
`tspm-edge prompts --all-texts` prints (a Rust test keeps the two equal), and the built
minilm.fp32.onnx + minilm_tokenizer.json (models/export_text.py).

Embeds with onnxruntime on that ONNX file (in batches of similar length; padding leaves the
embedding unchanged, and no text is longer than the 32 tokens the Rust side pins), and checks a sample against the transformers
reference (export_text.Reference). Stored as float16 (cosine to the float32 rows >= 0.99999,
checked here), half the size of float32.

Writes to DIR:
  text_table.f16             [rows, 384] little-endian float16, row i = line i of the keys
  text_table.txt             the texts (keys), one per line, as in the input
  manifest-text-table.toml   [text_table]: files, sha256, rows, dim, the encoder's sha256,
                             and the checks
A second run with the inputs unchanged only re-checks the files' hashes.
"""

import argparse
import gzip
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_text as T  # noqa: E402
from build import sha256  # noqa: E402
from realdata import log  # noqa: E402

TEXTS = os.path.join(HERE, "data", "question_texts.txt.gz")
TABLE = "text_table.f16"
KEYS = "text_table.txt"
MANIFEST = "manifest-text-table.toml"
BATCH = 128
REFERENCE_SAMPLE = 200
MIN_COSINE_F16 = 0.99999
MIN_COSINE_REFERENCE = 0.9999


def read_texts():
    with gzip.open(TEXTS, "rt", encoding="utf-8") as f:
        texts = f.read().split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    if texts != sorted(set(texts)):
        raise SystemExit(f"{TEXTS}: expected distinct texts, sorted, one per line")
    return texts


def tokenize(tokenizer_path, texts, length):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    truncated = sum(1 for e in enc if e.overflowing)
    return ids, mask, truncated


def stamp_of(d):
    return {
        "texts_sha256": sha256(TEXTS),
        "encoder_sha256": sha256(os.path.join(d, T.ONNX_FILE)),
        "tokenizer_sha256": sha256(os.path.join(d, T.TOKENIZER_FILE)),
    }


def read_manifest(path):
    import tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)["text_table"]


def up_to_date(d, stamp):
    path = os.path.join(d, MANIFEST)
    if not os.path.isfile(path):
        return False
    try:
        m = read_manifest(path)
    except Exception:
        return False
    if any(m.get(k) != v for k, v in stamp.items()):
        return False
    for key, name in (("sha256", TABLE), ("keys_sha256", KEYS)):
        p = os.path.join(d, name)
        if not os.path.isfile(p) or sha256(p) != m.get(key):
            return False
    return True


def build(d):
    texts = read_texts()
    onnx_path = os.path.join(d, T.ONNX_FILE)
    tokenizer_path = os.path.join(d, T.TOKENIZER_FILE)
    for p in (onnx_path, tokenizer_path):
        if not os.path.isfile(p):
            raise SystemExit(f"{p} is missing: build the text encoder first (models/build.py)")
    log(f"text table: {len(texts)} texts from {os.path.relpath(TEXTS, os.path.dirname(HERE))}")
    ids, mask, truncated = tokenize(tokenizer_path, texts, T.CHECK_L)
    if truncated:
        raise SystemExit(f"text table: {truncated} texts are longer than {T.CHECK_L} tokens")
    sess = T.ort_session(onnx_path, threads=os.cpu_count() or 1)
    out = np.zeros((len(texts), T.DIM), np.float32)
    started = time.time()
    # Batches of similar length, cut to their longest text: padding changes nothing but time.
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    for b, i in enumerate(range(0, len(texts), BATCH)):
        rows = order[i:i + BATCH]
        n = int(lengths[rows].max())
        out[rows] = T.ort_embed(sess, ids[rows, :n], mask[rows, :n])
        done = min(i + BATCH, len(texts))
        if done == len(texts) or b % 40 == 0:
            log(f"text table: {done}/{len(texts)} embedded ({time.time() - started:.0f} s)")
    norms = np.linalg.norm(out, axis=1)
    if not np.all(np.abs(norms - 1) < 1e-4):
        raise SystemExit(f"text table: embeddings not unit length ({norms.min()}..{norms.max()})")

    half = out.astype("<f2")
    back = half.astype(np.float32)
    cos_f16 = np.sum(back * out, axis=1) / np.linalg.norm(back, axis=1)
    if cos_f16.min() < MIN_COSINE_F16:
        raise SystemExit(f"text table: float16 rows reach cosine {cos_f16.min()} only")

    # The ONNX file against the transformers reference, on a spread of texts.
    ref = T.Reference()
    pick = np.linspace(0, len(texts) - 1, REFERENCE_SAMPLE).astype(int)
    ref_emb = ref.embed([texts[i] for i in pick])
    cos_ref = np.sum(ref_emb * back[pick], axis=1) / np.linalg.norm(back[pick], axis=1)
    log(f"text table: float16 vs float32 min cosine {cos_f16.min():.7f}; vs the transformers "
        f"reference on {len(pick)} texts min cosine {cos_ref.min():.7f}")
    if cos_ref.min() < MIN_COSINE_REFERENCE:
        raise SystemExit(f"text table: differs from the reference (cosine {cos_ref.min()})")

    tmp = os.path.join(d, TABLE + ".tmp")
    half.tofile(tmp)
    os.replace(tmp, os.path.join(d, TABLE))
    tmp = os.path.join(d, KEYS + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(t + "\n" for t in texts))
    os.replace(tmp, os.path.join(d, KEYS))
    return dict(rows=len(texts), min_cosine_f16=float(cos_f16.min()),
                reference_min_cosine=float(cos_ref.min()), reference_texts=len(pick),
                seconds=time.time() - started)


def write_manifest(d, stamp, checks):
    q = lambda v: '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    lines = [
        "# Written by models/export_text_table.py: the sentence embedding of every question",
        "# text and prompt the 33 templates make with their known slot values.",
        "[text_table]",
        f"file = {q(TABLE)}",
        f"sha256 = {q(sha256(os.path.join(d, TABLE)))}",
        f"keys = {q(KEYS)}",
        f"keys_sha256 = {q(sha256(os.path.join(d, KEYS)))}",
        f"rows = {checks['rows']}",
        f"dim = {T.DIM}",
        'dtype = "f16"',
        'encoder = "minilm.fp32"',
        f"encoder_sha256 = {q(stamp['encoder_sha256'])}",
        f"tokenizer_sha256 = {q(stamp['tokenizer_sha256'])}",
        f"texts_sha256 = {q(stamp['texts_sha256'])}",
        f"source = {q('onnxruntime on ' + T.ONNX_FILE + ', texts of at most ' + str(T.CHECK_L) + ' tokens, stored as float16')}",
        "[text_table.check]",
        f"min_cosine_f16_vs_f32 = {checks['min_cosine_f16']:.7f}",
        f"reference_min_cosine = {checks['reference_min_cosine']:.7f}",
        f"reference_texts = {checks['reference_texts']}",
        'reference = "transformers BertModel + mean pooling + normalize (models/export_text.py)"',
    ]
    tmp = os.path.join(d, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(d, MANIFEST))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=os.environ.get(
        "TSPM_MODEL_DIR", os.path.expanduser("~/.cache/tspm-edge/models")))
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args()
    d = os.path.abspath(args.model_dir)
    stamp = stamp_of(d)
    if not args.force and up_to_date(d, stamp):
        log(f"text table: up to date ({os.path.join(d, MANIFEST)})")
        return
    checks = build(d)
    write_manifest(d, stamp, checks)
    log(f"text table: {checks['rows']} rows written to {os.path.join(d, TABLE)} "
        f"in {checks['seconds']:.0f} s")


if __name__ == "__main__":
    main()
