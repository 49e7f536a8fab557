//! Token merging against the numpy reference on real EfficientNet-Lite0 grids
//! (`tests/fixtures/token_merge/`, written by `tests/fixtures/make_token_merge.py` from
//! `models/token_merge.py`), plus its invariants, its allocation-free hot path and its errors.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ndarray::{Array2, Array3};
use ndarray_npy::read_npy;
use tspm_edge::dsp::{MergedTokens, TokenMergeError, TokenMerger};

use crate::util::alloc::allocations_during;

const M: usize = 49;
const DIM: usize = 1280;
const N: usize = 14;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/token_merge")
        .join(name)
}

/// IEEE half → f32 (exact). The fixture stores the grids as float16 bit patterns to stay
/// under 1 MB; ndarray-npy reads no float16.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal: mant × 2^-24, exact in f32.
        (0, _) => return sign_of(h) * mant as f32 * 2f32.powi(-24),
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

fn sign_of(h: u16) -> f32 {
    if h >> 15 == 1 { -1.0 } else { 1.0 }
}

/// The fixture's grids, `[frames, 49, 1280]`.
fn grids() -> Array3<f32> {
    let bits: Array3<u16> = read_npy(fixture("grids_f16.npy")).unwrap();
    assert_eq!(bits.shape()[1..], [M, DIM]);
    bits.mapv(f16_to_f32)
}

/// Some real grid, as a flat `[49 * 1280]` vector.
fn real_frame(k: usize) -> Vec<f32> {
    grids()
        .index_axis(ndarray::Axis(0), k)
        .iter()
        .copied()
        .collect()
}

fn merge(m: usize, dim: usize, n: usize, tokens: &[f32]) -> (MergedTokens, Vec<u32>) {
    let mut merger = TokenMerger::new(m, dim, n).unwrap();
    let mut out = MergedTokens::new(n, dim);
    merger.merge(tokens, &mut out).unwrap();
    (out, merger.assignment().to_vec())
}

#[test]
fn f16_decoding() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
}

#[test]
fn token_merge_matches_numpy_reference_on_real_grids() {
    let grids = grids();
    let features: Array3<f32> = read_npy(fixture("features.npy")).unwrap();
    let sizes: Array2<f32> = read_npy(fixture("sizes.npy")).unwrap();
    let positions: Array3<f32> = read_npy(fixture("positions.npy")).unwrap();
    let assignment: Array2<i32> = read_npy(fixture("assignment.npy")).unwrap();
    let frames = grids.shape()[0];
    assert!(frames >= 4, "fixture has {frames} frames");
    assert_eq!(features.shape(), [frames, N, DIM]);

    let mut merger = TokenMerger::new(M, DIM, N).unwrap();
    let mut out = MergedTokens::new(N, DIM);
    for f in 0..frames {
        let tokens: Vec<f32> = grids
            .index_axis(ndarray::Axis(0), f)
            .iter()
            .copied()
            .collect();
        merger.merge(&tokens, &mut out).unwrap();

        // Sizes, positions and the patch → token map are exact: the same decisions were made
        // and both sides form a position as (integer sum) / size in f64, rounded once.
        let want_sizes: Vec<f32> = sizes.row(f).to_vec();
        assert_eq!(out.sizes(), want_sizes.as_slice(), "frame {f} sizes");
        let want_pos: Vec<f32> = positions
            .index_axis(ndarray::Axis(0), f)
            .iter()
            .copied()
            .collect();
        assert_eq!(out.positions(), want_pos.as_slice(), "frame {f} positions");
        let want_assign: Vec<u32> = assignment.row(f).iter().map(|&k| k as u32).collect();
        assert_eq!(
            merger.assignment(),
            want_assign.as_slice(),
            "frame {f} assignment"
        );

        // Features: the reference averages step by step in f64, Rust sums and divides once;
        // both round to f32 at the end. Relative to each token's largest channel.
        let want = features.index_axis(ndarray::Axis(0), f);
        let mut worst = 0.0f32;
        for (k, (got_row, want_row)) in out
            .features()
            .chunks_exact(DIM)
            .zip(want.outer_iter())
            .enumerate()
        {
            let scale = want_row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(scale > 0.0, "frame {f} token {k} is all zeros");
            for (g, w) in got_row.iter().zip(want_row.iter()) {
                worst = worst.max((g - w).abs() / scale);
            }
        }
        assert!(worst <= 1e-5, "frame {f}: feature relative error {worst:e}");
    }
}

