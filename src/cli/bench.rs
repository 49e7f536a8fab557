//! `tspm-edge bench`: per-segment cost of each stage, tract against onnxruntime in the same
//! run.
//!
//! Single thread throughout (tract runs one thread; onnxruntime is given one intra-op
//! thread). onnxruntime runs in `models/ort_bench.py` with the model build's venv, on the same
//! ONNX files. Medians over `--runs` after a warm-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::featurizer::{Featurizer, SegmentFeatures};
use crate::model::{Manifest, Model, ModelError};
use crate::segmenter::Frame;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed runs per stage (after one warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Frame size for image preparation, WIDTHxHEIGHT.
    #[arg(long, default_value = "640x480", value_parser = parse_size)]
    pub frame: (u32, u32),
    /// Python with onnxruntime (default: the model build's venv next to the model dir, or
    /// $TSPM_VENV/bin/python).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Skip onnxruntime.
    #[arg(long)]
    pub no_ort: bool,
    /// Time tract stages by this thread's on-CPU time (Linux schedstat; mean over the runs)
    /// instead of the wall-clock median: steadier on a machine shared with other jobs
    /// (onnxruntime stays wall clock).
    #[arg(long)]
    pub cpu_time: bool,
    /// Batch size for the encoder timings (frames or patches per tract run); the table then
    /// also gives ms per item. onnxruntime stays at batch 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch: u32,
    /// Time only the model variants whose id (e.g. `yamnet.fp32`) contains this text.
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// Run one stage only, for instruction counts under qemu (`cross/icount.sh`): load what
    /// it needs, run it once to warm up and then `--runs` times, print its time, nothing else
    /// (no other model, no onnxruntime, no `auto` precision timing). STAGE is `logmel`,
    /// `image_prep`, `token_merge` or a model variant id: `yamnet.fp32`, `yamnet.int8`,
    /// `efficientnet_lite0.fp32|int8`, `tspm_second.fp32|int8` (per second),
    /// `tspm_window.fp32|int8` (per window version), `tspm_question.fp32|int8` (per question).
    #[arg(long, value_name = "STAGE", conflicts_with = "only")]
    pub stage: Option<String>,
    /// tract model transform to apply before optimisation (repeatable), besides the default
    /// ones (`conv_nhwc`, `fast_quantize_linear`, `unfused_residual_add`); `-NAME` leaves a
    /// default out, e.g. `--transform=-conv_nhwc`.
    #[arg(long = "transform", value_name = "NAME")]
    pub transforms: Vec<String>,
    /// Also profile each timed model node by node with tract's profiler and print the
    /// slowest nodes and the time per kind of op (needs the `profile` cargo feature).
    #[cfg(feature = "profile")]
    #[arg(long)]
    pub profile: bool,
    /// Nodes listed per model by `--profile`.
    #[cfg(feature = "profile")]
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 640x480"))?;
    let parse = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|&n| (16..=8192).contains(&n))
            .ok_or_else(|| format!("{v:?}: expected a size from 16 to 8192 pixels"))
    };
    Ok((parse(w)?, parse(h)?))
}

