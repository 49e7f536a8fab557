//! The engine: the one thread that owns all mutable inference state.
//!
//! **Owns** the segmenter, token merging, the rolling [`Window`], the text encoder and the
//! head, and the subscribers to preset answers. The per-second encoders (log-mel, image
//! prep, YAMNet, EfficientNet-Lite0: ~35 ms of a segment's ~37) run on one encoder thread that
//! owns the featurizer and its tract states, so a question never waits behind a segment's
//! encoders; the engine hands it segments over a bounded channel and stops taking capture
//! items while two are in flight (backpressure in accelerated runs, counted drops live). Capture and the API talk to it only through channels:
//! capture items arrive on a bounded channel that the sources fill with `try_send` (so the
//! engine falling behind costs dropped, counted items, never a stalled camera); requests
//! arrive on a bounded channel with a reply channel each; preset answers leave through one
//! bounded channel per subscriber, filled with `try_send` (a subscriber that does not read
//! loses answers, nobody waits for it).
//!
//! **Per segment** the work reuses buffers allocated at start (featurizer, merger, window);
//! questions may allocate (embedding cache, answers), segments do not.
//!
//! **Lost sources**: while no audio source is playing, the engine feeds the segmenter
//! silence up to the present, so seconds keep coming (with the camera's frames) and are
//! marked as missing audio; a lost camera makes the segmenter repeat the last frame, and
//! those seconds are marked as missing video.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use crate::capture::{
    Captured, Frame, LiveClock, Recycler, SourceMonitor, SourceState, SourceStatus,
};
use crate::config::{Config, Preset};
use crate::dsp::{MergedTokens, TokenMerger};
use crate::featurizer::{Featurizer, SegmentFeatures};
use crate::model::Manifest;
use crate::model::encoders::{AUDIO_DIM, TOKENS, VISUAL_DIM};
use crate::model::head::{
    HeadInputs, MERGED_TOKENS, SELECTED, TEXT_DIM, answer_vocabulary, softmax,
};
use crate::model::head_parts::HeadParts;
use crate::model::text::TextEmbedder;
use crate::prompts::Question;
use crate::pts::Pts;
use crate::segmenter::{SEGMENT_SAMPLES, Segment, Segmenter, SegmenterConfig, SegmenterStats};
use crate::window::{SecondInfo, Window};

/// Requests the engine queues before `try_send` says busy.
const REQUEST_QUEUE: usize = 256;
/// Preset answers a subscriber may have unread before newer ones are dropped.
const SUBSCRIBER_QUEUE: usize = 8;
/// Most subscribers at once.
const MAX_SUBSCRIBERS: usize = 64;
/// Most cached text embeddings and answers (cleared when full).
const CACHE_ENTRIES: usize = 256;
/// How often the engine wakes up without input (watchdog, lost-audio fill, presets).
const TICK: Duration = Duration::from_millis(200);
/// Segments handed to the encoder thread and not yet back.
const ENCODER_IN_FLIGHT: usize = 2;
/// A second whose audio RMS is above this (-50 dBFS) counts as sound present (for the LED).
const SOUND_RMS: f32 = 0.003_16;

/// One model the engine runs, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `name.precision`.
    pub id: String,
    /// The file's sha256 (checked at load against the manifest).
    pub sha256: String,
    /// Why this file (precision choice), or its role.
    pub reason: String,
}

