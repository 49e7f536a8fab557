//! Pure signal maths between capture and the models: the YAMNet log-mel front end
//! ([`logmel`]) and CLIP/ImageNet-style image preparation ([`image`]).
//!
//! Ownership and threading: these are plain structs with no threads inside. The engine thread
//! builds one [`MelFrontend`] and one [`ImagePrep`] at start-up and calls `process` once per
//! segment; nothing here is shared or locked.
//!
//! Invariants:
//! - **No allocation after construction.** Every table (window, FFT plan, mel filterbank,
//!   resize coefficients) and every scratch buffer is built up front; `process` borrows its
//!   input and writes into a slice the caller owns. The one documented exception is
//!   [`ImagePrep`] meeting a frame size it has not seen before: it rebuilds its coefficient
//!   tables once for that size (and only grows them if the new size needs more room).
//! - **No I/O**, except [`load_rgb`], the file-decoding helper the CLI uses for photos.
//! - **Bit-for-bit recipes.** Each stage follows the reference implementation the models were
//!   trained with (TensorFlow's `tf.signal` for YAMNet, PIL + torchvision for CLIP), because the
//!   encoders are sensitive to small, systematic front-end differences. The goldens in
//!   `../shared/golden/` are the proof (see `tests/dsp.rs`).
//! - Wrong input shapes are errors ([`DspError`]) whose text names the expected form, never
//!   panics.

pub mod image;
pub mod logmel;
pub mod token_merge;

use std::path::PathBuf;

pub use self::image::{
    CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImagePrep, ImagePrepConfig, Rgb8Image,
    load_rgb,
};
pub use self::logmel::{MelFrontend, N_MELS, PATCH_FRAMES, PATCH_SAMPLES, SAMPLE_RATE_HZ};
pub use self::token_merge::{MergedTokens, TokenMergeError, TokenMerger};

/// Why a DSP stage refused its input. Callers branch on these (a short final chunk is
/// skipped, a bad config is reported), so this is a typed enum rather than `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum DspError {
    /// Less audio than one patch.
    #[error(
        "pcm has {got} samples, a log-mel patch needs at least {PATCH_SAMPLES} \
         (0.975 s at 16 kHz)"
    )]
    PcmTooShort {
        /// Samples supplied.
        got: usize,
    },
    /// The log-mel output slice has the wrong length.
    #[error(
        "out has len {got}, expected {PATCH_FRAMES} frames × {N_MELS} mels = {}",
        PATCH_FRAMES * N_MELS
    )]
    MelOutLen {
        /// Length supplied.
        got: usize,
    },
    /// The image output slice has the wrong length.
    #[error("out has len {got}, expected 3×{size}×{size} = {}", 3 * size * size)]
    ImageOutLen {
        /// Length supplied.
        got: usize,
        /// The configured square output side.
        size: usize,
    },
    /// A frame with no pixels.
    #[error("image is {width}×{height} px, it needs at least one pixel")]
    EmptyImage {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// Rows overlap: the stride cannot hold one row of packed RGB.
    #[error("image stride {stride_bytes} bytes is smaller than width×3 = {}", width * 3)]
    StrideTooSmall {
        /// Bytes from one row to the next.
        stride_bytes: usize,
        /// Width in pixels.
        width: usize,
    },
    /// The pixel buffer ends before the last row does.
    #[error(
        "rgb has {got} bytes, a {width}×{height} px image with stride {stride_bytes} needs \
         at least {needed} ((height-1)×stride + width×3)"
    )]
    RgbTooShort {
        /// Bytes supplied.
        got: usize,
        /// Bytes needed.
        needed: usize,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// Bytes from one row to the next.
        stride_bytes: usize,
    },
    /// An [`ImagePrepConfig`] that cannot produce a tensor.
    #[error(
        "image prep config: size must be at least 1 and every std finite and > 0 \
         (size {size}, std {std:?})"
    )]
    BadImageConfig {
        /// Configured output side.
        size: usize,
        /// Configured per-channel std.
        std: [f32; 3],
    },
    /// A photo could not be opened or decoded.
    #[error("decoding image {path}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        #[source]
        source: ::image::ImageError,
    },
}
