//! `tspm-edge eval`: accuracy of the TSPM head in tract, through the runtime's own path, on
//! an evaluation set of question records over feature files.
//!
//! The set is the JSONL that `models/data/make_dataset.py` writes (`DIR/test.jsonl`): one
//! object per question with at least `npz` (features written by `tspm-edge extract`),
//! `question_id`, `type` (`["Audio-Visual", "Temporal"]`), `question_content` (the template),
//! `templ_values` (a JSON list) and `answer`. Per clip the features are read back, each
//! second's 7×7 grid is merged to 14 tokens ([`TokenMerger`]); per question the template is
//! filled and the prompt built ([`Question::from_template`]), both are embedded
//! ([`TextEncoder`]) and the head runs over the whole clip as one window (T = the clip's
//! seconds, at least k = 10, padded with invalid seconds) — what `answer` does, minus the
//! media decoding: by default the head's three parts as `serve` and `answer` run them
//! ([`HeadParts`]), or the whole head file (`--head whole`). Prints accuracy per question type and overall as JSON, per precision, and
//! how often int8 gives fp32's answer.
//!
//! Runs on the calling thread; clips are taken in order of their length so that one head
//! plan per precision is alive at a time (a plan is built for one T).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::NpzReader;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::dsp::{MergedTokens, TokenMerger};
use crate::model::Manifest;
use crate::model::ModelError;
use crate::model::encoders::{AUDIO_DIM, TOKENS, VISUAL_DIM};
use crate::model::head::{Head, HeadInputs, HeadOutputs, MERGED_TOKENS, SELECTED, TEXT_DIM};
use crate::model::head_parts::HeadParts;
use crate::model::text::TextEncoder;
use crate::prompts::Question;

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Evaluation set, JSONL: one question per line with `npz`, `question_id`, `type`,
    /// `question_content`, `templ_values`, `answer` (models/data/make_dataset.py writes
    /// `~/.cache/tspm-edge/data/test.jsonl`).
    pub set: PathBuf,
    /// Head precisions to evaluate, comma-separated (`fp32`, `int8`).
    #[arg(long, value_delimiter = ',', default_value = "fp32,int8")]
    pub precision: Vec<String>,
    /// Which form of the head: `parts` (the three parts `serve` and `answer` run) or `whole`
    /// (the single head file).
    #[arg(long, value_enum, default_value_t = HeadForm::Parts)]
    pub head: HeadForm,
    /// Evaluate only the first N clips of the set (in file order).
    #[arg(long, value_name = "N")]
    pub max_clips: Option<usize>,
    /// Also write one JSON line per question (question_id, answer, and the answer of each
    /// precision) to this file.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
}

/// The form of the head `eval` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadForm {
    /// `tspm_second` + `tspm_window` + `tspm_question`, composed as the daemon runs them.
    Parts,
    /// `tspm_head`, the whole head in one plan.
    Whole,
}

/// A loaded head of either form. The parts keep the current clip's question-independent
/// work (its rows and the window's context), as the daemon keeps its window's.
enum AnyHead {
    Parts(Box<HeadParts>, Option<ClipRows>),
    Whole(Box<Head>),
}

/// One clip's rows as the question part reads them, and the window's context.
struct ClipRows {
    question: Vec<f32>,
    context: Vec<f32>,
}

impl AnyHead {
    fn load(
        form: HeadForm,
        manifest: &Manifest,
        precision: &str,
        seconds: usize,
    ) -> Result<Self, ModelError> {
        Ok(match form {
            HeadForm::Parts => AnyHead::Parts(
                Box::new(HeadParts::load(manifest, precision, seconds)?),
                None,
            ),
            HeadForm::Whole => AnyHead::Whole(Box::new(Head::load(manifest, precision, seconds)?)),
        })
    }

    fn id(&self) -> String {
        match self {
            AnyHead::Parts(h, _) => h.id(),
            AnyHead::Whole(h) => h.model().entry().id(),
        }
    }

    fn seconds(&self) -> usize {
        match self {
            AnyHead::Parts(h, _) => h.seconds(),
            AnyHead::Whole(h) => h.seconds(),
        }
    }

