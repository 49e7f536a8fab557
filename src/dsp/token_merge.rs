//! Token merging (spec §2, "Token merging"): ToMe-style bipartite soft matching that turns one
//! frame's grid of patch tokens (EfficientNet-Lite0: 7×7 = 49 tokens of 1280) into N = 14
//! object-like tokens, each with its size and mean grid position.
//!
//! Ownership and threading: a plain struct. The engine thread builds one [`TokenMerger`] and one
//! [`MergedTokens`] at start-up and calls [`TokenMerger::merge`] once per frame; nothing is
//! shared or locked. `merge` allocates nothing: every scratch buffer is sized for the worst
//! case in [`TokenMerger::new`], and the result goes into the caller's [`MergedTokens`].
//!
//! # The algorithm, with every choice pinned down
//!
//! `models/token_merge.py` is an independent plain-numpy version of the same rules; the
//! fixture under `tests/fixtures/token_merge/` (real EfficientNet grids) holds it to this one.
//!
//! - **Grid.** The m input tokens are a side×side grid in row-major order: token `i` covers the
//!   patch at `y = i / side`, `x = i % side`. `m` must be a perfect square.
//! - **Current order.** Tokens are kept sorted by the smallest original patch index they cover
//!   (their *first patch*). Merged tokens cover disjoint patch sets, so this order is total.
//!   At the start it is `0..m`.
//! - **Split.** A round splits the current order alternately: A = even positions, B = odd
//!   positions. For a grid with an odd side (7×7) the first round's split is a checkerboard,
//!   so every A patch has its four grid neighbours in B.
//! - **Similarity.** Cosine similarity of features, computed in f64. A token whose feature is
//!   all zeros has similarity 0 to everything (cosine is undefined there; ToMe would give NaN).
//! - **Matching.** Each A token picks its most similar B token; a tie goes to the lower B
//!   position (strict `>` in an ascending scan, which is numpy's `argmax`).
//! - **How many.** `r = min(current − n, |A|)` pairs merge per round. A tokens are ranked by
//!   their best similarity, highest first, a tie going to the lower A position; the first `r`
//!   merge. Rounds repeat until `n` tokens remain: 49 → 24 → 14 for the 7×7 grid and n = 14
//!   (the first round merges every A token).
//! - **Merging.** Size-weighted averaging into the B token: feature `(fa·sa + fb·sb)/(sa+sb)`,
//!   sizes add, positions are the size-weighted average (= the mean of the covered patches'
//!   grid positions). Several A tokens merging into one B token in a round are applied in
//!   increasing A position. Unmerged A tokens and all B tokens survive and are re-sorted into
//!   the current order.
//! - **Output order.** The final current order: ascending by first patch.
//!
//! Implementation notes. Each live token stores the f64 *sum* of its patches' features, its
//! size and the integer sums of its patches' y and x. Cosine similarity is scale-invariant,
//! so comparing sums is comparing means, and a merge is a plain addition; the mean (and the
//! size-weighted average of positions) is formed once, at the output, by one division. So
//! sizes and positions are exact, features are the f64 mean rounded once to f32, and products
//! of f32 inputs are exact in f64, which keeps decisions identical to the reference unless
//! two similarities lie within ~1e-12 of each other (exact ties, such as identical tokens or
//! the 0 of disjoint ReLU supports, are resolved by the rules above in both).
//!
//! # Proportional attention
//!
//! ToMe's proportional attention weights a merged key by the number of patches it stands for:
//! add `ln(size)` to that key's attention logit (`softmax(q·kᵀ/√d + ln s)`).
//! [`MergedTokens::sizes`] gives the sizes and [`MergedTokens::log_sizes`] the bias.

