"""The TSPM head (models/tspm.py) cut into the three parts the runtime runs at different rates.

Most of the head's work does not depend on the question:

- **second** (once per one-second segment, when it enters the window): everything that reads
  only that second — the input projections, the SPM (token self-attention, then the second's
  audio querying its merged tokens), the TPM keys of the visual feature, the QTG key / value
  projections of the second's audio and SPM output, and the AV layer's query and value
  projections of the second's audio and visual, with each one-head attention's key projection
  folded into its query (query_key) and its output projection into its value (value_output).
  Of the AV layer's 20 weight matmuls over a window, 8 run once per second instead of once per
  window version per second, 8 are folded away, and the window part keeps the FFN's 4.
  Output: one packed row of F values.
- **window** (once per window version, whatever the number of questions): the AV layer's
  attention over all seconds from the precomputed projections, its FFN and norms, its means
  over the valid seconds, and those means' share of the fusion layer (FUSE_CONTEXT_BLOCKS).
  Output: the context [H].
- **question** (per question): the prompt's TPM attention over the precomputed keys, the top-k
  selection, the QTG attention of the question over the selected seconds' precomputed keys and
  values (the question projected once for both sets, query_blocks), and the fusion layer's
  other blocks plus the context, then the answer MLP.

Composed, the parts compute exactly TSPMHead.forward (same weights, same masking rules; checked
by models/export_head_parts.py to float rounding). Values in the rows of invalid seconds never
reach an output (they are masked keys, excluded from the means, never selected), so the runtime
may leave zeros there.

Packed row layout (H = 512, N_TOK = 14, F = 16H + 14 = 8206), in order:
    tpm_k    tpm.attn.k(v)                                        [0, H)
    v_sp     SPM output (spm_cross(a, spm_self(proj_patch(patches))))
    qtg_ka   qtg.attn.k(a)
    qtg_va   qtg.attn.v(a)
    qtg_ks   qtg.attn.k(v_sp)
    qtg_vs   qtg.attn.v(v_sp)                                     [5H, 6H)
    spm_w    the SPM attention of the second's audio over its 14 merged tokens
    a        proj_audio(audio)                                    [6H+14, 7H+14)
    v        proj_visual(visual)
    the AV layer's folded projections for the audio queries: query_key(av.cross)(a),
             value_output(av.cross)(v), query_key(av.self_attn)(a),
             value_output(av.self_attn)(a) (the keys are a and v themselves)
    the same for the visual queries (a and v swapped)             ends at F
The question part reads the row's first Q_WIDTH = 7H + 14 values (tpm_k .. a), the window part
its last W_WIDTH = 10H (a .. the end): each part is given only its own columns, so the runtime
copies less into each run (the two ranges share `a`).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tspm import NEG_INF, gather_rows, masked_mean, select_masked, split_heads

N_SLOTS = 16  # H-wide slots in a packed row (plus the N_TOK SPM weights)
Q_SLOTS = 7  # the question part's H-wide slots (tpm_k .. qtg_vs, then a after the SPM weights)
W_SLOTS = 10  # the window part's: a, v and the AV layer's 8 folded projections
# The window part's softmax rows are padded to a multiple of this many keys (masked, so the
# weights are unchanged): tract 0.23.9 has no whole-row softmax kernel on x86, and its per-row
# kernels run a row's tail past the last full 16 lanes separately: a [2,1,60,60] Softmax took
# 0.090 ms, padded to [2,1,60,64] 0.035 (bench --profile, fp32 window part 2.02 -> 1.91 ms).
KEY_ALIGN = 16


def value_output(attn):
    """(weight [H,H], bias [H]) of attn.o applied after attn.v, as one Linear: o(v(x)) =
    x (Wo Wv)^T + (Wo bv + bo), computed in float64. For a one-head attention, o(P v(X)) =
    P o(v(X)) whenever the weights P of each query sum to 1 (a softmax over at least one usable
    key), so storing o(v(x)) per second (or per token) removes the output projection from the
    part that attends: two [2T, H] x [H, H] matmuls per window version, one [14, H] x [H, H] per
    second."""
    assert attn.heads == 1, "the output projection commutes with the attention only for 1 head"
    wo, bo = attn.o.weight.detach().double(), attn.o.bias.detach().double()
    wv, bv = attn.v.weight.detach().double(), attn.v.bias.detach().double()
    return (wo @ wv).float().contiguous(), (wo @ bv + bo).float().contiguous()


def query_key(attn):
    """(weight [H,H], bias [H]) of attn.q followed by the key projection's transpose, as one
    Linear: q(x) Wk = x (Wk^T Wq)^T + Wk^T bq, computed in float64. For one head,
    q(x_i) . k(y_j) = (q(x_i) Wk) . y_j + q(x_i) . bk, and the last term is the same for every
    key j of query i, which a softmax over j cancels: the attention's weights come from this
    folded query and the raw key inputs, so no key projection runs at all."""
    assert attn.heads == 1, "the key projection folds into the query only for 1 head"
    wq, bq = attn.q.weight.detach().double(), attn.q.bias.detach().double()
    wk = attn.k.weight.detach().double()
    return (wk.T @ wq).float().contiguous(), (wk.T @ bq).float().contiguous()


# The one-head attentions whose output projection runs folded into their values (value_output)
# and whose key projection runs folded into their queries (query_key): the AV layer's two (per
# second, in the packed row) and the SPM token self-attention.
FOLDED = ("av.cross", "av.self_attn", "spm_self.attn")


def folded(head):
    """{attention module name: {"qk": query_key(attention), "vo": value_output(attention)}}
    for FOLDED."""
    mods = dict(head.named_modules())
    return {name: {"qk": query_key(mods[name]), "vo": value_output(mods[name])}
            for name in FOLDED}


def folded_linears(head):
    """folded(head) as Linear modules, keyed "<attention>.qk" / "<attention>.vo" with the dots
    as "_" (ModuleDict keys): as parameters they export as initializers, which
    models/quantize_parts.py recognises as weights (a tensor computed in forward would export
    as a Constant node and stay float)."""
    out = nn.ModuleDict()
    for name, f in folded(head).items():
        for kind, (w, b) in f.items():
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            out[f"{name}.{kind}".replace(".", "_")] = lin.requires_grad_(False)
    return out


def av_projections(x, other, fl):
    """The AV layer's folded projections for x querying other (fl: folded_linears(head)): the
    cross attention's query-key of x and value-output of other, the self attention's of x. The
    keys are the raw inputs (other, x), which the row already holds."""
    return [fl["av_cross_qk"](x), fl["av_cross_vo"](other),
            fl["av_self_attn_qk"](x), fl["av_self_attn_vo"](x)]


def row_len(h, n_tok):
    return N_SLOTS * h + n_tok


def question_width(h, n_tok):
    return Q_SLOTS * h + n_tok


def window_width(h):
    return W_SLOTS * h


def question_rows(packed, h, n_tok):
    """The question part's input: the first question_width values of each row (torch or
    numpy; numpy comes back contiguous, as onnxruntime wants it)."""
    out = packed[..., :question_width(h, n_tok)]
    return out if isinstance(out, torch.Tensor) else out.copy()


def window_rows(packed, h):
    """The window part's input: the last window_width values of each row."""
    out = packed[..., packed.shape[-1] - window_width(h):]
    return out if isinstance(out, torch.Tensor) else out.copy()


