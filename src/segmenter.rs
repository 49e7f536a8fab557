//! Cuts timestamped audio chunks and video frames into one-second [`Segment`]s.
//!
//! **Owns:** the alignment of the two streams on the stream clock. Segment `i` covers
//! `[i s, (i + 1) s)`: exactly [`SEGMENT_SAMPLES`] samples of 16 kHz mono audio and at most
//! one RGB [`Frame`]. Nothing here knows GStreamer or threads; the caller (the CLI loop or the
//! engine thread) pushes what capture delivered and pops finished segments, so this is a plain
//! struct that is unit-tested without media.
//!
//! **Audio** is placed by timestamp, not by arrival: sample position
//! `round(pts_ns · 16 000 / 10⁹)`. A chunk that straddles a second boundary is split across the
//! two segments. A gap (the chunk starts later than the previous one ended) is filled with
//! zeros and counted in [`SegmenterStats::gap_samples`]; samples for positions already written
//! are dropped and counted in [`SegmenterStats::overlap_samples`]. Positions within
//! [`SegmenterConfig::jitter_tolerance_samples`] of the expected one are treated as contiguous,
//! so timestamp jitter from live sources does not turn into a stream of one-sample gaps and
//! overlaps. The first segment is segment 0: audio that starts late is preceded by zeros.
//!
//! **Video**: each segment gets the frame whose pts is closest to the segment's midpoint among
//! the frames with pts in `[start, end)` (ties go to the earlier frame). If none arrived, the
//! most recent earlier frame (by pts, not the previous segment's choice) is copied in and
//! counted in [`SegmenterStats::repeated_frames`]; before the first frame, `frame` is `None`.
//! Frames must arrive in increasing pts order (they come from one streaming thread, after
//! `videorate`); one that does not is dropped and counted.
//!
//! **Emission**: a segment is ready when its audio is complete *and* its frame choice is final,
//! i.e. a frame with pts ≥ its end has arrived or [`Segmenter::end_video`] was called. If audio
//! runs more than [`SegmenterConfig::max_lead_segments`] seconds ahead of video, the oldest
//! segment is emitted with the frames known so far (counted in
//! [`SegmenterStats::forced_segments`]); frames that then arrive for it are dropped. Frames
//! further than that ahead of the audio are dropped too. At end of stream,
//! [`Segmenter::finish`] emits the last partial second only if it holds at least
//! [`MIN_FINAL_SAMPLES`] (0.5 s) of audio, zero-padded to a full second (counted in
//! [`SegmenterStats::padded_samples`]); a shorter tail is dropped (counted in
//! [`SegmenterStats::discarded_tail_samples`]).
//!
//! **Memory** is bounded and reused: at most `max_lead_segments + 1` pending seconds, each
//! holding its audio buffer, its best frame so far and the latest frame of that second, plus one
//! carried frame for repetition. Frames are copied into buffers the segmenter owns, so the
//! caller can recycle its own frame right after [`Segmenter::push_frame`]. Hand each popped
//! [`Segment`] back with [`Segmenter::recycle`] and steady-state operation allocates nothing.

use std::collections::VecDeque;

use crate::pts::Pts;

/// The audio sample rate of every segment.
pub const SAMPLE_RATE_HZ: u32 = 16_000;
/// Samples in one segment: one second of [`SAMPLE_RATE_HZ`] mono audio.
pub const SEGMENT_SAMPLES: usize = SAMPLE_RATE_HZ as usize;
/// The final partial second is emitted only if it holds at least this much audio (0.5 s).
pub const MIN_FINAL_SAMPLES: usize = SEGMENT_SAMPLES / 2;
/// Length of one segment in nanoseconds.
const SEGMENT_NS: u64 = Pts::SECOND_NS;

/// One RGB8 video frame (3 bytes per pixel, rows `stride_bytes` apart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// Presentation time on the stream clock.
    pub pts: Pts,
    /// Width in pixels.
    pub width_px: u32,
    /// Height in pixels.
    pub height_px: u32,
    /// Bytes from the start of one row to the next (≥ `3 · width_px`; GStreamer pads rows to 4).
    pub stride_bytes: usize,
    /// `stride_bytes · height_px` bytes (the last row may be unpadded).
    pub data: Vec<u8>,
}

