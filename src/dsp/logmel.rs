//! YAMNet's log-mel front end: 15,600 samples of 16 kHz mono → one `[96 frames, 64 mels]` patch.
//!
//! This reproduces `yamnet/features.py` (`waveform_to_log_mel_spectrogram_patches`), which the
//! released YAMNet weights were trained behind:
//! `tf.abs(tf.signal.stft(frame_length=400, frame_step=160, fft_length=512))` (periodic Hann,
//! no padding) → `· tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125, 7500)` →
//! `log(mel + 0.001)`. Every detail that differs from a "textbook" mel spectrogram is kept on
//! purpose (magnitude not power, HTK mel scale with triangles built in mel space, the DC bin
//! dropped, natural log with an additive offset): the encoder has only ever seen this exact
//! feature, and `tests/dsp.rs` checks it against the TensorFlow-made golden to 1e-4.
//!
//! [`MelFrontend`] is built once; [`MelFrontend::process`] only reads its tables and writes
//! into preallocated scratch and the caller's slice, so it never allocates.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use super::DspError;

/// Sample rate the front end (and YAMNet) expects.
pub const SAMPLE_RATE_HZ: u32 = 16_000;
/// STFT window: 25 ms.
pub const WINDOW_SAMPLES: usize = 400;
/// STFT hop: 10 ms.
pub const HOP_SAMPLES: usize = 160;
/// FFT length: the window rounded up to a power of two; the window is zero-padded to it.
pub const FFT_LEN: usize = 512;
/// Spectrogram bins of a real FFT of [`FFT_LEN`] (DC to Nyquist inclusive).
pub const N_BINS: usize = FFT_LEN / 2 + 1;
/// Mel bands.
pub const N_MELS: usize = 64;
/// Frames in one patch (0.96 s), the YAMNet input `[1, 1, 96, 64]`.
pub const PATCH_FRAMES: usize = 96;
/// Samples one patch consumes: `(PATCH_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES`, because
/// frames are taken without centre padding.
pub const PATCH_SAMPLES: usize = 15_600;
/// Lower edge of the lowest mel triangle.
pub const MEL_MIN_HZ: f64 = 125.0;
/// Upper edge of the highest mel triangle.
pub const MEL_MAX_HZ: f64 = 7_500.0;
/// Added before the log so silence gives `ln(0.001)` rather than `-inf` (YAMNet's value;
/// VGGish uses 0.01).
pub const LOG_OFFSET: f32 = 0.001;

const _: () = assert!(PATCH_SAMPLES == (PATCH_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES);

/// One mel triangle, stored sparsely: its non-zero weights start at spectrogram bin `first_bin`.
/// Each bin feeds at most two bands, so this is ~30× less work than the dense 257×64 product.
#[derive(Debug, Clone, Copy)]
struct Band {
    first_bin: usize,
    /// Range into [`MelFrontend::band_weights`].
    weights_start: usize,
    weights_len: usize,
}

/// YAMNet log-mel patch maker. Build once with [`MelFrontend::new`], then call
/// [`process`](MelFrontend::process) per segment; see the module docs for the recipe.
pub struct MelFrontend {
    /// Periodic Hann, `[WINDOW_SAMPLES]`.
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
    /// FFT input `[FFT_LEN]`; realfft uses it as scratch, so it is refilled every frame.
    frame: Vec<f32>,
    /// FFT output `[N_BINS]`.
    spectrum: Vec<Complex<f32>>,
    fft_scratch: Vec<Complex<f32>>,
    /// `|X[k]|`, `[N_BINS]`.
    magnitude: Vec<f32>,
    bands: [Band; N_MELS],
    band_weights: Vec<f32>,
}

impl std::fmt::Debug for MelFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFrontend")
            .field("fft_len", &FFT_LEN)
            .field("n_mels", &N_MELS)
            .finish_non_exhaustive()
    }
}

impl Default for MelFrontend {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFrontend {
    /// Plans the FFT and builds the window, the filterbank and all scratch buffers. This is
    /// the only place that allocates.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FFT_LEN);
        let frame = fft.make_input_vec();
        let spectrum = fft.make_output_vec();
        let fft_scratch = fft.make_scratch_vec();