/// Why a [`TokenMerger`] could not be built or refused a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenMergeError {
    /// `m` is not side×side.
    #[error("token merger: m = {m} tokens is not a square grid (side×side, e.g. 7×7 = 49)")]
    NotSquare {
        /// Tokens per frame asked for.
        m: usize,
    },
    /// `n` outside `1..=m`.
    #[error("token merger: n = {n} merged tokens must be in 1..={m} (m = input tokens)")]
    BadCount {
        /// Output tokens asked for.
        n: usize,
        /// Input tokens per frame.
        m: usize,
    },
    /// A feature width of zero.
    #[error("token merger: dim must be at least 1")]
    ZeroDim,
    /// The input slice has the wrong length.
    #[error("tokens has len {got}, expected [m={m}, dim={dim}] f32 row-major = {}", m * dim)]
    TokensLen {
        /// Length supplied.
        got: usize,
        /// Tokens per frame.
        m: usize,
        /// Feature width.
        dim: usize,
    },
    /// The output was built for another shape.
    #[error(
        "out is MergedTokens::new(n={got_n}, dim={got_dim}), this merger writes \
         MergedTokens::new(n={n}, dim={dim})"
    )]
    OutShape {
        /// The output's token count.
        got_n: usize,
        /// The output's feature width.
        got_dim: usize,
        /// The merger's token count.
        n: usize,
        /// The merger's feature width.
        dim: usize,
    },
    /// A NaN or infinity in the input.
    #[error("tokens[{token}, {channel}] is not finite (NaN or ±inf)")]
    NonFinite {
        /// Token (row) index.
        token: usize,
        /// Channel (column) index.
        channel: usize,
    },
}

/// One frame's merged tokens, preallocated by [`MergedTokens::new`] and filled by
/// [`TokenMerger::merge`]. Tokens are in ascending order of their first original patch.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedTokens {
    n: usize,
    dim: usize,
    features: Vec<f32>,  // [n, dim]
    sizes: Vec<f32>,     // [n]
    positions: Vec<f32>, // [n, 2] (y, x)
}

impl MergedTokens {
    /// Zeroed storage for `n` tokens of width `dim`.
    pub fn new(n: usize, dim: usize) -> Self {
        Self {
            n,
            dim,
            features: vec![0.0; n * dim],
            sizes: vec![0.0; n],
            positions: vec![0.0; n * 2],
        }
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `[n, dim]` row-major: each token's feature, the mean of the patch features it covers.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// `[n]`: how many original patches each token covers (whole numbers, summing to m). The
    /// weight for ToMe's proportional attention.
    pub fn sizes(&self) -> &[f32] {
        &self.sizes
    }

    /// `[n, 2]` row-major: each token's mean grid position `(y, x)` in patch units, `0..side`.
    pub fn positions(&self) -> &[f32] {
        &self.positions
    }

    /// `ln(size)` per token: the bias proportional attention adds to each key's logit.
    pub fn log_sizes(&self) -> impl Iterator<Item = f32> + '_ {
        self.sizes.iter().map(|s| s.ln())
    }
}

/// Merges `[m, dim]` token grids down to `n` tokens; see the module doc for the rules.
#[derive(Debug, Clone)]
pub struct TokenMerger {
    m: usize,
    dim: usize,
    n: usize,
    side: usize,
    // Per slot (a slot is an original token index; a merged token lives in its B token's slot).
    sums: Vec<f64>,          // [m, dim] feature sums
    norms: Vec<f64>,         // [m] Euclidean norm of the sum
    sizes: Vec<u32>,         // [m] patches covered
    pos_sums: Vec<[u32; 2]>, // [m] Σy, Σx of the patches covered
    first: Vec<u32>,         // [m] smallest patch index covered
    parent: Vec<u32>,        // [m] slot this one merged into (itself while live)
    out_index: Vec<u32>,     // [m] output token of a live slot, after the last round
    assignment: Vec<u32>,    // [m] output token of each original patch
    // Per round.
    order: Vec<u32>,   // [≤ m] live slots in the current order
    next: Vec<u32>,    // [≤ m] the next round's order, being built
    best_b: Vec<u32>,  // [|A| ≤ ceil(m/2)] best B position for each A position
    best_s: Vec<f64>,  // [|A|] its similarity
    ranked: Vec<u32>,  // [|A|] A positions, best first
    merged: Vec<bool>, // [|A|] whether that A position merges this round
}

