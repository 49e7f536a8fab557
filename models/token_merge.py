"""Reference token merging (ToMe-style bipartite soft matching), spec §2 "Token merging".

A deliberately plain numpy version of the algorithm in ``src/dsp/token_merge.rs``, written
separately from it: each token carries its feature (the size-weighted mean of its patches) and
the list of original patches it covers, and a round is written the way the spec words it.
The Rust side keeps feature *sums* and integer position sums instead; the two agree on every
decision and on sizes and positions exactly, and on features to float rounding.

The rules both follow (the Rust module doc is the authority):

* Tokens are kept in a *current order*: ascending by the smallest original patch index they
  cover (patch i of the side x side grid sits at y = i // side, x = i % side). At the start
  that is 0..m-1.
* A round splits the current order alternately: A = even positions, B = odd positions.
  For the 7x7 grid the first round's split is a checkerboard.
* Similarity is the cosine of the features, computed in float64; a token with zero norm has
  similarity 0 to everything.
* Each A token picks its most similar B token; ties go to the lower B position.
* r = min(current - n, |A|). The A tokens are ranked by their best similarity, highest
  first, ties to the lower A position; the first r merge into their B token.
* Merging is size-weighted averaging, feature = (fa*sa + fb*sb) / (sa + sb), sizes add, the
  patch lists join. Several A tokens merging into one B token in a round are applied in
  increasing A position.
* Unmerged A tokens and all B tokens survive and are re-sorted into the current order.
  Rounds repeat until n tokens remain (49 -> 24 -> 14 for the 7x7 grid and n = 14).
* Outputs, in the final current order: features (float32), sizes (float32, whole numbers),
  positions (float32 [y, x], the mean grid position of the token's patches), and the
  assignment of each original patch to its output token (int32).

Usage: ``merge_tokens(grid, n)`` with ``grid`` [m, dim]; ``tests/fixtures/make_token_merge.py``
writes the fixture the Rust test compares with.
"""

from __future__ import annotations

import math

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; 0 if either vector is all zeros."""
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b)) / (na * nb)


def merge_tokens(grid: np.ndarray, n: int, trace: list | None = None):
    """Merges ``grid`` [m, dim] down to ``n`` tokens.

    Returns ``(features [n, dim] f32, sizes [n] f32, positions [n, 2] f32, assignment [m] i32)``.
    If ``trace`` is a list, one dict per round is appended with the decision margins: the
    smallest gap between an A token's best and second-best similarity, and the gap between
    the r-th and (r+1)-th ranked scores (how far the data is from a tie).
    """
    m, dim = grid.shape
    side = math.isqrt(m)
    if side * side != m:
        raise ValueError(f"m = {m} patches is not a square grid")
    if not 1 <= n <= m:
        raise ValueError(f"n = {n} must be in 1..={m}")
    if not np.all(np.isfinite(grid)):
        raise ValueError("grid holds a non-finite value")

    tokens = [{"feat": grid[i].astype(np.float64), "members": [i]} for i in range(m)]
    while len(tokens) > n:
        a_set = tokens[0::2]
        b_set = tokens[1::2]
        r = min(len(tokens) - n, len(a_set))

        best_b = []
        best_s = []
        second_gap = math.inf
        for a in a_set:
            sims = [cosine(a["feat"], b["feat"]) for b in b_set]
            j = int(np.argmax(sims))  # first maximum: the lower B position wins a tie
            best_b.append(j)
            best_s.append(sims[j])
            if len(sims) > 1:
                ordered = sorted(sims, reverse=True)
                second_gap = min(second_gap, ordered[0] - ordered[1])

        ranked = sorted(range(len(a_set)), key=lambda i: (-best_s[i], i))
        chosen = set(ranked[:r])
        if trace is not None:
            cut_gap = best_s[ranked[r - 1]] - best_s[ranked[r]] if r < len(a_set) else math.inf
            trace.append({"tokens": len(tokens), "r": r, "best_gap": second_gap, "cut_gap": cut_gap})

        for i in sorted(chosen):
            a = a_set[i]
            b = b_set[best_b[i]]
            sa = len(a["members"])
            sb = len(b["members"])
            b["feat"] = (a["feat"] * sa + b["feat"] * sb) / (sa + sb)
            b["members"] = b["members"] + a["members"]

        survivors = [a for i, a in enumerate(a_set) if i not in chosen] + b_set
        tokens = sorted(survivors, key=lambda t: min(t["members"]))

    features = np.stack([t["feat"] for t in tokens]).astype(np.float32)
    sizes = np.array([len(t["members"]) for t in tokens], dtype=np.float32)
    positions = np.array(
        [
            [np.mean([p // side for p in t["members"]]), np.mean([p % side for p in t["members"]])]
            for t in tokens
        ],
        dtype=np.float64,
    ).astype(np.float32)
    assignment = np.empty(m, dtype=np.int32)
    for k, t in enumerate(tokens):
        assignment[t["members"]] = k
    return features, sizes, positions, assignment
