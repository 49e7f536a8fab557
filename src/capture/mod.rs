//! Capture: the only module that knows GStreamer.
//!
//! **Owns** the GStreamer pipeline that turns a media file (or, for tests and the daemon, two
//! source descriptions such as `audiotestsrc …` / `v4l2src …`) into timestamped
//! 16 kHz mono F32 audio chunks and RGB frames at a fixed rate ([`CaptureConfig::video_fps`],
//! 2 fps by default), delivered as [`Captured`] items. GStreamer types never leave this
//! module: timestamps become [`Pts`] (running time, so every stream starts near 0) and
//! payloads become plain `Vec`s in [`Captured::Audio`] and [`Frame`]. The optional direct
//! device backends (`alsa.rs`, feature `alsa`; `v4l.rs`, feature `v4l`) deliver the same items
//! without GStreamer, under the same live-source supervisor (`live.rs`).
//!
//! **Threads.** GStreamer's streaming threads run the appsink callbacks (`sink.rs`), which push
//! into one bounded crossbeam channel; the consumer (the CLI loop or the engine thread) calls
//! [`Capture::recv`] or iterates [`Capture::iter`]. There is no thread of our own: the bus has a
//! sync handler that forwards errors and end-of-stream, from whichever thread posts them, into
//! a second, unbounded control channel (a handful of messages per run) that `recv` selects on.
//!
//! **Back-pressure** is the [`Mode`]: for files ([`Mode::File`]) a full channel makes the
//! streaming thread wait, so nothing is lost and the appsinks run with `sync=false` (decoding
//! as fast as the consumer reads), and a stream more than 2 s ahead of the other waits for it
//! (`pace.rs`), so the consumer gets the two interleaved by time whatever the decoders'
//! speeds; for live sources ([`Mode::Live`]) a streaming thread never
//! waits: a full channel drops the newest item and counts it ([`CaptureStats`]). The one
//! exception is the once-per-stream [`Captured::StreamEnd`], which is always delivered.
//!
//! **Invariants.** Items of one stream arrive in pts order. `recv` returns every data item
//! queued before the end of stream or an error, then [`Captured::Eos`] or the error, and never
//! blocks forever: a stream that is missing from a file is an error as soon as `decodebin`
//! has exposed its streams, every bus error reaches the consumer, and an optional stall
//! timeout ([`CaptureConfig::stall_timeout`]) catches a pipeline that goes quiet. Dropping a
//! [`Capture`] disconnects the channel first (releasing streaming threads that wait on it) and
//! then stops the pipeline.

#[cfg(feature = "alsa")]
pub mod alsa;
mod error;
mod live;
mod pace;
mod pipeline;
mod sink;
#[cfg(feature = "v4l")]
pub mod v4l;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select};
use gstreamer as gst;
use gstreamer::prelude::*;

pub use error::{CaptureError, StreamKind};
pub use live::{
    Backoff, LiveClock, LiveConfig, LiveSource, Restart, SourceMonitor, SourceState, SourceStatus,
};

use crate::pts::Pts;
pub use crate::segmenter::Frame;

/// Initialises GStreamer once per process; later calls return the first call's outcome.
pub fn init() -> Result<(), CaptureError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|message| CaptureError::Init {
            source: message.into(),
        })
}

/// Where the media comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A media file with one audio and one video stream (any container/codec `decodebin`
    /// can open; extra streams are ignored).
    File(PathBuf),
    /// Two `gst-launch`-style descriptions, each ending in one unlinked source pad, e.g.
    /// `audiotestsrc num-buffers=50 freq=440` and `videotestsrc num-buffers=20`, or
    /// `alsasrc device=hw:1,0` and `v4l2src`. Any format: the branches convert.
    Pipelines {
        /// The audio source description.
        audio: String,
        /// The video source description.
        video: String,
    },
    /// A URI with one audio and one video stream that `uridecodebin` opens: `rtsp://…`,
    /// `file:///…`, `http://…`.
    Uri(String),
    /// One audio source description and no video (the daemon runs each live device in its
    /// own pipeline, so that one can fail and restart while the other keeps running).
    Audio(String),
    /// One video source description and no audio.
    Video(String),
}