#[test]
fn token_merge_sizes_sum_to_m_and_positions_lie_in_the_grid() {
    let tokens = real_frame(1);
    let (out, assignment) = merge(M, DIM, N, &tokens);
    assert_eq!(out.sizes().iter().sum::<f32>(), M as f32);
    assert!(out.sizes().iter().all(|&s| s >= 1.0 && s.fract() == 0.0));
    assert!(out.positions().iter().all(|&p| (0.0..=6.0).contains(&p)));
    assert!(assignment.iter().all(|&k| (k as usize) < N));
    for k in 0..N as u32 {
        let covered = assignment.iter().filter(|&&a| a == k).count();
        assert_eq!(covered as f32, out.sizes()[k as usize]);
    }
    let logs: Vec<f32> = out.log_sizes().collect();
    assert_eq!(logs[0], out.sizes()[0].ln());
}

#[test]
fn token_merge_n_equal_m_is_identity() {
    let tokens = real_frame(0);
    let (out, assignment) = merge(M, DIM, M, &tokens);
    assert_eq!(out.features(), tokens.as_slice());
    assert!(out.sizes().iter().all(|&s| s == 1.0));
    for (i, (pos, &k)) in out.positions().chunks_exact(2).zip(&assignment).enumerate() {
        assert_eq!(pos, [(i / 7) as f32, (i % 7) as f32]);
        assert_eq!(k, i as u32);
    }
}

#[test]
fn token_merge_of_identical_tokens() {
    // Every token equal: every similarity is 1, so each round's ties resolve by position and
    // every merged feature is that token again.
    let row: Vec<f32> = (0..DIM).map(|c| (c % 7) as f32 * 0.5).collect();
    let tokens: Vec<f32> = row.iter().copied().cycle().take(M * DIM).collect();
    let (out, assignment) = merge(M, DIM, N, &tokens);
    for got in out.features().chunks_exact(DIM) {
        assert_eq!(got, row.as_slice());
    }
    assert_eq!(out.sizes().iter().sum::<f32>(), M as f32);
    // Round 1 (49 → 24): all 25 A cells (even indices) tie at similarity 1, so each picks B
    // position 0, cell 1, and all of them merge there; later rounds only add to that token.
    let k = assignment[0];
    assert_eq!(k, 0, "the token holding patch 0 comes first");
    for cell in (0..M).step_by(2).chain([1]) {
        assert_eq!(assignment[cell], k, "cell {cell}");
    }
    assert!(out.sizes()[0] >= 26.0);
}

#[test]
fn token_merge_merges_two_identical_tokens_first() {
    // 2×2 grid, n = 3: one pair merges. Token 0 (A) equals token 3 (B) up to scale, so
    // their cosine is 1 and they merge with size-weighted averaging.
    let dim = 3;
    let tokens = [
        1.0, 2.0, 3.0, //
        0.0, 0.0, 1.0, //
        1.0, 0.0, 0.0, //
        2.0, 4.0, 6.0, //
    ];
    let (out, assignment) = merge(4, dim, 3, &tokens);
    // A = [0, 2], B = [1, 3]: token 0 → 3 (cos 1) beats token 2's best.
    assert_eq!(assignment, [0, 1, 2, 0]);
    assert_eq!(out.sizes(), [2.0, 1.0, 1.0]);
    assert_eq!(&out.features()[..3], [1.5, 3.0, 4.5]);
    assert_eq!(&out.positions()[..2], [0.5, 0.5]);
}

#[test]
fn token_merge_allocates_nothing() {
    let tokens = real_frame(2);
    let mut merger = TokenMerger::new(M, DIM, N).unwrap();
    let mut out = MergedTokens::new(N, DIM);
    merger.merge(&tokens, &mut out).unwrap();
    let (allocs, res) = allocations_during(|| merger.merge(&tokens, &mut out));
    res.unwrap();
    assert_eq!(allocs, 0, "merge allocated {allocs} times");
}

#[test]
fn token_merge_errors_name_the_expected_form() {
    let mut merger = TokenMerger::new(M, DIM, N).unwrap();
    let mut out = MergedTokens::new(N, DIM);
    let err = merger.merge(&[0.0; 10], &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tokens has len 10, expected [m=49, dim=1280] f32 row-major = 62720"
    );

    let tokens = vec![0.5f32; M * DIM];
    let mut wrong = MergedTokens::new(N + 1, DIM);
    let err = merger.merge(&tokens, &mut wrong).unwrap_err();
    assert_eq!(
        err.to_string(),
        "out is MergedTokens::new(n=15, dim=1280), this merger writes MergedTokens::new(n=14, dim=1280)"
    );

    let mut bad = tokens.clone();
    bad[3 * DIM + 17] = f32::NAN;
    let err = merger.merge(&bad, &mut out).unwrap_err();
    assert_eq!(
        err,
        TokenMergeError::NonFinite {
            token: 3,
            channel: 17
        }
    );
    assert_eq!(err.to_string(), "tokens[3, 17] is not finite (NaN or ±inf)");

    let err = TokenMerger::new(48, DIM, N).unwrap_err();
    assert!(err.to_string().contains("not a square grid"), "{err}");
    let err = TokenMerger::new(M, DIM, 50).unwrap_err();
    assert!(err.to_string().contains("1..=49"), "{err}");
}