/// Nanoseconds this thread has spent on a CPU (Linux `/proc/thread-self/schedstat`), or `None`
/// where that file is missing.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Set once by `run` from `--cpu-time`: time on-CPU instead of wall clock.
static CPU_TIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Median milliseconds of `f` over `runs` runs after one warm-up; with `--cpu-time`, this
/// thread's on-CPU time over all the runs divided by `runs` (the kernel updates it only at
/// scheduler ticks, a few ms, so single runs cannot be timed that way).
fn median_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let runs = runs.max(1);
    if CPU_TIME.load(std::sync::atomic::Ordering::Relaxed) {
        let c0 = thread_cpu_ns();
        for _ in 0..runs {
            f()?;
        }
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            return Ok(b.saturating_sub(a) as f64 / 1e6 / runs as f64);
        }
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs `bench` and prints the table.
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    let dir = &cfg.models.dir;
    let manifest = Manifest::load(dir)?;
    if let Some(stage) = &args.stage {
        return run_stage(cfg, &manifest, stage, &args);
    }
    let mut featurizer = Featurizer::new(&cfg.models)?;
    let mut features = SegmentFeatures::default();

    let pcm = bench_pcm();
    let (w, h) = args.frame;
    let frame = bench_frame(args.frame);

    if args.cpu_time {
        if thread_cpu_ns().is_none() {
            anyhow::bail!("--cpu-time needs /proc/thread-self/schedstat (Linux)");
        }
        CPU_TIME.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    eprintln!(
        "bench: {} runs per stage, single thread; tract CPU features edit TRACT_CPU_ISA={:?}",
        args.runs,
        crate::model::cpu_features()?
    );
    let logmel_ms = median_ms(args.runs, || featurizer.logmel(&pcm[..15_600]))?;
    let prep_ms = median_ms(args.runs, || featurizer.prepare(&frame))?;
    let side = featurizer.image_side();

    let batch = args.batch as usize;
    let mut tract_ms: BTreeMap<String, f64> = BTreeMap::new();
    // The per-second encoders; the head and the text encoder run per question, not per segment.
    let encoders = [
        crate::model::encoders::AUDIO_MODEL,
        crate::model::encoders::VISUAL_MODEL,
    ];
    for entry in manifest
        .models
        .iter()
        .filter(|e| encoders.contains(&e.name.as_str()))
    {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !entry.id().contains(o))
        {
            continue;
        }
        let runs = if entry.precision == "int8" {
            args.runs.min(5)
        } else {
            args.runs
        };
        let mut model = match Model::load_with(&manifest, entry, batch, &args.transforms) {
            Err(ModelError::AmxInt8 { .. }) if batch == 1 && args.transforms.is_empty() => {
                let ms = stage_in_child(&cfg.models.dir, &entry.id(), runs, args.cpu_time)?;
                eprintln!(
                    "  tract {:<26} {ms:>9.2} ms (in a child process with TRACT_CPU_ISA=-amx-int8: \
                     tract's AMX int8 kernel, on here, cannot run it)",
                    entry.id()
                );
                tract_ms.insert(entry.id(), ms);
                continue;
            }
            loaded => {
                loaded.with_context(|| format!("loading {} for the benchmark", entry.id()))?
            }
        };
        let (shape, input) = encoder_input(entry, batch);
        let ms = median_ms(runs, || Ok(model.run(&[(&shape, &input)])?))?;
        if batch > 1 {
            eprintln!(
                "  tract {:<26} {ms:>9.2} ms per run of {batch}, {:.2} ms per item",
                entry.id(),
                ms / batch as f64
            );
        } else {
            eprintln!("  tract {:<26} {ms:>9.2} ms", entry.id());
        }
        tract_ms.insert(entry.id(), ms / batch as f64);
        #[cfg(feature = "profile")]
        if args.profile {
            let profile = model
                .profile(&shape, &input)
                .with_context(|| format!("profiling {}", entry.id()))?;
            print_profile(&entry.id(), ms, &profile, args.top);
        }
    }

    let segment_ms = median_ms(args.runs, || {
        featurizer.audio(&pcm, &mut features)?;
        featurizer.frame(&frame, &mut features)
    })?;

    let question = if args.only.is_some() || args.batch > 1 {
        None
    } else {
        // `Some(nodes listed)` when the head's parts are to be profiled too.
        #[cfg(feature = "profile")]
        let profile = args.profile.then_some(args.top);
        #[cfg(not(feature = "profile"))]
        let profile = None;
        Some(question_side(
            cfg,
            &manifest,
            &features,
            args.runs,
            profile,
            &args.transforms,
        )?)
    };

    let ort_ms = if args.no_ort {
        BTreeMap::new()
    } else {
        match ort_bench(dir, args.python.as_deref(), args.runs, question.is_some()) {
            Ok(m) => m,
            Err(err) => {
                eprintln!("onnxruntime skipped: {err:#}");
                BTreeMap::new()
            }
        }
    };

    println!(
        "per one-second segment, single thread, median of {} runs{}",
        args.runs,
        if args.cpu_time {
            " (tract: mean on-CPU time; onnxruntime: wall clock)"
        } else {
            ""
        }
    );
    if batch > 1 {
        println!("tract encoders at batch {batch}: ms per item (run time / {batch})");
    }
    if !args.transforms.is_empty() {
        println!("tract transforms: {}", args.transforms.join(", "));
    }
    println!(
        "{:<34} {:>10} {:>12} {:>14}",
        "stage", "tract ms", "ort ms", "tract/ort"
    );
    println!(
        "{:<34} {:>10.3} {:>12} {:>14}",
        "log-mel (0.975 s, 96x64)", logmel_ms, "-", "-"
    );
    println!(
        "{:<34} {:>10.3} {:>12} {:>14}",
        format!("image prep ({w}x{h} -> {side})"),
        prep_ms,
        "-",
        "-"
    );
    for (id, ms) in &tract_ms {
        let (ort, ratio) = match ort_ms.get(id) {
            Some(o) => (format!("{o:.3}"), format!("{:.2}", ms / o)),
            None => ("-".into(), "-".into()),
        };
        println!("{:<34} {:>10.3} {:>12} {:>14}", id, ms, ort, ratio);
    }
    let chosen: Vec<String> = featurizer.chosen().iter().map(|c| c.entry.id()).collect();
    println!(
        "{:<34} {:>10.3} {:>12} {:>14}",
        format!("whole segment ({})", chosen.join(" + ")),
        segment_ms,
        "-",
        format!("{:.0}x real time", 1000.0 / segment_ms)
    );
    if let Some(q) = &question {
        print_question_side(q, &ort_ms);
    }
    // The headline: tract at the chosen precision against onnxruntime's best variant.
    for c in featurizer
        .chosen()
        .iter()
        .chain(question.iter().map(|q| &q.head_chosen))
    {
        let best_ort = ["fp32", "int8"]
            .iter()
            .filter_map(|p| {
                ort_ms
                    .get(&format!("{}.{p}", c.entry.name))
                    .map(|ms| (*p, *ms))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(t), Some((p, o))) = (tract_ms.get(&c.entry.id()), best_ort) {
            println!(
                "headline {}: tract {} {:.2} ms / onnxruntime best ({p}) {:.2} ms = {:.2}",
                c.entry.name,
                c.entry.precision,
                t,
                o,
                t / o
            );
        }
    }
    Ok(())
}

