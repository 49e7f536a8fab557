//! The TSPM answer head in tract: a window of T per-second features plus the question and
//! prompt embeddings → answer logits, with the explanation outputs (temporal weights, the k
//! selected seconds, the spatial attention over merged tokens).
//!
//! The plan is built for one window length T (the rolling window's capacity); missing
//! seconds are marked with `valid = 0` rather than by changing T.

use super::encoders::{AUDIO_DIM, VISUAL_DIM};
use super::manifest::Manifest;
use super::{Input, Model, ModelError};

/// Logical name of the head in the manifest.
pub const HEAD_MODEL: &str = "tspm_head";
/// Seconds the head selects (the paper's k).
pub const SELECTED: usize = 10;
/// Merged tokens per second.
pub const MERGED_TOKENS: usize = 14;
/// Question / prompt embedding width (MiniLM-L6).
pub const TEXT_DIM: usize = 384;

/// The inputs of one question over one window, borrowed from their owners.
#[derive(Debug, Clone, Copy)]
pub struct HeadInputs<'a> {
    /// [T, 1024] audio embeddings.
    pub audio: &'a [f32],
    /// [T, 1280] pooled visual features.
    pub visual: &'a [f32],
    /// [T, 14, 1280] merged tokens.
    pub patches: &'a [f32],
    /// [384] question embedding.
    pub question: &'a [f32],
    /// [384] prompt embedding.
    pub prompt: &'a [f32],
    /// [T] 1 for a real second, 0 for a missing one.
    pub valid: &'a [f32],
}

impl<'a> HeadInputs<'a> {
    /// Second `t`'s audio, pooled visual and merged-token slices: what the per-second part
    /// reads.
    pub fn second(&self, t: usize) -> (&'a [f32], &'a [f32], &'a [f32]) {
        let (a, v, p) = (AUDIO_DIM, VISUAL_DIM, MERGED_TOKENS * VISUAL_DIM);
        (
            &self.audio[t * a..(t + 1) * a],
            &self.visual[t * v..(t + 1) * v],
            &self.patches[t * p..(t + 1) * p],
        )
    }
}

/// What the head says about one question.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOutputs {
    /// [A] answer logits.
    pub logits: Vec<f32>,
    /// [T] temporal attention of the prompt over the seconds.
    pub temporal_weights: Vec<f32>,
    /// [k] selected seconds, in time order.
    pub selected: Vec<i64>,
    /// [k, 14] attention of each selected second's sound over its merged tokens.
    pub spm_attention: Vec<f32>,
}

/// The loaded head with its live tract state.
#[derive(Debug)]
pub struct Head {
    model: Model,
    seconds: usize,
    answers: usize,
}

impl Head {
    /// Loads the head at `precision` for windows of `seconds` (≥ k) seconds.
    pub fn load(manifest: &Manifest, precision: &str, seconds: usize) -> Result<Self, ModelError> {
        let entry =
            manifest
                .find(HEAD_MODEL, precision)
                .ok_or_else(|| ModelError::NotInManifest {
                    dir: manifest.dir.clone(),
                    name: HEAD_MODEL.into(),
                    precision: precision.into(),
                })?;
        Self::load_entry(manifest, entry, seconds)
    }

    /// Loads the head file of `entry` for windows of `seconds` (≥ k) seconds.
    pub fn load_entry(
        manifest: &Manifest,
        entry: &super::manifest::ModelEntry,
        seconds: usize,
    ) -> Result<Self, ModelError> {
        if seconds < SELECTED {
            return Err(ModelError::Contract {
                model: entry.id(),
                tensor: "window length T".into(),
                expected: format!("at least {SELECTED} seconds (the head selects {SELECTED})"),
                actual: seconds.to_string(),
            });
        }
        let model = Model::load_sized(manifest, entry, &[("N", 1), ("T", seconds)], &[])?;
        let answers = entry
            .output("logits")
            .map(|(_, spec)| spec.row_len())
            .ok_or_else(|| ModelError::Contract {
                model: entry.id(),
                tensor: "output \"logits\"".into(),
                expected: "an output named logits".into(),
                actual: "absent".into(),
            })?;
        Ok(Head {
            model,
            seconds,
            answers,
        })
    }

