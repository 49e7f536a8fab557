//! One-second segment → features: log-mel and YAMNet for the audio, image preparation and
//! EfficientNet-Lite0 for the frame.
//!
//! This is the per-segment work of both `extract` and the daemon, so training and serving
//! share one code path. All buffers are allocated in [`Featurizer::new`]; the DSP stages do
//! not allocate per segment (proved by the counting-allocator test).

use anyhow::Context;

use crate::config::ModelsConfig;
use crate::dsp::{ImagePrep, ImagePrepConfig, MelFrontend, N_MELS, PATCH_FRAMES, PATCH_SAMPLES};
use crate::model::encoders::{AUDIO_CLASSES, AUDIO_DIM, TOKENS, VISUAL_DIM};
use crate::model::precision::Chosen;
use crate::model::{Encoders, ModelError};
use crate::segmenter::{Frame, Segment};

/// The features of one second, in buffers reused from second to second.
#[derive(Debug, Clone)]
pub struct SegmentFeatures {
    /// YAMNet embedding [1024].
    pub audio: Vec<f32>,
    /// YAMNet logits [521].
    pub audio_logits: Vec<f32>,
    /// EfficientNet-Lite0 pooled [1280].
    pub visual: Vec<f32>,
    /// EfficientNet-Lite0 7×7 grid [49, 1280].
    pub tokens: Vec<f32>,
    /// The second had a frame (its own or a repeated one); without one the visual features
    /// are zeros.
    pub has_frame: bool,
}

impl Default for SegmentFeatures {
    fn default() -> Self {
        SegmentFeatures {
            audio: vec![0.0; AUDIO_DIM],
            audio_logits: vec![0.0; AUDIO_CLASSES],
            visual: vec![0.0; VISUAL_DIM],
            tokens: vec![0.0; TOKENS * VISUAL_DIM],
            has_frame: false,
        }
    }
}

/// Owns the DSP front ends, the encoders and their scratch buffers.
#[derive(Debug)]
pub struct Featurizer {
    mel: MelFrontend,
    image: ImagePrep,
    encoders: Encoders,
    /// [96, 64] row-major log-mel patch.
    logmel: Vec<f32>,
    /// [3, size, size] prepared image.
    prepared: Vec<f32>,
}

impl Featurizer {
    /// Loads the encoders the config asks for and sizes every buffer.
    pub fn new(cfg: &ModelsConfig) -> anyhow::Result<Self> {
        let encoders = Encoders::load(cfg).context("loading the encoders")?;
        let pre = encoders.visual.preprocess().clone();
        let image = ImagePrep::new(ImagePrepConfig {
            size: pre.size,
            mean: pre.mean,
            std: pre.std,
        })
        .context("setting up image preparation from the visual model's manifest entry")?;
        Ok(Featurizer {
            mel: MelFrontend::new(),
            image,
            encoders,
            logmel: vec![0.0; PATCH_FRAMES * N_MELS],
            prepared: vec![0.0; 3 * pre.size * pre.size],
        })
    }

    /// Side of the square image the visual encoder takes (its manifest's `preprocess.size`).
    pub fn image_side(&self) -> usize {
        self.encoders.visual.preprocess().size
    }

    /// Which model files run, and why.
    pub fn chosen(&self) -> &[Chosen] {
        &self.encoders.chosen
    }

    /// Encodes one segment into `out`.
    pub fn process(&mut self, seg: &Segment, out: &mut SegmentFeatures) -> anyhow::Result<()> {
        self.audio(&seg.audio, out)?;
        match &seg.frame {
            Some(frame) => self.frame(frame, out)?,
            None => {
                out.visual.fill(0.0);
                out.tokens.fill(0.0);
                out.has_frame = false;
            }
        }
        Ok(())
    }

    /// Log-mel of the first 0.975 s (one YAMNet patch), then YAMNet.
    pub fn audio(&mut self, pcm: &[f32], out: &mut SegmentFeatures) -> anyhow::Result<()> {
        self.mel
            .process(&pcm[..PATCH_SAMPLES.min(pcm.len())], &mut self.logmel)
            .context("computing the log-mel patch")?;
        self.encoders
            .audio
            .embed(&self.logmel, &mut out.audio, Some(&mut out.audio_logits))
            .map_err(anyhow::Error::from)
    }

    /// Image preparation, then EfficientNet-Lite0.
    pub fn frame(&mut self, frame: &Frame, out: &mut SegmentFeatures) -> anyhow::Result<()> {
        self.prepare(frame)?;
        self.encode_prepared(out)?;
        out.has_frame = true;
        Ok(())
    }

    /// Image preparation only (for benchmarks).
    pub fn prepare(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.image
            .process(
                &frame.data,
                frame.width_px as usize,
                frame.height_px as usize,
                frame.stride_bytes,
                &mut self.prepared,
            )
            .context("preparing the frame")
    }

    /// Log-mel only (for benchmarks).
    pub fn logmel(&mut self, pcm: &[f32]) -> anyhow::Result<()> {
        self.mel
            .process(pcm, &mut self.logmel)
            .context("computing the log-mel patch")
    }

    /// YAMNet on the last log-mel patch (for benchmarks).
    pub fn encode_logmel(&mut self, out: &mut SegmentFeatures) -> Result<(), ModelError> {
        self.encoders
            .audio
            .embed(&self.logmel, &mut out.audio, Some(&mut out.audio_logits))
    }

    /// EfficientNet-Lite0 on the last prepared image.
    pub fn encode_prepared(&mut self, out: &mut SegmentFeatures) -> Result<(), ModelError> {
        self.encoders
            .visual
            .embed(&self.prepared, &mut out.visual, &mut out.tokens)
    }
}
