//! Live sources for the daemon: each source runs in its own pipeline under a supervisor
//! thread that restarts it when it fails.
//!
//! **Owns** the life of one source: build, PLAYING, watch its bus, and on an error, an end of
//! stream or a stall, tear it down and start it again after a capped exponential backoff
//! ([`Backoff`]). A looped file ([`Restart::Loop`]) restarts at once on end of stream and
//! counts loops, not reconnects. The state, counters and last error are published in a
//! [`SourceStatus`] that anyone may read; nothing else is shared.
//!
//! **Timeline.** Every source of one daemon shares a [`LiveClock`]: a pipeline started (or
//! restarted) `x` ns after the clock's origin delivers items at `x +` its own running time,
//! so audio and video line up and a restarted source goes on where the timeline is instead
//! of starting again at 0.
//!
//! **Never blocks the streaming threads** in [`Mode::Live`]: items go into the consumer's
//! bounded channel with `try_send`; a full channel drops the item and counts it in the
//! source's [`CaptureStats`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{
    CaptureConfig, CaptureError, CaptureStats, Captured, Control, Recycler, Source, pace, pipeline,
    sink,
};

/// The daemon's timeline: nanoseconds since the clock was made, on a monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct LiveClock {
    origin: Instant,
}

impl LiveClock {
    /// A timeline that starts now.
    pub fn start() -> Self {
        LiveClock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What a source does when its pipeline ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// A device or stream: an error or end of stream is a loss; reconnect with backoff.
    Reconnect,
    /// A file standing in for a device: end of stream starts it again at once.
    Loop,
}

/// Capped exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A pipeline that played this long before failing starts again from `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Where a source is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Building the pipeline and asking it to play.
    Starting,
    /// Delivering items.
    Playing,
    /// Lost; waiting out the backoff before the next start.
    Reconnecting,
    /// Stopped for good (the daemon is shutting down).
    Stopped,
}

impl SourceState {
    /// A stable lower-case name (for status output).
    pub fn name(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Playing => "playing",
            SourceState::Reconnecting => "reconnecting",
            SourceState::Stopped => "stopped",
        }
    }
}

/// A snapshot of one source.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// The name given at spawn (e.g. `audio`, `video`, `media`).
    pub name: String,
    /// What it captures (the description, path or URI).
    pub description: String,
    /// Current state.
    pub state: SourceState,
    /// When it entered that state.
    pub since: Instant,
    /// Restarts after a loss.
    pub reconnects: u64,
    /// Restarts of a looped file at its end.
    pub loops: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Items produced and dropped since the daemon started.
    pub stats: CaptureStats,
    /// It delivers audio.
    pub audio: bool,
    /// It delivers video.
    pub video: bool,
}

/// How to run one live source.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Name for logs and status.
    pub name: String,
    /// The source: [`Source::Audio`], [`Source::Video`], [`Source::Uri`] or a looped
    /// [`Source::File`].
    pub source: Source,
    /// Output formats and back-pressure: [`Mode::Live`] for devices; [`Mode::File`] makes
    /// capture wait for the consumer (non-live test sources run as fast as the engine, for
    /// accelerated soak runs).
    pub capture: CaptureConfig,
    /// What an end of stream means.
    pub restart: Restart,
    /// Waits between restarts.
    pub backoff: Backoff,
    /// A playing pipeline that delivers nothing for this long is restarted.
    pub stall_timeout: Duration,
}

pub(super) struct Shared {
    status: Mutex<SourceStatus>,
    pub(super) counters: Arc<sink::Counters>,
}

impl Shared {
    pub(super) fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        // Only plain values are guarded; a panic elsewhere cannot leave them inconsistent.
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A supervised live source. Dropping it stops the pipeline and joins the thread.
pub struct LiveSource {
    shared: Arc<Shared>,
    recycler: Recycler,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSource")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl LiveSource {
    /// Starts the supervisor. Items go to `tx`; their times are on `clock`'s timeline.
    ///
    /// A description that does not parse, or names an element that is not installed, is an
    /// error here (a configuration mistake, not a lost device); a device that is missing or
    /// busy is not: the source starts in [`SourceState::Reconnecting`] and keeps trying.
    pub fn spawn(
        cfg: LiveConfig,
        clock: LiveClock,
        tx: Sender<Captured>,
    ) -> Result<Self, CaptureError> {
        super::init()?;
        let capture = cfg.capture.clone();
        let counters = Arc::new(sink::Counters::default());
        let (audio_pool, audio_pool_rx) =
            crossbeam_channel::bounded(capture.channel_capacity.max(1));
        let (frame_pool, frame_pool_rx) = crossbeam_channel::bounded(4);
        let pools = sink::Pools {
            audio: audio_pool_rx,
            frames: frame_pool_rx,
        };
        let runner = Runner {
            cfg: LiveConfig { capture, ..cfg },
            clock,
            tx,
            pools,
            counters: Arc::clone(&counters),
        };
        // Build once now, so that a bad description fails start-up with its own message.
        drop(runner.build(0)?);
        let name = runner.cfg.name.clone();
        let description = describe(&runner.cfg.source);
        let provides = (
            runner.cfg.source.provides(super::StreamKind::Audio),
            runner.cfg.source.provides(super::StreamKind::Video),
        );
        let (restart, backoff) = (runner.cfg.restart, runner.cfg.backoff);
        Self::supervise(
            Supervised {
                name,
                description,
                provides,
                restart,
                backoff,
                counters,
                recycler: Recycler {
                    audio: audio_pool,
                    frames: frame_pool,
                },
            },
            runner,
        )
    }