/// Everything loaded, checked and warmed up before the engine starts.
pub struct Models {
    /// `None` once the encoder thread has taken it.
    featurizer: Option<Featurizer>,
    merger: TokenMerger,
    head: HeadParts,
    text: TextEmbedder,
    answers: Vec<String>,
    info: Vec<ModelInfo>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Models {
    /// Loads the encoders, the text encoder and the head (for `window_seconds` seconds) from
    /// the manifest, and runs each once so the first segment and the first question do not
    /// pay for lazy set-up.
    pub fn load(cfg: &Config) -> anyhow::Result<Self> {
        let featurizer = Featurizer::new(&cfg.models)?;
        let manifest = Manifest::load(&cfg.models.dir)?;
        let text = TextEmbedder::load(&manifest, cfg.models.text)
            .context("loading the question embeddings (models.text)")?;
        tracing::info!(text = %text.id(), "question embeddings");
        let head_seconds = cfg.window.seconds.max(SELECTED);
        let (head, head_choice) = HeadParts::load_chosen(
            &manifest,
            cfg.models.head_precision,
            cfg.models.int8_min_agreement,
            cfg.models.auto_fp32_min_speedup,
            head_seconds,
        )
        .context("loading the TSPM head")?;
        tracing::info!(head = %head_choice.entry.id(), reason = %head_choice.reason, "answer head chosen");
        let answers = answer_vocabulary(&manifest)?;
        if answers.len() != head.answers() {
            anyhow::bail!(
                "the answer vocabulary has {} answers but the head {} gives {} logits",
                answers.len(),
                head.id(),
                head.answers()
            );
        }
        let merger = TokenMerger::new(TOKENS, VISUAL_DIM, MERGED_TOKENS)
            .context("setting up token merging")?;
        let mut info: Vec<ModelInfo> = featurizer
            .chosen()
            .iter()
            .map(|c| ModelInfo {
                id: c.entry.id(),
                sha256: c.entry.sha256.clone(),
                reason: c.reason.clone(),
            })
            .collect();
        let [second, window, question] = head.entries();
        let reasons = [
            format!("answer head, per second; {}", head_choice.reason),
            format!("answer head, per window; {}", head_choice.reason),
            format!("answer head, per question; {}", head_choice.reason),
        ];
        info.push(ModelInfo {
            id: text.id(),
            sha256: text.sha256().to_string(),
            reason: text.reason(),
        });
        for (entry, reason) in [
            (second, reasons[0].as_str()),
            (window, reasons[1].as_str()),
            (question, reasons[2].as_str()),
        ] {
            info.push(ModelInfo {
                id: entry.id(),
                sha256: entry.sha256.clone(),
                reason: reason.to_string(),
            });
        }
        let mut models = Models {
            featurizer: Some(featurizer),
            merger,
            head,
            text,
            answers,
            info,
        };
        models.warm_up().context("warming up the models")?;
        Ok(models)
    }

    /// The models, for status.
    pub fn info(&self) -> &[ModelInfo] {
        &self.info
    }

    fn warm_up(&mut self) -> anyhow::Result<()> {
        let mut features = SegmentFeatures::default();
        let featurizer = self
            .featurizer
            .as_mut()
            .context("the featurizer was handed to the encoder thread")?;
        featurizer.audio(&vec![0.0; SEGMENT_SAMPLES], &mut features)?;
        let frame = Frame {
            pts: Pts(0),
            width_px: 320,
            height_px: 240,
            stride_bytes: 960,
            data: vec![128; 960 * 240],
        };
        featurizer.frame(&frame, &mut features)?;
        let mut merged = MergedTokens::new(MERGED_TOKENS, VISUAL_DIM);
        self.merger.merge(&features.tokens, &mut merged)?;
        let mut q = vec![0.0; TEXT_DIM];
        self.text
            .embed("How many instruments are sounding in the video?", &mut q)?;
        let t = self.head.seconds();
        let mut valid = vec![0.0; t];
        valid[0] = 1.0;
        let mut audio = vec![0.0; t * AUDIO_DIM];
        let mut visual = vec![0.0; t * VISUAL_DIM];
        let mut patches = vec![0.0; t * MERGED_TOKENS * VISUAL_DIM];
        audio[..AUDIO_DIM].copy_from_slice(&features.audio);
        visual[..VISUAL_DIM].copy_from_slice(&features.visual);
        patches[..MERGED_TOKENS * VISUAL_DIM].copy_from_slice(merged.features());
        self.head.run(&HeadInputs {
            audio: &audio,
            visual: &visual,
            patches: &patches,
            question: &q,
            prompt: &q,
            valid: &valid,
        })?;
        Ok(())
    }
}

/// The engine's settings (from the config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds in the window.
    pub window_seconds: usize,
    /// The preset questions.
    pub presets: Vec<Preset>,
    /// Default interval of preset answers to subscribers.
    pub preset_interval: Duration,
}

impl Settings {
    /// The engine's part of the configuration.
    pub fn from_config(cfg: &Config) -> Self {
        Settings {
            window_seconds: cfg.window.seconds,
            presets: cfg.presets.questions.clone(),
            preset_interval: cfg.presets.interval,
        }
    }
}

/// One answered question.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The filled question text.
    pub question: String,
    /// Template id (0–32).
    pub template_id: usize,
    /// The template text.
    pub template: &'static str,
    /// The declarative prompt.
    pub prompt: String,
    /// The answer.
    pub answer: String,
    /// Its probability.
    pub probability: f32,
    /// The three most probable answers.
    pub top: Vec<(String, f32)>,
    /// The seconds (timeline indices) the head selected, in time order.
    pub selected_seconds: Vec<u64>,
    /// First and last second of the window answered over.
    pub window: (u64, u64),
    /// Seconds in that window.
    pub window_len: usize,
    /// The head's id.
    pub head: String,
    /// Served from the cache (same question, same window).
    pub cached: bool,
    /// Engine time spent on it, in milliseconds.
    pub compute_ms: f64,
}

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// No second has been captured yet.
    #[error("the window holds no second yet (capture has just started or every source is lost)")]
    NoData,
    /// No preset has this id.
    #[error("no preset {id:?}; known: {known}")]
    UnknownPreset {
        /// The id asked for.
        id: String,
        /// The configured ids, comma-separated.
        known: String,
    },
    /// A model failed.
    #[error("{0}")]
    Model(String),
    /// The engine is not answering (shutting down, or too many requests queued).
    #[error("the engine is busy or stopping")]
    Busy,
    /// The engine did not answer in time.
    #[error("the engine did not answer within {0:?}")]
    Timeout(Duration),
}

