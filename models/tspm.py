"""TSPM answer head (spec/tspm.md §2) in PyTorch, written for a clean ONNX graph that tract runs.

Design, in forward order (H = 512, k = 10):

1. Input projections: one Linear per input to H (audio, visual, patch tokens, question, prompt).
   Patch tokens are projected *after* the top-k gather (a per-token Linear commutes with the
   gather): only k*N tokens are projected instead of T*N.
2. AV layer (shared weights, used twice): x + CrossAttn(x, other) + SelfAttn(x) -> LN ->
   + FFN(H->512->H, ReLU) -> LN; 1 head each. a_av = AV(a, v), v_av = AV(v, a).
3. TPM: projected prompt queries a 4-head attention over projected visual; the head-averaged
   weights [B,T] rank the seconds; top-k (constant k), indices sorted ascending (time order);
   a_k / v_k = projected audio / visual gathered at those indices. The attention output goes
   through + FFN -> LN as the spec says but is unused downstream (dead in the ONNX graph).
4. SPM: per selected second, its N projected tokens: 1-head self-attention block (+ SelfAttn ->
   LN -> + FFN -> LN), then that second's a_k queries a 4-head attention over the tokens,
   + FFN(H->H->H, ReLU) -> LN: v_sp [B,k,H].
5. QTG: projected question queries one shared 4-head attention + FFN + LN over a_k (-> a_q) and
   over v_sp (-> v_q).
6. Fusion: concat [a_q, mean_T(a_av), mean_k(a_k), v_q, mean_T(v_av), mean_k(v_sp)] -> tanh ->
   Linear(6H->H) -> * projected question -> tanh -> Linear(H->A).

"Query blocks" (TPM, SPM cross, QTG): x = q + Attn(q, kv); out = LN(x + FFN(x)) -- the spec's
"+ FFN -> LN" read literally (one LayerNorm). The AV layer and the SPM self block have two.

Validity mask (deployment addition), `valid` [B,T] float, > 0.5 = real second:
- audio / visual of invalid seconds are replaced by 0 before anything else (so NaN or garbage
  there cannot leak through 0-weight attention rows: 0 * NaN = NaN);
- invalid seconds are keys with score -inf in the AV attentions and the TPM attention, and -inf
  before the top-k; means over T skip them;
- fewer than k valid seconds: the top-k takes all valid seconds first; the remaining slots are
  padding. Slots are ordered: real slots first (ascending time), then padding; a padding slot
  repeats the index of slot 0 (the earliest selected second), so every gather reads a real second.
  Padding slots are masked out of the QTG attention and of mean_k. Real slots = min(k, #valid).
- at least one valid second is required (else the softmaxes see only -inf and give NaN): the
  caller must refuse ("not enough seconds yet").
With `valid` all ones the outputs equal the unmasked head (valid=None).

Attention is written with MatMul / Softmax / Where (no nn.MultiheadAttention) so that the
exported graph uses only MatMul, Add, Mul, Softmax, Where, LayerNormalization, TopK (constant
k), Gather, GatherElements (on the [B,k] indices only), CumSum, Reshape, Transpose,
ReduceSum/Mean, Tanh, Relu, Concat, Slice, Cast.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Our encoders (spec §1): YAMNet 1024, EfficientNet-Lite0 pooled 1280 and 14 merged tokens of
# 1280, MiniLM-L6 384 for question and prompt.
POS_FREQS = 4
POS_FEATURES = 2 + 4 * POS_FREQS


def patch_position_features(pos, side=7):
    """pos [..., 2] (y, x in grid units 0..side-1) -> [..., POS_FEATURES]: the position scaled
    to 0..1 and sin / cos of it at POS_FREQS octaves."""
    p = pos / float(side - 1)
    feats = [p]
    for i in range(POS_FREQS):
        w = math.pi * (2 ** i)
        feats += [torch.sin(w * p), torch.cos(w * p)]
    return torch.cat(feats, dim=-1)


OUR_DIMS = dict(d_audio=1024, d_visual=1280, d_patch=1280, d_question=384, d_prompt=384)
# The paper's: VGGish 128, CLIP ViT-L/14 image 768, ViT-L/16 tokens 1024, CLIP text 768.
PAPER_DIMS = dict(d_audio=128, d_visual=768, d_patch=1024, d_question=768, d_prompt=768)

NEG_INF = float("-inf")


def read_answers(path):
    """Answer vocabulary: one answer per line, logits index = line index (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


class Attention(nn.Module):
    """Multi-head attention with explicit ops. Returns (output [B,Lq,H], weights [B,Lq,Lk]
    averaged over heads). `key_mask`: bool [B,Lk] (True = usable key) or None."""

    def __init__(self, h, heads):
        super().__init__()
        assert h % heads == 0
        self.heads, self.d = heads, h // heads
        self.q = nn.Linear(h, h)
        self.k = nn.Linear(h, h)
        self.v = nn.Linear(h, h)
        self.o = nn.Linear(h, h)

    def _split(self, x):  # [B,L,H] -> [B,heads,L,d]
        return x.reshape(x.shape[0], -1, self.heads, self.d).transpose(1, 2)

    def forward(self, query, kv, key_mask=None):
        q = self._split(self.q(query) * (1.0 / math.sqrt(self.d)))
        k = self._split(self.k(kv))
        v = self._split(self.v(kv))
        scores = torch.matmul(q, k.transpose(-1, -2))  # [B,heads,Lq,Lk]
        if key_mask is not None:
            scores = torch.where(key_mask[:, None, None, :], scores,
                                 torch.tensor(NEG_INF, dtype=scores.dtype))
        w = torch.softmax(scores, dim=-1)
        out = torch.matmul(w, v).transpose(1, 2)  # [B,Lq,heads,d]
        out = out.reshape(out.shape[0], -1, self.heads * self.d)
        return self.o(out), w.mean(dim=1)


class FFN(nn.Module):
    def __init__(self, h, hidden, dropout):
        super().__init__()
        self.l1 = nn.Linear(h, hidden)
        self.l2 = nn.Linear(hidden, h)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.l2(self.drop(F.relu(self.l1(x)))))


