//! The two per-second encoders with typed inputs and outputs:
//! YAMNet (log-mel patch → 1024-d embedding, 521 logits) and EfficientNet-Lite0
//! (prepared image → 1280-d pooled feature, 7×7×1280 token grid).

use super::manifest::{Manifest, PreprocessSpec};
use super::precision::{self, Chosen};
use super::{Model, ModelError};
use crate::config::ModelsConfig;

/// Logical name of the audio encoder in the manifest.
pub const AUDIO_MODEL: &str = "yamnet";
/// Logical name of the visual encoder in the manifest.
pub const VISUAL_MODEL: &str = "efficientnet_lite0";

/// YAMNet embedding width.
pub const AUDIO_DIM: usize = 1024;
/// YAMNet classes (AudioSet).
pub const AUDIO_CLASSES: usize = 521;
/// EfficientNet-Lite0 pooled width.
pub const VISUAL_DIM: usize = 1280;
/// Tokens per frame: a 7×7 grid over the last feature map (its 2×2 means at side 448).
pub const TOKENS: usize = 49;

/// YAMNet: `logmel` [N, 1, 96, 64] → `embedding` [N, 1024], `logits` [N, 521].
#[derive(Debug)]
pub struct AudioEncoder {
    model: Model,
    embedding: usize,
    logits: usize,
}

impl AudioEncoder {
    /// Wraps a loaded YAMNet model (checks it has the outputs we read).
    pub fn new(model: Model) -> Result<Self, ModelError> {
        let embedding = output_index(&model, "embedding", AUDIO_DIM)?;
        let logits = output_index(&model, "logits", AUDIO_CLASSES)?;
        Ok(AudioEncoder {
            model,
            embedding,
            logits,
        })
    }

    /// Embeds one log-mel patch ([96, 64] row-major) into `embedding` (1024) and, when given,
    /// `logits` (521).
    pub fn embed(
        &mut self,
        logmel: &[f32],
        embedding: &mut [f32],
        logits: Option<&mut [f32]>,
    ) -> Result<(), ModelError> {
        // [1, 1, 96, 64] f32
        self.model.run(&[(&[1, 1, 96, 64], logmel)])?;
        copy_out(&self.model, self.embedding, embedding)?;
        if let Some(logits) = logits {
            copy_out(&self.model, self.logits, logits)?;
        }
        Ok(())
    }

    /// The underlying model (id, entry).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// EfficientNet-Lite0: `image` [N, 3, S, S] → `pooled` [N, 1280], `tokens` [N, 49, 1280]
/// (S = the manifest's `preprocess.size`: 224, or 448 from `build.sh --visual-side 448`).
#[derive(Debug)]
pub struct VisualEncoder {
    model: Model,
    pooled: usize,
    tokens: usize,
    preprocess: PreprocessSpec,
}

impl VisualEncoder {
    /// Wraps a loaded EfficientNet-Lite0 model (checks its outputs and preprocessing entry).
    pub fn new(model: Model) -> Result<Self, ModelError> {
        let pooled = output_index(&model, "pooled", VISUAL_DIM)?;
        let tokens = output_index(&model, "tokens", TOKENS * VISUAL_DIM)?;
        let preprocess = model
            .entry()
            .preprocess
            .clone()
            .ok_or_else(|| ModelError::Contract {
                model: model.entry().id(),
                tensor: "[model.preprocess]".into(),
                expected: "size, mean and std for image preparation".into(),
                actual: "missing".into(),
            })?;
        Ok(VisualEncoder {
            model,
            pooled,
            tokens,
            preprocess,
        })
    }

    /// How frames must be prepared for this model.
    pub fn preprocess(&self) -> &PreprocessSpec {
        &self.preprocess
    }

    /// Encodes one prepared image ([3, S, S] CHW) into `pooled` (1280) and `tokens`
    /// (49 × 1280, row-major over the grid).
    pub fn embed(
        &mut self,
        image: &[f32],
        pooled: &mut [f32],
        tokens: &mut [f32],
    ) -> Result<(), ModelError> {
        let side = self.preprocess.size;
        // [1, 3, side, side] f32
        self.model.run(&[(&[1, 3, side, side], image)])?;
        copy_out(&self.model, self.pooled, pooled)?;
        copy_out(&self.model, self.tokens, tokens)
    }

    /// The underlying model (id, entry).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// Both encoders, at the precision the config asks for.
#[derive(Debug)]
pub struct Encoders {
    /// YAMNet.
    pub audio: AudioEncoder,
    /// EfficientNet-Lite0.
    pub visual: VisualEncoder,
    /// Why each precision was chosen (for logs and `status`).
    pub chosen: [Chosen; 2],
}

impl Encoders {
    /// Reads the manifest in `cfg.dir`, picks each model's precision and loads both.
    pub fn load(cfg: &ModelsConfig) -> Result<Self, ModelError> {
        let manifest = Manifest::load(&cfg.dir)?;
        let audio_choice = precision::choose(
            &manifest,
            AUDIO_MODEL,
            cfg.audio_precision,
            cfg.int8_min_cosine,
            cfg.auto_fp32_min_speedup,
        )?;
        let visual_choice = precision::choose(
            &manifest,
            VISUAL_MODEL,
            cfg.visual_precision,
            cfg.int8_min_cosine,
            cfg.auto_fp32_min_speedup,
        )?;
        let audio = AudioEncoder::new(Model::load(&manifest, &audio_choice.entry, 1)?)?;
        let visual = VisualEncoder::new(Model::load(&manifest, &visual_choice.entry, 1)?)?;
        for c in [&audio_choice, &visual_choice] {
            tracing::info!(model = %c.entry.id(), reason = %c.reason, "model loaded");
        }
        Ok(Encoders {
            audio,
            visual,
            chosen: [audio_choice, visual_choice],
        })
    }
}

fn output_index(model: &Model, name: &str, row_len: usize) -> Result<usize, ModelError> {
    let entry = model.entry();
    match entry.output(name) {
        Some((i, spec)) if spec.row_len() == row_len => Ok(i),
        found => Err(ModelError::Contract {
            model: entry.id(),
            tensor: format!("output {name:?}"),
            expected: format!("{row_len} values per batch row"),
            actual: match found {
                Some((_, spec)) => spec.shape_string(),
                None => "absent".into(),
            },
        }),
    }
}

fn copy_out(model: &Model, index: usize, out: &mut [f32]) -> Result<(), ModelError> {
    let data = model.output(index)?;
    if data.len() != out.len() {
        return Err(ModelError::Contract {
            model: model.entry().id(),
            tensor: format!("output {index}"),
            expected: format!("{} values", out.len()),
            actual: format!("{} values", data.len()),
        });
    }
    out.copy_from_slice(data);
    Ok(())
}