        let dense = mel_weights_matrix();
        let mut bands = [Band {
            first_bin: 0,
            weights_start: 0,
            weights_len: 0,
        }; N_MELS];
        let mut band_weights = Vec::new();
        for (m, band) in bands.iter_mut().enumerate() {
            let nonzero = |k: &usize| dense[*k][m] > 0.0;
            let first = (0..N_BINS).find(nonzero).unwrap_or(0);
            let last = (0..N_BINS).rev().find(nonzero).unwrap_or(0);
            *band = Band {
                first_bin: first,
                weights_start: band_weights.len(),
                weights_len: last + 1 - first,
            };
            band_weights.extend((first..=last).map(|k| dense[k][m]));
        }

        MelFrontend {
            window: periodic_hann(WINDOW_SAMPLES),
            fft,
            frame,
            spectrum,
            fft_scratch,
            magnitude: vec![0.0; N_BINS],
            bands,
            band_weights,
        }
    }

    /// Writes the log-mel patch of `pcm[..PATCH_SAMPLES]` into `out` as `[PATCH_FRAMES,
    /// N_MELS]` row-major (frame-major, the layout of YAMNet's `[1, 1, 96, 64]` input).
    ///
    /// `pcm` is 16 kHz mono in `[-1, 1]`; samples past [`PATCH_SAMPLES`] are ignored, so a
    /// whole one-second segment can be passed. Never allocates.
    pub fn process(&mut self, pcm: &[f32], out: &mut [f32]) -> Result<(), DspError> {
        if pcm.len() < PATCH_SAMPLES {
            return Err(DspError::PcmTooShort { got: pcm.len() });
        }
        if out.len() != PATCH_FRAMES * N_MELS {
            return Err(DspError::MelOutLen { got: out.len() });
        }

        for (f, out_row) in out.chunks_exact_mut(N_MELS).enumerate() {
            let samples = &pcm[f * HOP_SAMPLES..f * HOP_SAMPLES + WINDOW_SAMPLES];
            let (windowed, padding) = self.frame.split_at_mut(WINDOW_SAMPLES);
            for ((dst, &x), &w) in windowed.iter_mut().zip(samples).zip(&self.window) {
                *dst = x * w;
            }
            // realfft scribbles over its input, so the zero padding is rewritten each frame.
            padding.fill(0.0);
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.fft_scratch)
                .expect("FFT buffers were made by the plan itself");

            for (mag, c) in self.magnitude.iter_mut().zip(&self.spectrum) {
                // Plain sqrt(re² + im²), not the overflow-safe `hypot` (`Complex::norm`),
                // which is 2× slower; audio in [-1, 1] cannot get near f32's range.
                *mag = (c.re * c.re + c.im * c.im).sqrt();
            }
            for (dst, band) in out_row.iter_mut().zip(&self.bands) {
                let mags = &self.magnitude[band.first_bin..band.first_bin + band.weights_len];
                let weights =
                    &self.band_weights[band.weights_start..band.weights_start + band.weights_len];
                let mel: f32 = mags.iter().zip(weights).map(|(m, w)| m * w).sum();
                *dst = (mel + LOG_OFFSET).ln();
            }
        }
        Ok(())
    }
}

/// `0.5 - 0.5·cos(2πn/N)` for `n` in `0..N`: the *periodic* Hann that `tf.signal.stft` uses by
/// default (the symmetric one divides by `N - 1` and would shift every bin slightly).
fn periodic_hann(len: usize) -> Vec<f32> {
    (0..len)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * n as f64 / len as f64;
            (0.5 - 0.5 * phase.cos()) as f32
        })
        .collect()
}

/// HTK mel scale, `1127·ln(1 + f/700)`, as in `tf.signal` and YAMNet's `mel_features.py`.
fn hz_to_mel(hz: f64) -> f64 {
    1127.0 * (hz / 700.0).ln_1p()
}

