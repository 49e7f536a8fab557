//! `tspm-edge answer`: the whole TSPM path on a media file — per-second features (the
//! `extract` path), token merging, the question's template, prompt and text embeddings, and
//! the head in tract — printing the answer, its probability, the top alternatives and the
//! seconds the head looked at.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::extract::extract_file;
use crate::config::Config;
use crate::dsp::{MergedTokens, TokenMerger};
use crate::featurizer::Featurizer;
use crate::model::Manifest;
use crate::model::encoders::{TOKENS, VISUAL_DIM};
use crate::model::head::{MERGED_TOKENS, SELECTED, TEXT_DIM, answer_vocabulary, softmax};
use crate::model::head_parts::HeadParts;
use crate::model::text::TextEmbedder;
use crate::prompts::Question;

/// Arguments of `answer`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Media file with one audio and one video stream.
    pub media: PathBuf,
    /// A question, free text ("is the violin louder than the piano") or a MUSIC-AVQA
    /// template. Repeat for several questions over the same features.
    #[arg(long, short, required_unless_present = "preset")]
    pub question: Vec<String>,
    /// A preset question of the config (`[[presets.question]]`) by id, or `all` for every
    /// preset. Repeatable; asked after the `--question`s.
    #[arg(long, short, value_name = "ID")]
    pub preset: Vec<String>,
    /// Print one JSON object per question instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One answered question, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Answered {
    question: String,
    template: String,
    prompt: String,
    answer: String,
    probability: f32,
    top: Vec<(String, f32)>,
    selected_seconds: Vec<f64>,
    head: String,
}

/// Runs `answer`.
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    // Parse every question first: a typo should not cost a feature extraction.
    let mut questions = args
        .question
        .iter()
        .map(|q| Question::parse_free_text(q).with_context(|| format!("question {q:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    questions.extend(presets(cfg, &args.preset)?);
    let manifest = Manifest::load(&cfg.models.dir)?;
    let mut text = TextEmbedder::load(&manifest, cfg.models.text)?;
    let answers = answer_vocabulary(&manifest)?;

    let mut featurizer = Featurizer::new(&cfg.models)?;
    let set = extract_file(cfg, &mut featurizer, &args.media, |_, _| {})?;
    if set.is_empty() {
        anyhow::bail!("{} gave no complete second", args.media.display());
    }
    // The head selects k seconds; a shorter clip is padded with seconds marked invalid.
    let seconds = set.len().max(SELECTED);
    let mut merger =
        TokenMerger::new(TOKENS, VISUAL_DIM, MERGED_TOKENS).context("setting up token merging")?;
    let mut merged = MergedTokens::new(MERGED_TOKENS, VISUAL_DIM);
    let mut audio = vec![0.0f32; seconds * 1024];
    let mut visual = vec![0.0f32; seconds * VISUAL_DIM];
    let mut patches = vec![0.0f32; seconds * MERGED_TOKENS * VISUAL_DIM];
    let mut valid = vec![0.0f32; seconds];
    for t in 0..set.len() {
        audio[t * 1024..(t + 1) * 1024].copy_from_slice(set.audio(t));
        visual[t * VISUAL_DIM..(t + 1) * VISUAL_DIM].copy_from_slice(set.visual(t));
        merger
            .merge(set.tokens(t), &mut merged)
            .with_context(|| format!("merging the tokens of second {t}"))?;
        let row = MERGED_TOKENS * VISUAL_DIM;
        patches[t * row..(t + 1) * row].copy_from_slice(merged.features());
        valid[t] = 1.0;
    }
    let (mut head, chosen) = HeadParts::load_chosen(
        &manifest,
        cfg.models.head_precision,
        cfg.models.int8_min_agreement,
        cfg.models.auto_fp32_min_speedup,
        seconds,
    )?;
    tracing::info!(head = %head.id(), reason = %chosen.reason, "answer head chosen");
    // The question-independent parts once (a row per second, the window's context), then
    // only the question part per question: as the daemon does.
    let n = head.row_len();
    let mut rows = vec![0.0f32; seconds * n];
    let patch = MERGED_TOKENS * VISUAL_DIM;
    for t in 0..set.len() {
        head.second(
            &audio[t * 1024..(t + 1) * 1024],
            &visual[t * VISUAL_DIM..(t + 1) * VISUAL_DIM],
            &patches[t * patch..(t + 1) * patch],
            &mut rows[t * n..(t + 1) * n],
        )?;
    }
    let (window_rows, question_rows) = head.part_rows(&rows);
    let mut context = vec![0.0f32; head.context_len()];
    head.context(&window_rows, &valid, &mut context)?;
    let (mut q_emb, mut p_emb) = (vec![0.0f32; TEXT_DIM], vec![0.0f32; TEXT_DIM]);
    for question in &questions {
        text.embed(question.text(), &mut q_emb)?;
        text.embed(question.prompt(), &mut p_emb)?;
        let out = head.question(&question_rows, &valid, &context, &q_emb, &p_emb)?;
        let probs = softmax(&out.logits);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let name = |i: usize| answers.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
        let n_real = valid.iter().filter(|&&v| v > 0.5).count().min(SELECTED);
        let answered = Answered {
            question: question.text().to_string(),
            template: question.template().text().to_string(),
            prompt: question.prompt().to_string(),
            answer: name(order[0]),
            probability: probs[order[0]],
            top: order.iter().take(3).map(|&i| (name(i), probs[i])).collect(),
            selected_seconds: out.selected[..n_real]
                .iter()
                .map(|&s| set.pts_s(s as usize))
                .collect(),
            head: head.id(),
        };
        if args.json {
            println!("{}", serde_json::to_string(&answered)?);
        } else {
            print_human(&answered);
        }
    }
    Ok(())
}

/// The questions of `--preset` ids (`all` = every preset), in the order given.
fn presets(cfg: &Config, ids: &[String]) -> anyhow::Result<Vec<Question>> {
    let known = &cfg.presets.questions;
    let mut out = Vec::new();
    for id in ids {
        if id == "all" {
            out.extend(known.iter().map(|p| p.question.clone()));
            continue;
        }
        match known.iter().find(|p| &p.id == id) {
            Some(p) => out.push(p.question.clone()),
            None => {
                let names: Vec<&str> = known.iter().map(|p| p.id.as_str()).collect();
                anyhow::bail!(
                    "--preset {id:?}: no such preset in [[presets.question]] (known: {}; or `all`)",
                    if names.is_empty() {
                        "none configured".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
    }
    Ok(out)
}

fn print_human(a: &Answered) {
    println!("Q: {}", a.question);
    println!("   prompt: {}", a.prompt);
    println!("A: {} ({:.1} %)", a.answer, a.probability * 100.0);
    let top: Vec<String> = a
        .top
        .iter()
        .map(|(n, p)| format!("{n} {:.1} %", p * 100.0))
        .collect();
    println!("   top-3: {}", top.join(", "));
    let secs: Vec<String> = a
        .selected_seconds
        .iter()
        .map(|s| format!("{s:.0}"))
        .collect();
    println!("   looked at seconds: {}", secs.join(", "));
}