impl TokenMerger {
    /// A merger for frames of `m` tokens (a side×side grid) of width `dim`, down to `n`
    /// tokens. All scratch is allocated here.
    pub fn new(m: usize, dim: usize, n: usize) -> Result<Self, TokenMergeError> {
        let side = m.isqrt();
        if m == 0 || side * side != m {
            return Err(TokenMergeError::NotSquare { m });
        }
        if n == 0 || n > m {
            return Err(TokenMergeError::BadCount { n, m });
        }
        if dim == 0 {
            return Err(TokenMergeError::ZeroDim);
        }
        // Positions are summed in u32: side ≤ 2^16 keeps Σy ≤ m·side within range.
        assert!(
            u32::try_from(m).is_ok() && (m as u64) * (side as u64) < u64::from(u32::MAX),
            "token grid too large for u32 position sums"
        );
        let half = m.div_ceil(2);
        Ok(Self {
            m,
            dim,
            n,
            side,
            sums: vec![0.0; m * dim],
            norms: vec![0.0; m],
            sizes: vec![0; m],
            pos_sums: vec![[0; 2]; m],
            first: vec![0; m],
            parent: vec![0; m],
            out_index: vec![0; m],
            assignment: vec![0; m],
            order: Vec::with_capacity(m),
            next: Vec::with_capacity(m),
            best_b: vec![0; half],
            best_s: vec![0.0; half],
            ranked: Vec::with_capacity(half),
            merged: vec![false; half],
        })
    }

    /// Input tokens per frame.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Output tokens per frame.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `[m]`: for each original patch (row-major grid index), the output token it ended in
    /// during the last successful [`merge`](Self::merge) (all zeros before the first).
    pub fn assignment(&self) -> &[u32] {
        &self.assignment
    }

    /// Merges one frame, `tokens` `[m, dim]` f32 row-major, into `out` (built with
    /// `MergedTokens::new(n, dim)`). Allocates nothing. On error `out` is left unchanged.
    pub fn merge(&mut self, tokens: &[f32], out: &mut MergedTokens) -> Result<(), TokenMergeError> {
        let (m, dim, n) = (self.m, self.dim, self.n);
        if tokens.len() != m * dim {
            return Err(TokenMergeError::TokensLen {
                got: tokens.len(),
                m,
                dim,
            });
        }
        if out.n != n || out.dim != dim {
            return Err(TokenMergeError::OutShape {
                got_n: out.n,
                got_dim: out.dim,
                n,
                dim,
            });
        }

        self.load(tokens)?;
        while self.order.len() > n {
            self.round();
        }
        self.write(out);
        Ok(())
    }