class AVLayer(nn.Module):
    """x + CrossAttn(x, other) + SelfAttn(x) -> LN -> + FFN(H->512->H) -> LN; 1 head each."""

    def __init__(self, h, dropout, ffn=512):
        super().__init__()
        self.cross = Attention(h, 1)
        self.self_attn = Attention(h, 1)
        self.ln1 = nn.LayerNorm(h)
        self.ffn = FFN(h, ffn, dropout)
        self.ln2 = nn.LayerNorm(h)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, other, key_mask=None):
        c, _ = self.cross(x, other, key_mask)
        s, _ = self.self_attn(x, x, key_mask)
        x = self.ln1(x + self.drop(c) + self.drop(s))
        return self.ln2(x + self.ffn(x))


class SelfBlock(nn.Module):
    """SPM token block: + SelfAttn -> LN -> + FFN -> LN (1 head, no mask: tokens are all real)."""

    def __init__(self, h, dropout):
        super().__init__()
        self.attn = Attention(h, 1)
        self.ln1 = nn.LayerNorm(h)
        self.ffn = FFN(h, h, dropout)
        self.ln2 = nn.LayerNorm(h)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        a, _ = self.attn(x, x)
        x = self.ln1(x + self.drop(a))
        return self.ln2(x + self.ffn(x))


class QueryBlock(nn.Module):
    """q + Attn(q, kv) -> + FFN(H->H->H, ReLU) -> LN (4 heads). Used by TPM, SPM, QTG."""

    def __init__(self, h, heads, dropout):
        super().__init__()
        self.attn = Attention(h, heads)
        self.ffn = FFN(h, h, dropout)
        self.ln = nn.LayerNorm(h)
        self.drop = nn.Dropout(dropout)

    def forward(self, q, kv, key_mask=None):
        a, w = self.attn(q, kv, key_mask)
        x = q + self.drop(a)
        return self.ln(x + self.ffn(x)), w


def masked_mean(x, m):
    """Mean of x [B,L,H] over L where m [B,L] (float 0/1) is 1."""
    return (x * m.unsqueeze(-1)).sum(dim=1) / m.sum(dim=1, keepdim=True)


