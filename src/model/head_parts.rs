//! The TSPM head as the runtime runs it: three tract plans at three rates
//! (`models/tspm_parts.py`).
//!
//! - `tspm_second`, once per second as it enters the window: the question-independent work of
//!   that second (projections, the spatial attention over its merged tokens, keys and values
//!   for the question attention), packed into one row of [`HeadParts::row_len`] values;
//! - `tspm_window`, once per window version: the audio-visual attention over all seconds,
//!   reduced to a context vector (the AV means' share of the answer MLP's fusion layer, the
//!   same for every question);
//! - `tspm_question`, per question: the prompt's temporal attention over the precomputed keys,
//!   the top-k selection, the question's attention over the selected seconds and the answer.
//!
//! Composed they compute exactly what the whole head (`tspm_head`) computes; the model build
//! checks that in onnxruntime and `tests/head.rs` checks it in tract against the whole head's
//! outputs.
//!
//! The window and question parts each read only their own columns of a row — the question
//! part the row's first [`HeadParts::question_columns`], the window part its last
//! [`HeadParts::window_columns`] (the widths come from the manifest) — so each run copies only
//! those into tract: the caller keeps each part's columns of the window's rows contiguous
//! (`[T × width]`, see [`HeadParts::part_rows`] and [`crate::window::Window`]).

use std::ops::Range;

use super::head::{HeadInputs, HeadOutputs, MERGED_TOKENS, SELECTED, TEXT_DIM};
use super::manifest::{Manifest, ModelEntry};
use super::{Input, Model, ModelError};

/// Logical name of the per-second part in the manifest.
pub const SECOND_PART: &str = "tspm_second";
/// Logical name of the per-window part.
pub const WINDOW_PART: &str = "tspm_window";
/// Logical name of the per-question part.
pub const QUESTION_PART: &str = "tspm_question";

const AUDIO_DIM: usize = 1024;
const VISUAL_DIM: usize = 1280;

/// The three loaded parts with their live tract states.
#[derive(Debug)]
pub struct HeadParts {
    second: Model,
    window: Model,
    question: Model,
    seconds: usize,
    row_len: usize,
    question_columns: Range<usize>,
    window_columns: Range<usize>,
    context_len: usize,
    answers: usize,
}

impl HeadParts {
    /// Loads the three parts at `precision` for windows of `seconds` (≥ k) seconds.
    pub fn load(manifest: &Manifest, precision: &str, seconds: usize) -> Result<Self, ModelError> {
        Self::load_with(manifest, precision, seconds, &[])
    }

    /// [`HeadParts::load`] with tract model transforms, as [`Model::load_with`] takes them
    /// (for `bench --transform`).
    pub fn load_with(
        manifest: &Manifest,
        precision: &str,
        seconds: usize,
        transforms: &[String],
    ) -> Result<Self, ModelError> {
        let find = |name: &str| {
            manifest
                .find(name, precision)
                .ok_or_else(|| ModelError::NotInManifest {
                    dir: manifest.dir.clone(),
                    name: name.into(),
                    precision: precision.into(),
                })
        };
        let (s, w, q) = (find(SECOND_PART)?, find(WINDOW_PART)?, find(QUESTION_PART)?);
        if seconds < SELECTED {
            return Err(ModelError::Contract {
                model: q.id(),
                tensor: "window length T".into(),
                expected: format!("at least {SELECTED} seconds (the head selects {SELECTED})"),
                actual: seconds.to_string(),
            });
        }
        let row_len = out_len(s, "packed")?;
        let question_width = in_len(q, "packed", row_len)?;
        let window_width = in_len(w, "packed", row_len)?;
        let context_len = out_len(w, "context")?;
        let answers = out_len(q, "logits")?;
        let dims = [("N", 1), ("T", seconds)];
        Ok(HeadParts {
            second: Model::load_sized(manifest, s, &[("N", 1)], transforms)?,
            window: Model::load_sized(manifest, w, &dims, transforms)?,
            question: Model::load_sized(manifest, q, &dims, transforms)?,
            seconds,
            row_len,
            question_columns: 0..question_width,
            window_columns: row_len - window_width..row_len,
            context_len,
            answers,
        })
    }