/// Preset answers pushed to subscribers.
#[derive(Debug, Clone)]
pub struct PresetAnswers {
    /// `(preset id, answer or error)` in config order.
    pub answers: Vec<(String, Result<Answer, AskError>)>,
}

/// Per-source drop counts and states are in `sources`; the rest is the engine's own.
#[derive(Debug, Clone)]
pub struct Status {
    /// Since the engine started.
    pub uptime: Duration,
    /// Seconds encoded and added to the window.
    pub segments: u64,
    /// Segments that failed to encode (see `last_error`).
    pub segment_errors: u64,
    /// Window capacity in seconds.
    pub window_capacity: usize,
    /// Seconds held.
    pub window_len: usize,
    /// Held seconds without real audio / without their own frame.
    pub window_missing_audio: usize,
    /// Held seconds without their own frame.
    pub window_missing_video: usize,
    /// Newest second's index.
    pub newest_second: Option<u64>,
    /// How far behind the timeline the newest second ended (capture → window latency).
    pub lag: Duration,
    /// Mean and worst engine time per segment, ms.
    pub segment_ms_mean: f64,
    /// Worst engine time per segment, ms.
    pub segment_ms_max: f64,
    /// Questions answered.
    pub asks: u64,
    /// Subscribers now.
    pub subscribers: usize,
    /// Preset answers dropped because a subscriber did not read.
    pub subscriber_drops: u64,
    /// The last error the engine saw.
    pub last_error: Option<String>,
    /// Models and hashes.
    pub models: Vec<ModelInfo>,
    /// Every source.
    pub sources: Vec<SourceStatus>,
    /// The segmenter's counters (gaps, repeated frames, …).
    pub segmenter: SegmenterStats,
    /// Preset ids.
    pub presets: Vec<String>,
    /// The last second had sound above -50 dBFS.
    pub sound: bool,
}

/// What a request carries.
#[derive(Debug)]
enum Request {
    Ask {
        question: Box<Question>,
        reply: Sender<Result<Answer, AskError>>,
    },
    AskPreset {
        id: String,
        reply: Sender<Result<Answer, AskError>>,
    },
    Presets {
        reply: Sender<PresetAnswers>,
    },
    Status {
        reply: Sender<Box<Status>>,
    },
    Subscribe {
        every: Duration,
        on_change: bool,
        tx: Sender<PresetAnswers>,
    },
    Shutdown {
        reply: Sender<()>,
    },
}

/// Counters other threads may read without asking the engine (the GPIO LED).
#[derive(Debug, Default)]
pub struct Signals {
    /// Segments added to the window.
    pub segments: AtomicU64,
    /// The last second had sound.
    pub sound: AtomicBool,
    /// The slowest segment so far, in microseconds (what a stop may have to wait for).
    pub slowest_segment_us: AtomicU64,
}

/// A cheap, cloneable way to talk to the engine from any thread.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    requests: Sender<Request>,
    signals: Arc<Signals>,
    presets: Arc<Vec<Preset>>,
}

impl EngineHandle {
    /// A handle whose engine never answers, for tests of the threads that talk to the
    /// engine: requests queue up to `capacity` while the returned guard lives.
    #[cfg(test)]
    pub(crate) fn unanswered(capacity: usize) -> (EngineHandle, impl Sized) {
        let (requests, rx) = crossbeam_channel::bounded::<Request>(capacity);
        let handle = EngineHandle {
            requests,
            signals: Arc::default(),
            presets: Arc::default(),
        };
        (handle, rx)
    }