def batch_gather(x, idx):
    """x [B,L,...], idx [B,k] int64 -> [B,k,...] (GatherElements in ONNX). For training; the
    exported graphs use gather_rows, which gives the same values."""
    shape = idx.shape + x.shape[2:]
    full = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand(shape)
    return torch.gather(x, 1, full)


def gather_rows(x, idx):
    """batch_gather as one ONNX Gather over the flattened [B*L,...] rows at idx + b*L.
    GatherElements reads one index per output value (k*4110 of them for the packed rows: 55 %
    of tract's question part, `bench --profile`); a row Gather copies k rows. The offsets b*L
    are computed in float from data, not from shapes: tract turns integer arithmetic on shapes
    into symbolic dims (see the TopK note in TSPMHead.forward); exact below 2^24."""
    ones = torch.ones_like(x.reshape(x.shape[0], x.shape[1], -1)[:, :, 0])  # [B,L]
    length = ones[:1].sum(dim=1, keepdim=True)  # [1,1] = L
    base = (torch.cumsum(ones[:, :1], dim=0) - 1.0) * length  # [B,1] = b*L
    flat_idx = (idx.to(x.dtype) + base).to(torch.int64).reshape(-1)  # [B*k]
    rows = x.reshape((-1,) + tuple(x.shape[2:]))[flat_idx]  # [B*k,...]
    return rows.reshape(idx.shape + tuple(x.shape[2:]))


def split_heads(x, attn):
    """[B,L,H] -> [B,heads,L,d] for `attn` (an Attention)."""
    return x.reshape(x.shape[0], -1, attn.heads, attn.d).transpose(1, 2)


def attend_projected(attn, query, k_proj, v_proj, key_mask):
    """Attention.forward with the key / value Linears already applied to kv (they commute
    with gathers over time, so callers project once and gather the projections)."""
    return attend_qkv(attn, attn.q(query), k_proj, v_proj, key_mask)


def attend_qkv(attn, q_proj, k_proj, v_proj, key_mask):
    """Attention.forward with all three input Linears already applied (q_proj = attn.q(query),
    unscaled): per-position projections can be computed once per second and kept."""
    q = split_heads(q_proj * (1.0 / math.sqrt(attn.d)), attn)
    k, v = split_heads(k_proj, attn), split_heads(v_proj, attn)
    scores = torch.matmul(q, k.transpose(-1, -2))
    if key_mask is not None:
        scores = torch.where(key_mask[:, None, None, :], scores,
                             torch.tensor(NEG_INF, dtype=scores.dtype))
    w = torch.softmax(scores, dim=-1)
    out = torch.matmul(w, v).transpose(1, 2)
    out = out.reshape(out.shape[0], -1, attn.heads * attn.d)
    return attn.o(out), w.mean(dim=1)


def query_block_projected(block, q, k_proj, v_proj, key_mask):
    """QueryBlock.forward with projected keys / values."""
    a, _ = attend_projected(block.attn, q, k_proj, v_proj, key_mask)
    x = q + block.drop(a)
    return block.ln(x + block.ffn(x))


def select_masked(w, m, k):
    """TSPMHead.forward's selection with a validity mask: w [B,T] temporal weights, m [B,T]
    bool -> sel [B,k] int64 (real seconds first in ascending time, padding repeats slot 0)
    and sel_ok [B,k] bool."""
    mf = m.to(w.dtype)
    score = torch.where(m, w, torch.tensor(NEG_INF, dtype=w.dtype))
    _, top = torch.topk(score, k, dim=1)
    top_valid = torch.gather(mf, 1, top)
    key = top.to(w.dtype) + (1.0 - top_valid) * float(1 << 20)
    _, pos = torch.topk(key, k, dim=1, largest=False)
    sel = torch.gather(top, 1, pos)
    sel_ok = torch.gather(top_valid, 1, pos) > 0.5
    return torch.where(sel_ok, sel, sel[:, :1]), sel_ok


