//! `tspm-edge serve`: the daemon. Loads and warms up the models, starts the live sources,
//! the engine and the socket API, tells systemd it is ready, and on SIGTERM/SIGINT stops
//! capture, drains the engine and removes the socket.

use std::time::{Duration, Instant};

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::api;
use crate::capture::{
    Backoff, CaptureConfig, FrameRate, FrameSize, LiveClock, LiveConfig, LiveSource, Mode, Restart,
    Source, SourceState,
};
use crate::config::{Config, LiveSources};
use crate::engine::{Engine, Inputs, Models, Settings};
use crate::systemd;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop after this many seconds (soak runs and tests); default: run until SIGTERM.
    #[arg(long, value_name = "SECONDS")]
    pub duration_s: Option<f64>,
    /// Accelerated run for soak tests: the `audio` and `video` descriptions (which must then
    /// be non-live, e.g. `audiotestsrc is-live=false`) go into one pipeline that waits for the
    /// engine instead of dropping, so seconds arrive as fast as the engine encodes them.
    #[arg(long)]
    pub accelerated: bool,
}

/// Items (audio chunks and frames) queued between the sources and the engine: about three
/// seconds of a 44.1 kHz microphone plus frames.
const CAPTURE_QUEUE: usize = 160;
/// How long `serve` waits for every source to play before it reports ready anyway (a camera
/// that is unplugged at boot must not keep the service from starting).
const SOURCES_WAIT: Duration = Duration::from_secs(3);