# The fusion layer `fuse` reads tanh of six H-wide blocks: [a_q, ctx_a, mean_a, v_q, ctx_v,
# mean_v]. Its output is the sum of each block's slice of the weight applied to that block, so
# the two context blocks (the same for every question) are applied once per window, in the
# window part, and the question part applies only the other four.
FUSE_CONTEXT_BLOCKS = (1, 4)
FUSE_QUESTION_BLOCKS = (0, 2, 3, 5)


def fuse_columns(head, blocks):
    """The columns of fuse.weight [H, 6H] that read `blocks`, as one [H, len(blocks) * H]."""
    hid = head.proj_audio.out_features
    w = head.fuse.weight.detach()
    return torch.cat([w[:, b * hid:(b + 1) * hid] for b in blocks], dim=1).contiguous()


def derived_weights(head):
    """{name: weight [out, in]} of the matrices the parts apply that are not a Linear of the
    head: the fusion layer's column blocks, the query Linears with their attention's key
    projection folded in and the value Linears with its output projection folded in (named for
    the query / value Linear: its quantisation recipe applies).
    models/quantize_parts.py identifies weight MatMuls by their matrix."""
    out = {"fuse": [fuse_columns(head, FUSE_CONTEXT_BLOCKS),
                    fuse_columns(head, FUSE_QUESTION_BLOCKS)]}
    for name, f in folded(head).items():
        out[name + ".q"] = [f["qk"][0]]
        out[name + ".v"] = [f["vo"][0]]
    return out