    /// Forgets the clip's rows: the next question is about another clip.
    fn new_clip(&mut self) {
        if let AnyHead::Parts(_, rows) = self {
            *rows = None;
        }
    }

    /// The head's outputs for `x`; the parts compute the clip's rows and context on its first
    /// question only.
    fn run(&mut self, x: &HeadInputs<'_>) -> Result<HeadOutputs, ModelError> {
        let (head, cached) = match self {
            AnyHead::Whole(h) => return h.run(x),
            AnyHead::Parts(h, cached) => (h, cached),
        };
        let rows = match cached {
            Some(rows) => rows,
            None => {
                let (question, context) = head.window_of(x)?;
                cached.insert(ClipRows { question, context })
            }
        };
        head.question(&rows.question, x.valid, &rows.context, x.question, x.prompt)
    }
}

/// One line of the evaluation set (other fields are ignored).
#[derive(Debug, Deserialize)]
struct Record {
    npz: PathBuf,
    question_id: serde_json::Value,
    #[serde(rename = "type")]
    question_type: Vec<String>,
    question_content: String,
    #[serde(default)]
    templ_values: Vec<String>,
    answer: String,
}

/// Correct / total for one cell of the table.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Cell {
    correct: usize,
    total: usize,
    acc: f64,
}

impl Cell {
    fn add(&mut self, ok: bool) {
        self.correct += usize::from(ok);
        self.total += 1;
        self.acc = self.correct as f64 / self.total as f64;
    }
}

/// Per precision: accuracy per question type (`"Audio-Visual Temporal"`) and overall.
#[derive(Debug, Default, Serialize)]
struct Table {
    by_type: BTreeMap<String, Cell>,
    overall: Cell,
}

#[derive(Debug, Serialize)]
struct Report {
    set: String,
    clips: usize,
    questions: usize,
    heads: BTreeMap<String, String>,
    accuracy: BTreeMap<String, Table>,
    /// Fraction of questions where int8 and fp32 give the same answer (both evaluated).
    int8_agrees_with_fp32: Option<f64>,
    seconds: f64,
}

/// The features of one clip, read back from `extract`'s `.npz`.
struct ClipFeatures {
    audio: Array2<f32>,  // [T, 1024]
    visual: Array2<f32>, // [T, 1280]
    tokens: Array3<f32>, // [T, 49, 1280]
}

fn read_clip(path: &Path) -> anyhow::Result<ClipFeatures> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening features {}", path.display()))?;
    let mut npz =
        NpzReader::new(file).with_context(|| format!("reading features {}", path.display()))?;
    let mut get2 = |name: &str| -> anyhow::Result<Array2<f32>> {
        npz.by_name(name)
            .with_context(|| format!("{}: array {name:?}", path.display()))
    };
    let audio = get2("audio")?;
    let visual = get2("visual")?;
    let tokens: Array3<f32> = npz
        .by_name("tokens")
        .with_context(|| format!("{}: array \"tokens\"", path.display()))?;
    let t = audio.nrows();
    if audio.ncols() != AUDIO_DIM
        || visual.dim() != (t, VISUAL_DIM)
        || tokens.dim() != (t, TOKENS, VISUAL_DIM)
    {
        anyhow::bail!(
            "{}: shapes audio {:?}, visual {:?}, tokens {:?} are not [T,{AUDIO_DIM}], \
             [T,{VISUAL_DIM}], [T,{TOKENS},{VISUAL_DIM}]",
            path.display(),
            audio.dim(),
            visual.dim(),
            tokens.dim()
        );
    }
    Ok(ClipFeatures {
        audio: audio.as_standard_layout().into_owned(),
        visual: visual.as_standard_layout().into_owned(),
        tokens: tokens.as_standard_layout().into_owned(),
    })
}

/// Number of seconds in a feature file, from its small `pts_s` array.
fn clip_seconds(path: &Path) -> anyhow::Result<usize> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening features {}", path.display()))?;
    let mut npz =
        NpzReader::new(file).with_context(|| format!("reading features {}", path.display()))?;
    let pts: Array1<f64> = npz
        .by_name("pts_s")
        .with_context(|| format!("{}: array \"pts_s\"", path.display()))?;
    Ok(pts.len())
}