    /// Loads the parts at the precision `choice` picks (see
    /// [`super::precision::choose_head`]); also returns why.
    pub fn load_chosen(
        manifest: &Manifest,
        choice: crate::config::PrecisionChoice,
        int8_min_agreement: f32,
        fp32_min_speedup: f32,
        seconds: usize,
    ) -> Result<(Self, super::precision::Chosen), ModelError> {
        let chosen = super::precision::choose_head(
            manifest,
            choice,
            int8_min_agreement,
            fp32_min_speedup,
            seconds,
        )?;
        let head = Self::load(manifest, &chosen.entry.precision, seconds)?;
        Ok((head, chosen))
    }

    /// The window length T the plans were built for.
    pub fn seconds(&self) -> usize {
        self.seconds
    }

    /// Values in one second's row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// The columns of a row the question part reads (the row's first ones).
    pub fn question_columns(&self) -> Range<usize> {
        self.question_columns.clone()
    }

    /// The columns of a row the window part reads (the row's last ones).
    pub fn window_columns(&self) -> Range<usize> {
        self.window_columns.clone()
    }

    /// Each part's columns of `rows` ([T × row]), contiguous: (window rows [T × window
    /// width], question rows [T × question width]), what [`HeadParts::context`] and
    /// [`HeadParts::question`] take. For files and checks; the daemon's window keeps them so
    /// as it adds each second.
    pub fn part_rows(&self, rows: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let pick = |cols: &Range<usize>| -> Vec<f32> {
            rows.chunks_exact(self.row_len)
                .flat_map(|row| &row[cols.clone()])
                .copied()
                .collect()
        };
        (pick(&self.window_columns), pick(&self.question_columns))
    }

    /// Values in the window's context vector.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// Number of answers (A).
    pub fn answers(&self) -> usize {
        self.answers
    }

    /// The three manifest entries: second, window, question.
    pub fn entries(&self) -> [&ModelEntry; 3] {
        [
            self.second.entry(),
            self.window.entry(),
            self.question.entry(),
        ]
    }

    /// A short id of the head for answers and status, e.g. `tspm_parts.fp32`.
    pub fn id(&self) -> String {
        format!("tspm_parts.{}", self.question.entry().precision)
    }

    /// One second's row: `audio` [1024], `visual` [1280], `patches` [14 × 1280] → `row`.
    pub fn second(
        &mut self,
        audio: &[f32],
        visual: &[f32],
        patches: &[f32],
        row: &mut [f32],
    ) -> Result<(), ModelError> {
        self.check_len("row buffer", row.len(), self.row_len)?;
        self.second.run_inputs(&[
            Input::F32(&[1, AUDIO_DIM], audio),
            Input::F32(&[1, VISUAL_DIM], visual),
            Input::F32(&[1, MERGED_TOKENS, VISUAL_DIM], patches),
        ])?;
        row.copy_from_slice(self.second.output_by_name("packed")?);
        Ok(())
    }

    /// The window's context from the window part's columns of its rows [T × window width]
    /// and validity [T] → `context`.
    pub fn context(
        &mut self,
        rows: &[f32],
        valid: &[f32],
        context: &mut [f32],
    ) -> Result<(), ModelError> {
        self.check_len("context buffer", context.len(), self.context_len)?;
        self.check_valid(valid)?;
        let t = self.seconds;
        self.window.run_inputs(&[
            Input::F32(&[1, t, self.window_columns.len()], rows),
            Input::F32(&[1, t], valid),
        ])?;
        context.copy_from_slice(self.window.output_by_name("context")?);
        Ok(())
    }