/// One second of a chord with noise: log-mel cost does not depend on the content.
fn bench_pcm() -> Vec<f32> {
    (0..16_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                + 0.2 * (2.0 * std::f32::consts::PI * 659.3 * t).sin()
                + 0.05 * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        })
        .collect()
}

/// A packed RGB frame of `(width, height)` with a fixed pattern.
fn bench_frame((w, h): (u32, u32)) -> Frame {
    let stride = (w as usize * 3).next_multiple_of(4);
    Frame {
        pts: crate::pts::Pts(0),
        width_px: w,
        height_px: h,
        stride_bytes: stride,
        data: (0..stride * h as usize)
            .map(|i| (i * 31 % 251) as u8)
            .collect(),
    }
}

/// The shape (symbolic batch axis set to `batch`) and a fixed pattern for an encoder's input.
fn encoder_input(entry: &crate::model::ModelEntry, batch: usize) -> (Vec<usize>, Vec<f32>) {
    let shape: Vec<usize> = entry.inputs[0]
        .shape
        .iter()
        .map(|d| match d {
            crate::model::Dim::Fixed(n) => *n,
            crate::model::Dim::Symbol(_) => batch,
        })
        .collect();
    let input = (0..shape.iter().product::<usize>())
        .map(|i| ((i % 97) as f32 / 97.0) - 0.5)
        .collect();
    (shape, input)
}