/// The head inputs of one clip as one window: [seconds] with the clip's real seconds first.
struct Window {
    seconds: usize,
    audio: Vec<f32>,   // [seconds, 1024]
    visual: Vec<f32>,  // [seconds, 1280]
    patches: Vec<f32>, // [seconds, 14, 1280]
    valid: Vec<f32>,   // [seconds]
}

fn window(
    clip: &ClipFeatures,
    merger: &mut TokenMerger,
    merged: &mut MergedTokens,
) -> anyhow::Result<Window> {
    let t_real = clip.audio.nrows();
    // The head selects k seconds; a shorter clip is padded with seconds marked invalid.
    let seconds = t_real.max(SELECTED);
    let row = MERGED_TOKENS * VISUAL_DIM;
    let mut w = Window {
        seconds,
        audio: vec![0.0; seconds * AUDIO_DIM],
        visual: vec![0.0; seconds * VISUAL_DIM],
        patches: vec![0.0; seconds * row],
        valid: vec![0.0; seconds],
    };
    let audio = clip.audio.as_slice().context("audio is not contiguous")?;
    let visual = clip.visual.as_slice().context("visual is not contiguous")?;
    let tokens = clip
        .tokens
        .as_slice()
        .context("tokens are not contiguous")?;
    w.audio[..t_real * AUDIO_DIM].copy_from_slice(audio);
    w.visual[..t_real * VISUAL_DIM].copy_from_slice(visual);
    let grid = TOKENS * VISUAL_DIM;
    for t in 0..t_real {
        merger
            .merge(&tokens[t * grid..(t + 1) * grid], merged)
            .with_context(|| format!("merging the tokens of second {t}"))?;
        w.patches[t * row..(t + 1) * row].copy_from_slice(merged.features());
        w.valid[t] = 1.0;
    }
    Ok(w)
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Runs `eval`.
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    for p in &args.precision {
        if p != "fp32" && p != "int8" {
            anyhow::bail!("--precision {p:?}: expected fp32 and/or int8");
        }
    }
    let text = std::fs::read_to_string(&args.set)
        .with_context(|| format!("reading the evaluation set {}", args.set.display()))?;
    let records = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Record>(l)
                .with_context(|| format!("{} line {}", args.set.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Questions per feature file, in the order the files first appear.
    let mut clips: Vec<(PathBuf, Vec<usize>)> = Vec::new();
    let mut by_npz: HashMap<PathBuf, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let at = *by_npz.entry(r.npz.clone()).or_insert_with(|| {
            clips.push((r.npz.clone(), Vec::new()));
            clips.len() - 1
        });
        clips[at].1.push(i);
    }
    if let Some(n) = args.max_clips {
        clips.truncate(n);
    }
    // Parse every question first: a bad record should not cost a run.
    let mut questions: HashMap<usize, Question> = HashMap::new();
    for (_, idx) in &clips {
        for &i in idx {
            let r = &records[i];
            let q = Question::from_template(&r.question_content, &r.templ_values)
                .with_context(|| format!("question_id {}", r.question_id))?;
            let labels = q.template().question_type().data_labels();
            if labels.as_slice() != r.question_type.as_slice() {
                anyhow::bail!(
                    "question_id {}: type {:?} in the set, {:?} for its template",
                    r.question_id,
                    r.question_type,
                    labels
                );
            }
            questions.insert(i, q);
        }
    }
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(clips.len()); // (seconds, clip)
    for (c, (npz, _)) in clips.iter().enumerate() {
        order.push((clip_seconds(npz)?.max(SELECTED), c));
    }
    order.sort();

    let manifest = Manifest::load(&cfg.models.dir)?;
    let answers = crate::model::head::answer_vocabulary(&manifest)?;
    let mut encoder = TextEncoder::load(&manifest)?;
    let mut merger =
        TokenMerger::new(TOKENS, VISUAL_DIM, MERGED_TOKENS).context("setting up token merging")?;
    let mut merged = MergedTokens::new(MERGED_TOKENS, VISUAL_DIM);
    let mut embeddings: HashMap<String, Vec<f32>> = HashMap::new();
    let mut embed = |encoder: &mut TextEncoder, s: &str| -> anyhow::Result<Vec<f32>> {
        if let Some(e) = embeddings.get(s) {
            return Ok(e.clone());
        }
        let mut out = vec![0.0f32; TEXT_DIM];
        encoder
            .embed(s, &mut out)
            .with_context(|| format!("embedding {s:?}"))?;
        embeddings.insert(s.to_string(), out.clone());
        Ok(out)
    };

    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let mut heads_used: BTreeMap<String, String> = BTreeMap::new();
    let mut heads: Vec<(String, AnyHead)> = Vec::new();
    let mut agree = (0usize, 0usize);
    let mut predictions = match &args.predictions {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let n_questions: usize = clips.iter().map(|(_, idx)| idx.len()).sum();
    let mut done = 0usize;
    for (k, &(seconds, c)) in order.iter().enumerate() {
        let (npz, idx) = &clips[c];
        if heads.first().is_none_or(|(_, h)| h.seconds() != seconds) {
            heads.clear(); // one plan per precision alive at a time
            for p in &args.precision {
                let head = AnyHead::load(args.head, &manifest, p, seconds)?;
                heads_used.insert(p.clone(), head.id());
                heads.push((p.clone(), head));
            }
        }
        let clip = read_clip(npz)?;
        for (_, head) in heads.iter_mut() {
            head.new_clip();
        }
        let w = window(&clip, &mut merger, &mut merged)
            .with_context(|| format!("{}", npz.display()))?;
        debug_assert_eq!(w.seconds, seconds);
        for &i in idx {
            let r = &records[i];
            let q = &questions[&i];
            let q_emb = embed(&mut encoder, q.text())?;
            let p_emb = embed(&mut encoder, q.prompt())?;
            let inputs = HeadInputs {
                audio: &w.audio,
                visual: &w.visual,
                patches: &w.patches,
                question: &q_emb,
                prompt: &p_emb,
                valid: &w.valid,
            };
            let type_name = q.template().question_type().to_string();
            let mut got: Vec<(String, String)> = Vec::new();
            for (p, head) in heads.iter_mut() {
                let out = head
                    .run(&inputs)
                    .with_context(|| format!("{} on {}", p, npz.display()))?;
                let best = argmax(&out.logits);
                let name = answers
                    .get(best)
                    .cloned()
                    .unwrap_or_else(|| format!("#{best}"));
                let ok = name == r.answer;
                let table = tables.entry(p.clone()).or_default();
                table.by_type.entry(type_name.clone()).or_default().add(ok);
                table.overall.add(ok);
                got.push((p.clone(), name));
            }
            let fp32 = got.iter().find(|(p, _)| p == "fp32");
            let int8 = got.iter().find(|(p, _)| p == "int8");
            if let (Some((_, a)), Some((_, b))) = (fp32, int8) {
                agree.0 += usize::from(a == b);
                agree.1 += 1;
            }
            if let Some(out) = predictions.as_mut() {
                let mut line = serde_json::Map::new();
                line.insert("question_id".into(), r.question_id.clone());
                line.insert("answer".into(), r.answer.clone().into());
                for (p, name) in &got {
                    line.insert(p.clone(), name.clone().into());
                }
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        done += idx.len();
        if (k + 1) % 10 == 0 || k + 1 == order.len() {
            let overall: Vec<String> = tables
                .iter()
                .map(|(p, t)| format!("{p} {:.1} %", 100.0 * t.overall.acc))
                .collect();
            eprintln!(
                "[eval] {}/{} clips, {done}/{n_questions} questions, {:.0} s: {}",
                k + 1,
                order.len(),
                started.elapsed().as_secs_f64(),
                overall.join(", ")
            );
        }
    }
    if let Some(out) = predictions.as_mut() {
        out.flush()?;
    }
    let report = Report {
        set: args.set.display().to_string(),
        clips: order.len(),
        questions: n_questions,
        heads: heads_used,
        accuracy: tables,
        int8_agrees_with_fp32: (agree.1 > 0).then(|| agree.0 as f64 / agree.1 as f64),
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