def rows2d(f, x):
    """f applied to x [..., H] as one 2-D [rows, H] input: one matmul over every row (tract
    splits a batched 3-D matmul with a shared weight into one per batch entry, which reads the
    weight once per entry)."""
    y = f(x.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape[:-1] + y.shape[-1:])


def attend_folded_rows(attn, qk_proj, keys, vo_proj, key_mask):
    """tspm.attend_qkv's output from query_key projections of the queries, the raw key inputs
    and value_output projections (one head: see query_key and value_output), as [..., T, H]
    rows."""
    q = split_heads(qk_proj * (1.0 / math.sqrt(attn.d)), attn)
    k, vo = split_heads(keys, attn), split_heads(vo_proj, attn)
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores = torch.where(key_mask[:, None, None, :], scores,
                         torch.tensor(NEG_INF, dtype=scores.dtype))
    t = scores.shape[-1]  # traced: tract folds the pad to a constant for its T
    pad = (KEY_ALIGN - t % KEY_ALIGN) % KEY_ALIGN
    scores = F.pad(scores, (0, pad), value=NEG_INF)
    probs = torch.softmax(scores, dim=-1)[..., :t]
    out = torch.matmul(probs, vo).transpose(1, 2)
    return out.reshape(out.shape[0], -1, attn.heads * attn.d)


def self_block_folded(block, x, qk, vo):
    """SelfBlock.forward (eval) with its attention's key projection folded into the queries
    (qk) and its output projection into the values (vo: folded_linears of spm_self.attn); no
    mask: a frame's tokens are all real."""
    attn = block.attn
    q = split_heads(qk(x) * (1.0 / math.sqrt(attn.d)), attn)
    k, v = split_heads(x, attn), split_heads(vo(x), attn)
    a = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)
    a = a.transpose(1, 2).reshape(x.shape[0], -1, attn.heads * attn.d)
    x = block.ln1(x + a)
    return block.ln2(x + block.ffn(x))


def query_blocks(block, q, kvs, key_mask):
    """QueryBlock.forward of the same query q [N,H] over several (keys, values) pairs [N,L,H]
    with projected keys / values: the query's projection once, then each pair. Returns one
    [N,H] per pair (query_block_projected's values). The pairs are not stacked into one 2-D
    run: tract splits a 2-row fp32 matmul back into two matrix-vector products anyway, and
    runs a 2-row int8 one as a padded matrix product (on a Cortex-A72 the question part took
    4.2 M instructions stacked, 2.3 M in fp32)."""
    attn = block.attn
    qp = split_heads((attn.q(q) * (1.0 / math.sqrt(attn.d))).unsqueeze(1), attn)
    out = []
    for k_proj, v_proj in kvs:
        kh, vh = split_heads(k_proj, attn), split_heads(v_proj, attn)
        scores = torch.matmul(qp, kh.transpose(-1, -2))
        scores = torch.where(key_mask[:, None, None, :], scores,
                             torch.tensor(NEG_INF, dtype=scores.dtype))
        o = torch.matmul(torch.softmax(scores, dim=-1), vh).transpose(1, 2)
        x = q + attn.o(o.reshape(q.shape[0], attn.heads * attn.d))
        out.append(block.ln(x + block.ffn(x)))
    return out