    /// Answers one question over the question part's columns of the window's rows [T ×
    /// question width], the validity and the context.
    pub fn question(
        &mut self,
        rows: &[f32],
        valid: &[f32],
        context: &[f32],
        question: &[f32],
        prompt: &[f32],
    ) -> Result<HeadOutputs, ModelError> {
        self.check_valid(valid)?;
        let t = self.seconds;
        self.question.run_inputs(&[
            Input::F32(&[1, t, self.question_columns.len()], rows),
            Input::F32(&[1, t], valid),
            Input::F32(&[1, self.context_len], context),
            Input::F32(&[1, TEXT_DIM], question),
            Input::F32(&[1, TEXT_DIM], prompt),
        ])?;
        let selected_index = self
            .question
            .entry()
            .output("selected")
            .map(|(i, _)| i)
            .ok_or_else(|| ModelError::Contract {
                model: self.question.entry().id(),
                tensor: "output \"selected\"".into(),
                expected: "an output named selected".into(),
                actual: "absent".into(),
            })?;
        Ok(HeadOutputs {
            logits: self.question.output_by_name("logits")?.to_vec(),
            temporal_weights: self.question.output_by_name("temporal_weights")?.to_vec(),
            selected: self.question.output_i64(selected_index)?.to_vec(),
            spm_attention: self.question.output_by_name("spm_attention")?.to_vec(),
        })
    }

    /// Profiles the three parts node by node (tract's profiler, `bench --profile`; needs the
    /// `profile` cargo feature): the second part on `second` (audio, visual, patches of one
    /// second), the window and question parts on these window inputs (`rows` as
    /// [`HeadParts::part_rows`] gives them: window rows, question rows).
    pub fn profile(
        &self,
        second: (&[f32], &[f32], &[f32]),
        rows: (&[f32], &[f32]),
        valid: &[f32],
        context: &[f32],
        question: &[f32],
        prompt: &[f32],
    ) -> Result<[super::Profile; 3], ModelError> {
        let t = self.seconds;
        let window_rows = Input::F32(&[1, t, self.window_columns.len()], rows.0);
        let question_rows = Input::F32(&[1, t, self.question_columns.len()], rows.1);
        let valid = Input::F32(&[1, t], valid);
        let (audio, visual, patches) = second;
        Ok([
            self.second.profile_inputs(&[
                Input::F32(&[1, AUDIO_DIM], audio),
                Input::F32(&[1, VISUAL_DIM], visual),
                Input::F32(&[1, MERGED_TOKENS, VISUAL_DIM], patches),
            ])?,
            self.window.profile_inputs(&[window_rows, valid])?,
            self.question.profile_inputs(&[
                question_rows,
                valid,
                Input::F32(&[1, self.context_len], context),
                Input::F32(&[1, TEXT_DIM], question),
                Input::F32(&[1, TEXT_DIM], prompt),
            ])?,
        ])
    }

    /// The whole head on raw features, as the runtime composes it: a row per valid second
    /// (zeros for invalid ones), the context, the question. For files (`answer`) and checks;
    /// the daemon keeps the rows in its window instead.
    pub fn run(&mut self, x: &HeadInputs<'_>) -> Result<HeadOutputs, ModelError> {
        let (question_rows, context) = self.window_of(x)?;
        self.question(&question_rows, x.valid, &context, x.question, x.prompt)
    }

    /// The question-independent work of [`HeadParts::run`] on `x`'s features (its question
    /// and prompt are not read): the question part's rows [T × question width] and the
    /// window's context, which every question about the same seconds reuses.
    pub fn window_of(&mut self, x: &HeadInputs<'_>) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let t = self.seconds;
        self.check_len("valid", x.valid.len(), t)?;
        self.check_len("audio", x.audio.len(), t * AUDIO_DIM)?;
        self.check_len("visual", x.visual.len(), t * VISUAL_DIM)?;
        self.check_len("patches", x.patches.len(), t * MERGED_TOKENS * VISUAL_DIM)?;
        let n = self.row_len;
        let mut rows = vec![0.0f32; t * n];
        let patch = MERGED_TOKENS * VISUAL_DIM;
        for (s, row) in rows.chunks_exact_mut(n).enumerate() {
            if x.valid[s] > 0.5 {
                self.second(
                    &x.audio[s * AUDIO_DIM..(s + 1) * AUDIO_DIM],
                    &x.visual[s * VISUAL_DIM..(s + 1) * VISUAL_DIM],
                    &x.patches[s * patch..(s + 1) * patch],
                    row,
                )?;
            }
        }
        let (window_rows, question_rows) = self.part_rows(&rows);
        let mut context = vec![0.0f32; self.context_len];
        self.context(&window_rows, x.valid, &mut context)?;
        Ok((question_rows, context))
    }