impl Frame {
    /// The `3 · width_px` pixel bytes of row `y`, without the stride padding.
    ///
    /// # Panics
    /// If `y >= height_px` or `data` is shorter than the geometry says.
    pub fn row(&self, y: u32) -> &[u8] {
        let start = y as usize * self.stride_bytes;
        &self.data[start..start + 3 * self.width_px as usize]
    }

    /// Copies `src` into `self`, reusing `self.data`'s allocation when it is large enough.
    pub fn copy_from(&mut self, src: &Frame) {
        self.pts = src.pts;
        self.width_px = src.width_px;
        self.height_px = src.height_px;
        self.stride_bytes = src.stride_bytes;
        self.data.clear();
        self.data.extend_from_slice(&src.data);
    }
}

/// One second of aligned audio and video.
#[derive(Debug)]
pub struct Segment {
    /// Segment `index` covers `[index s, (index + 1) s)` of the stream clock.
    pub index: u64,
    /// Exactly [`SEGMENT_SAMPLES`] mono samples at [`SAMPLE_RATE_HZ`].
    pub audio: Vec<f32>,
    /// The frame for this second, or `None` if no frame has arrived yet in the stream.
    pub frame: Option<Frame>,
    /// `frame` is a copy of an earlier second's frame because none arrived in this second.
    pub frame_repeated: bool,
    /// Samples of `audio` that are zeros standing in for missing audio (gaps, end padding).
    pub zero_filled_samples: usize,
}

impl Segment {
    fn empty() -> Self {
        Segment {
            index: 0,
            audio: vec![0.0; SEGMENT_SAMPLES],
            frame: None,
            frame_repeated: false,
            zero_filled_samples: 0,
        }
    }

    /// Start of the segment on the stream clock.
    pub fn start(&self) -> Pts {
        Pts(self.index.saturating_mul(SEGMENT_NS))
    }

    /// End (exclusive) of the segment on the stream clock.
    pub fn end(&self) -> Pts {
        Pts(self.index.saturating_add(1).saturating_mul(SEGMENT_NS))
    }
}

/// Tuning of the segmenter's waiting policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterConfig {
    /// How many seconds one stream may run ahead of the other before the segmenter stops
    /// waiting (audio ahead: segments are emitted with the frames known so far; video ahead:
    /// frames are dropped). Bounds memory to `max_lead_segments + 1` pending seconds.
    pub max_lead_segments: usize,
    /// A chunk starting within this many samples of the expected position is treated as
    /// contiguous.
    pub jitter_tolerance_samples: u64,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        // Capture in file mode keeps the two streams within 2 s of each other (plus one
        // frame interval), so files never hit the forced path; live streams that drift
        // further apart than 4 s have a problem worth counting.
        SegmenterConfig {
            max_lead_segments: 4,
            // 1 ms.
            jitter_tolerance_samples: 16,
        }
    }
}

/// Counters of everything the segmenter had to repair or throw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmenterStats {
    /// Segments emitted.
    pub segments: u64,
    /// Zero samples inserted for audio missing between chunks (or before the first one).
    pub gap_samples: u64,
    /// Samples dropped because their positions had already been filled.
    pub overlap_samples: u64,
    /// Zero samples appended to complete the final partial second.
    pub padded_samples: u64,
    /// Samples of a final partial second shorter than [`MIN_FINAL_SAMPLES`], dropped.
    pub discarded_tail_samples: u64,
    /// Segments whose frame is a copy of an earlier second's frame.
    pub repeated_frames: u64,
    /// Segments emitted before any frame had arrived (`frame: None`).
    pub segments_without_frame: u64,
    /// Frames never considered: out of order, for a second already emitted, too far ahead of
    /// the audio, or for a second that had no audio at the end of the stream.
    pub dropped_frames: u64,
    /// Segments emitted because audio ran `max_lead_segments` ahead of video.
    pub forced_segments: u64,
}