    /// Runs `play` under the supervisor: restarts with backoff, status, stop.
    pub(super) fn supervise(s: Supervised, mut play: impl Play) -> Result<Self, CaptureError> {
        let shared = Arc::new(Shared {
            status: Mutex::new(SourceStatus {
                name: s.name.clone(),
                description: s.description,
                state: SourceState::Starting,
                since: Instant::now(),
                reconnects: 0,
                loops: 0,
                last_error: None,
                stats: CaptureStats::default(),
                audio: s.provides.0,
                video: s.provides.1,
            }),
            counters: s.counters,
        });
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let thread_shared = Arc::clone(&shared);
        let (name, restart, backoff) = (s.name.clone(), s.restart, s.backoff);
        let thread = std::thread::Builder::new()
            .name(format!("source-{}", s.name))
            .spawn(move || supervise(&name, restart, backoff, &mut play, &thread_shared, &stop_rx))
            .map_err(|e| CaptureError::Init { source: e.into() })?;
        Ok(LiveSource {
            shared,
            recycler: s.recycler,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The source's state and counters now.
    pub fn status(&self) -> SourceStatus {
        self.monitor().status()
    }

    /// A handle that reads the status from any thread, also after the source is stopped.
    pub fn monitor(&self) -> SourceMonitor {
        SourceMonitor {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Gives consumed buffers back to this source's streaming threads.
    pub fn recycler(&self) -> Recycler {
        self.recycler.clone()
    }

    /// Stops the pipeline and waits for the supervisor to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LiveSource {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads a source's status; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct SourceMonitor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SourceMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceMonitor").finish_non_exhaustive()
    }
}

impl SourceMonitor {
    /// The source's state and counters now.
    pub fn status(&self) -> SourceStatus {
        let mut status = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let c = &self.shared.counters;
        status.stats = CaptureStats {
            audio_chunks: c.audio_chunks.load(Ordering::Relaxed),
            video_frames: c.video_frames.load(Ordering::Relaxed),
            dropped_audio_chunks: c.dropped_audio_chunks.load(Ordering::Relaxed),
            dropped_video_frames: c.dropped_video_frames.load(Ordering::Relaxed),
        };
        status
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::File(path) => path.display().to_string(),
        Source::Uri(uri) => uri.clone(),
        Source::Audio(d) | Source::Video(d) => d.clone(),
        Source::Pipelines { audio, video } => format!("{audio} | {video}"),
    }
}

/// The supervisor thread's state.
struct Runner {
    cfg: LiveConfig,
    clock: LiveClock,
    tx: Sender<Captured>,
    pools: sink::Pools,
    counters: Arc<sink::Counters>,
}

/// What the supervisor needs to know about a source besides how to play it.
pub(super) struct Supervised {
    pub name: String,
    pub description: String,
    /// (audio, video) it delivers.
    pub provides: (bool, bool),
    pub restart: Restart,
    pub backoff: Backoff,
    pub counters: Arc<sink::Counters>,
    pub recycler: Recycler,
}

/// One run of a source until it ends, fails or is told to stop: the GStreamer pipeline
/// ([`Runner`]) or a direct device backend.
pub(super) trait Play: Send + 'static {
    fn play_once(&mut self, shared: &Shared, stop: &Receiver<()>) -> Ended;
}

impl Play for Runner {
    fn play_once(&mut self, shared: &Shared, stop: &Receiver<()>) -> Ended {
        Runner::play_once(self, shared, stop)
    }
}

/// The supervisor loop: play, and after a loss wait out the backoff and play again.
fn supervise(
    name: &str,
    restart: Restart,
    backoff: Backoff,
    play: &mut impl Play,
    shared: &Shared,
    stop: &Receiver<()>,
) {
    let mut failures: u32 = 0;
    loop {
        shared.update(|s| {
            s.state = SourceState::Starting;
            s.since = Instant::now();
        });
        let started = Instant::now();
        let ended = play.play_once(shared, stop);
        let played = started.elapsed();
        let error = match ended {
            Ended::Stop => break,
            Ended::Eos if restart == Restart::Loop => {
                shared.update(|s| s.loops += 1);
                tracing::debug!(source = %name, "looping");
                failures = 0;
                continue;
            }
            Ended::Eos => "end of stream".to_string(),
            Ended::Failed(message) => message,
        };
        if played >= backoff.reset_after {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let wait = backoff.delay(failures);
        tracing::warn!(source = %name, error = %error, retry_in = ?wait, "source lost");
        shared.update(|s| {
            s.state = SourceState::Reconnecting;
            s.since = Instant::now();
            s.last_error = Some(error);
        });
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
        shared.update(|s| s.reconnects += 1);
    }
    shared.update(|s| {
        s.state = SourceState::Stopped;
        s.since = Instant::now();
    });
}

/// Marks a source as playing (once its first item is out).
pub(super) fn mark_playing(shared: &Shared, name: &str) {
    tracing::info!(source = %name, "playing");
    shared.update(|s| {
        s.state = SourceState::Playing;
        s.since = Instant::now();
    });
}

/// How one run of a source ended.
pub(super) enum Ended {
    Stop,
    Eos,
    Failed(String),
}

impl Runner {
    fn build(
        &self,
        offset_ns: u64,
    ) -> Result<(gst::Pipeline, Receiver<Control>, Arc<pace::Pacer>), CaptureError> {
        let (ctrl_tx, ctrl_rx) = crossbeam_channel::unbounded();
        let pacer = Arc::new(pace::Pacer::new(self.cfg.capture.mode));
        let ctx = sink::SinkCtx {
            tx: self.tx.clone(),
            mode: self.cfg.capture.mode,
            counters: Arc::clone(&self.counters),
            pools: self.pools.clone(),
            pacer: Arc::clone(&pacer),
            pts_offset_ns: offset_ns,
        };
        let pipeline = pipeline::build(&self.cfg.source, &self.cfg.capture, ctx, ctrl_tx)?;
        Ok((pipeline, ctrl_rx, pacer))
    }

    /// Runs the pipeline until it ends, fails, stalls or is told to stop.
    fn play_once(&self, shared: &Shared, stop: &Receiver<()>) -> Ended {
        let offset_ns = self.clock.now_ns();
        let (pipeline, ctrl, pacer) = match self.build(offset_ns) {
            Ok(built) => built,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        let bus = pipeline.bus().expect("a pipeline has a bus");
        let ended = match self.start(&pipeline, &bus, stop) {
            Ok(()) => self.watch(shared, &bus, &ctrl, stop),
            Err(ended) => ended,
        };
        // A streaming thread waiting in the pacer must be released before NULL, which waits
        // for the streaming threads.
        pacer.close();
        let _ = pipeline.set_state(gst::State::Null);
        ended
    }

    /// Sets the pipeline PLAYING. A looped source is first prerolled and switched to
    /// segment-seek mode while PAUSED: at the end of a segment it posts SEGMENT_DONE and a
    /// non-flushing seek back to 0 goes on without a gap, the running time still rising. The
    /// one flushing seek that switches the mode on is made before any sample reaches the
    /// sinks, because in PLAYING it would wait for streaming threads that wait for the
    /// consumer or for the other stream (`pace.rs`).
    fn start(
        &self,
        pipeline: &gst::Pipeline,
        bus: &gst::Bus,
        stop: &Receiver<()>,
    ) -> Result<(), Ended> {
        let could_not = |what: &str| {
            Ended::Failed(first_error(bus).unwrap_or_else(|| format!("could not {what}")))
        };
        if self.cfg.restart == Restart::Loop {
            pipeline
                .set_state(gst::State::Paused)
                .map_err(|_| could_not("start"))?;
            self.wait_prerolled(bus, stop)?;
            if pipeline
                .seek_simple(
                    gst::SeekFlags::FLUSH | gst::SeekFlags::SEGMENT,
                    gst::ClockTime::ZERO,
                )
                .is_ok()
            {
                self.wait_prerolled(bus, stop)?;
            } else {
                // Not seekable: it will end and be restarted instead.
                tracing::debug!(source = %self.cfg.name, "no segment seek");
            }
        }
        pipeline
            .set_state(gst::State::Playing)
            .map(|_| ())
            .map_err(|_| could_not("play"))
    }

    /// Waits for ASYNC_DONE (the sinks hold their first buffers), watching for a stop, an
    /// error, or no preroll within the stall timeout.
    fn wait_prerolled(&self, bus: &gst::Bus, stop: &Receiver<()>) -> Result<(), Ended> {
        let started = Instant::now();
        loop {
            match stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(()) | Err(TryRecvError::Disconnected) => return Err(Ended::Stop),
            }
            let poll = gst::ClockTime::from_mseconds(100);
            if let Some(msg) = bus.timed_pop_filtered(
                poll,
                &[
                    gst::MessageType::AsyncDone,
                    gst::MessageType::Error,
                    gst::MessageType::Eos,
                ],
            ) {
                match msg.view() {
                    gst::MessageView::AsyncDone(_) => return Ok(()),
                    gst::MessageView::Eos(_) => return Err(Ended::Eos),
                    gst::MessageView::Error(err) => {
                        return Err(Ended::Failed(describe_error(&msg, err)));
                    }
                    _ => {}
                }
            }
            if started.elapsed() >= self.cfg.stall_timeout {
                return Err(Ended::Failed(format!(
                    "did not preroll within {:.1} s",
                    self.cfg.stall_timeout.as_secs_f64()
                )));
            }
        }
    }

    fn watch(
        &self,
        shared: &Shared,
        bus: &gst::Bus,
        ctrl: &Receiver<Control>,
        stop: &Receiver<()>,
    ) -> Ended {
        // Progress: an item delivered, or a poll period spent waiting for the engine to take
        // one (file mode: under a slow engine — qemu, an overloaded board — that is not a stall).
        let items = || {
            self.counters.audio_chunks.load(Ordering::Relaxed)
                + self.counters.video_frames.load(Ordering::Relaxed)
                + self.counters.backpressure_waits.load(Ordering::Relaxed)
        };
        let mut seen = items();
        let mut last_item = Instant::now();
        let mut playing = false;
        loop {
            match stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(()) | Err(TryRecvError::Disconnected) => return Ended::Stop,
            }
            if let Ok(Control::Error(e)) = ctrl.try_recv() {
                return Ended::Failed(e.to_string());
            }
            let poll = gst::ClockTime::from_mseconds(100);
            if let Some(msg) = bus.timed_pop_filtered(
                poll,
                &[
                    gst::MessageType::Error,
                    gst::MessageType::Eos,
                    gst::MessageType::Warning,
                    gst::MessageType::SegmentDone,
                ],
            ) {
                match msg.view() {
                    gst::MessageView::Eos(_) => return Ended::Eos,
                    // The end of a looped source's segment (see `start`): back to 0.
                    gst::MessageView::SegmentDone(_) => {
                        if let Some(pipeline) =
                            msg.src().and_then(|s| s.downcast_ref::<gst::Pipeline>())
                        {
                            if pipeline
                                .seek_simple(gst::SeekFlags::SEGMENT, gst::ClockTime::ZERO)
                                .is_err()
                            {
                                return Ended::Eos;
                            }
                            shared.update(|s| s.loops += 1);
                            tracing::debug!(source = %self.cfg.name, "looped");
                        }
                    }
                    gst::MessageView::Error(err) => {
                        return Ended::Failed(describe_error(&msg, err));
                    }
                    gst::MessageView::Warning(w) => {
                        tracing::warn!(source = %self.cfg.name, warning = %w.error(), "capture");
                    }
                    _ => {}
                }
            }
            let now_items = items();
            if now_items != seen {
                seen = now_items;
                last_item = Instant::now();
                if !playing {
                    playing = true;
                    mark_playing(shared, &self.cfg.name);
                }
            } else if last_item.elapsed() >= self.cfg.stall_timeout {
                return Ended::Failed(format!(
                    "no data for {:.1} s",
                    self.cfg.stall_timeout.as_secs_f64()
                ));
            }
        }
    }
}

/// The first error message already on the bus (an element that refused to start posts its
/// reason before `set_state` returns).
fn first_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(describe_error(&msg, err));
        }
    }
    None
}

/// An error message as status shows it: the element that posted it, then GStreamer's text.
fn describe_error(msg: &gst::Message, err: &gst::message::Error) -> String {
    let element = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
    format!("`{element}`: {}", err.error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(4),
            reset_after: Duration::from_secs(10),
        };
        let waits: Vec<u128> = (1..=7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000, 4000]);
        assert_eq!(b.delay(200), Duration::from_secs(4));
    }
}