    fn send(&self, request: Request) -> Result<(), AskError> {
        match self.requests.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(AskError::Busy),
        }
    }

    fn wait<T>(rx: &Receiver<T>, timeout: Duration) -> Result<T, AskError> {
        rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => AskError::Timeout(timeout),
            crossbeam_channel::RecvTimeoutError::Disconnected => AskError::Busy,
        })
    }

    /// Answers `question` over the current window.
    pub fn ask(&self, question: Question, timeout: Duration) -> Result<Answer, AskError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Request::Ask {
            question: Box::new(question),
            reply,
        })?;
        Self::wait(&rx, timeout)?
    }

    /// Answers the preset `id`.
    pub fn ask_preset(&self, id: &str, timeout: Duration) -> Result<Answer, AskError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Request::AskPreset {
            id: id.to_string(),
            reply,
        })?;
        Self::wait(&rx, timeout)?
    }

    /// Answers every preset now.
    pub fn answer_presets(&self, timeout: Duration) -> Result<PresetAnswers, AskError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Request::Presets { reply })?;
        Self::wait(&rx, timeout)
    }

    /// The engine's status.
    pub fn status(&self, timeout: Duration) -> Result<Status, AskError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Request::Status { reply })?;
        Self::wait(&rx, timeout).map(|s| *s)
    }

    /// Preset answers every `every` (or only when they change), on the returned channel.
    /// Dropping the receiver unsubscribes.
    pub fn subscribe(
        &self,
        every: Duration,
        on_change: bool,
    ) -> Result<Receiver<PresetAnswers>, AskError> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_QUEUE);
        self.send(Request::Subscribe {
            every,
            on_change,
            tx,
        })?;
        Ok(rx)
    }

    /// The configured presets.
    pub fn presets(&self) -> &[Preset] {
        &self.presets
    }

    /// Counters readable without a request.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }
}

/// Where the engine's input comes from.
#[derive(Debug)]
pub struct Inputs {
    /// Captured items from every source.
    pub captured: Receiver<Captured>,
    /// Gives audio buffers back to the source that delivers audio.
    pub audio_recycler: Recycler,
    /// Gives frames back to the source that delivers video.
    pub video_recycler: Recycler,
    /// Every source, for status and for knowing when audio is lost.
    pub sources: Vec<SourceMonitor>,
    /// The timeline the sources stamp items on.
    pub clock: LiveClock,
}

/// The running engine thread.
#[derive(Debug)]
pub struct Engine {
    handle: EngineHandle,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread with loaded models.
    pub fn start(mut models: Models, settings: Settings, inputs: Inputs) -> anyhow::Result<Self> {
        let featurizer = models
            .featurizer
            .take()
            .context("the models' featurizer is already in use")?;
        let encoder = Encoder::spawn(featurizer)?;
        let (requests, requests_rx) = crossbeam_channel::bounded(REQUEST_QUEUE);
        let signals = Arc::new(Signals::default());
        let head_seconds = models.head.seconds();
        let row_len = models.head.row_len();
        let state = State {
            window: Window::new(
                settings.window_seconds,
                head_seconds,
                row_len,
                models.head.window_columns(),
                models.head.question_columns(),
            ),
            row: vec![0.0; row_len],
            encoder,
            feature_pool: (0..ENCODER_IN_FLIGHT)
                .map(|_| SegmentFeatures::default())
                .collect(),
            waiting: std::collections::VecDeque::with_capacity(4 * ENCODER_IN_FLIGHT),
            in_flight: 0,
            context: vec![0.0; models.head.context_len()],
            context_version: u64::MAX,
            segmenter: Segmenter::new(SegmenterConfig::default()),
            merged: MergedTokens::new(MERGED_TOKENS, VISUAL_DIM),
            q_emb: vec![0.0; TEXT_DIM],
            p_emb: vec![0.0; TEXT_DIM],
            embeddings: HashMap::new(),
            answers_cache: HashMap::new(),
            subscribers: Vec::new(),
            started: Instant::now(),
            segments: 0,
            segment_errors: 0,
            segment_ms_sum: 0.0,
            segment_ms_max: 0.0,
            lag: Duration::ZERO,
            asks: 0,
            subscriber_drops: 0,
            last_error: None,
            audio_end_ns: 0,
            silence_fill: None,
            silence: vec![0.0; SEGMENT_SAMPLES / 10],
            signals: Arc::clone(&signals),
            models,
            settings,
            inputs,
            requests: requests_rx,
        };
        let presets = Arc::new(state.settings.presets.clone());
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || state.run())
            .context("starting the engine thread")?;
        Ok(Engine {
            handle: EngineHandle {
                requests,
                signals,
                presets,
            },
            thread: Some(thread),
        })
    }

    /// A handle for the API and GPIO threads.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Finishes the segments the encoder thread is working on, drops what is still queued,
    /// and stops the thread. Call after the sources are stopped.
    ///
    /// Waits `timeout`, or three of the slowest segments so far if that is longer: two may be
    /// in flight, and on a slow CPU (qemu, an overloaded board) a segment can take seconds.
    pub fn shutdown(mut self, timeout: Duration) -> anyhow::Result<()> {
        let slowest = Duration::from_micros(
            self.handle
                .signals
                .slowest_segment_us
                .load(Ordering::Relaxed),
        );
        let timeout = timeout.max(slowest * 3);
        let (reply, rx) = crossbeam_channel::bounded(1);
        // A full queue still drains: the request waits its turn.
        self.handle
            .requests
            .send_timeout(Request::Shutdown { reply }, timeout)
            .map_err(|_| anyhow::anyhow!("the engine did not take the shutdown request"))?;
        rx.recv_timeout(timeout)
            .map_err(|_| anyhow::anyhow!("the engine did not stop within {timeout:?}"))?;
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
        }
        Ok(())
    }
}