/// A second that is not emitted yet.
#[derive(Debug)]
struct Slot {
    /// `seg.frame` holds the best frame so far (closest to the midpoint).
    seg: Segment,
    /// The latest frame of this second when it is not `seg.frame`, kept because the next
    /// second repeats the most recent frame if it gets none of its own.
    latest: Option<Frame>,
}

/// Turns audio chunks and frames into one-second [`Segment`]s; see the module docs.
#[derive(Debug)]
pub struct Segmenter {
    cfg: SegmenterConfig,
    /// Index of `pending[0]`: every segment before it has been emitted.
    next_index: u64,
    /// Segments `next_index ..`, at most `max_lead_segments + 1` of them.
    pending: VecDeque<Slot>,
    /// Emitted segments waiting for [`Segmenter::pop`].
    ready: VecDeque<Segment>,
    /// Absolute position of the next audio sample; everything before it is written.
    /// Invariant: `audio_pos >= next_index · SEGMENT_SAMPLES`.
    audio_pos: u64,
    /// The most recent frame of the emitted seconds, for repetition.
    carry: Option<Frame>,
    /// The pts of the newest frame accepted so far.
    last_frame_pts: Option<Pts>,
    video_ended: bool,
    finished: bool,
    segment_pool: Vec<Segment>,
    frame_pool: Vec<Frame>,
    stats: SegmenterStats,
}

impl Default for Segmenter {
    fn default() -> Self {
        Self::new(SegmenterConfig::default())
    }
}

impl Segmenter {
    /// A segmenter at stream time 0 with its buffers preallocated.
    pub fn new(cfg: SegmenterConfig) -> Self {
        let max_pending = cfg.max_lead_segments + 1;
        Segmenter {
            cfg,
            next_index: 0,
            pending: VecDeque::with_capacity(max_pending),
            ready: VecDeque::with_capacity(max_pending + 1),
            audio_pos: 0,
            carry: None,
            last_frame_pts: None,
            video_ended: false,
            finished: false,
            segment_pool: (0..max_pending + 1).map(|_| Segment::empty()).collect(),
            frame_pool: Vec::with_capacity(Self::frame_pool_cap(&cfg)),
            stats: SegmenterStats::default(),
        }
    }

    fn max_pending(&self) -> usize {
        self.cfg.max_lead_segments + 1
    }

    fn frame_pool_cap(cfg: &SegmenterConfig) -> usize {
        // Two frames per pending second, the carried one, and a few segments in flight.
        2 * (cfg.max_lead_segments + 1) + 4
    }

    /// What has been counted so far.
    pub fn stats(&self) -> SegmenterStats {
        self.stats
    }

    /// Adds mono 16 kHz samples whose first sample has timestamp `pts`.
    /// Ignored after [`Segmenter::finish`].
    pub fn push_audio(&mut self, pts: Pts, samples: &[f32]) {
        if self.finished {
            return;
        }
        let start = sample_position(pts);
        let tol = self.cfg.jitter_tolerance_samples;
        let mut samples = samples;
        if start > self.audio_pos.saturating_add(tol) {
            let gap = start - self.audio_pos;
            self.stats.gap_samples += gap;
            self.write_audio(AudioInput::Zeros(gap));
        } else if start.saturating_add(tol) < self.audio_pos {
            let skip = (self.audio_pos - start).min(samples.len() as u64);
            self.stats.overlap_samples += skip;
            samples = &samples[skip as usize..];
        }
        self.write_audio(AudioInput::Samples(samples));
        self.emit_ready();
    }

