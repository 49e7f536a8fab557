//! The DSP front ends against the shared goldens, their allocation-free hot paths, and their
//! error messages.

// Tests panic on the unexpected; that is what `unwrap` is for here.
#![allow(clippy::unwrap_used)]

use ndarray::{Array1, Array2, Array4};
use ndarray_npy::read_npy;
use tspm_edge::dsp::{
    DspError, ImagePrep, ImagePrepConfig, MelFrontend, N_MELS, PATCH_FRAMES, PATCH_SAMPLES,
    load_rgb,
};

use crate::util::{alloc::allocations_during, golden};

/// `(max abs, mean abs)` of `got - want`.
fn abs_errors(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let diffs = got.iter().zip(want).map(|(g, w)| (g - w).abs());
    let max = diffs.clone().fold(0.0f32, f32::max);
    let mean = diffs.map(f64::from).sum::<f64>() / got.len() as f64;
    (max, mean as f32)
}

fn golden_wave() -> Vec<f32> {
    let wave: Array1<f32> = read_npy(golden("yamnet/wave_16k_15600.npy")).unwrap();
    wave.to_vec()
}

fn kafka() -> tspm_edge::dsp::Rgb8Image {
    load_rgb(golden("clip/franz-kafka.jpg")).unwrap()
}

#[test]
fn logmel_matches_yamnet_golden() {
    let wave = golden_wave();
    assert_eq!(wave.len(), PATCH_SAMPLES);
    let want: Array2<f32> = read_npy(golden("yamnet/logmel_patch_96x64.npy")).unwrap();
    assert_eq!(want.dim(), (PATCH_FRAMES, N_MELS));

    let mut fe = MelFrontend::new();
    let mut got = vec![0.0; PATCH_FRAMES * N_MELS];
    fe.process(&wave, &mut got).unwrap();
    let (max, mean) = abs_errors(&got, want.as_slice().unwrap());
    eprintln!("log-mel vs golden: max abs {max:.3e}, mean abs {mean:.3e}");
    assert!(max <= 1e-4, "log-mel max abs error {max} > 1e-4");
}

#[test]
fn logmel_ignores_samples_past_one_patch() {
    let mut wave = golden_wave();
    let mut fe = MelFrontend::new();
    let mut first = vec![0.0; PATCH_FRAMES * N_MELS];
    fe.process(&wave, &mut first).unwrap();
    wave.extend(std::iter::repeat_n(0.9, 400)); // a full 16,000-sample second
    let mut second = vec![0.0; PATCH_FRAMES * N_MELS];
    fe.process(&wave, &mut second).unwrap();
    assert_eq!(first, second);
}

/// The golden is PIL's output for the same JPEG. Our resize/crop/normalise is bit-exact with
/// PIL given PIL's decoded pixels; what remains is the JPEG decoder (the `image` crate's
/// zune-jpeg vs PIL's libjpeg-turbo differ by a level or two on some pixels, mostly from
/// chroma upsampling), softened by the downscale. So the bound is one u8 level after
/// normalisation, 1/255/min(std) ≈ 0.0150, and the mean must stay far below it.
#[test]
fn image_matches_clip_golden() {
    let img = kafka();
    let want: Array4<f32> = read_npy(golden("clip/expected_preprocessed_image.npy")).unwrap();
    assert_eq!(want.dim(), (1, 3, 224, 224));

    let mut prep = ImagePrep::new(ImagePrepConfig::clip(224)).unwrap();
    let mut got = vec![0.0; 3 * 224 * 224];
    prep.process(
        &img.data,
        img.width,
        img.height,
        img.stride_bytes(),
        &mut got,
    )
    .unwrap();
    let (max, mean) = abs_errors(&got, want.as_slice().unwrap());
    eprintln!("image vs golden: max abs {max:.4e}, mean abs {mean:.4e}");
    let one_level = 1.0 / 255.0 / tspm_edge::dsp::CLIP_STD[1];
    assert!(
        max <= one_level * 1.001,
        "image max abs error {max} > one u8 level {one_level}"
    );
    assert!(mean <= 0.002, "image mean abs error {mean}");
}