/// A segment and a buffer for its features, to the encoder thread.
struct EncodeJob {
    seg: Segment,
    features: SegmentFeatures,
}

/// The same, back from the encoder thread.
struct Encoded {
    seg: Segment,
    features: SegmentFeatures,
    result: anyhow::Result<()>,
    encoder_ms: f64,
}

/// The encoder thread: owns the featurizer (DSP front ends, YAMNet, EfficientNet-Lite0 and
/// their tract states) and encodes one segment per job, in order.
struct Encoder {
    jobs: Sender<EncodeJob>,
    done: Receiver<Encoded>,
    thread: Option<JoinHandle<()>>,
}

impl Encoder {
    fn spawn(mut featurizer: Featurizer) -> anyhow::Result<Self> {
        let (jobs, jobs_rx) = crossbeam_channel::bounded::<EncodeJob>(ENCODER_IN_FLIGHT);
        let (done_tx, done) = crossbeam_channel::bounded::<Encoded>(ENCODER_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || {
                for EncodeJob { seg, mut features } in jobs_rx {
                    let started = Instant::now();
                    let result = featurizer.process(&seg, &mut features);
                    let encoder_ms = started.elapsed().as_secs_f64() * 1e3;
                    let encoded = Encoded {
                        seg,
                        features,
                        result,
                        encoder_ms,
                    };
                    if done_tx.send(encoded).is_err() {
                        return;
                    }
                }
            })
            .context("starting the encoder thread")?;
        Ok(Encoder {
            jobs,
            done,
            thread: Some(thread),
        })
    }

    /// Closes the job channel and waits for the thread (after the last job is back).
    fn stop(&mut self) {
        let (closed, _) = crossbeam_channel::bounded(0);
        self.jobs = closed;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the encoder thread panicked");
        }
    }
}

struct Subscriber {
    tx: Sender<PresetAnswers>,
    every: Duration,
    next: Instant,
    on_change: bool,
    last: Vec<String>,
}

/// The engine thread's state: everything mutable, owned here.
struct State {
    models: Models,
    settings: Settings,
    inputs: Inputs,
    requests: Receiver<Request>,
    window: Window,
    /// One second's row from the head's per-second part.
    row: Vec<f32>,
    /// The head's per-window context, valid for the window version `context_version`.
    context: Vec<f32>,
    context_version: u64,
    segmenter: Segmenter,
    /// The encoder thread and its channels.
    encoder: Encoder,
    /// Feature buffers not lent to the encoder thread.
    feature_pool: Vec<SegmentFeatures>,
    /// Segments cut but not yet handed to the encoder thread.
    waiting: std::collections::VecDeque<Segment>,
    /// Segments with the encoder thread.
    in_flight: usize,
    merged: MergedTokens,
    q_emb: Vec<f32>,
    p_emb: Vec<f32>,
    embeddings: HashMap<String, Vec<f32>>,
    answers_cache: HashMap<String, Answer>,
    subscribers: Vec<Subscriber>,
    started: Instant,
    segments: u64,
    segment_errors: u64,
    segment_ms_sum: f64,
    segment_ms_max: f64,
    lag: Duration,
    asks: u64,
    subscriber_drops: u64,
    last_error: Option<String>,
    /// Where the audio delivered so far ends on the timeline.
    audio_end_ns: u64,
    /// The span of silence fed in for lost audio, oldest start to newest end.
    silence_fill: Option<(u64, u64)>,
    silence: Vec<f32>,
    signals: Arc<Signals>,
}

