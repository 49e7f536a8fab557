//! `tspm-edge extract`: media file → per-second features → `.npz`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::capture::{
    Capture, CaptureConfig, Captured, FrameRate, FrameSize, Mode, Source, StreamKind,
};
use crate::config::Config;
use crate::features::FeatureSet;
use crate::featurizer::{Featurizer, SegmentFeatures};
use crate::segmenter::{Segmenter, SegmenterConfig};

/// Arguments of `extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Media file with one audio and one video stream (anything GStreamer's decodebin opens:
    /// webm, mkv, mp4 with the right plugins, ogg, …).
    pub media: PathBuf,
    /// Output `.npz` file.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Also print, per second, YAMNet's top sound class.
    #[arg(long)]
    pub print_classes: bool,
}

/// Runs `extract`.
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut featurizer = Featurizer::new(&cfg.models)?;
    let classes = if args.print_classes {
        Some(audio_classes(&cfg.models.dir)?)
    } else {
        None
    };
    let set = extract_file(cfg, &mut featurizer, &args.media, |t, f| {
        if let Some(classes) = &classes {
            let (best, logit) = argmax(&f.audio_logits);
            let name = classes.get(best).map_or("?", String::as_str);
            println!("{t:>6.1}s  sound: {name} ({logit:.2})");
        }
    })?;
    if set.is_empty() {
        anyhow::bail!(
            "{} gave no complete second (at least 0.5 s of audio is needed)",
            args.media.display()
        );
    }
    set.write_npz(&args.out)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "extracted {} s of {} in {:.1} s ({:.1}x real time) -> {}",
        set.len(),
        args.media.display(),
        secs,
        set.len() as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(())
}

/// Runs a media file through capture, the segmenter and the featurizer; `each` sees every
/// second's features as it is computed.
pub fn extract_file(
    cfg: &Config,
    featurizer: &mut Featurizer,
    media: &Path,
    mut each: impl FnMut(f64, &SegmentFeatures),
) -> anyhow::Result<FeatureSet> {
    let capture_cfg = CaptureConfig {
        mode: Mode::File,
        video_fps: FrameRate {
            num: cfg.capture.video_fps,
            den: 1,
        },
        max_frame_size: cfg.capture.max_video_side_px.map(|px| FrameSize {
            width_px: px,
            height_px: px,
        }),
        ..CaptureConfig::default()
    };
    let source = Source::File(media.to_path_buf());
    let mut capture = Capture::start(&source, &capture_cfg)
        .with_context(|| format!("opening {}", media.display()))?;
    let recycler = capture.recycler();
    let mut segmenter = Segmenter::new(SegmenterConfig::default());
    let mut features = SegmentFeatures::default();
    let mut set = FeatureSet::new();
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .expect("the progress template is valid"),
    );
    loop {
        let item = capture
            .recv()
            .with_context(|| format!("reading {}", media.display()))?;
        let done = match item {
            Captured::Audio { pts, samples } => {
                segmenter.push_audio(pts, &samples);
                recycler.audio(samples);
                false
            }
            Captured::Video(frame) => {
                segmenter.push_frame(&frame);
                recycler.frame(frame);
                false
            }
            Captured::StreamEnd(StreamKind::Video) => {
                segmenter.end_video();
                false
            }
            Captured::StreamEnd(_) => false,
            Captured::Eos => {
                segmenter.finish();
                true
            }
        };
        while let Some(seg) = segmenter.pop() {
            let t = seg.start().as_secs_f64();
            featurizer
                .process(&seg, &mut features)
                .with_context(|| format!("encoding second {t:.0} of {}", media.display()))?;
            set.push(
                t,
                &features.audio,
                &features.audio_logits,
                &features.visual,
                &features.tokens,
                features.has_frame,
            );
            each(t, &features);
            segmenter.recycle(seg);
            progress.set_message(format!("{} s extracted", set.len()));
            progress.tick();
        }
        if done {
            break;
        }
    }
    progress.finish_and_clear();
    let stats = segmenter.stats();
    tracing::debug!(?stats, capture = ?capture.stats(), "extract finished");
    Ok(set)
}

/// YAMNet's class names, from the file the manifest names.
fn audio_classes(model_dir: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = crate::model::Manifest::load(model_dir)?;
    let entry = manifest
        .find(crate::model::encoders::AUDIO_MODEL, "fp32")
        .context("the manifest has no fp32 yamnet entry")?;
    let file = entry
        .classes
        .as_ref()
        .context("the yamnet manifest entry names no class file")?;
    let path = model_dir.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading class names {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, x)| {
            if x > best.1 { (i, x) } else { best }
        })
}