    /// Adds a frame, copying it into a buffer the segmenter owns. Ignored after
    /// [`Segmenter::finish`].
    pub fn push_frame(&mut self, frame: &Frame) {
        if self.finished {
            return;
        }
        if self.last_frame_pts.is_some_and(|last| frame.pts <= last) {
            self.stats.dropped_frames += 1;
            return;
        }
        // Even a frame that is dropped below proves that no earlier frame will follow.
        self.last_frame_pts = Some(frame.pts);
        let k = frame.pts.0 / SEGMENT_NS;
        if k < self.next_index || k >= self.next_index + self.max_pending() as u64 {
            self.stats.dropped_frames += 1;
        } else {
            self.ensure_slot(k);
            let i = (k - self.next_index) as usize;
            let mid = k * SEGMENT_NS + SEGMENT_NS / 2;
            let dist = |f: &Frame| f.pts.0.abs_diff(mid);
            let slot = &self.pending[i];
            let becomes_best = slot
                .seg
                .frame
                .as_ref()
                .is_none_or(|b| dist(frame) < dist(b));
            if becomes_best {
                // Frames come in pts order, so the new best is also the latest of the
                // second: the separate `latest` is no longer needed.
                let mut buf = match self.pending[i].seg.frame.take() {
                    Some(f) => f,
                    None => self.take_frame_buf(),
                };
                buf.copy_from(frame);
                self.pending[i].seg.frame = Some(buf);
                if let Some(old) = self.pending[i].latest.take() {
                    self.put_frame(old);
                }
            } else {
                let mut buf = match self.pending[i].latest.take() {
                    Some(f) => f,
                    None => self.take_frame_buf(),
                };
                buf.copy_from(frame);
                self.pending[i].latest = Some(buf);
            }
        }
        self.emit_ready();
    }

    /// The video stream has ended: segments no longer wait for frames.
    pub fn end_video(&mut self) {
        self.video_ended = true;
        self.emit_ready();
    }