    /// Every patch becomes its own live token, in slot = patch index.
    fn load(&mut self, tokens: &[f32]) -> Result<(), TokenMergeError> {
        let dim = self.dim;
        for (slot, (src, dst)) in tokens
            .chunks_exact(dim)
            .zip(self.sums.chunks_exact_mut(dim))
            .enumerate()
        {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f64::from(s);
            }
            // Squares of f32 values cannot overflow f64 (even 2^20 of them), so the norm is
            // finite exactly when every value is: one check per row instead of one per value.
            let norm = dot(dst, dst).sqrt();
            if !norm.is_finite() {
                let channel = src
                    .iter()
                    .position(|v| !v.is_finite())
                    .expect("a non-finite norm comes from a non-finite value");
                return Err(TokenMergeError::NonFinite {
                    token: slot,
                    channel,
                });
            }
            self.norms[slot] = norm;
        }
        self.order.clear();
        for slot in 0..self.m {
            let patch = slot as u32; // fits: checked in `new`
            self.sizes[slot] = 1;
            self.pos_sums[slot] = [(slot / self.side) as u32, (slot % self.side) as u32];
            self.first[slot] = patch;
            self.parent[slot] = patch;
            self.order.push(patch);
        }
        Ok(())
    }

    /// One round of bipartite soft matching: `order` shrinks by `r`.
    fn round(&mut self) {
        let dim = self.dim;
        let count = self.order.len();
        let n_a = count.div_ceil(2);
        let n_b = count / 2;
        debug_assert!(n_b >= 1, "count > n >= 1 leaves at least one B token");
        let r = (count - self.n).min(n_a);

        // Each A token's most similar B token (strict `>`: the lower B position wins a tie).
        for ia in 0..n_a {
            let a = self.order[2 * ia] as usize;
            let row_a = &self.sums[a * dim..(a + 1) * dim];
            let norm_a = self.norms[a];
            let mut best = (0u32, f64::NEG_INFINITY);
            for ib in 0..n_b {
                let b = self.order[2 * ib + 1] as usize;
                let denom = norm_a * self.norms[b];
                let sim = if denom == 0.0 {
                    0.0
                } else {
                    dot(row_a, &self.sums[b * dim..(b + 1) * dim]) / denom
                };
                if sim > best.1 {
                    best = (ib as u32, sim);
                }
            }
            self.best_b[ia] = best.0;
            self.best_s[ia] = best.1;
        }

        // Rank A positions: highest similarity first, then lower position. Similarities are
        // finite (inputs are checked), and `<`/`>` treat 0.0 and -0.0 alike, as numpy does.
        self.ranked.clear();
        self.ranked.extend(0..n_a as u32);
        let best_s = &self.best_s;
        self.ranked.sort_unstable_by(|&x, &y| {
            let (sx, sy) = (best_s[x as usize], best_s[y as usize]);
            if sx > sy {
                std::cmp::Ordering::Less
            } else if sx < sy {
                std::cmp::Ordering::Greater
            } else {
                x.cmp(&y)
            }
        });
        self.merged[..n_a].fill(false);
        for &ia in &self.ranked[..r] {
            self.merged[ia as usize] = true;
        }

        // Merge in increasing A position: add A's sums into its B token's slot.
        for ia in 0..n_a {
            if !self.merged[ia] {
                continue;
            }
            let a = self.order[2 * ia] as usize;
            let b = self.order[2 * self.best_b[ia] as usize + 1] as usize;
            let (src, dst) = if a < b {
                let (lo, hi) = self.sums.split_at_mut(b * dim);
                (&lo[a * dim..(a + 1) * dim], &mut hi[..dim])
            } else {
                let (lo, hi) = self.sums.split_at_mut(a * dim);
                (&hi[..dim], &mut lo[b * dim..(b + 1) * dim])
            };
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
            self.sizes[b] += self.sizes[a];
            self.pos_sums[b][0] += self.pos_sums[a][0];
            self.pos_sums[b][1] += self.pos_sums[a][1];
            self.first[b] = self.first[b].min(self.first[a]);
            self.parent[a] = b as u32;
        }
        // Norms of the B tokens that grew (their parent is themselves; A's point elsewhere).
        for ia in 0..n_a {
            if self.merged[ia] {
                let b = self.order[2 * self.best_b[ia] as usize + 1] as usize;
                let row = &self.sums[b * dim..(b + 1) * dim];
                self.norms[b] = dot(row, row).sqrt();
            }
        }

        // Survivors, re-sorted by first patch (unique, so the unstable sort is deterministic).
        self.next.clear();
        for (pos, &slot) in self.order.iter().enumerate() {
            if pos % 2 == 1 || !self.merged[pos / 2] {
                self.next.push(slot);
            }
        }
        let first = &self.first;
        self.next.sort_unstable_by_key(|&slot| first[slot as usize]);
        std::mem::swap(&mut self.order, &mut self.next);
    }

    /// Means, sizes and positions of the live tokens, in the current order, into `out`; and
    /// each patch's output token into `assignment`.
    fn write(&mut self, out: &mut MergedTokens) {
        let dim = self.dim;
        for (k, &slot) in self.order.iter().enumerate() {
            let slot = slot as usize;
            let size = f64::from(self.sizes[slot]);
            let src = &self.sums[slot * dim..(slot + 1) * dim];
            let dst = &mut out.features[k * dim..(k + 1) * dim];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s / size) as f32;
            }
            out.sizes[k] = self.sizes[slot] as f32;
            out.positions[2 * k] = (f64::from(self.pos_sums[slot][0]) / size) as f32;
            out.positions[2 * k + 1] = (f64::from(self.pos_sums[slot][1]) / size) as f32;
            self.out_index[slot] = k as u32;
        }
        for patch in 0..self.m {
            // Follow merges to the live slot; chains are at most one link per round.
            let mut slot = patch;
            while self.parent[slot] as usize != slot {
                slot = self.parent[slot] as usize;
            }
            self.assignment[patch] = self.out_index[slot];
        }
    }
}