    fn check_len(&self, what: &str, got: usize, want: usize) -> Result<(), ModelError> {
        if got == want {
            return Ok(());
        }
        Err(ModelError::InputShape {
            model: self.question.entry().id(),
            tensor: what.into(),
            expected: format!("{want} values"),
            actual: vec![got],
        })
    }

    fn check_valid(&self, valid: &[f32]) -> Result<(), ModelError> {
        self.check_len("valid", valid.len(), self.seconds)?;
        if valid.iter().any(|&v| v > 0.5) {
            return Ok(());
        }
        Err(ModelError::Contract {
            model: self.question.entry().id(),
            tensor: "input \"valid\"".into(),
            expected: "at least one valid second".into(),
            actual: "none".into(),
        })
    }
}

/// The width of `entry`'s input `name` (its last dim): a part's columns of a row of
/// `row_len` values.
fn in_len(entry: &ModelEntry, name: &str, row_len: usize) -> Result<usize, ModelError> {
    let spec = entry.inputs.iter().find(|t| t.name == name);
    match spec.and_then(|spec| spec.shape.last()) {
        Some(&super::manifest::Dim::Fixed(w)) if w > 0 && w <= row_len => Ok(w),
        _ => Err(ModelError::Contract {
            model: entry.id(),
            tensor: format!("input {name:?}"),
            expected: format!(
                "an input named {name:?} whose last dim is 1..={row_len} (columns of the \
                 per-second part's rows)"
            ),
            actual: spec.map_or("absent".into(), |t| t.shape_string()),
        }),
    }
}

/// The row length of `entry`'s output `name` (its last dims).
fn out_len(entry: &ModelEntry, name: &str) -> Result<usize, ModelError> {
    entry
        .output(name)
        .map(|(_, spec)| spec.row_len())
        .ok_or_else(|| ModelError::Contract {
            model: entry.id(),
            tensor: format!("output {name:?}"),
            expected: format!("an output named {name:?}"),
            actual: "absent".into(),
        })
}

/// Median milliseconds of what a busy daemon runs per new second: the per-second part for that
/// second, then the window part and one question over `seconds` seconds of deterministic
/// rows; after one warm-up, at most ~3 s of runs. (The per-second part counts: it runs every
/// second whether or not anyone asks, and its int8 form can be the slower one while the
/// others are faster.)
pub fn time_parts(manifest: &Manifest, precision: &str, seconds: usize) -> Result<f64, ModelError> {
    let mut head = HeadParts::load(manifest, precision, seconds)?;
    let x = super::head::SyntheticWindow::new(seconds);
    let inputs = x.inputs();
    head.run(&inputs)?;
    let valid = vec![1.0f32; seconds];
    let (window_rows, question_rows) = head.part_rows(&vec![0.01f32; seconds * head.row_len]);
    let q = inputs.question.to_vec();
    let (audio, visual, patches) = inputs.second(0);
    let mut row = vec![0.0f32; head.row_len];
    let mut context = vec![0.0f32; head.context_len];
    let mut times = Vec::new();
    let budget = std::time::Instant::now();
    for _ in 0..7 {
        let t = std::time::Instant::now();
        head.second(audio, visual, patches, &mut row)?;
        head.context(&window_rows, &valid, &mut context)?;
        head.question(&question_rows, &valid, &context, &q, &q)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if budget.elapsed().as_secs() >= 3 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
