//! One core's fp32 multiply-add peak on x86_64 (AVX-512 and AVX2+FMA): the roofline that the
//! encoders' headline ratio (tract fp32 / onnxruntime's best variant, issue 3) is judged
//! against. A model of M MACs cannot run in fp32 faster than M / peak on this core, whatever
//! the runtime. Sixteen independent accumulators per width keep both FMA ports busy.
//!
//!     rustc -O scripts/fma_peak.rs -o /tmp/fma_peak && /tmp/fma_peak [MMAC ...]
//!
//! With MMAC arguments (a model's multiply-adds per inference, e.g. from `bench --profile`'s
//! "by kind" table) it also prints each model's lower bound in ms at the measured peak.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 16];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let s = acc.iter().fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 16];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let s = acc.iter().fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        let mut o = [0f32; 8];
        // SAFETY: `o` holds the 8 floats the store writes.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), s) };
        o.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::time::Instant;
    let mmacs: Vec<f64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let iters = 20_000_000u64;
    let mut best = 0.0f64;
    for (name, lanes, ok) in [
        ("avx512", 16.0, is_x86_feature_detected!("avx512f")),
        ("avx2+fma", 8.0, is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")),
    ] {
        if !ok {
            println!("{name}: not on this CPU");
            continue;
        }
        // Best of five: the machine is shared.
        let mut peak = 0.0f64;
        for _ in 0..5 {
            let t = Instant::now();
            // SAFETY: the feature was detected above.
            let r = unsafe {
                if lanes == 16.0 { x86::avx512(iters) } else { x86::avx2(iters) }
            };
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(r);
            peak = peak.max(iters as f64 * 16.0 * lanes / s / 1e9);
        }
        println!("{name}: {peak:.1} GMAC/s fp32 on one core");
        best = best.max(peak);
    }
    for m in mmacs {
        println!("{m} MMAC: >= {:.3} ms at {best:.1} GMAC/s", m / best);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("fma_peak measures x86_64 only; on ARM see cross/icount.sh (instruction counts)");
}