impl State {
    fn run(mut self) {
        let ticker = crossbeam_channel::tick(TICK);
        let mut captured = self.inputs.captured.clone();
        let paused: Receiver<Captured> = crossbeam_channel::never();
        let done = self.encoder.done.clone();
        loop {
            // While the encoder thread is busy with enough segments, capture items wait in
            // their channel: a live source then drops and counts, an accelerated one waits.
            let capture = if self.waiting.len() < ENCODER_IN_FLIGHT {
                &captured
            } else {
                &paused
            };
            select! {
                recv(capture) -> item => match item {
                    Ok(item) => self.on_captured(item),
                    // Every source has stopped; requests may still come.
                    Err(_) => captured = crossbeam_channel::never(),
                },
                recv(done) -> encoded => match encoded {
                    Ok(encoded) => self.on_encoded(encoded),
                    Err(_) => {
                        tracing::error!("the encoder thread stopped");
                        self.last_error = Some("the encoder thread stopped".into());
                        return;
                    }
                },
                recv(self.requests) -> request => match request {
                    Ok(Request::Shutdown { reply }) => {
                        self.stop_encoder();
                        let _ = reply.send(());
                        return;
                    }
                    Ok(request) => self.on_request(request),
                    Err(_) => return,
                },
                recv(ticker) -> _ => self.on_tick(),
            }
        }
    }

    /// At shutdown: drops what capture queued and the segments not yet handed to the
    /// encoder (the window ends with the process, and a slow board would take seconds to
    /// encode them), lets the encoder finish its jobs in flight, then stops its thread.
    fn stop_encoder(&mut self) {
        let mut items = 0usize;
        while self.inputs.captured.try_recv().is_ok() {
            items += 1;
        }
        let segments = self.waiting.len();
        while let Some(seg) = self.waiting.pop_front() {
            self.segmenter.recycle(seg);
        }
        while self.in_flight > 0 {
            match self.encoder.done.recv() {
                Ok(encoded) => self.on_encoded(encoded),
                Err(_) => break,
            }
        }
        self.encoder.stop();
        tracing::info!(
            segments = self.segments,
            dropped_items = items,
            dropped_segments = segments,
            "engine stopped"
        );
    }

    /// Moves the segmenter's finished segments to the encoder thread's queue.
    fn collect_segments(&mut self) {
        while let Some(seg) = self.segmenter.pop() {
            self.waiting.push_back(seg);
        }
        self.dispatch();
    }

    /// Hands waiting segments to the encoder thread while it has room.
    fn dispatch(&mut self) {
        while self.in_flight < ENCODER_IN_FLIGHT && !self.waiting.is_empty() {
            let Some(features) = self.feature_pool.pop() else {
                return;
            };
            let Some(seg) = self.waiting.pop_front() else {
                self.feature_pool.push(features);
                return;
            };
            match self.encoder.jobs.try_send(EncodeJob { seg, features }) {
                Ok(()) => self.in_flight += 1,
                Err(err) => {
                    // Cannot happen while in_flight counts right; keep the segment.
                    let job = err.into_inner();
                    self.waiting.push_front(job.seg);
                    self.feature_pool.push(job.features);
                    return;
                }
            }
        }
    }

    fn on_captured(&mut self, item: Captured) {
        match item {
            Captured::Audio { pts, samples } => {
                let end = pts.0 + samples.len() as u64 * Pts::SECOND_NS / 16_000;
                self.audio_end_ns = self.audio_end_ns.max(end);
                self.segmenter.push_audio(pts, &samples);
                self.inputs.audio_recycler.audio(samples);
            }
            Captured::Video(frame) => {
                self.segmenter.push_frame(&frame);
                self.inputs.video_recycler.frame(frame);
            }
            // Live sources restart on their own; the ends of their runs change nothing here.
            Captured::StreamEnd(_) | Captured::Eos => {}
        }
        self.collect_segments();
    }

