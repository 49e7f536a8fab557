//! Keeps the two streams of a file within a fixed distance of each other ([`Mode::File`]
//! only).
//!
//! Why: `decodebin`'s multiqueue lets a stream whose decoder is fast (Vorbis) run far ahead of
//! one whose decoder is slow or late to start (VP8 on a busy CPU): when one queue is empty it
//! grows the others. A small file can then deliver all of its audio before the first frame,
//! and the segmenter, which must bound its memory, would have to emit seconds before their
//! frames arrive. A file can wait, so the stream that is ahead waits here, on its streaming
//! thread, until the other catches up, the way a muxer interleaves by timestamp.
//!
//! No deadlock: each stream records its position before it waits, so at most one of them
//! waits at a time (if audio waits, `audio > video + lead`, so video, whose frame is behind
//! audio, does not), and the other one is not waiting here. It may wait on the consumer (who
//! reads) or on the demuxer, which keeps feeding it because the multiqueue grows the waiting
//! stream's queue while the other one is empty. A stream that ends stops holding the other
//! back, and [`Pacer::close`] releases everyone when capture is dropped.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::{Mode, StreamKind};

/// How far (in stream time) one stream may be ahead of the other.
pub(super) const PACE_LEAD_NS: u64 = 2_000_000_000;

#[derive(Debug, Default)]
struct Positions {
    /// Latest pts delivered (or about to be) per stream: `[audio, video]`.
    pos_ns: [u64; 2],
    ended: [bool; 2],
    closing: bool,
}

/// Shared by both streaming threads and the [`super::Capture`].
#[derive(Debug)]
pub(super) struct Pacer {
    enabled: bool,
    state: Mutex<Positions>,
    moved: Condvar,
}

/// Capture is shutting down; the stream must stop.
#[derive(Debug)]
pub(super) struct Closing;

fn idx(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Audio => 0,
        StreamKind::Video => 1,
    }
}

impl Pacer {
    /// Pacing is on in [`Mode::File`]; live streams are never held back.
    pub fn new(mode: Mode) -> Self {
        Pacer {
            enabled: mode == Mode::File,
            state: Mutex::new(Positions::default()),
            moved: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Positions> {
        // Only plain numbers are guarded; a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `kind` is at `pts_ns` and waits until that is at most [`PACE_LEAD_NS`]
    /// ahead of the other stream (or the other stream has ended).
    pub fn advance(&self, kind: StreamKind, pts_ns: u64) -> Result<(), Closing> {
        if !self.enabled {
            return Ok(());
        }
        let (me, other) = (idx(kind), 1 - idx(kind));
        let mut s = self.lock();
        s.pos_ns[me] = s.pos_ns[me].max(pts_ns);
        self.moved.notify_all();
        loop {
            if s.closing {
                return Err(Closing);
            }
            if s.ended[other] || pts_ns <= s.pos_ns[other].saturating_add(PACE_LEAD_NS) {
                return Ok(());
            }
            s = self.moved.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// `kind` has ended and no longer holds the other stream back.
    pub fn end(&self, kind: StreamKind) {
        self.lock().ended[idx(kind)] = true;
        self.moved.notify_all();
    }

    /// Releases every waiting stream with [`Closing`].
    pub fn close(&self) {
        self.lock().closing = true;
        self.moved.notify_all();
    }

    /// Whether [`Pacer::close`] was called: a stream waiting for the consumer gives up.
    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_stream_ahead_waits_for_the_other() {
        let p = Arc::new(Pacer::new(Mode::File));
        p.advance(StreamKind::Video, 0).unwrap();
        p.advance(StreamKind::Audio, 2 * S).unwrap();
        let waiting = {
            let p = Arc::clone(&p);
            thread::spawn(move || p.advance(StreamKind::Audio, 3 * S).is_ok())
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "audio 3 s ahead of video must wait");
        p.advance(StreamKind::Video, S).unwrap();
        assert!(waiting.join().unwrap());
    }

    #[test]
    fn an_ended_stream_or_closing_releases_the_other() {
        let p = Arc::new(Pacer::new(Mode::File));
        let spawn = |p: &Arc<Pacer>, pts| {
            let p = Arc::clone(p);
            thread::spawn(move || p.advance(StreamKind::Audio, pts).is_ok())
        };
        let w = spawn(&p, 10 * S);
        p.end(StreamKind::Video);
        assert!(w.join().unwrap());

        let p = Arc::new(Pacer::new(Mode::File));
        let w = spawn(&p, 10 * S);
        thread::sleep(Duration::from_millis(20));
        p.close();
        assert!(!w.join().unwrap());
    }

    #[test]
    fn live_mode_never_waits() {
        let p = Pacer::new(Mode::Live);
        p.advance(StreamKind::Audio, 100 * S).unwrap();
    }
}