/// Runs the daemon until a signal (or `--duration-s`).
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    // Before any thread starts: fewer malloc arenas, less memory held in freed chunks.
    if crate::memory::limit_arenas(crate::memory::SERVE_MALLOC_ARENAS) {
        tracing::debug!(
            arenas = crate::memory::SERVE_MALLOC_ARENAS,
            "malloc arenas capped"
        );
    }
    // Registered first: a SIGTERM during start-up is handled once the daemon is up.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing the SIGTERM/SIGINT handlers")?;
    systemd::status("loading models");
    let models = Models::load(cfg)?;
    for m in models.info() {
        tracing::info!(model = %m.id, sha256 = %&m.sha256[..12.min(m.sha256.len())], reason = %m.reason, "model");
    }
    crate::memory::trim();
    let released = crate::memory::release_startup_pages();
    tracing::debug!(
        mb = released as f64 / 1e6,
        "asked the kernel to reclaim start-up code pages"
    );
    let clock = LiveClock::start();
    let (tx, rx) = crossbeam_channel::bounded(CAPTURE_QUEUE);
    let sources = start_sources(cfg, &args, clock, &tx)?;
    drop(tx);
    let audio_recycler = sources
        .iter()
        .find(|s| s.status().audio)
        .map(LiveSource::recycler)
        .context("no source delivers audio")?;
    let video_recycler = sources
        .iter()
        .find(|s| s.status().video)
        .map(LiveSource::recycler)
        .context("no source delivers video")?;
    let engine = Engine::start(
        models,
        Settings::from_config(cfg),
        Inputs {
            captured: rx,
            audio_recycler,
            video_recycler,
            sources: sources.iter().map(LiveSource::monitor).collect(),
            clock,
        },
    )?;
    let server = api::Server::start(&cfg.api, engine.handle(), cfg.presets.interval)?;
    let gpio = crate::gpio::start(&cfg.gpio, engine.handle())?;

    // Ready once every source plays (or the wait is over: a lost device is reported in
    // status and keeps being retried).
    let wait_until = Instant::now() + SOURCES_WAIT;
    while Instant::now() < wait_until
        && !sources
            .iter()
            .all(|s| s.status().state == SourceState::Playing)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let states: Vec<String> = sources
        .iter()
        .map(|s| {
            let st = s.status();
            format!("{} {}", st.name, st.state.name())
        })
        .collect();
    let ready_line = format!(
        "ready; {}; socket {}",
        states.join(", "),
        server.path().display()
    );
    systemd::ready(&ready_line);
    tracing::info!(
        ready_ms = started.elapsed().as_millis() as u64,
        socket = %server.path().display(),
        sources = %states.join(", "),
        "ready"
    );

    let deadline = args
        .duration_s
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let handle = engine.handle();
    let mut last_status = Instant::now();
    'running: loop {
        if let Some(signal) = signals.pending().next() {
            tracing::info!(signal, "stopping on signal");
            break 'running;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::info!("stopping: --duration-s elapsed");
            break;
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            if let Ok(s) = handle.status(Duration::from_secs(2)) {
                let sources: Vec<String> = s
                    .sources
                    .iter()
                    .map(|x| format!("{} {}", x.name, x.state.name()))
                    .collect();
                let dropped: u64 = s
                    .sources
                    .iter()
                    .map(|x| x.stats.dropped_audio_chunks + x.stats.dropped_video_frames)
                    .sum();
                let line = format!(
                    "{} s in window, {} segments, {} dropped, {}",
                    s.window_len,
                    s.segments,
                    dropped,
                    sources.join(", ")
                );
                systemd::status(&line);
                tracing::debug!(status = %line);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    systemd::stopping();
    let stopping = Instant::now();
    let progress = StopProgress::start("the API");
    server.stop();
    if let Some(gpio) = gpio {
        gpio.stop();
    }
    let api_ms = stopping.elapsed().as_millis() as u64;
    tracing::debug!(api_ms, "API stopped; stopping sources");
    progress.stage("the sources");
    for source in sources {
        source.stop();
    }
    let sources_ms = stopping.elapsed().as_millis() as u64 - api_ms;
    tracing::debug!(sources_ms, "sources stopped; stopping the engine");
    progress.stage("the engine");
    engine.shutdown(Duration::from_secs(10))?;
    progress.stage("the systemd notifier");
    systemd::flush(Duration::from_secs(1));
    progress.done();
    tracing::info!(
        stop_ms = stopping.elapsed().as_millis() as u64,
        api_ms,
        sources_ms,
        "stopped cleanly"
    );
    Ok(())
}

/// Names the part of a stop that is taking long: every `STOP_REPORT` until the stop is done,
/// a warning says what it still waits for (systemd kills the service after `TimeoutStopSec=`;
/// the log then says where it hung).
struct StopProgress {
    stage: std::sync::Arc<std::sync::Mutex<&'static str>>,
    done: crossbeam_channel::Sender<()>,
}

const STOP_REPORT: Duration = Duration::from_secs(5);

impl StopProgress {
    fn start(stage: &'static str) -> StopProgress {
        let current = std::sync::Arc::new(std::sync::Mutex::new(stage));
        let (done, finished) = crossbeam_channel::bounded::<()>(1);
        let watched = std::sync::Arc::clone(&current);
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("stop-progress".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(STOP_REPORT)
                {
                    let stage = *watched
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    tracing::warn!(
                        waiting_s = started.elapsed().as_secs(),
                        "still stopping: waiting for {stage}"
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no stop-progress thread");
        }
        StopProgress {
            stage: current,
            done,
        }
    }

    fn stage(&self, stage: &'static str) {
        *self
            .stage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stage;
    }

    fn done(self) {
        let _ = self.done.send(());
    }
}

fn start_sources(
    cfg: &Config,
    args: &Args,
    clock: LiveClock,
    tx: &crossbeam_channel::Sender<crate::capture::Captured>,
) -> anyhow::Result<Vec<LiveSource>> {
    let c = &cfg.capture;
    let capture = CaptureConfig {
        mode: if args.accelerated {
            Mode::File
        } else {
            Mode::Live
        },
        channel_capacity: CAPTURE_QUEUE,
        video_fps: FrameRate {
            num: c.video_fps,
            den: 1,
        },
        max_frame_size: c.max_video_side_px.map(|px| FrameSize {
            width_px: px,
            height_px: px,
        }),
        stall_timeout: None,
        realtime: false,
    };
    let backoff = Backoff {
        initial: c.reconnect_initial,
        max: c.reconnect_max,
        ..Backoff::default()
    };
    let live = |name: &str, source: Source, restart: Restart, realtime: bool| LiveConfig {
        name: name.to_string(),
        source,
        capture: CaptureConfig {
            realtime,
            ..capture.clone()
        },
        restart,
        backoff,
        stall_timeout: c.stall_timeout,
    };
    let configs = match (&c.sources, args.accelerated) {
        (LiveSources::Devices { audio, video }, true) => vec![live(
            "test",
            Source::Pipelines {
                audio: audio.clone(),
                video: video.clone(),
            },
            Restart::Loop,
            false,
        )],
        (LiveSources::Media(_), true) => {
            anyhow::bail!(
                "--accelerated runs the capture.audio/video descriptions; unset capture.media"
            )
        }
        (LiveSources::Devices { audio, video }, false) => vec![
            live(
                "audio",
                Source::Audio(audio.clone()),
                Restart::Reconnect,
                false,
            ),
            live(
                "video",
                Source::Video(video.clone()),
                Restart::Reconnect,
                false,
            ),
        ],
        (LiveSources::Media(media), false) => {
            if media.contains("://") {
                let looped = media.starts_with("file://");
                let restart = if looped {
                    Restart::Loop
                } else {
                    Restart::Reconnect
                };
                vec![live("media", Source::Uri(media.clone()), restart, looped)]
            } else {
                let path = crate::config::expand_path(media);
                if !path.is_file() {
                    anyhow::bail!(
                        "config key `capture.media` = {media:?}: no such file (expected a media \
                         file to loop or a URI such as rtsp://host/stream)"
                    );
                }
                vec![live("media", Source::File(path), Restart::Loop, true)]
            }
        }
    };
    configs
        .into_iter()
        .map(|lc| {
            if let Source::Audio(description) = &lc.source
                && let Some(device) = description.strip_prefix("alsa:")
            {
                return alsa_source(device.trim(), lc.backoff, clock, tx);
            }
            if let Source::Video(description) = &lc.source
                && let Some(device) = description.strip_prefix("v4l:")
            {
                return v4l_source(device.trim(), &lc, clock, tx);
            }
            let name = lc.name.clone();
            LiveSource::spawn(lc, clock, tx.clone())
                .with_context(|| format!("starting the {name} source"))
        })
        .collect()
}

/// `capture.audio = "alsa:<pcm>"`: the direct ALSA backend.
#[cfg(feature = "alsa")]
fn alsa_source(
    device: &str,
    backoff: Backoff,
    clock: LiveClock,
    tx: &crossbeam_channel::Sender<crate::capture::Captured>,
) -> anyhow::Result<LiveSource> {
    let cfg = crate::capture::alsa::AlsaConfig {
        name: "audio".into(),
        device: device.to_string(),
        backoff,
    };
    crate::capture::alsa::spawn(cfg, clock, tx.clone())
        .with_context(|| format!("starting the ALSA source {device:?}"))
}

#[cfg(not(feature = "alsa"))]
fn alsa_source(
    device: &str,
    _: Backoff,
    _: LiveClock,
    _: &crossbeam_channel::Sender<crate::capture::Captured>,
) -> anyhow::Result<LiveSource> {
    anyhow::bail!(
        "config key `capture.audio` = \"alsa:{device}\": this tspm-edge was built without the \
         `alsa` feature (cargo build --features alsa), or use a GStreamer description such as \
         \"alsasrc device={device}\""
    )
}

/// `capture.video = "v4l:<device>"`: the direct V4L2 backend.
#[cfg(feature = "v4l")]
fn v4l_source(
    device: &str,
    lc: &LiveConfig,
    clock: LiveClock,
    tx: &crossbeam_channel::Sender<crate::capture::Captured>,
) -> anyhow::Result<LiveSource> {
    let cfg = crate::capture::v4l::V4lConfig {
        name: lc.name.clone(),
        device: device.into(),
        video_fps: lc.capture.video_fps,
        max_frame_size: lc.capture.max_frame_size,
        stall_timeout: lc.stall_timeout,
        backoff: lc.backoff,
    };
    crate::capture::v4l::spawn(cfg, clock, tx.clone())
        .with_context(|| format!("starting the V4L2 source {device:?}"))
}

#[cfg(not(feature = "v4l"))]
fn v4l_source(
    device: &str,
    _: &LiveConfig,
    _: LiveClock,
    _: &crossbeam_channel::Sender<crate::capture::Captured>,
) -> anyhow::Result<LiveSource> {
    anyhow::bail!(
        "config key `capture.video` = \"v4l:{device}\": this tspm-edge was built without the \
         `v4l` feature (cargo build --features v4l), or use a GStreamer description such as \
         \"v4l2src device={device}\""
    )
}