    fn on_encoded(&mut self, encoded: Encoded) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Encoded {
            seg,
            features,
            result,
            encoder_ms,
        } = encoded;
        let started = Instant::now();
        let result = result.and_then(|()| self.finish_segment(&seg, &features));
        let (index, end) = (seg.index, seg.end());
        self.segmenter.recycle(seg);
        self.feature_pool.push(features);
        self.dispatch();
        if let Err(e) = result {
            self.segment_errors += 1;
            let message = format!("second {index}: {e:#}");
            tracing::error!(error = %message, "encoding failed");
            self.last_error = Some(message);
            return;
        }
        let ms = encoder_ms + started.elapsed().as_secs_f64() * 1e3;
        self.segments += 1;
        self.segment_ms_sum += ms;
        self.segment_ms_max = self.segment_ms_max.max(ms);
        self.signals
            .slowest_segment_us
            .fetch_max((ms * 1e3) as u64, Ordering::Relaxed);
        self.lag = Duration::from_nanos(self.inputs.clock.now_ns().saturating_sub(end.0));
        self.signals
            .segments
            .store(self.segments, Ordering::Relaxed);
    }

    /// The engine's part of a segment the encoder thread has encoded: token merging, the
    /// head's per-second part, and the window.
    fn finish_segment(&mut self, seg: &Segment, features: &SegmentFeatures) -> anyhow::Result<()> {
        self.models
            .merger
            .merge(&features.tokens, &mut self.merged)?;
        let (start, end) = (seg.start().0, seg.end().0);
        let filled = self
            .silence_fill
            .map_or(0, |(a, b)| b.min(end).saturating_sub(a.max(start)));
        let audio = seg.zero_filled_samples < SEGMENT_SAMPLES / 2 && filled < Pts::SECOND_NS / 2;
        let video = seg.frame.is_some() && !seg.frame_repeated;
        let energy: f32 = seg.audio.iter().map(|x| x * x).sum::<f32>() / seg.audio.len() as f32;
        self.signals
            .sound
            .store(audio && energy.sqrt() > SOUND_RMS, Ordering::Relaxed);
        // The head's per-second part runs now, once, so a question pays only for its own part.
        self.models.head.second(
            &features.audio,
            &features.visual,
            self.merged.features(),
            &mut self.row,
        )?;
        self.window.push(
            SecondInfo {
                index: seg.index,
                audio,
                video,
            },
            &self.row,
        );
        Ok(())
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Ask { question, reply } => {
                let answer = self.answer(&question);
                let _ = reply.send(answer);
            }
            Request::AskPreset { id, reply } => {
                let answer = match self.settings.presets.iter().position(|p| p.id == id) {
                    Some(i) => {
                        let question = self.settings.presets[i].question.clone();
                        self.answer(&question)
                    }
                    None => Err(AskError::UnknownPreset {
                        id,
                        known: self
                            .settings
                            .presets
                            .iter()
                            .map(|p| p.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                };
                let _ = reply.send(answer);
            }
            Request::Presets { reply } => {
                let answers = self.preset_answers();
                tracing::info!(answers = %summary(&answers), "presets answered");
                let _ = reply.send(answers);
            }
            Request::Status { reply } => {
                let _ = reply.send(Box::new(self.status()));
            }
            Request::Subscribe {
                every,
                on_change,
                tx,
            } => {
                if self.subscribers.len() >= MAX_SUBSCRIBERS {
                    // Dropping `tx` tells the subscriber at once.
                    tracing::warn!("too many subscribers; one refused");
                    return;
                }
                self.subscribers.push(Subscriber {
                    tx,
                    every,
                    next: Instant::now(),
                    on_change,
                    last: Vec::new(),
                });
            }
            Request::Shutdown { .. } => {}
        }
    }

    fn on_tick(&mut self) {
        // The watchdog is fed only while this loop turns: a wedged engine gets restarted.
        crate::systemd::watchdog();
        self.fill_lost_audio();
        self.publish_presets();
    }

    /// While no audio source plays, feed silence up to half a second ago, so the seconds go
    /// on (marked as missing audio) instead of stopping with the microphone.
    fn fill_lost_audio(&mut self) {
        let audio_playing = self
            .inputs
            .sources
            .iter()
            .map(SourceMonitor::status)
            .any(|s| s.audio && s.state == SourceState::Playing);
        if audio_playing {
            return;
        }
        let now = self.inputs.clock.now_ns();
        let target = now.saturating_sub(Pts::SECOND_NS / 2);
        let chunk_ns = self.silence.len() as u64 * Pts::SECOND_NS / 16_000;
        if target < self.audio_end_ns + chunk_ns {
            return;
        }
        let first = self.audio_end_ns;
        while self.audio_end_ns + chunk_ns <= target {
            let pts = Pts(self.audio_end_ns);
            self.segmenter.push_audio(pts, &self.silence);
            self.audio_end_ns += chunk_ns;
        }
        self.silence_fill = Some(match self.silence_fill {
            Some((a, b)) if b >= first => (a, self.audio_end_ns),
            _ => (first, self.audio_end_ns),
        });
        self.collect_segments();
    }

    fn publish_presets(&mut self) {
        let now = Instant::now();
        if self.subscribers.is_empty() || self.subscribers.iter().all(|s| s.next > now) {
            return;
        }
        let answers = self.preset_answers();
        let texts: Vec<String> = answers
            .answers
            .iter()
            .map(|(_, a)| match a {
                Ok(a) => a.answer.clone(),
                Err(e) => e.to_string(),
            })
            .collect();
        let mut drops = 0;
        self.subscribers.retain_mut(|s| {
            if s.next > now {
                return true;
            }
            s.next = now + s.every;
            if s.on_change && s.last == texts {
                return true;
            }
            match s.tx.try_send(answers.clone()) {
                Ok(()) => {
                    s.last.clone_from(&texts);
                    true
                }
                Err(TrySendError::Full(_)) => {
                    drops += 1;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        self.subscriber_drops += drops;
    }

    fn preset_answers(&mut self) -> PresetAnswers {
        let presets = self.settings.presets.clone();
        PresetAnswers {
            answers: presets
                .iter()
                .map(|p| (p.id.clone(), self.answer(&p.question)))
                .collect(),
        }
    }

    fn embed(&mut self, text: &str, prompt: bool) -> Result<(), AskError> {
        let out = if prompt {
            &mut self.p_emb
        } else {
            &mut self.q_emb
        };
        if let Some(cached) = self.embeddings.get(text) {
            out.copy_from_slice(cached);
            return Ok(());
        }
        self.models
            .text
            .embed(text, out)
            .map_err(|e| AskError::Model(e.to_string()))?;
        if self.embeddings.len() >= CACHE_ENTRIES {
            self.embeddings.clear();
        }
        self.embeddings.insert(text.to_string(), out.clone());
        Ok(())
    }

    fn answer(&mut self, question: &Question) -> Result<Answer, AskError> {
        let started = Instant::now();
        self.asks += 1;
        let (first, last) = match (self.window.seconds().next(), self.window.newest()) {
            (Some(a), Some(b)) => (a.index, b.index),
            _ => return Err(AskError::NoData),
        };
        if let Some(hit) = self.answers_cache.get(question.text())
            && hit.window == (first, last)
            && hit.window_len == self.window.len()
        {
            let mut hit = hit.clone();
            hit.cached = true;
            hit.compute_ms = started.elapsed().as_secs_f64() * 1e3;
            return Ok(hit);
        }
        self.embed(question.text(), false)?;
        self.embed(question.prompt(), true)?;
        // The window part runs once per window version, whatever the number of questions.
        if self.context_version != self.window.version() {
            self.models
                .head
                .context(
                    self.window.window_rows(),
                    self.window.valid(),
                    &mut self.context,
                )
                .map_err(|e| AskError::Model(e.to_string()))?;
            self.context_version = self.window.version();
        }
        let out = self
            .models
            .head
            .question(
                self.window.question_rows(),
                self.window.valid(),
                &self.context,
                &self.q_emb,
                &self.p_emb,
            )
            .map_err(|e| AskError::Model(e.to_string()))?;
        let probs = softmax(&out.logits);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let name = |i: usize| {
            self.models
                .answers
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("#{i}"))
        };
        let real = self
            .window
            .len()
            .min(self.window.head_seconds())
            .min(SELECTED);
        let answer = Answer {
            question: question.text().to_string(),
            template_id: question.template().id(),
            template: question.template().text(),
            prompt: question.prompt().to_string(),
            answer: name(order[0]),
            probability: probs[order[0]],
            top: order.iter().take(3).map(|&i| (name(i), probs[i])).collect(),
            selected_seconds: out.selected[..real]
                .iter()
                .filter_map(|&s| usize::try_from(s).ok())
                .filter_map(|s| self.window.index().get(s).copied())
                .collect(),
            window: (first, last),
            window_len: self.window.len(),
            head: self.models.head.id(),
            cached: false,
            compute_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        if self.answers_cache.len() >= CACHE_ENTRIES {
            self.answers_cache.clear();
        }
        self.answers_cache
            .insert(question.text().to_string(), answer.clone());
        Ok(answer)
    }

    fn status(&self) -> Status {
        let (mut missing_audio, mut missing_video) = (0, 0);
        for s in self.window.seconds() {
            missing_audio += usize::from(!s.audio);
            missing_video += usize::from(!s.video);
        }
        Status {
            uptime: self.started.elapsed(),
            segments: self.segments,
            segment_errors: self.segment_errors,
            window_capacity: self.window.capacity(),
            window_len: self.window.len(),
            window_missing_audio: missing_audio,
            window_missing_video: missing_video,
            newest_second: self.window.newest().map(|s| s.index),
            lag: self.lag,
            segment_ms_mean: if self.segments == 0 {
                0.0
            } else {
                self.segment_ms_sum / self.segments as f64
            },
            segment_ms_max: self.segment_ms_max,
            asks: self.asks,
            subscribers: self.subscribers.len(),
            subscriber_drops: self.subscriber_drops,
            last_error: self.last_error.clone(),
            models: self.models.info.clone(),
            sources: self
                .inputs
                .sources
                .iter()
                .map(SourceMonitor::status)
                .collect(),
            segmenter: self.segmenter.stats(),
            presets: self.settings.presets.iter().map(|p| p.id.clone()).collect(),
            sound: self.signals.sound.load(Ordering::Relaxed),
        }
    }
}

/// `id=answer` pairs for the log.
pub fn summary(answers: &PresetAnswers) -> String {
    answers
        .answers
        .iter()
        .map(|(id, a)| match a {
            Ok(a) => format!("{id}={} ({:.0} %)", a.answer, a.probability * 100.0),
            Err(e) => format!("{id}: {e}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