impl Source {
    /// Whether the source delivers a stream of `kind`.
    pub fn provides(&self, kind: StreamKind) -> bool {
        match self {
            Source::File(_) | Source::Uri(_) | Source::Pipelines { .. } => true,
            Source::Audio(_) => kind == StreamKind::Audio,
            Source::Video(_) => kind == StreamKind::Video,
        }
    }
}

/// What a streaming thread does when the consumer is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait for room: nothing is lost (files, which can wait).
    File,
    /// Never wait: drop the newest item and count it (live devices, which cannot).
    Live,
}

/// A frame rate as a fraction, `num / den` frames per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate {
    /// Numerator.
    pub num: u32,
    /// Denominator.
    pub den: u32,
}

/// A frame size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    /// Width in pixels.
    pub width_px: u32,
    /// Height in pixels.
    pub height_px: u32,
}

/// How to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Back-pressure policy.
    pub mode: Mode,
    /// Items (audio chunks and frames together) the channel holds.
    pub channel_capacity: usize,
    /// Output frame rate (`videorate` duplicates or drops frames to reach it).
    pub video_fps: FrameRate,
    /// Frames larger than this are scaled down to fit, keeping the aspect ratio, with square
    /// pixels; `None` keeps the native size.
    pub max_frame_size: Option<FrameSize>,
    /// `recv` gives up with [`CaptureError::Stalled`] after this long without any item;
    /// `None` waits forever. This is the last line of defence against a hang: with some
    /// corrupt files, GStreamer 1.22's `decodebin` races with the demuxer and drops the
    /// demuxer's error, so neither data, nor an error, nor end of stream ever comes.
    pub stall_timeout: Option<Duration>,
    /// The appsinks hold each item until its time on the pipeline clock (`sync=true`), so a
    /// file plays at its own pace like a live source; `false` decodes as fast as it can.
    pub realtime: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            mode: Mode::File,
            // About a second of audio chunks plus frames.
            channel_capacity: 64,
            video_fps: FrameRate { num: 2, den: 1 },
            max_frame_size: None,
            // Long enough for a camera to start; short enough that a file that makes GStreamer go
            // quiet (decodebin can swallow a demuxer's error, see `stall_timeout`) fails soon.
            stall_timeout: Some(Duration::from_secs(10)),
            realtime: false,
        }
    }
}

/// One item from capture.
#[derive(Debug)]
pub enum Captured {
    /// Mono F32 samples at 16 kHz; `pts` is the first sample's time.
    Audio {
        /// Time of the first sample.
        pts: Pts,
        /// The samples; hand the `Vec` back with [`Recycler::audio`] to reuse it.
        samples: Vec<f32>,
    },
    /// One RGB frame; hand it back with [`Recycler::frame`] to reuse its buffer.
    Video(Frame),
    /// One stream has ended; items of the other may follow.
    StreamEnd(StreamKind),
    /// Both streams have ended and every item has been delivered.
    Eos,
}

/// Counters since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Audio chunks the pipeline produced (delivered or dropped).
    pub audio_chunks: u64,
    /// Frames the pipeline produced (delivered or dropped).
    pub video_frames: u64,
    /// Audio chunks dropped because the channel was full ([`Mode::Live`] only).
    pub dropped_audio_chunks: u64,
    /// Frames dropped because the channel was full ([`Mode::Live`] only).
    pub dropped_video_frames: u64,
}

/// What the bus (or decodebin's signals) tell the consumer.
#[derive(Debug)]
enum Control {
    Eos,
    Error(CaptureError),
}

/// What `recv` woke up for (`None`: the channel is disconnected).
enum Event {
    Item(Option<Captured>),
    Control(Option<Control>),
    Stalled(Duration),
}

