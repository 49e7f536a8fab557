//! The appsink ends of the pipeline: GStreamer samples become [`Captured`] items.
//!
//! Runs on GStreamer's streaming threads (one per stream). Each callback converts one sample
//! and hands it to the consumer through the shared bounded channel, by the [`Mode`]'s policy:
//! `File` waits for room (nothing is lost; the decoder simply pauses), `Live` never waits
//! (a full channel drops the newest item and counts it). In file mode the stream that is
//! ahead also waits for the other (`pace.rs`). Timestamps become running time
//! ([`Pts`]) here, so the consumer sees a clock that starts at 0 even if the file's does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::pace::Pacer;
use super::{Captured, Mode, StreamKind};
use crate::pts::Pts;
use crate::segmenter::{Frame, SAMPLE_RATE_HZ};

/// Counters shared by the streaming threads and [`super::Capture::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub audio_chunks: AtomicU64,
    pub video_frames: AtomicU64,
    pub dropped_audio_chunks: AtomicU64,
    pub dropped_video_frames: AtomicU64,
    /// Poll periods a file-mode stream spent waiting for room in the consumer's queue: a
    /// stream held back by a slow engine is alive, not stalled (`live.rs`, the stall watch).
    pub backpressure_waits: AtomicU64,
}

/// Buffers handed back by the consumer, so that steady-state capture does not allocate.
#[derive(Debug, Clone)]
pub(super) struct Pools {
    pub audio: Receiver<Vec<f32>>,
    pub frames: Receiver<Vec<u8>>,
}

/// How often a stream waiting for room in the consumer's queue checks for a stop.
const SEND_POLL: Duration = Duration::from_millis(50);

/// Everything a sink callback needs; cloned into each closure.
#[derive(Debug, Clone)]
pub(super) struct SinkCtx {
    pub tx: Sender<Captured>,
    pub mode: Mode,
    pub counters: Arc<Counters>,
    pub pools: Pools,
    pub pacer: Arc<Pacer>,
    /// Added to every running time: where this pipeline's clock started on the consumer's
    /// timeline (the daemon restarts a source's pipeline and its times must go on).
    pub pts_offset_ns: u64,
}

impl SinkCtx {
    /// Hands `item` to the consumer by the mode's policy. An error stops the stream: the
    /// consumer has gone away, so `Flushing` (which posts no error) is the honest answer.
    fn deliver(
        &self,
        kind: StreamKind,
        pts: Pts,
        item: Captured,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        // In file mode, wait here while this stream is too far ahead of the other.
        self.pacer
            .advance(kind, pts.0)
            .map_err(|_| gst::FlowError::Flushing)?;
        match self.mode {
            Mode::File => self.send_waiting(item)?,
            Mode::Live => match self.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    let counter = match kind {
                        StreamKind::Audio => &self.counters.dropped_audio_chunks,
                        StreamKind::Video => &self.counters.dropped_video_frames,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return Err(gst::FlowError::Flushing),
            },
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Waits for room in the consumer's queue, but not past a stop: going to NULL waits for
    /// this streaming thread, and the consumer may no longer be reading.
    fn send_waiting(&self, mut item: Captured) -> Result<(), gst::FlowError> {
        loop {
            match self.tx.send_timeout(item, SEND_POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) if !self.pacer.is_closing() => {
                    self.counters
                        .backpressure_waits
                        .fetch_add(1, Ordering::Relaxed);
                    item = back;
                }
                Err(_) => return Err(gst::FlowError::Flushing),
            }
        }
    }

    /// The end of one stream. Sent blocking in both modes: it happens once, and the
    /// segmenter needs it to stop waiting for frames.
    fn deliver_end(&self, kind: StreamKind) {
        self.pacer.end(kind);
        // A send error means the consumer is gone or capture stops; nobody is left to tell.
        let _ = self.send_waiting(Captured::StreamEnd(kind));
    }
}

/// The running time of the sample's buffer, or `None` if it has no timestamp.
fn running_time(sample: &gst::Sample, buffer: &gst::BufferRef) -> Option<u64> {
    let pts = buffer.pts()?;
    let running = match sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
    {
        Some(segment) => segment.to_running_time(pts)?,
        None => pts,
    };
    Some(running.nseconds())
}

/// Installs the callbacks that turn F32LE 16 kHz mono samples into [`Captured::Audio`].
pub(super) fn install_audio(sink: &gst_app::AppSink, ctx: SinkCtx) {
    let eos_ctx = ctx.clone();
    // Where the next chunk starts if a buffer comes without a timestamp.
    let mut next_ns: u64 = ctx.pts_offset_ns;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let pts_ns = running_time(&sample, buffer)
                    .map(|t| t + ctx.pts_offset_ns)
                    .unwrap_or(next_ns);
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut samples = ctx.pools.audio.try_recv().unwrap_or_default();
                samples.clear();
                samples.extend(map.as_slice().chunks_exact(4).map(|b| {
                    f32::from_le_bytes(b.try_into().expect("chunks_exact yields 4 bytes"))
                }));
                next_ns =
                    pts_ns + samples.len() as u64 * Pts::SECOND_NS / u64::from(SAMPLE_RATE_HZ);
                ctx.counters.audio_chunks.fetch_add(1, Ordering::Relaxed);
                ctx.deliver(
                    StreamKind::Audio,
                    Pts(pts_ns),
                    Captured::Audio {
                        pts: Pts(pts_ns),
                        samples,
                    },
                )
            })
            .eos(move |_| eos_ctx.deliver_end(StreamKind::Audio))
            .build(),
    );
}