/// Times the model variant `id` with `bench --stage` in a child process that keeps tract's
/// AMX int8 kernel off (`TRACT_CPU_ISA=-amx-int8`): this process lets tract use that kernel,
/// which cannot run the file safely ([`crate::model::allow_amx_int8`]).
fn stage_in_child(model_dir: &Path, id: &str, runs: usize, cpu_time: bool) -> anyhow::Result<f64> {
    let exe =
        std::env::current_exe().context("locating this program to time a model in a child")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "--stage", id, "--runs", &runs.to_string()])
        .env("TRACT_CPU_ISA", "-amx-int8")
        .env(crate::config::MODEL_DIR_ENV, model_dir);
    if cpu_time {
        cmd.arg("--cpu-time");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} bench --stage {id}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{} bench --stage {id} failed ({}): {}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // "stage ID: 12.345 ms (…)"
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("stage {id}: ")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .with_context(|| format!("no \"stage {id}: N ms\" line in the child's output: {stdout}"))
}

/// `bench --stage STAGE`: loads only what STAGE needs, then one warm-up run and `args.runs`
/// runs of it (`median_ms`), so that a count over the whole process taken with two values
/// of `--runs` differs by exactly that many runs of the stage (`cross/icount.sh`).
fn run_stage(cfg: &Config, manifest: &Manifest, stage: &str, args: &Args) -> anyhow::Result<()> {
    use crate::dsp::{ImagePrep, ImagePrepConfig, MelFrontend, N_MELS, PATCH_FRAMES};
    use crate::model::encoders::{AUDIO_MODEL, TOKENS, VISUAL_DIM, VISUAL_MODEL};
    use crate::model::head::{MERGED_TOKENS, SELECTED, SyntheticWindow};
    use crate::model::head_parts::{HeadParts, QUESTION_PART, SECOND_PART, WINDOW_PART};

    const STAGES: &str = "logmel, image_prep, token_merge, yamnet.<p>, efficientnet_lite0.<p>, \
                          tspm_second.<p>, tspm_window.<p>, tspm_question.<p> (p = fp32 or int8)";
    let runs = args.runs;
    let visual_fp32 = || {
        manifest
            .find(VISUAL_MODEL, "fp32")
            .with_context(|| format!("no {VISUAL_MODEL}.fp32 in {}", manifest.dir.display()))
    };
    let (name, precision) = stage.split_once('.').unwrap_or((stage, ""));
    let ms = match (name, precision) {
        ("logmel", "") => {
            let pcm = bench_pcm();
            let mut mel = MelFrontend::new();
            let mut out = vec![0.0f32; PATCH_FRAMES * N_MELS];
            median_ms(runs, || Ok(mel.process(&pcm[..15_600], &mut out)?))?
        }
        ("image_prep", "") => {
            let pre = visual_fp32()?
                .preprocess
                .clone()
                .context("the visual model's manifest entry has no [model.preprocess]")?;
            let mut prep = ImagePrep::new(ImagePrepConfig {
                size: pre.size,
                mean: pre.mean,
                std: pre.std,
            })?;
            let frame = bench_frame(args.frame);
            let mut out = vec![0.0f32; 3 * pre.size * pre.size];
            median_ms(runs, || {
                Ok(prep.process(
                    &frame.data,
                    frame.width_px as usize,
                    frame.height_px as usize,
                    frame.stride_bytes,
                    &mut out,
                )?)
            })?
        }
        ("token_merge", "") => {
            // A real EfficientNet-Lite0 grid (fp32, on the fixed input pattern), run once.
            let entry = visual_fp32()?;
            let mut model = Model::load(manifest, entry, 1)?;
            let (shape, input) = encoder_input(entry, 1);
            model.run(&[(&shape, &input)])?;
            let tokens = model.output_by_name("tokens")?.to_vec();
            let mut merger = crate::dsp::TokenMerger::new(TOKENS, VISUAL_DIM, MERGED_TOKENS)?;
            let mut merged = crate::dsp::MergedTokens::new(MERGED_TOKENS, VISUAL_DIM);
            median_ms(runs, || Ok(merger.merge(&tokens, &mut merged)?))?
        }
        (AUDIO_MODEL | VISUAL_MODEL, "fp32" | "int8") => {
            let entry = manifest
                .find(name, precision)
                .with_context(|| format!("no {stage} in {}", manifest.dir.display()))?;
            let mut model = Model::load_with(manifest, entry, 1, &args.transforms)
                .with_context(|| format!("loading {stage} for the benchmark"))?;
            let (shape, input) = encoder_input(entry, 1);
            median_ms(runs, || Ok(model.run(&[(&shape, &input)])?))?
        }
        (SECOND_PART | WINDOW_PART | QUESTION_PART, "fp32" | "int8") => {
            // As `question_side`: a synthetic window of the configured length, every row
            // made by the per-second part.
            let seconds = cfg.window.seconds.max(SELECTED);
            let window = SyntheticWindow::new(seconds);
            let x = window.inputs();
            let mut h = HeadParts::load_with(manifest, precision, seconds, &args.transforms)
                .with_context(|| format!("loading the head parts ({precision})"))?;
            let n = h.row_len();
            let mut rows = vec![0.0f32; seconds * n];
            let second = |h: &mut HeadParts, t: usize, row: &mut [f32]| {
                let (audio, visual, patches) = x.second(t);
                h.second(audio, visual, patches, row)
            };
            if name == SECOND_PART {
                median_ms(runs, || Ok(second(&mut h, 0, &mut rows[..n])?))?
            } else {
                for (t, row) in rows.chunks_mut(n).enumerate() {
                    second(&mut h, t, row)?;
                }
                let (window_rows, question_rows) = h.part_rows(&rows);
                let mut context = vec![0.0f32; h.context_len()];
                if name == WINDOW_PART {
                    median_ms(runs, || {
                        Ok(h.context(&window_rows, x.valid, &mut context)?)
                    })?
                } else {
                    h.context(&window_rows, x.valid, &mut context)?;
                    median_ms(runs, || {
                        h.question(&question_rows, x.valid, &context, x.question, x.prompt)?;
                        Ok(())
                    })?
                }
            }
        }
        _ => anyhow::bail!("--stage {stage:?}: expected one of {STAGES}"),
    };
    println!("stage {stage}: {ms:.3} ms (1 warm-up + {runs} runs, single thread)");
    Ok(())
}

