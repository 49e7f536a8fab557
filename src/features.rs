//! Per-second feature sets and the `.npz` file `extract` writes (read by Python with
//! `numpy.load`).
//!
//! Arrays: `audio` [T, 1024] (YAMNet embedding), `audio_logits` [T, 521], `visual` [T, 1280]
//! (EfficientNet-Lite0 pooled), `tokens` [T, 49, 1280] (its 7×7 grid), `pts_s` [T] (segment
//! start in seconds), `has_frame` [T] (1 when the second had its own or a repeated frame).

use std::path::Path;

use anyhow::Context;
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::NpzWriter;

use crate::model::encoders::{AUDIO_CLASSES, AUDIO_DIM, TOKENS, VISUAL_DIM};

/// Features of many seconds, appended one second at a time.
#[derive(Debug, Default)]
pub struct FeatureSet {
    audio: Vec<f32>,
    audio_logits: Vec<f32>,
    visual: Vec<f32>,
    tokens: Vec<f32>,
    pts_s: Vec<f64>,
    has_frame: Vec<u8>,
}

impl FeatureSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of seconds held.
    pub fn len(&self) -> usize {
        self.pts_s.len()
    }

    /// Whether no second is held.
    pub fn is_empty(&self) -> bool {
        self.pts_s.is_empty()
    }

    /// Appends one second. Slices must have the encoder widths.
    pub fn push(
        &mut self,
        pts_s: f64,
        audio: &[f32],
        audio_logits: &[f32],
        visual: &[f32],
        tokens: &[f32],
        has_frame: bool,
    ) {
        debug_assert_eq!(audio.len(), AUDIO_DIM);
        debug_assert_eq!(audio_logits.len(), AUDIO_CLASSES);
        debug_assert_eq!(visual.len(), VISUAL_DIM);
        debug_assert_eq!(tokens.len(), TOKENS * VISUAL_DIM);
        self.audio.extend_from_slice(audio);
        self.audio_logits.extend_from_slice(audio_logits);
        self.visual.extend_from_slice(visual);
        self.tokens.extend_from_slice(tokens);
        self.pts_s.push(pts_s);
        self.has_frame.push(u8::from(has_frame));
    }

    /// The audio embedding of second `t`.
    pub fn audio(&self, t: usize) -> &[f32] {
        &self.audio[t * AUDIO_DIM..(t + 1) * AUDIO_DIM]
    }

    /// The pooled visual feature of second `t`.
    pub fn visual(&self, t: usize) -> &[f32] {
        &self.visual[t * VISUAL_DIM..(t + 1) * VISUAL_DIM]
    }

    /// The 7×7 token grid of second `t`, [49, 1280].
    pub fn tokens(&self, t: usize) -> &[f32] {
        let row = TOKENS * VISUAL_DIM;
        &self.tokens[t * row..(t + 1) * row]
    }

    /// The start of second `t`, in seconds.
    pub fn pts_s(&self, t: usize) -> f64 {
        self.pts_s[t]
    }

    /// Writes the set as an uncompressed `.npz`.
    pub fn write_npz(&self, path: &Path) -> anyhow::Result<()> {
        let t = self.len();
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating feature file {}", path.display()))?;
        let mut npz = NpzWriter::new(file);
        let shape_err = || format!("shaping features for {}", path.display());
        let write = |npz: &mut NpzWriter<std::fs::File>| -> anyhow::Result<()> {
            npz.add_array(
                "audio",
                &Array2::from_shape_vec((t, AUDIO_DIM), self.audio.clone())
                    .with_context(shape_err)?,
            )?;
            npz.add_array(
                "audio_logits",
                &Array2::from_shape_vec((t, AUDIO_CLASSES), self.audio_logits.clone())
                    .with_context(shape_err)?,
            )?;
            npz.add_array(
                "visual",
                &Array2::from_shape_vec((t, VISUAL_DIM), self.visual.clone())
                    .with_context(shape_err)?,
            )?;
            npz.add_array(
                "tokens",
                &Array3::from_shape_vec((t, TOKENS, VISUAL_DIM), self.tokens.clone())
                    .with_context(shape_err)?,
            )?;
            npz.add_array("pts_s", &Array1::from_vec(self.pts_s.clone()))?;
            npz.add_array("has_frame", &Array1::from_vec(self.has_frame.clone()))?;
            Ok(())
        };
        write(&mut npz).with_context(|| format!("writing feature file {}", path.display()))?;
        npz.finish()
            .with_context(|| format!("finishing feature file {}", path.display()))?;
        Ok(())
    }
}