    /// End of both streams: emits what is complete, then the final partial second if it holds
    /// at least [`MIN_FINAL_SAMPLES`] of audio (zero-padded), else drops it. Later pushes are
    /// ignored.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.end_video();
        self.finished = true;
        // Every second before the one holding `audio_pos` is complete and has been emitted,
        // so the front slot, if any, is the partial one (or a second with frames but no
        // audio).
        let have = (self.audio_pos % SEGMENT_SAMPLES as u64) as usize;
        if have > 0 {
            if have >= MIN_FINAL_SAMPLES {
                let missing = SEGMENT_SAMPLES - have;
                self.stats.padded_samples += missing as u64;
                self.write_audio(AudioInput::Zeros(missing as u64));
                self.emit_front(false);
            } else {
                self.stats.discarded_tail_samples += have as u64;
                self.drop_front();
            }
        }
        while !self.pending.is_empty() {
            self.drop_front();
        }
    }

    /// The next finished segment, oldest first.
    pub fn pop(&mut self) -> Option<Segment> {
        self.ready.pop_front()
    }

    /// Hands a popped segment back so its buffers are reused.
    pub fn recycle(&mut self, mut seg: Segment) {
        if let Some(f) = seg.frame.take() {
            self.put_frame(f);
        }
        if self.segment_pool.len() <= self.max_pending() {
            seg.audio.resize(SEGMENT_SAMPLES, 0.0);
            self.segment_pool.push(seg);
        }
    }

    /// Writes samples (or zeros) at `audio_pos`, splitting at second boundaries.
    fn write_audio(&mut self, input: AudioInput<'_>) {
        let mut remaining = input;
        loop {
            let n_left = match &remaining {
                AudioInput::Samples(s) => s.len() as u64,
                AudioInput::Zeros(n) => *n,
            };
            if n_left == 0 {
                return;
            }
            let k = self.audio_pos / SEGMENT_SAMPLES as u64;
            let off = (self.audio_pos % SEGMENT_SAMPLES as u64) as usize;
            let n = n_left.min((SEGMENT_SAMPLES - off) as u64) as usize;
            let i = self.slot_for_audio(k);
            let seg = &mut self.pending[i].seg;
            match &mut remaining {
                AudioInput::Samples(s) => {
                    seg.audio[off..off + n].copy_from_slice(&s[..n]);
                    *s = &s[n..];
                }
                AudioInput::Zeros(z) => {
                    seg.audio[off..off + n].fill(0.0);
                    seg.zero_filled_samples += n;
                    *z -= n as u64;
                }
            }
            self.audio_pos += n as u64;
        }
    }

    /// The index into `pending` of second `k`, which audio is about to be written to.
    fn slot_for_audio(&mut self, k: u64) -> usize {
        // Audio is written in order, so every second before `k` has complete audio; if `k`
        // is beyond the lead, those seconds are only waiting for video: stop waiting.
        if k >= self.next_index + self.max_pending() as u64 {
            self.emit_ready();
            while k >= self.next_index + self.max_pending() as u64 {
                self.emit_front(true);
            }
        }
        self.ensure_slot(k);
        (k - self.next_index) as usize
    }

    /// Makes `pending` reach second `k` (which must be within the lead).
    fn ensure_slot(&mut self, k: u64) {
        debug_assert!(k >= self.next_index && k < self.next_index + self.max_pending() as u64);
        while self.next_index + (self.pending.len() as u64) <= k {
            let index = self.next_index + self.pending.len() as u64;
            let mut seg = self.segment_pool.pop().unwrap_or_else(Segment::empty);
            seg.index = index;
            seg.frame_repeated = false;
            seg.zero_filled_samples = 0;
            self.pending.push_back(Slot { seg, latest: None });
        }
    }

    /// Emits every front segment whose audio is complete and whose frame choice is final.
    fn emit_ready(&mut self) {
        while !self.pending.is_empty() {
            let end_pos = (self.next_index + 1) * SEGMENT_SAMPLES as u64;
            let end_pts = Pts((self.next_index + 1).saturating_mul(SEGMENT_NS));
            let audio_done = self.audio_pos >= end_pos;
            let video_done = self.video_ended || self.last_frame_pts.is_some_and(|p| p >= end_pts);
            if !(audio_done && video_done) {
                return;
            }
            self.emit_front(false);
        }
    }

    /// Moves the front slot (whose audio must be complete) to `ready`, choosing its frame.
    fn emit_front(&mut self, forced: bool) {
        let Some(Slot { mut seg, latest }) = self.pending.pop_front() else {
            return;
        };
        self.next_index += 1;
        match (&seg.frame, latest) {
            (Some(_), Some(latest)) => {
                if let Some(old) = self.carry.replace(latest) {
                    self.put_frame(old);
                }
            }
            (Some(best), None) => {
                let mut carry = match self.carry.take() {
                    Some(c) => c,
                    None => self.take_frame_buf(),
                };
                carry.copy_from(best);
                self.carry = Some(carry);
            }
            (None, latest) => {
                debug_assert!(latest.is_none(), "`latest` is only set beside a best frame");
                if let Some(carry) = &self.carry {
                    let mut buf = self.frame_pool.pop().unwrap_or_default();
                    buf.copy_from(carry);
                    seg.frame = Some(buf);
                    seg.frame_repeated = true;
                    self.stats.repeated_frames += 1;
                } else {
                    self.stats.segments_without_frame += 1;
                }
            }
        }
        self.stats.segments += 1;
        if forced {
            self.stats.forced_segments += 1;
        }
        self.ready.push_back(seg);
    }

    /// Throws the front slot away (no audio for it), counting its frames as dropped.
    fn drop_front(&mut self) {
        let Some(Slot { mut seg, latest }) = self.pending.pop_front() else {
            return;
        };
        self.next_index += 1;
        for f in [seg.frame.take(), latest].into_iter().flatten() {
            self.stats.dropped_frames += 1;
            self.put_frame(f);
        }
        self.recycle(seg);
    }

    fn take_frame_buf(&mut self) -> Frame {
        self.frame_pool.pop().unwrap_or_default()
    }

    fn put_frame(&mut self, f: Frame) {
        if self.frame_pool.len() < Self::frame_pool_cap(&self.cfg) {
            self.frame_pool.push(f);
        }
    }
}

/// What [`Segmenter::write_audio`] writes.
enum AudioInput<'a> {
    Samples(&'a [f32]),
    Zeros(u64),
}