/// Prints the slowest nodes of one profile and the time per kind of op.
#[cfg(feature = "profile")]
fn print_profile(id: &str, bench_ms: f64, p: &crate::model::Profile, top: usize) {
    let sum: f64 = p.ops.iter().map(|o| o.ms).sum();
    let pct = |ms: f64| if sum > 0.0 { 100.0 * ms / sum } else { 0.0 };
    println!();
    println!(
        "profile {id}: {:.2} ms per run under the profiler ({} runs; bench median {bench_ms:.2} \
         ms), {:.2} ms in {} nodes",
        p.total_ms,
        p.iterations,
        sum,
        p.ops.len()
    );
    println!(
        "  {:<44} {:<22} {:<42} {:>8} {:>6} {:>8} {:>7}",
        "node", "op", "kind", "ms", "%", "MMAC", "GMAC/s"
    );
    for o in p.ops.iter().take(top) {
        let skip = o.node.chars().count().saturating_sub(44);
        let node: String = o.node.chars().skip(skip).collect();
        let gmacs = if o.ms > 0.0 && o.macs > 0 {
            format!("{:.1}", o.macs as f64 / o.ms / 1e6)
        } else {
            "-".into()
        };
        println!(
            "  {:<44} {:<22} {:<42} {:>8.3} {:>6.1} {:>8.2} {:>7}",
            node,
            o.op,
            o.kind,
            o.ms,
            pct(o.ms),
            o.macs as f64 / 1e6,
            gmacs
        );
    }
    let mut kinds: BTreeMap<&str, (usize, f64, u64)> = BTreeMap::new();
    for o in &p.ops {
        let k = kinds.entry(o.kind.as_str()).or_default();
        k.0 += 1;
        k.1 += o.ms;
        k.2 += o.macs;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    println!("  by kind:");
    println!(
        "  {:<42} {:>6} {:>9} {:>6} {:>9} {:>7}",
        "kind", "nodes", "ms", "%", "MMAC", "GMAC/s"
    );
    for (kind, (n, ms, macs)) in kinds {
        let gmacs = if ms > 0.0 && macs > 0 {
            format!("{:.1}", macs as f64 / ms / 1e6)
        } else {
            "-".into()
        };
        println!(
            "  {:<42} {:>6} {:>9.3} {:>6.1} {:>9.2} {:>7}",
            kind,
            n,
            ms,
            pct(ms),
            macs as f64 / 1e6,
            gmacs
        );
    }
}

/// Runs `models/ort_bench.py` and parses its JSON line.
/// tract timings of the per-question work and of token merging.
struct QuestionSide {
    /// `minilm.<precision>` → ms per question.
    text: BTreeMap<String, f64>,
    /// Tokens of the question that was timed (padded to the plan's length).
    text_tokens: (usize, usize),
    /// One lookup in the text embedding table, if it was built.
    table_ms: Option<(String, f64)>,
    /// One frame's 49 tokens → 14.
    merge_ms: f64,
    /// `tspm_head.<precision>` → ms per question over the window (the whole head).
    head: BTreeMap<String, f64>,
    /// The parts the runtime runs: `tspm_second.<p>` (one second), `tspm_window.<p>` and
    /// `tspm_question.<p>` (over the window).
    parts: BTreeMap<String, f64>,
    /// Window length of the head runs.
    seconds: usize,
    /// The head variant the config picks.
    head_chosen: crate::model::precision::Chosen,
}

/// Times the text encoder (one real question), token merging (the grid of `features`, a real
/// EfficientNet-Lite0 output) and every head variant over a window of the configured length.
fn question_side(
    cfg: &Config,
    manifest: &Manifest,
    features: &SegmentFeatures,
    runs: usize,
    profile: Option<usize>,
    transforms: &[String],
) -> anyhow::Result<QuestionSide> {
    use crate::dsp::{MergedTokens, TokenMerger};
    use crate::model::encoders::{TOKENS, VISUAL_DIM};
    use crate::model::head::{HEAD_MODEL, Head, MERGED_TOKENS, SELECTED, SyntheticWindow};
    use crate::model::text::{EMBEDDING_DIM, MAX_TOKENS, TEXT_MODEL, TextEncoder};

    const QUESTION: &str = "Is the violin louder than the piano?";
    let mut text = BTreeMap::new();
    let mut text_tokens = (0, MAX_TOKENS);
    let mut emb = vec![0.0f32; EMBEDDING_DIM];
    for entry in manifest.models.iter().filter(|e| e.name == TEXT_MODEL) {
        let mut enc = TextEncoder::load_with(manifest, &entry.precision, MAX_TOKENS)
            .with_context(|| format!("loading {} for the benchmark", entry.id()))?;
        let ms = median_ms(runs, || {
            enc.embed(QUESTION, &mut emb)?;
            Ok(())
        })?;
        text_tokens = (enc.token_ids(QUESTION)?.len(), enc.max_tokens());
        eprintln!("  tract {:<26} {ms:>9.2} ms", entry.id());
        text.insert(entry.id(), ms);
    }
    let table_ms = match crate::model::text_table::TextTable::load(manifest)? {
        Some(table) => {
            let q = crate::prompts::Question::parse_free_text(QUESTION)?;
            let ms = median_ms(runs.max(1000), || {
                table.embed(q.text(), &mut emb)?;
                Ok(())
            })?;
            eprintln!("  table {:<26} {ms:>9.4} ms", table.id());
            Some((table.id(), ms))
        }
        None => None,
    };

    let mut merger = TokenMerger::new(TOKENS, VISUAL_DIM, MERGED_TOKENS)?;
    let mut merged = MergedTokens::new(MERGED_TOKENS, VISUAL_DIM);
    let merge_ms = median_ms(runs.max(50), || {
        Ok(merger.merge(&features.tokens, &mut merged)?)
    })?;
    eprintln!("  token merge 49 -> 14 {merge_ms:>9.3} ms");

    let seconds = cfg.window.seconds.max(SELECTED);
    let window = SyntheticWindow::new(seconds);
    let mut head = BTreeMap::new();
    for entry in manifest.models.iter().filter(|e| e.name == HEAD_MODEL) {
        let mut h = Head::load_entry(manifest, entry, seconds)
            .with_context(|| format!("loading {} for the benchmark", entry.id()))?;
        let ms = median_ms(runs, || {
            h.run(&window.inputs())?;
            Ok(())
        })?;
        eprintln!("  tract {:<26} {ms:>9.2} ms (T = {seconds})", entry.id());
        head.insert(entry.id(), ms);
    }
    let mut parts = BTreeMap::new();
    for precision in ["fp32", "int8"] {
        if manifest
            .find(crate::model::head_parts::QUESTION_PART, precision)
            .is_none()
        {
            continue;
        }
        let mut h = crate::model::head_parts::HeadParts::load_with(
            manifest, precision, seconds, transforms,
        )
        .with_context(|| format!("loading the head parts ({precision}) for the benchmark"))?;
        let x = window.inputs();
        let n = h.row_len();
        let mut rows = vec![0.0f32; seconds * n];
        let second_ms = median_ms(runs, || {
            let (audio, visual, patches) = x.second(0);
            Ok(h.second(audio, visual, patches, &mut rows[..n])?)
        })?;
        for t in 1..seconds {
            let (audio, visual, patches) = x.second(t);
            h.second(audio, visual, patches, &mut rows[t * n..(t + 1) * n])?;
        }
        let (window_rows, question_rows) = h.part_rows(&rows);
        let mut context = vec![0.0f32; h.context_len()];
        let window_ms = median_ms(runs, || {
            Ok(h.context(&window_rows, x.valid, &mut context)?)
        })?;
        let question_ms = median_ms(runs, || {
            h.question(&question_rows, x.valid, &context, x.question, x.prompt)?;
            Ok(())
        })?;
        eprintln!(
            "  tract head parts {precision}: second {second_ms:.2} ms, window {window_ms:.2} ms, question {question_ms:.3} ms"
        );
        #[cfg(feature = "profile")]
        if let Some(top) = profile {
            let [s, w, q] = h.profile(
                x.second(0),
                (&window_rows, &question_rows),
                x.valid,
                &context,
                x.question,
                x.prompt,
            )?;
            print_profile(&format!("tspm_second.{precision}"), second_ms, &s, top);
            print_profile(&format!("tspm_window.{precision}"), window_ms, &w, top);
            print_profile(&format!("tspm_question.{precision}"), question_ms, &q, top);
        }
        #[cfg(not(feature = "profile"))]
        let _ = profile;
        parts.insert(format!("tspm_second.{precision}"), second_ms);
        parts.insert(format!("tspm_window.{precision}"), window_ms);
        parts.insert(format!("tspm_question.{precision}"), question_ms);
    }
    let head_chosen = crate::model::precision::choose_head(
        manifest,
        cfg.models.head_precision,
        cfg.models.int8_min_agreement,
        cfg.models.auto_fp32_min_speedup,
        seconds,
    )?;
    Ok(QuestionSide {
        text,
        text_tokens,
        table_ms,
        merge_ms,
        head,
        parts,
        seconds,
        head_chosen,
    })
}

/// The question-side rows: tract against onnxruntime, the numpy reference of token merging
/// and PyTorch for the head.
fn print_question_side(q: &QuestionSide, ort_ms: &BTreeMap<String, f64>) {
    println!();
    println!(
        "per question (text encoder, head over T = {} s) and per frame (token merging)",
        q.seconds
    );
    println!(
        "{:<34} {:>10} {:>12} {:>14}",
        "stage", "tract ms", "other ms", "tract/other"
    );
    let row = |label: String, ms: f64, other: Option<(&str, f64)>| {
        let (o, ratio) = match other {
            // A table lookup is microseconds: keep its ratio's digits.
            Some((name, o)) if ms / o < 1e-3 => {
                (format!("{o:.3} {name}"), format!("{:.1e}", ms / o))
            }
            Some((name, o)) => (format!("{o:.3} {name}"), format!("{:.3}", ms / o)),
            None => ("-".into(), "-".into()),
        };
        println!("{label:<34} {ms:>10.3} {o:>12} {ratio:>14}");
    };
    for (id, ms) in &q.text {
        row(
            format!("{id} ({}/{} tokens)", q.text_tokens.0, q.text_tokens.1),
            *ms,
            ort_ms.get(id).map(|o| ("ort", *o)),
        );
    }
    if let Some((id, ms)) = &q.table_ms {
        // The alternative to a lookup is running the encoder: onnxruntime on the same ONNX.
        let ort = q
            .text
            .keys()
            .find_map(|t| ort_ms.get(t).map(|o| ("ort", *o)));
        row(format!("{id} lookup (per text)"), *ms, ort);
    }
    row(
        "token merge (49 -> 14, Rust)".into(),
        q.merge_ms,
        ort_ms.get("token_merge.numpy").map(|o| ("numpy", *o)),
    );
    for (id, ms) in &q.head {
        row(id.clone(), *ms, ort_ms.get(id).map(|o| ("ort", *o)));
    }
    if let (Some(t), Some(torch)) = (q.head.get("tspm_head.fp32"), ort_ms.get("tspm_head.torch")) {
        row(
            "tspm_head.fp32 vs PyTorch".into(),
            *t,
            Some(("torch", *torch)),
        );
    }
    let label = |id: &str| match id.split('.').next() {
        Some("tspm_second") => format!("{id} (per second)"),
        Some("tspm_window") => format!("{id} (per new window)"),
        _ => format!("{id} (per question)"),
    };
    for (id, ms) in &q.parts {
        row(label(id), *ms, ort_ms.get(id).map(|o| ("ort", *o)));
    }
    for p in ["fp32", "int8"] {
        let get = |name: &str, m: &BTreeMap<String, f64>| m.get(&format!("{name}.{p}")).copied();
        if let (Some(w), Some(qq)) = (get("tspm_window", &q.parts), get("tspm_question", &q.parts))
        {
            let ort = match (get("tspm_window", ort_ms), get("tspm_question", ort_ms)) {
                (Some(a), Some(b)) => Some(("ort", a + b)),
                _ => None,
            };
            row(format!("head per question, new window ({p})"), w + qq, ort);
            if let Some(whole) = q.head.get(&format!("tspm_head.{p}")) {
                row(
                    format!("  ... vs the whole head in tract ({p})"),
                    w + qq,
                    Some(("whole", *whole)),
                );
            }
        }
    }
    println!(
        "head chosen by the config: {} ({})",
        q.head_chosen.entry.id(),
        q.head_chosen.reason
    );
}

fn ort_bench(
    dir: &Path,
    python: Option<&Path>,
    runs: usize,
    question_side: bool,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let python = match python {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("TSPM_VENV") {
            Some(v) => PathBuf::from(v).join("bin/python"),
            None => dir
                .parent()
                .map(|p| p.join("venv/bin/python"))
                .context("the model dir has no parent for the venv")?,
        },
    };
    let script = ort_script()?;
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .args(["--threads", "1", "--runs", &runs.to_string()])
        .args(question_side.then_some("--question-side"))
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .context("ort_bench.py printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing ort_bench.py output {line:?}"))
}

/// `models/ort_bench.py` from the source tree, or next to an installed binary.
fn ort_script() -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ort_bench.py"),
        PathBuf::from("models/ort_bench.py"),
        PathBuf::from("/usr/share/tspm-edge/ort_bench.py"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("models/ort_bench.py not found (run from the source tree)")
}
