//! A direct ALSA microphone backend (cargo feature `alsa`), for boards where the GStreamer
//! ALSA plugin is not wanted: the `alsa` crate reads 16 kHz mono S16 frames straight from a
//! PCM (`plughw:…` converts the device's own format and rate) under the same supervisor as
//! the GStreamer sources, with the same status, backoff and drop counting.
//!
//! Timestamps come from the sample count since the PCM started, placed on the daemon's
//! timeline at the moment the PCM started, so they are exact within a run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::live::{Ended, Play, Shared, Supervised, mark_playing};
use super::{Backoff, CaptureError, Captured, LiveClock, LiveSource, Recycler, Restart, sink};
use crate::pts::Pts;
use crate::segmenter::SAMPLE_RATE_HZ;

/// Frames per read: 100 ms.
const PERIOD_FRAMES: usize = SAMPLE_RATE_HZ as usize / 10;

/// How to run an ALSA microphone.
#[derive(Debug, Clone)]
pub struct AlsaConfig {
    /// Name for logs and status.
    pub name: String,
    /// The PCM name, e.g. `default`, `plughw:CARD=Device,DEV=0`.
    pub device: String,
    /// Waits between restarts.
    pub backoff: Backoff,
}

struct AlsaRunner {
    cfg: AlsaConfig,
    clock: LiveClock,
    tx: Sender<Captured>,
    pool: Receiver<Vec<f32>>,
    counters: Arc<sink::Counters>,
    raw: Vec<i16>,
}

/// Starts an ALSA microphone under the live-source supervisor.
pub fn spawn(
    cfg: AlsaConfig,
    clock: LiveClock,
    tx: Sender<Captured>,
) -> Result<LiveSource, CaptureError> {
    let counters = Arc::new(sink::Counters::default());
    let (audio_pool, pool) = crossbeam_channel::bounded(64);
    // Frames never come from this source; the pool only satisfies the recycler's shape.
    let (frame_pool, _) = crossbeam_channel::bounded(1);
    let runner = AlsaRunner {
        cfg: cfg.clone(),
        clock,
        tx,
        pool,
        counters: Arc::clone(&counters),
        raw: vec![0; PERIOD_FRAMES],
    };
    LiveSource::supervise(
        Supervised {
            name: cfg.name,
            description: format!("alsa:{}", cfg.device),
            provides: (true, false),
            restart: Restart::Reconnect,
            backoff: cfg.backoff,
            counters,
            recycler: Recycler {
                audio: audio_pool,
                frames: frame_pool,
            },
        },
        runner,
    )
}

/// Opens `device` for 16 kHz mono S16 capture.
fn open(device: &str) -> alsa::Result<PCM> {
    let pcm = PCM::new(device, Direction::Capture, false)?;
    {
        let hw = HwParams::any(&pcm)?;
        hw.set_access(Access::RWInterleaved)?;
        hw.set_format(Format::s16())?;
        hw.set_channels(1)?;
        hw.set_rate(SAMPLE_RATE_HZ, ValueOr::Nearest)?;
        hw.set_period_size_near(PERIOD_FRAMES as alsa::pcm::Frames, ValueOr::Nearest)?;
        pcm.hw_params(&hw)?;
    }
    let rate = pcm.hw_params_current()?.get_rate()?;
    if rate != SAMPLE_RATE_HZ {
        // `hw:` devices only offer their native rates; `plughw:` resamples.
        return Err(alsa::Error::unsupported("16 kHz (use a plughw: device)"));
    }
    pcm.prepare()?;
    Ok(pcm)
}

impl Play for AlsaRunner {
    fn play_once(&mut self, shared: &Shared, stop: &Receiver<()>) -> Ended {
        let device = self.cfg.device.clone();
        let pcm = match open(&device) {
            Ok(pcm) => pcm,
            Err(e) => return Ended::Failed(format!("ALSA device {device:?}: {e}")),
        };
        let io = match pcm.io_i16() {
            Ok(io) => io,
            Err(e) => return Ended::Failed(format!("ALSA device {device:?}: {e}")),
        };
        let offset_ns = self.clock.now_ns();
        let started = Instant::now();
        let mut frames_read: u64 = 0;
        let mut playing = false;
        loop {
            match stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(()) | Err(TryRecvError::Disconnected) => return Ended::Stop,
            }
            let n = match io.readi(&mut self.raw) {
                Ok(0) => return Ended::Eos,
                Ok(n) => n,
                Err(e) => match pcm.try_recover(e, true) {
                    // An overrun (the engine or the machine fell behind): go on.
                    Ok(()) => continue,
                    Err(e) => return Ended::Failed(format!("ALSA device {device:?}: {e}")),
                },
            };
            let pts = Pts(offset_ns + frames_read * Pts::SECOND_NS / u64::from(SAMPLE_RATE_HZ));
            frames_read += n as u64;
            let mut samples = self.pool.try_recv().unwrap_or_default();
            samples.clear();
            samples.extend(self.raw[..n].iter().map(|&s| f32::from(s) / 32_768.0));
            self.counters.audio_chunks.fetch_add(1, Ordering::Relaxed);
            match self.tx.try_send(Captured::Audio { pts, samples }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.counters
                        .dropped_audio_chunks
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return Ended::Stop,
            }
            if !playing {
                playing = true;
                mark_playing(shared, &self.cfg.name);
            }
            // A PCM that delivers far faster than real time is a file or a null device:
            // pace it, as a microphone would be.
            let due = std::time::Duration::from_nanos(
                frames_read * Pts::SECOND_NS / u64::from(SAMPLE_RATE_HZ),
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}