/// Where `recv` is in its life.
#[derive(Debug)]
enum State {
    Running,
    /// The bus said this; deliver the queued items first.
    Draining(Control),
    Ended,
    Failed,
}

/// A running capture pipeline and the receiving end of its channel.
#[derive(Debug)]
pub struct Capture {
    pipeline: gst::Pipeline,
    data_rx: Receiver<Captured>,
    ctrl_rx: Receiver<Control>,
    audio_pool: Sender<Vec<f32>>,
    frame_pool: Sender<Vec<u8>>,
    counters: Arc<sink::Counters>,
    pacer: Arc<pace::Pacer>,
    stall_timeout: Option<Duration>,
    state: State,
}

impl Capture {
    /// Builds the pipeline for `source` and starts it. Errors found later (a corrupt file, a
    /// missing stream) come from [`Capture::recv`].
    pub fn start(source: &Source, cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        init()?;
        if let Source::File(path) = source {
            // Checked here so the error names the path instead of filesrc's generic message.
            if !path.try_exists().unwrap_or(true) {
                return Err(CaptureError::NotFound { path: path.clone() });
            }
        }
        let (data_tx, data_rx) = crossbeam_channel::bounded(cfg.channel_capacity.max(1));
        let (ctrl_tx, ctrl_rx) = crossbeam_channel::unbounded();
        // A few buffers per stream are enough: the consumer hands each back after use.
        let (audio_pool, audio_pool_rx) = crossbeam_channel::bounded(cfg.channel_capacity.max(1));
        let (frame_pool, frame_pool_rx) = crossbeam_channel::bounded(4);
        let counters = Arc::new(sink::Counters::default());
        let pacer = Arc::new(pace::Pacer::new(cfg.mode));
        for kind in [StreamKind::Audio, StreamKind::Video] {
            if !source.provides(kind) {
                // A stream that does not exist must not hold the other one back.
                pacer.end(kind);
            }
        }
        let ctx = sink::SinkCtx {
            tx: data_tx,
            mode: cfg.mode,
            counters: Arc::clone(&counters),
            pools: sink::Pools {
                audio: audio_pool_rx,
                frames: frame_pool_rx,
            },
            pacer: Arc::clone(&pacer),
            pts_offset_ns: 0,
        };
        let pipeline = pipeline::build(source, cfg, ctx, ctrl_tx.clone())?;
        watch_bus(&pipeline, ctrl_tx);
        let capture = Capture {
            pipeline,
            data_rx,
            ctrl_rx,
            audio_pool,
            frame_pool,
            counters,
            pacer,
            stall_timeout: cfg.stall_timeout,
            state: State::Running,
        };
        if capture.pipeline.set_state(gst::State::Playing).is_err() {
            // The element that refused posted its reason on the bus before returning.
            return Err(match capture.ctrl_rx.try_recv() {
                Ok(Control::Error(e)) => e,
                _ => CaptureError::Start,
            });
        }
        Ok(capture)
    }

    /// The next item, waiting for it. After [`Captured::Eos`] it keeps returning `Eos`; after
    /// an error it returns [`CaptureError::Stopped`].
    pub fn recv(&mut self) -> Result<Captured, CaptureError> {
        loop {
            match std::mem::replace(&mut self.state, State::Running) {
                State::Ended => {
                    self.state = State::Ended;
                    return Ok(Captured::Eos);
                }
                State::Failed => {
                    self.state = State::Failed;
                    return Err(CaptureError::Stopped);
                }
                State::Draining(control) => {
                    // Every item a sink sent before the message was posted is in the
                    // channel already: hand those out first, in order.
                    if let Ok(item) = self.data_rx.try_recv() {
                        self.state = State::Draining(control);
                        return Ok(item);
                    }
                    return match control {
                        Control::Eos => {
                            self.state = State::Ended;
                            Ok(Captured::Eos)
                        }
                        Control::Error(e) => {
                            self.state = State::Failed;
                            Err(e)
                        }
                    };
                }
                State::Running => {}
            }
            let event = match self.stall_timeout {
                Some(timeout) => select! {
                    recv(self.data_rx) -> item => Event::Item(item.ok()),
                    recv(self.ctrl_rx) -> control => Event::Control(control.ok()),
                    default(timeout) => Event::Stalled(timeout),
                },
                None => select! {
                    recv(self.data_rx) -> item => Event::Item(item.ok()),
                    recv(self.ctrl_rx) -> control => Event::Control(control.ok()),
                },
            };
            match event {
                Event::Item(Some(item)) => return Ok(item),
                Event::Control(Some(control)) => self.state = State::Draining(control),
                Event::Stalled(waited) => {
                    self.state = State::Failed;
                    return Err(CaptureError::Stalled { waited });
                }
                // The senders live in the pipeline, which `self` owns, so this is not
                // expected; report it rather than wait on a dead channel.
                Event::Item(None) | Event::Control(None) => {
                    self.state = State::Failed;
                    return Err(CaptureError::Disconnected);
                }
            }
        }
    }