/// Dot product with eight independent accumulators, so the compiler can keep them in SIMD
/// lanes (one serial accumulator would forbid reordering the float additions).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let (ca, ta) = a.as_chunks::<8>();
    let (cb, tb) = b.as_chunks::<8>();
    let mut acc = [0.0f64; 8];
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random grid (xorshift), values in [0, 1).
    fn grid(m: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..m * dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    fn merge(m: usize, dim: usize, n: usize, tokens: &[f32]) -> (MergedTokens, Vec<u32>) {
        let mut merger = TokenMerger::new(m, dim, n).unwrap();
        let mut out = MergedTokens::new(n, dim);
        merger.merge(tokens, &mut out).unwrap();
        (out, merger.assignment().to_vec())
    }

    #[test]
    fn constructor_rejects_bad_shapes() {
        assert_eq!(
            TokenMerger::new(48, 8, 14).unwrap_err(),
            TokenMergeError::NotSquare { m: 48 }
        );
        assert_eq!(
            TokenMerger::new(0, 8, 1).unwrap_err(),
            TokenMergeError::NotSquare { m: 0 }
        );
        assert_eq!(
            TokenMerger::new(49, 8, 50).unwrap_err(),
            TokenMergeError::BadCount { n: 50, m: 49 }
        );
        assert_eq!(
            TokenMerger::new(49, 8, 0).unwrap_err(),
            TokenMergeError::BadCount { n: 0, m: 49 }
        );
        assert_eq!(
            TokenMerger::new(49, 0, 14).unwrap_err(),
            TokenMergeError::ZeroDim
        );
    }

    #[test]
    fn rounds_go_49_24_14() {
        let tokens = grid(49, 16, 7);
        let mut merger = TokenMerger::new(49, 16, 14).unwrap();
        merger.load(&tokens).unwrap();
        merger.round();
        assert_eq!(merger.order.len(), 24);
        merger.round();
        assert_eq!(merger.order.len(), 14);
    }

    #[test]
    fn first_round_absorbs_every_checkerboard_a_cell() {
        // After 49 -> 24 every live token is an odd (B) cell: all 25 A cells merged.
        let tokens = grid(49, 16, 3);
        let mut merger = TokenMerger::new(49, 16, 24).unwrap();
        let mut out = MergedTokens::new(24, 16);
        merger.merge(&tokens, &mut out).unwrap();
        for &slot in &merger.order {
            assert_eq!(slot % 2, 1);
        }
    }

    #[test]
    fn order_is_by_first_patch_and_assignment_is_consistent() {
        let tokens = grid(49, 32, 11);
        let (out, assignment) = merge(49, 32, 14, &tokens);
        // Each output token's first patch: the first patch assigned to it.
        let mut firsts = [usize::MAX; 14];
        for (patch, &k) in assignment.iter().enumerate() {
            firsts[k as usize] = firsts[k as usize].min(patch);
        }
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
        for k in 0..14 {
            let members: Vec<usize> = (0..49).filter(|&p| assignment[p] as usize == k).collect();
            assert_eq!(out.sizes()[k] as usize, members.len());
            let y = members.iter().map(|p| (p / 7) as f64).sum::<f64>() / members.len() as f64;
            let x = members.iter().map(|p| (p % 7) as f64).sum::<f64>() / members.len() as f64;
            assert_eq!(out.positions()[2 * k], y as f32);
            assert_eq!(out.positions()[2 * k + 1], x as f32);
            for c in 0..32 {
                let mean = members
                    .iter()
                    .map(|p| f64::from(tokens[p * 32 + c]))
                    .sum::<f64>()
                    / members.len() as f64;
                let got = f64::from(out.features()[k * 32 + c]);
                assert!((got - mean).abs() <= 1e-6 * mean.abs().max(1e-3));
            }
        }
    }

    #[test]
    fn zero_tokens_have_similarity_zero() {
        // All-zero tokens: every similarity is 0, so ties everywhere resolve to the lowest
        // positions; the result is still a valid partition.
        let tokens = vec![0.0f32; 49 * 4];
        let (out, _) = merge(49, 4, 14, &tokens);
        assert_eq!(out.sizes().iter().sum::<f32>(), 49.0);
        assert!(out.features().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f64> = (0..19).map(f64::from).collect();
        let want: f64 = a.iter().map(|v| v * v).sum();
        assert_eq!(dot(&a, &a), want);
    }
}