/// The dense `[N_BINS][N_MELS]` weight matrix of `tf.signal.linear_to_mel_weight_matrix(64,
/// 257, 16000, 125, 7500)`.
///
/// TensorFlow's construction, which differs from librosa's: the triangles are linear in *mel*
/// (each FFT bin's centre frequency is mapped to mel and the slopes are taken there), the
/// band edges are `N_MELS + 2` points evenly spaced in mel, there is no area normalisation,
/// and the DC bin is excluded (its row stays zero), as HTK does. Computed in f64, stored as
/// f32; TF works in f32, which moves weights by ~1e-7 only.
fn mel_weights_matrix() -> Vec<[f32; N_MELS]> {
    let nyquist_hz = f64::from(SAMPLE_RATE_HZ) / 2.0;
    let (mel_lo, mel_hi) = (hz_to_mel(MEL_MIN_HZ), hz_to_mel(MEL_MAX_HZ));
    let edge = |i: usize| mel_lo + (mel_hi - mel_lo) * i as f64 / (N_MELS + 1) as f64;

    let mut weights = vec![[0.0f32; N_MELS]; N_BINS];
    // Bin 0 (DC) is skipped: HTK and TF zero it.
    for (k, row) in weights.iter_mut().enumerate().skip(1) {
        let bin_mel = hz_to_mel(nyquist_hz * k as f64 / (N_BINS - 1) as f64);
        for (m, w) in row.iter_mut().enumerate() {
            let (lower, center, upper) = (edge(m), edge(m + 1), edge(m + 2));
            let rising = (bin_mel - lower) / (center - lower);
            let falling = (upper - bin_mel) / (upper - center);
            *w = rising.min(falling).max(0.0) as f32;
        }
    }
    weights
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn window_is_periodic_hann() {
        let w = periodic_hann(WINDOW_SAMPLES);
        assert_eq!(w.len(), WINDOW_SAMPLES);
        assert_eq!(w[0], 0.0);
        // The peak is at N/2 (not (N-1)/2) and there is no trailing zero: periodic, not symmetric.
        assert!((w[WINDOW_SAMPLES / 2] - 1.0).abs() < 1e-7);
        assert!(w[WINDOW_SAMPLES - 1] > 0.0);
        for n in 1..WINDOW_SAMPLES {
            assert!(
                (w[n] - w[WINDOW_SAMPLES - n]).abs() < 1e-6,
                "w[{n}] ≠ w[N-{n}]"
            );
        }
    }

    #[test]
    fn filterbank_shape_and_support() {
        let w = mel_weights_matrix();
        assert_eq!(w.len(), N_BINS);
        assert!(w[0].iter().all(|&x| x == 0.0), "DC bin must be excluded");
        let bin_hz = |k: usize| f64::from(SAMPLE_RATE_HZ) * k as f64 / FFT_LEN as f64;
        for (k, row) in w.iter().enumerate() {
            assert!(row.iter().all(|&x| (0.0..=1.0).contains(&x)));
            // Each bin lies under at most two overlapping triangles.
            assert!(row.iter().filter(|&&x| x > 0.0).count() <= 2);
            if bin_hz(k) <= MEL_MIN_HZ || bin_hz(k) >= MEL_MAX_HZ {
                assert!(
                    row.iter().all(|&x| x == 0.0),
                    "bin {k} is outside 125–7500 Hz"
                );
            }
        }
        for m in 0..N_MELS {
            assert!(w.iter().any(|row| row[m] > 0.0), "mel band {m} is empty");
        }
    }

    #[test]
    fn silence_gives_log_offset() {
        let mut fe = MelFrontend::new();
        let mut out = vec![1.0; PATCH_FRAMES * N_MELS];
        fe.process(&[0.0; PATCH_SAMPLES], &mut out).unwrap();
        assert!(out.iter().all(|&x| x == LOG_OFFSET.ln()));
    }

    #[test]
    fn tone_lands_in_its_band() {
        // A 1 kHz tone: the loudest band must be the one whose centre is nearest 1 kHz in mel.
        let pcm: Vec<f32> = (0..PATCH_SAMPLES)
            .map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let mut fe = MelFrontend::new();
        let mut out = vec![0.0; PATCH_FRAMES * N_MELS];
        fe.process(&pcm, &mut out).unwrap();
        let row = &out[50 * N_MELS..51 * N_MELS];
        let loudest = (0..N_MELS)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let (lo, hi) = (hz_to_mel(MEL_MIN_HZ), hz_to_mel(MEL_MAX_HZ));
        let centre = |m: usize| lo + (hi - lo) * (m + 1) as f64 / (N_MELS + 1) as f64;
        let nearest = (0..N_MELS)
            .min_by(|&a, &b| {
                let d = |m| (centre(m) - hz_to_mel(1000.0)).abs();
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        assert_eq!(loudest, nearest);
    }
}