    /// Iterates over items until (and including) [`Captured::Eos`], or until the first error.
    pub fn iter(&mut self) -> Iter<'_> {
        Iter { capture: self }
    }

    /// What has been counted so far.
    pub fn stats(&self) -> CaptureStats {
        let c = &self.counters;
        CaptureStats {
            audio_chunks: c.audio_chunks.load(Ordering::Relaxed),
            video_frames: c.video_frames.load(Ordering::Relaxed),
            dropped_audio_chunks: c.dropped_audio_chunks.load(Ordering::Relaxed),
            dropped_video_frames: c.dropped_video_frames.load(Ordering::Relaxed),
        }
    }

    /// A handle that gives buffers back for reuse; usable while iterating.
    pub fn recycler(&self) -> Recycler {
        Recycler {
            audio: self.audio_pool.clone(),
            frames: self.frame_pool.clone(),
        }
    }
}

/// Gives consumed buffers back to the streaming threads, so that steady-state capture does
/// not allocate. Buffers beyond the small pool are simply freed.
#[derive(Debug, Clone)]
pub struct Recycler {
    audio: Sender<Vec<f32>>,
    frames: Sender<Vec<u8>>,
}

impl Recycler {
    /// Gives an audio chunk's buffer back.
    pub fn audio(&self, samples: Vec<f32>) {
        let _ = self.audio.try_send(samples);
    }

    /// Gives a frame's buffer back.
    pub fn frame(&self, frame: Frame) {
        let _ = self.frames.try_send(frame.data);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // A streaming thread may be waiting in the pacer or in `send` (file mode); closing the
        // pacer and disconnecting the channel release it with an error, which stops its
        // stream. Only then can the pipeline go to NULL, which waits for the streaming threads.
        self.pacer.close();
        drop(std::mem::replace(
            &mut self.data_rx,
            crossbeam_channel::never(),
        ));
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Iterator returned by [`Capture::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    capture: &'a mut Capture,
}

impl Iterator for Iter<'_> {
    type Item = Result<Captured, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.capture.state {
            State::Ended | State::Failed => None,
            State::Running | State::Draining(_) => Some(self.capture.recv()),
        }
    }
}

/// Forwards end-of-stream and errors into the control channel from whichever thread posts
/// them, and drops every message: nobody pops the bus, so nothing may pile up on it.
fn watch_bus(pipeline: &gst::Pipeline, ctrl: Sender<Control>) {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    bus.set_sync_handler(move |_, msg| {
        use gst::MessageView;
        match msg.view() {
            MessageView::Eos(_) => {
                let _ = ctrl.send(Control::Eos);
            }
            MessageView::Error(err) => {
                let element = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                let _ = ctrl.send(Control::Error(CaptureError::Element {
                    element,
                    message: err.error().to_string(),
                    debug: err.debug().map(|d| d.to_string()),
                }));
            }
            MessageView::Warning(w) => {
                let element = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                tracing::warn!(element, warning = %w.error(), "capture");
            }
            _ => {}
        }
        gst::BusSyncReply::Drop
    });
}