/// `round(pts_ns · 16 000 / 10⁹)`, in 128 bits so that no stream is too long.
fn sample_position(pts: Pts) -> u64 {
    let ns = u128::from(pts.0);
    let pos =
        (ns * u128::from(SAMPLE_RATE_HZ) + u128::from(SEGMENT_NS / 2)) / u128::from(SEGMENT_NS);
    u64::try_from(pos).expect("a position in samples is smaller than the same time in ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Pts of sample position `pos`.
    fn pts_of(pos: u64) -> Pts {
        Pts(pos * Pts::SECOND_NS / SAMPLE_RATE_HZ as u64)
    }

    fn frame(pts_ms: u64) -> Frame {
        Frame {
            pts: Pts(pts_ms * MS),
            width_px: 2,
            height_px: 2,
            stride_bytes: 8,
            // The first byte tags the frame with its time so tests can tell frames apart.
            data: vec![(pts_ms / 10) as u8; 16],
        }
    }

    fn drain(s: &mut Segmenter) -> Vec<Segment> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    /// A ramp whose value is the absolute sample position.
    fn ramp(from: u64, n: usize) -> Vec<f32> {
        (0..n as u64).map(|i| (from + i) as f32).collect()
    }

    #[test]
    fn sample_position_rounds_and_does_not_overflow() {
        assert_eq!(sample_position(Pts(0)), 0);
        assert_eq!(sample_position(Pts(31_249)), 0);
        assert_eq!(sample_position(Pts(31_250)), 1);
        assert_eq!(sample_position(Pts(Pts::SECOND_NS)), 16_000);
        // A year of stream time.
        let year_s = 365 * 24 * 3600;
        assert_eq!(
            sample_position(Pts(year_s * Pts::SECOND_NS)),
            year_s * 16_000
        );
    }

    #[test]
    fn straddling_chunks_are_split_exactly() {
        let mut s = Segmenter::default();
        s.end_video();
        let total = 3 * SEGMENT_SAMPLES + 500;
        let chunk = 7_001;
        let mut pos = 0;
        while pos < total {
            let n = chunk.min(total - pos);
            s.push_audio(pts_of(pos as u64), &ramp(pos as u64, n));
            pos += n;
        }
        let segs = drain(&mut s);
        assert_eq!(segs.len(), 3);
        for seg in &segs {
            assert_eq!(seg.audio.len(), SEGMENT_SAMPLES);
            assert_eq!(seg.zero_filled_samples, 0);
            for (j, &v) in seg.audio.iter().enumerate() {
                assert_eq!(v, (seg.index * SEGMENT_SAMPLES as u64 + j as u64) as f32);
            }
        }
        // The 500-sample tail is below the 0.5 s rule: dropped and counted.
        s.finish();
        assert!(s.pop().is_none());
        let st = s.stats();
        assert_eq!(st.discarded_tail_samples, 500);
        let emitted = segs.len() * SEGMENT_SAMPLES;
        assert_eq!(emitted as u64 + st.discarded_tail_samples, total as u64);
        assert_eq!((st.gap_samples, st.overlap_samples), (0, 0));
    }

    #[test]
    fn gap_is_zero_filled_and_counted() {
        let mut s = Segmenter::default();
        s.end_video();
        s.push_audio(Pts(0), &[1.0; 8_000]);
        s.push_audio(Pts(750 * MS), &[2.0; 12_000]);
        let seg = s.pop().expect("one full second");
        assert!(seg.audio[..8_000].iter().all(|&v| v == 1.0));
        assert!(seg.audio[8_000..12_000].iter().all(|&v| v == 0.0));
        assert!(seg.audio[12_000..].iter().all(|&v| v == 2.0));
        assert_eq!(seg.zero_filled_samples, 4_000);
        assert_eq!(s.stats().gap_samples, 4_000);
    }

    #[test]
    fn late_start_is_preceded_by_zeros() {
        let mut s = Segmenter::default();
        s.end_video();
        s.push_audio(Pts(1_500 * MS), &[1.0; 8_000]);
        let segs = drain(&mut s);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].index, 0);
        assert_eq!(segs[0].zero_filled_samples, SEGMENT_SAMPLES);
        assert!(segs[0].audio.iter().all(|&v| v == 0.0));
        assert_eq!(segs[1].zero_filled_samples, 8_000);
        assert!(segs[1].audio[8_000..].iter().all(|&v| v == 1.0));
        assert_eq!(s.stats().gap_samples, 24_000);
    }

    #[test]
    fn overlap_is_dropped_and_counted() {
        let mut s = Segmenter::default();
        s.end_video();
        s.push_audio(Pts(0), &ramp(0, 10_000));
        // Starts at 4 000 but 10 000 are already written: its first 6 000 samples go.
        let mut late = vec![-1.0; 6_000];
        late.extend(ramp(10_000, 6_000));
        s.push_audio(pts_of(4_000), &late);
        // Entirely in the past.
        s.push_audio(pts_of(100), &[-1.0; 50]);
        let seg = s.pop().expect("one full second");
        assert_eq!(seg.audio, ramp(0, 16_000));
        assert_eq!(s.stats().overlap_samples, 6_050);
    }

    #[test]
    fn jitter_within_tolerance_is_contiguous() {
        let mut s = Segmenter::default();
        s.end_video();
        s.push_audio(Pts(0), &ramp(0, 8_000));
        // 10 samples late and then 5 samples early: within the 16-sample tolerance.
        s.push_audio(pts_of(8_010), &ramp(8_000, 4_000));
        s.push_audio(pts_of(11_995), &ramp(12_000, 4_000));
        let seg = s.pop().expect("one full second");
        assert_eq!(seg.audio, ramp(0, 16_000));
        assert_eq!((s.stats().gap_samples, s.stats().overlap_samples), (0, 0));
    }

    #[test]
    fn frame_closest_to_midpoint_wins_and_waits_for_a_later_frame() {
        let mut s = Segmenter::default();
        for ms in [0, 250, 500, 750] {
            s.push_frame(&frame(ms));
        }
        s.push_audio(Pts(0), &[0.5; SEGMENT_SAMPLES]);
        // Audio is complete, but a frame nearer the end could still come.
        assert!(s.pop().is_none());
        s.push_frame(&frame(1_000));
        let seg = s.pop().expect("the frame at 1 s makes the choice final");
        let f = seg.frame.as_ref().expect("frames arrived");
        assert_eq!(f.pts, Pts(500 * MS));
        assert_eq!(f.data[0], 50);
        assert!(!seg.frame_repeated);
    }

    #[test]
    fn tie_goes_to_the_earlier_frame() {
        let mut s = Segmenter::default();
        s.push_frame(&frame(100));
        s.push_frame(&frame(900));
        s.push_audio(Pts(0), &[0.0; SEGMENT_SAMPLES]);
        s.end_video();
        let seg = s.pop().expect("complete");
        assert_eq!(seg.frame.expect("frame").pts, Pts(100 * MS));
    }

    #[test]
    fn missing_frame_repeats_the_most_recent_earlier_frame() {
        let mut s = Segmenter::default();
        s.push_frame(&frame(500));
        s.push_frame(&frame(900));
        s.push_frame(&frame(2_500));
        s.push_audio(Pts(0), &[0.0; 3 * SEGMENT_SAMPLES]);
        s.end_video();
        let segs = drain(&mut s);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].frame.as_ref().expect("own").pts, Pts(500 * MS));
        // Second 1 has no frame: it gets 0.9 s, the latest before it, not second 0's choice.
        let repeated = segs[1].frame.as_ref().expect("repeated");
        assert_eq!(repeated.pts, Pts(900 * MS));
        assert_eq!(repeated.data, frame(900).data);
        assert!(segs[1].frame_repeated);
        assert_eq!(segs[2].frame.as_ref().expect("own").pts, Pts(2_500 * MS));
        assert_eq!(s.stats().repeated_frames, 1);
    }

    #[test]
    fn no_frame_yet_gives_none() {
        let mut s = Segmenter::default();
        s.end_video();
        s.push_audio(Pts(0), &[0.0; SEGMENT_SAMPLES]);
        let seg = s.pop().expect("complete");
        assert!(seg.frame.is_none());
        assert_eq!(s.stats().segments_without_frame, 1);
    }

    #[test]
    fn end_of_stream_keeps_a_half_second_tail_and_drops_a_shorter_one() {
        let mut s = Segmenter::default();
        s.push_frame(&frame(500));
        s.push_audio(Pts(0), &[1.0; SEGMENT_SAMPLES + MIN_FINAL_SAMPLES]);
        s.finish();
        let segs = drain(&mut s);
        assert_eq!(segs.len(), 2);
        assert!(segs[1].audio[..MIN_FINAL_SAMPLES].iter().all(|&v| v == 1.0));
        assert!(segs[1].audio[MIN_FINAL_SAMPLES..].iter().all(|&v| v == 0.0));
        assert_eq!(segs[1].zero_filled_samples, MIN_FINAL_SAMPLES);
        assert!(segs[1].frame_repeated);
        assert_eq!(s.stats().padded_samples, MIN_FINAL_SAMPLES as u64);

        let mut s = Segmenter::default();
        s.push_audio(Pts(0), &[1.0; SEGMENT_SAMPLES + MIN_FINAL_SAMPLES - 1]);
        s.push_frame(&frame(1_200));
        s.push_frame(&frame(2_200));
        s.finish();
        assert_eq!(drain(&mut s).len(), 1);
        let st = s.stats();
        assert_eq!(st.discarded_tail_samples, MIN_FINAL_SAMPLES as u64 - 1);
        // The frames of the dropped tail and of the second without audio.
        assert_eq!(st.dropped_frames, 2);
        // Nothing is accepted after the end.
        s.push_audio(pts_of(40_000), &[1.0; SEGMENT_SAMPLES]);
        assert!(s.pop().is_none());
    }

    #[test]
    fn audio_far_ahead_of_video_forces_segments_out() {
        let cfg = SegmenterConfig {
            max_lead_segments: 2,
            ..SegmenterConfig::default()
        };
        let mut s = Segmenter::new(cfg);
        s.push_frame(&frame(500));
        s.push_audio(Pts(0), &[0.0; 3 * SEGMENT_SAMPLES]);
        assert!(
            s.pop().is_none(),
            "seconds 0..3 fit in the lead and wait for video"
        );
        s.push_audio(pts_of(3 * SEGMENT_SAMPLES as u64), &[0.0; 100]);
        let seg = s.pop().expect("second 0 forced out");
        assert_eq!(seg.index, 0);
        assert_eq!(seg.frame.expect("own frame").pts, Pts(500 * MS));
        assert_eq!(s.stats().forced_segments, 1);
        // A frame for the emitted second is too late.
        s.push_frame(&frame(900));
        assert_eq!(s.stats().dropped_frames, 1);
    }

    #[test]
    fn video_far_ahead_of_audio_is_dropped() {
        let cfg = SegmenterConfig {
            max_lead_segments: 1,
            ..SegmenterConfig::default()
        };
        let mut s = Segmenter::new(cfg);
        s.push_frame(&frame(500));
        s.push_frame(&frame(1_500));
        s.push_frame(&frame(2_500));
        s.push_frame(&frame(2_400)); // out of order
        assert_eq!(s.stats().dropped_frames, 2);
        s.push_audio(Pts(0), &[0.0; 3 * SEGMENT_SAMPLES]);
        // No frame at or after 3 s has come, so second 2 waits for the end of the video.
        let mut segs = drain(&mut s);
        assert_eq!(segs.len(), 2);
        s.end_video();
        segs.extend(drain(&mut s));
        let pts: Vec<_> = segs
            .iter()
            .map(|g| g.frame.as_ref().expect("frame").pts)
            .collect();
        assert_eq!(pts, [Pts(500 * MS), Pts(1_500 * MS), Pts(1_500 * MS)]);
    }

    #[test]
    fn recycled_segments_are_reused() {
        let mut s = Segmenter::default();
        s.end_video();
        for i in 0..10u64 {
            s.push_frame(&frame(i * 1_000 + 500));
            s.push_audio(
                pts_of(i * SEGMENT_SAMPLES as u64),
                &[i as f32; SEGMENT_SAMPLES],
            );
            let seg = s.pop().expect("complete");
            assert_eq!(seg.index, i);
            assert!(seg.audio.iter().all(|&v| v == i as f32));
            assert_eq!(seg.zero_filled_samples, 0);
            s.recycle(seg);
        }
        assert!(s.segment_pool.len() <= s.max_pending() + 1);
        assert!(s.frame_pool.len() <= Segmenter::frame_pool_cap(&s.cfg));
    }
}