class SecondPart(nn.Module):
    """audio [N,Da], visual [N,Dv], patches [N,N_TOK,Dp] -> packed [N,F]."""

    def __init__(self, head):
        super().__init__()
        self.h = head
        self.fl = folded_linears(head)

    def forward(self, audio, visual, patches):
        m, fl = self.h, self.fl
        hid = m.proj_audio.out_features
        a = m.proj_audio(audio)  # [N,H]
        v = m.proj_visual(visual)
        tpm_k = m.tpm.attn.k(v)
        tok = self_block_folded(m.spm_self, m.proj_patch(patches), fl["spm_self_attn_qk"],
                                fl["spm_self_attn_vo"])
        v_sp, w_sp = m.spm_cross(a.reshape(-1, 1, hid), tok)  # [N,1,H], [N,1,N_TOK]
        v_sp = v_sp[:, 0]
        qa = m.qtg.attn
        return torch.cat([tpm_k, v_sp, qa.k(a), qa.v(a), qa.k(v_sp), qa.v(v_sp), w_sp[:, 0],
                          a, v] + av_projections(a, v, fl) + av_projections(v, a, fl),
                         dim=-1)


class WindowPart(nn.Module):
    """packed [N,T,W] (window_rows: a, v, the AV projections), valid [N,T] -> context [N,H]
    (the fusion layer's share of the AV layer's means over the valid seconds, bias included)."""

    def __init__(self, head):
        super().__init__()
        self.h = head
        self.register_buffer("w_ctx", fuse_columns(head, FUSE_CONTEXT_BLOCKS), persistent=False)

    def forward(self, packed, valid):
        m = self.h
        hid = m.proj_audio.out_features
        slot = lambda i: packed[..., i * hid:(i + 1) * hid]  # noqa: E731  (window rows)
        n = valid.shape[0]
        mk = valid > 0.5
        mf = mk.to(packed.dtype)
        # Both directions of the shared layer at once, stacked on the batch axis ([2N,T,H]:
        # audio queries, then visual queries): half the nodes, twice the rows per matmul.
        two = lambda x, y: torch.cat([x, y], dim=0)  # noqa: E731
        x = two(slot(0), slot(1))
        other = two(slot(1), slot(0))  # the cross attention's keys
        cq, cv, sq, sv = [two(slot(2 + i), slot(6 + i)) for i in range(4)]
        # AVLayer.forward with the per-second projections given (eval: no dropout). The FFN's
        # matmuls run 2-D over all 2N x T rows (rows2d); the LayerNorms stay 3-D: tract 0.23.9
        # runs an ONNX LayerNormalization on 2-D rows through its generic broadcasting path
        # (its scale and bias get non-contiguous strides there), 0.17 vs 0.06 ms on [120, 512].
        av, km = m.av, two(mk, mk)
        c = attend_folded_rows(av.cross, cq, other, cv, km)
        s = attend_folded_rows(av.self_attn, sq, x, sv, km)
        y = av.ln1(x + c + s)
        out = av.ln2(y + rows2d(av.ffn, y))
        means = masked_mean(out, two(mf, mf))  # [2N,H]
        # The fusion layer's context blocks (tanh, then their weight columns, plus its bias).
        ctx = torch.tanh(torch.cat([means[:n], means[n:]], dim=-1))
        return F.linear(ctx, self.w_ctx, m.fuse.bias)