class TSPMHead(nn.Module):
    def __init__(self, n_answers, d_audio=1024, d_visual=1280, d_patch=1280, d_question=384,
                 d_prompt=384, hidden=512, k=10, dropout=0.1):
        super().__init__()
        h = hidden
        self.k = k
        self.proj_audio = nn.Linear(d_audio, h)
        self.proj_visual = nn.Linear(d_visual, h)
        self.proj_patch = nn.Linear(d_patch, h)
        self.proj_question = nn.Linear(d_question, h)
        self.proj_prompt = nn.Linear(d_prompt, h)
        self.av = AVLayer(h, dropout)
        self.tpm = QueryBlock(h, 4, dropout)
        self.spm_self = SelfBlock(h, dropout)
        self.spm_cross = QueryBlock(h, 4, dropout)
        self.qtg = QueryBlock(h, 4, dropout)
        self.fuse = nn.Linear(6 * h, h)
        self.answer = nn.Linear(h, n_answers)
        self.drop = nn.Dropout(dropout)
        self.time_slots = False  # enable_time_slots() adds them

    def enable_time_slots(self):
        """Adds the time-slot embeddings (a deviation from spec §2, off by default): one
        learned [H] vector per slot of the k selected seconds, audio and SPM rows apart, added
        to the QTG's keys and values (not to the means). The spec'd head is invariant to the
        order of the seconds (the QTG attention and the means ignore it), so it cannot tell
        which instrument came first; with the slots it can, as the selected seconds are kept
        in time order. Zero-initialised: zeros give the spec'd head exactly."""
        if not self.time_slots:
            h = self.proj_audio.out_features
            self.qtg_slots = nn.Parameter(torch.zeros(2, self.k, h))
            self.time_slots = True
        return self

    def enable_patch_positions(self):
        """Adds a patch-position embedding (a deviation from spec §2, off by default): each
        merged token's mean grid position (token merging's `positions`, [y, x] on the 7x7
        grid) through patch_position_features and one Linear, added to the projected token.
        The spec'd SPM sees the tokens as a set, so where an instrument stands (left, middle,
        right) reaches the head only through what the CNN's features happen to keep of it.
        Zero-initialised: zeros give the spec'd head exactly."""
        if not hasattr(self, "pos_patch"):
            self.pos_patch = nn.Linear(POS_FEATURES, self.proj_patch.out_features)
            nn.init.zeros_(self.pos_patch.weight)
            nn.init.zeros_(self.pos_patch.bias)
        return self

    def project_patches(self, patches, positions=None):
        """proj_patch, plus the position embedding when the head has one."""
        tok = self.proj_patch(patches)
        if positions is not None and hasattr(self, "pos_patch"):
            tok = tok + self.pos_patch(patch_position_features(positions))
        return tok

    def slot_kv(self, which, n_sel):
        """The slot embedding's share of the QTG keys and values for slot set `which` (0 audio,
        1 SPM) over n_sel selected seconds, [n_sel,H] each (k(x + s) = k(x) + s Wk^T, no bias
        twice); None when the head has no slots or the selection is not k seconds (the
        all-seconds ablation)."""
        if not self.time_slots or n_sel != self.k:
            return None
        s = self.qtg_slots[which]
        attn = self.qtg.attn
        return s @ attn.k.weight.t(), s @ attn.v.weight.t()

    def forward(self, audio, visual, patches, question, prompt, valid=None, positions=None):
        """audio [B,T,Da], visual [B,T,Dv], patches [B,T,N,Dp], question [B,Dq], prompt [B,Dp'],
        valid [B,T] float (> 0.5 = real second) or None (all real).
        Returns logits [B,A], temporal_weights [B,T], selected [B,k] int64, spm_attention [B,k,N].
        """
        k = self.k
        if valid is not None:
            m = valid > 0.5  # bool [B,T]
            mf = m.to(audio.dtype)
            zero = torch.tensor(0.0, dtype=audio.dtype)
            audio = torch.where(m.unsqueeze(-1), audio, zero)
            visual = torch.where(m.unsqueeze(-1), visual, zero)
        else:
            m = mf = None

        a = self.proj_audio(audio)  # [B,T,H]
        v = self.proj_visual(visual)
        q1 = self.proj_question(question)  # [B,H]
        q = q1.unsqueeze(1)  # [B,1,H]
        p = self.proj_prompt(prompt).unsqueeze(1)

        # AV attention, shared layer used twice.
        a_av = self.av(a, v, m)
        v_av = self.av(v, a, m)

        # TPM: prompt over projected visual; head-averaged weights rank the seconds.
        _tpm_out, w = self.tpm(p, v, m)  # output unused downstream (spec §2.3)
        w = w[:, 0]  # [B,T]  (indexing, not squeeze: squeeze exports as an If)
        score = w if m is None else torch.where(m, w, torch.tensor(NEG_INF, dtype=w.dtype))
        _, top = torch.topk(score, k, dim=1)  # [B,k], by weight
        # Sort the k picks by time with a second TopK (smallest first) on a float key: tract
        # types int64 arithmetic on indices as shape math (TDim) and its TopK then refuses it,
        # so the key is built in f32 (exact: indices < 2^20).
        if m is None:
            key = top.to(audio.dtype)
        else:
            top_valid = torch.gather(mf, 1, top)  # 1 = a real second
            # real seconds first in ascending time, then the padding picks (invalid seconds)
            key = top.to(audio.dtype) + (1.0 - top_valid) * float(1 << 20)
        _, pos = torch.topk(key, k, dim=1, largest=False)
        sel = torch.gather(top, 1, pos)  # [B,k] int64
        if m is None:
            sv = sel_ok = None
        else:
            sel_ok = torch.gather(top_valid, 1, pos) > 0.5
            sel = torch.where(sel_ok, sel, sel[:, :1])  # padding repeats slot 0
            sv = sel_ok.to(audio.dtype)  # [B,k]

        a_k = gather_rows(a, sel)  # [B,k,H]
        _v_k = gather_rows(v, sel)  # gathered as the spec says; no downstream use in §2
        pk = gather_rows(patches, sel)  # [B,k,N,Dp] raw tokens of the selected seconds
        n_tok = pk.shape[2]
        pos_k = None if positions is None else gather_rows(positions, sel)  # [B,k,N,2]
        tok = self.project_patches(pk, pos_k).reshape(-1, n_tok, a.shape[-1])  # [B*k,N,H]

        # SPM
        tok = self.spm_self(tok)
        v_sp, w_sp = self.spm_cross(a_k.reshape(-1, 1, a.shape[-1]), tok)  # [B*k,1,H],[B*k,1,N]
        v_sp = v_sp.reshape(-1, k, a.shape[-1])  # [B,k,H]
        spm_attention = w_sp.reshape(-1, k, n_tok)

        # QTG (shared block); with time slots, each selected second's slot vector joins its
        # keys and values (the means below stay without it).
        if self.time_slots and k == self.qtg_slots.shape[1]:
            a_q, _ = self.qtg(q, a_k + self.qtg_slots[0], sel_ok)
            v_q, _ = self.qtg(q, v_sp + self.qtg_slots[1], sel_ok)
        else:
            a_q, _ = self.qtg(q, a_k, sel_ok)
            v_q, _ = self.qtg(q, v_sp, sel_ok)

        if m is None:
            a_mean_t, v_mean_t = a_av.mean(dim=1), v_av.mean(dim=1)
            a_mean_k, v_mean_k = a_k.mean(dim=1), v_sp.mean(dim=1)
        else:
            a_mean_t, v_mean_t = masked_mean(a_av, mf), masked_mean(v_av, mf)
            a_mean_k, v_mean_k = masked_mean(a_k, sv), masked_mean(v_sp, sv)

        f = torch.cat([a_q[:, 0], a_mean_t, a_mean_k, v_q[:, 0], v_mean_t, v_mean_k],
                      dim=-1)  # [B,6H]
        f = self.fuse(self.drop(torch.tanh(f)))
        f = f * q1
        logits = self.answer(self.drop(torch.tanh(f)))
        return logits, w, sel, spm_attention


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def param_breakdown(model):
    out = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        out[top] = out.get(top, 0) + p.numel()
    return out


if __name__ == "__main__":
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    answers = read_answers(os.path.join(here, "answers.txt"))
    for label, dims in (("ours", OUR_DIMS), ("paper", PAPER_DIMS)):
        mdl = TSPMHead(len(answers), **dims)
        print(f"TSPM head, {label} input dims "
              f"{'/'.join(str(dims[d]) for d in ('d_audio', 'd_visual', 'd_patch', 'd_question', 'd_prompt'))}"
              f", H=512, A={len(answers)}: {count_params(mdl):,} parameters")
        print("   ", ", ".join(f"{k} {v:,}" for k, v in param_breakdown(mdl).items()))
