//! The command line: argument definitions, configuration loading, logging set-up, and one
//! module per subcommand. `main` calls [`run`] and prints the error chain once.

mod answer;
mod ask;
mod bench;
mod check;
mod eval;
mod extract;
mod prompts;
mod serve;
mod soak;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};

/// Offline audio-visual question answering (TSPM) for edge boards.
///
/// Captures media through GStreamer, cuts it into one-second segments and computes audio
/// (YAMNet) and visual (EfficientNet-Lite0) features with tract. Models come from
/// `bash models/build.sh`.
#[derive(Debug, Parser)]
#[command(name = "tspm-edge", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML), merged over the built-in default
    /// (see `tspm-edge print-default-config`).
    #[arg(long, global = true, env = "TSPM_EDGE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Writes per-second audio and visual features of a media file to an .npz file.
    ///
    /// Arrays: audio [T,1024], audio_logits [T,521], visual [T,1280], tokens [T,49,1280],
    /// pts_s [T], has_frame [T]. This is the code path the daemon runs, and the one training
    /// uses.
    Extract(extract::Args),
    /// Answers questions about a media file with the TSPM head: prints the answer, its
    /// probability, the top-3 and the seconds the head selected.
    ///
    /// The head that ships is trained on synthetic scenes from Debian material
    /// (models/head/; 59 % on held-out test scenes vs 49 % for the blind prior).
    Answer(answer::Args),
    /// Times each per-segment stage (log-mel, image prep, each encoder in fp32 and int8) in
    /// tract, and the same ONNX files in onnxruntime, and prints the ratios.
    Bench(bench::Args),
    /// Runs the fp32 and int8 encoders in tract on the real inputs the model build saved, and
    /// prints how close int8 stays to fp32 (and tract to onnxruntime).
    CheckModels(check::Args),
    /// Runs the daemon: live capture, the rolling window, the engine and the socket API.
    ///
    /// Sources, window, socket, presets and GPIO come from the configuration
    /// (`tspm-edge print-default-config`); the defaults capture GStreamer test sources, so it
    /// runs without a camera. Under systemd it notifies READY, STATUS and the watchdog.
    Serve(serve::Args),
    /// Measures the daemon's figures on this binary: time to READY, ask latency with
    /// concurrent clients during capture, drops at real-time rate, RSS over an accelerated
    /// run of many windows.
    Soak(soak::Args),
    /// Asks the running daemon a question (or a preset), over its socket.
    Ask(ask::Args),
    /// Prints the running daemon's status: sources, window, drops, models.
    Status(ask::StatusArgs),
    /// Accuracy of the TSPM head in tract per question type on an evaluation set (JSONL of
    /// questions over `extract` feature files, as models/data/make_dataset.py writes), for
    /// fp32 and int8, printed as JSON.
    Eval(eval::Args),
    /// Fills MUSIC-AVQA-style question records (JSON array) with their templates: prints one
    /// JSON line per record with the question text and the declarative prompt.
    Prompts(prompts::Args),
    /// Prints the built-in default configuration, with comments.
    PrintDefaultConfig,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            return Ok(());
        }
        // Pure text work: no models, no configuration.
        Command::Prompts(args) => return prompts::run(args),
        _ => {}
    }
    let cfg = match &cli.config {
        Some(path) => Config::from_file(path),
        None => Config::default_config(),
    }
    .context("loading configuration")?;
    init_logging(&cfg.logging.level);
    // tract's Intel AMX int8 kernel (x86) is safe only on int8 files whose products all have
    // K a multiple of 64 — the head's, not the encoders' (model::allow_amx_int8). A process
    // configured to run an int8 encoder, or `check-models`, which runs every file, keeps it
    // off; elsewhere `auto` passes over the int8 encoders (tract runs them 10-20x slower than
    // fp32 anyway) and `bench` times them in a child process without it.
    let int8_encoder = [cfg.models.audio_precision, cfg.models.visual_precision]
        .contains(&config::PrecisionChoice::Int8);
    if !int8_encoder && !matches!(cli.command, Command::CheckModels(_)) {
        crate::model::allow_amx_int8();
    }
    match cli.command {
        Command::Extract(args) => extract::run(&cfg, args),
        Command::Answer(args) => answer::run(&cfg, args),
        Command::Bench(args) => bench::run(&cfg, args),
        Command::CheckModels(args) => check::run(&cfg, args),
        Command::Serve(args) => serve::run(&cfg, args),
        Command::Ask(args) => ask::run(&cfg, args),
        Command::Eval(args) => eval::run(&cfg, args),
        Command::Soak(args) => soak::run(&cfg, args),
        Command::Status(args) => ask::run_status(&cfg, args),
        Command::PrintDefaultConfig | Command::Prompts(_) => Ok(()),
    }
}

/// Logs to stderr without timestamps (journald adds them); RUST_LOG overrides the level.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("tspm_edge={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .try_init();
}