class QuestionPart(nn.Module):
    """packed [N,T,Q] (question_rows), valid [N,T], context [N,H] (the window part's),
    question [N,Dq], prompt [N,Dp] -> logits [N,A], temporal_weights [N,T], selected [N,k]
    int64, spm_attention [N,k,N_TOK] (the outputs of TSPMHead.forward)."""

    def __init__(self, head):
        super().__init__()
        self.h = head
        self.register_buffer("w_q", fuse_columns(head, FUSE_QUESTION_BLOCKS), persistent=False)
        kv = None
        if head.time_slots:  # constants in the graph: [2 slot sets, keys/values, k, H]
            with torch.no_grad():
                kv = torch.stack([torch.stack(head.slot_kv(i, head.k)) for i in range(2)])
        self.register_buffer("slot_kv", kv, persistent=False)

    def forward(self, packed, valid, context, question, prompt):
        m = self.h
        hid, k = m.proj_audio.out_features, m.k
        mk = valid > 0.5
        slot = lambda x, i: x[..., i * hid:(i + 1) * hid]  # noqa: E731

        q1 = m.proj_question(question)
        p = m.proj_prompt(prompt).unsqueeze(1)
        # TPM: the prompt over the precomputed keys; head-averaged weights rank the seconds.
        attn = m.tpm.attn
        qh = split_heads(attn.q(p) * (1.0 / math.sqrt(attn.d)), attn)
        kh = split_heads(slot(packed, 0), attn)
        scores = torch.matmul(qh, kh.transpose(-1, -2))
        scores = torch.where(mk[:, None, None, :], scores,
                             torch.tensor(NEG_INF, dtype=scores.dtype))
        w = torch.softmax(scores, dim=-1).mean(dim=1)[:, 0]  # [N,T]
        # Selection exactly as TSPMHead.forward (masked branch).
        sel, sel_ok = select_masked(w, mk, k)
        sv = sel_ok.to(packed.dtype)

        rows = gather_rows(packed, sel)  # [N,k,question width]
        spm = 6 * hid
        n_tok = rows.shape[-1] - spm - hid
        a_k, v_sp = rows[..., spm + n_tok:], slot(rows, 1)
        spm_attention = rows[..., spm:spm + n_tok]
        # QTG: the question over the selected seconds' audio, then their SPM outputs; with
        # time slots, their share of the keys and values is a constant [k,H] per slot set.
        kvs = [[slot(rows, 2), slot(rows, 3)], [slot(rows, 4), slot(rows, 5)]]
        if self.slot_kv is not None:
            for which, kv in enumerate(kvs):
                kv[0], kv[1] = kv[0] + self.slot_kv[which, 0], kv[1] + self.slot_kv[which, 1]
        a_q, v_q = query_blocks(m.qtg, q1, kvs, sel_ok)
        # The fusion layer: this question's four blocks; the window part added the rest.
        f = torch.cat([a_q, masked_mean(a_k, sv), v_q, masked_mean(v_sp, sv)], dim=-1)
        f = F.linear(torch.tanh(f), self.w_q) + context
        f = f * q1
        logits = m.answer(torch.tanh(f))
        return logits, w, sel, spm_attention


def compose(head, audio, visual, patches, question, prompt, valid):
    """The three parts run as the runtime runs them; returns TSPMHead.forward's outputs.
    Invalid seconds get zero rows (what the runtime's window holds for them)."""
    second, window, quest = SecondPart(head), WindowPart(head), QuestionPart(head)
    b, t = valid.shape
    packed = second(audio.reshape(b * t, -1), visual.reshape(b * t, -1),
                    patches.reshape(b * t, patches.shape[2], -1)).reshape(b, t, -1)
    packed = torch.where((valid > 0.5).unsqueeze(-1), packed, torch.tensor(0.0))
    hid, n_tok = head.proj_audio.out_features, patches.shape[2]
    context = window(window_rows(packed, hid), valid)
    return quest(question_rows(packed, hid, n_tok), valid, context, question, prompt)