    /// The window length T the plan was built for.
    pub fn seconds(&self) -> usize {
        self.seconds
    }

    /// Number of answers (A).
    pub fn answers(&self) -> usize {
        self.answers
    }

    /// The model (id, manifest entry).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs the head; the shapes are checked against the manifest before tract sees them.
    pub fn run(&mut self, x: &HeadInputs<'_>) -> Result<HeadOutputs, ModelError> {
        let t = self.seconds;
        if !x.valid.iter().any(|&v| v > 0.5) {
            return Err(ModelError::Contract {
                model: self.model.entry().id(),
                tensor: "input \"valid\"".into(),
                expected: "at least one valid second".into(),
                actual: "none".into(),
            });
        }
        self.model.run_inputs(&[
            Input::F32(&[1, t, 1024], x.audio),
            Input::F32(&[1, t, 1280], x.visual),
            Input::F32(&[1, t, MERGED_TOKENS, 1280], x.patches),
            Input::F32(&[1, TEXT_DIM], x.question),
            Input::F32(&[1, TEXT_DIM], x.prompt),
            Input::F32(&[1, t], x.valid),
        ])?;
        Ok(HeadOutputs {
            logits: self.model.output_by_name("logits")?.to_vec(),
            temporal_weights: self.model.output_by_name("temporal_weights")?.to_vec(),
            selected: self.output_i64("selected")?.to_vec(),
            spm_attention: self.model.output_by_name("spm_attention")?.to_vec(),
        })
    }

    fn output_i64(&self, name: &str) -> Result<&[i64], ModelError> {
        let index = self
            .model
            .entry()
            .output(name)
            .map(|(i, _)| i)
            .ok_or_else(|| ModelError::Contract {
                model: self.model.entry().id(),
                tensor: format!("output {name:?}"),
                expected: format!("an output named {name:?}"),
                actual: "absent".into(),
            })?;
        self.model.output_i64(index)
    }
}

/// Deterministic, non-degenerate head inputs for timing: ReLU-like features that differ per
/// second (so the top-k has no ties) and unit-length question and prompt vectors.
#[derive(Debug, Clone)]
pub struct SyntheticWindow {
    audio: Vec<f32>,
    visual: Vec<f32>,
    patches: Vec<f32>,
    question: Vec<f32>,
    prompt: Vec<f32>,
    valid: Vec<f32>,
}

impl SyntheticWindow {
    /// Features for `seconds` seconds.
    pub fn new(seconds: usize) -> Self {
        let wave = |n: usize, salt: usize| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 1009;
                    (h as f32 / 1009.0 - 0.4).max(0.0)
                })
                .collect()
        };
        let unit = |salt: usize| -> Vec<f32> {
            let v: Vec<f32> = wave(TEXT_DIM, salt).iter().map(|x| x - 0.15).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            v.iter().map(|x| x / norm).collect()
        };
        SyntheticWindow {
            audio: wave(seconds * 1024, 1),
            visual: wave(seconds * 1280, 2),
            patches: wave(seconds * MERGED_TOKENS * 1280, 3),
            question: unit(4),
            prompt: unit(5),
            valid: vec![1.0; seconds],
        }
    }

    /// The head's inputs, borrowed.
    pub fn inputs(&self) -> HeadInputs<'_> {
        HeadInputs {
            audio: &self.audio,
            visual: &self.visual,
            patches: &self.patches,
            question: &self.question,
            prompt: &self.prompt,
            valid: &self.valid,
        }
    }
}

/// The head's answer vocabulary: the file its fp32 manifest entry names (`answers`), one
/// answer per line, logit index = line index.
pub fn answer_vocabulary(manifest: &Manifest) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let entry = manifest
        .find(HEAD_MODEL, "fp32")
        .context("the manifest has no fp32 tspm_head (run `bash models/build.sh`)")?;
    let file = entry
        .extra
        .get("answers")
        .and_then(|v| v.as_str())
        .context("the tspm_head manifest entry names no answers file")?;
    let path = manifest.dir.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the answer vocabulary {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Probabilities from logits (numerically stable).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|&e| e / sum).collect()
}