#[test]
fn image_rows_may_be_padded() {
    // GStreamer pads RGB rows to 4 bytes: the same pixels with a wider stride must give the
    // same tensor.
    let img = kafka();
    let stride = img.stride_bytes() + 6;
    let mut padded = vec![0xAB; stride * img.height];
    for (dst, src) in padded
        .chunks_exact_mut(stride)
        .zip(img.data.chunks_exact(img.stride_bytes()))
    {
        dst[..src.len()].copy_from_slice(src);
    }
    let mut prep = ImagePrep::new(ImagePrepConfig::clip(224)).unwrap();
    let (mut tight, mut loose) = (vec![0.0; 3 * 224 * 224], vec![0.0; 3 * 224 * 224]);
    prep.process(
        &img.data,
        img.width,
        img.height,
        img.stride_bytes(),
        &mut tight,
    )
    .unwrap();
    prep.process(&padded, img.width, img.height, stride, &mut loose)
        .unwrap();
    assert_eq!(tight, loose);
}

#[test]
fn image_prep_survives_size_changes() {
    // Landscape, portrait, tiny (upscaled) and back: each result equals a fresh ImagePrep's.
    let frame = |w: usize, h: usize| -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| ((i * 7 + i / (w * 3) * 13) % 256) as u8)
            .collect()
    };
    let mut reused = ImagePrep::new(ImagePrepConfig::imagenet(224)).unwrap();
    for (w, h) in [(640, 480), (480, 640), (100, 60), (640, 480)] {
        let rgb = frame(w, h);
        let (mut a, mut b) = (vec![0.0; 3 * 224 * 224], vec![0.0; 3 * 224 * 224]);
        reused.process(&rgb, w, h, w * 3, &mut a).unwrap();
        let mut fresh = ImagePrep::new(ImagePrepConfig::imagenet(224)).unwrap();
        fresh.process(&rgb, w, h, w * 3, &mut b).unwrap();
        assert_eq!(a, b, "{w}×{h}");
    }
}

#[test]
fn mel_frontend_is_allocation_free_after_warmup() {
    let wave = golden_wave();
    let mut fe = MelFrontend::new();
    let mut out = vec![0.0; PATCH_FRAMES * N_MELS];
    fe.process(&wave, &mut out).unwrap(); // warm-up
    let (allocs, res) = allocations_during(|| fe.process(&wave, &mut out));
    res.unwrap();
    assert_eq!(allocs, 0);
}

#[test]
fn image_prep_is_allocation_free_for_a_repeated_frame_size() {
    let (w, h) = (640, 480);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    let mut prep = ImagePrep::new(ImagePrepConfig::clip(224)).unwrap();
    let mut out = vec![0.0; 3 * 224 * 224];
    prep.process(&rgb, w, h, w * 3, &mut out).unwrap(); // warm-up: plans for 640×480
    let (allocs, res) = allocations_during(|| prep.process(&rgb, w, h, w * 3, &mut out));
    res.unwrap();
    assert_eq!(allocs, 0);
}

#[test]
fn wrong_shapes_give_errors_that_name_the_expected_form() {
    let mut fe = MelFrontend::new();
    let mut out = vec![0.0; PATCH_FRAMES * N_MELS];
    let err = fe.process(&[0.0; 1200], &mut out).unwrap_err();
    assert!(matches!(err, DspError::PcmTooShort { got: 1200 }));
    assert_eq!(
        err.to_string(),
        "pcm has 1200 samples, a log-mel patch needs at least 15600 (0.975 s at 16 kHz)"
    );
    let err = fe
        .process(&[0.0; PATCH_SAMPLES], &mut [0.0; 100])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "out has len 100, expected 96 frames × 64 mels = 6144"
    );

    let mut prep = ImagePrep::new(ImagePrepConfig::clip(224)).unwrap();
    let rgb = vec![0u8; 8 * 4 * 3];
    let mut out = vec![0.0; 3 * 224 * 224];
    let err = prep.process(&rgb, 8, 4, 24, &mut out[..10]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "out has len 10, expected 3×224×224 = 150528"
    );
    let err = prep.process(&rgb, 8, 4, 20, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image stride 20 bytes is smaller than width×3 = 24"
    );
    let err = prep.process(&rgb, 8, 4, 32, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rgb has 96 bytes, a 8×4 px image with stride 32 needs at least 120 \
         ((height-1)×stride + width×3)"
    );
    let err = prep.process(&rgb, 0, 4, 24, &mut out).unwrap_err();
    assert!(matches!(
        err,
        DspError::EmptyImage {
            width: 0,
            height: 4
        }
    ));

    let err = load_rgb(golden("no-such-photo.jpg")).unwrap_err();
    assert!(err.to_string().starts_with("decoding image "), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}