/// Installs the callbacks that turn RGB samples into [`Captured::Video`].
pub(super) fn install_video(sink: &gst_app::AppSink, ctx: SinkCtx) {
    let eos_ctx = ctx.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let info = gst_video::VideoInfo::from_caps(caps)
                    .map_err(|_| gst::FlowError::NotNegotiated)?;
                // Reads the stride from the buffer's video meta if it has one.
                let vframe = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                    .map_err(|_| gst::FlowError::Error)?;
                let plane = vframe.plane_data(0).map_err(|_| gst::FlowError::Error)?;
                let stride = usize::try_from(vframe.plane_stride()[0])
                    .map_err(|_| gst::FlowError::NotSupported)?;
                let mut data = ctx.pools.frames.try_recv().unwrap_or_default();
                data.clear();
                data.extend_from_slice(plane);
                let frame = Frame {
                    pts: Pts(running_time(&sample, buffer).unwrap_or(0) + ctx.pts_offset_ns),
                    width_px: vframe.width(),
                    height_px: vframe.height(),
                    stride_bytes: stride,
                    data,
                };
                ctx.counters.video_frames.fetch_add(1, Ordering::Relaxed);
                ctx.deliver(StreamKind::Video, frame.pts, Captured::Video(frame))
            })
            .eos(move |_| eos_ctx.deliver_end(StreamKind::Video))
            .build(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ctx(mode: Mode, tx: Sender<Captured>) -> SinkCtx {
        SinkCtx {
            tx,
            mode,
            counters: Arc::default(),
            pools: Pools {
                audio: crossbeam_channel::never(),
                frames: crossbeam_channel::never(),
            },
            pacer: Arc::new(Pacer::new(mode)),
            pts_offset_ns: 0,
        }
    }

    fn audio() -> Captured {
        Captured::Audio {
            pts: Pts(0),
            samples: vec![0.0; 4],
        }
    }

    #[test]
    fn a_file_stream_waiting_for_room_gives_up_when_capture_closes() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ctx = ctx(Mode::File, tx);
        ctx.deliver(StreamKind::Audio, Pts(0), audio()).unwrap();
        let pacer = Arc::clone(&ctx.pacer);
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            pacer.close();
        });
        let started = Instant::now();
        // The queue stays full: only the close can end the wait.
        let sent = ctx.deliver(StreamKind::Audio, Pts(1), audio());
        closer.join().unwrap();
        assert_eq!(sent, Err(gst::FlowError::Flushing));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(rx.len(), 1, "the first item is still queued");
    }

    #[test]
    fn a_file_stream_waits_for_room_and_loses_nothing() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ctx = ctx(Mode::File, tx);
        ctx.deliver(StreamKind::Audio, Pts(0), audio()).unwrap();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(120));
            (rx.recv().is_ok(), rx.recv().is_ok())
        });
        ctx.deliver(StreamKind::Audio, Pts(1), audio()).unwrap();
        assert_eq!(reader.join().unwrap(), (true, true));
    }

    #[test]
    fn a_live_stream_drops_and_counts_when_full() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let ctx = ctx(Mode::Live, tx);
        ctx.deliver(StreamKind::Audio, Pts(0), audio()).unwrap();
        ctx.deliver(StreamKind::Audio, Pts(1), audio()).unwrap();
        assert_eq!(ctx.counters.dropped_audio_chunks.load(Ordering::Relaxed), 1);
    }
}
