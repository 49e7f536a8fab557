//! The rolling window: a fixed-capacity ring of the last N seconds of features.
//!
//! **Owns** per-second audio embeddings, pooled visual features and merged tokens, with what
//! each second really had (audio and video present, or stood in for while a source was
//! lost). Every buffer is allocated in [`Window::new`]; [`Window::push`] overwrites the
//! oldest second in place, so memory does not grow with uptime. The engine thread owns the
//! window; nothing here is shared.

use crate::model::encoders::{AUDIO_DIM, VISUAL_DIM};
use crate::model::head::MERGED_TOKENS;

/// Floats of one second's merged tokens.
const PATCH_LEN: usize = MERGED_TOKENS * VISUAL_DIM;

/// What one second of the window holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondInfo {
    /// Segment index: the second `[index, index + 1)` of the daemon's timeline.
    pub index: u64,
    /// The audio came from the source (not silence standing in for a lost microphone).
    pub audio: bool,
    /// The frame is this second's own (not a repeat standing in for a lost camera).
    pub video: bool,
}

/// The head's view of the window, time-ordered and padded to the head's length.
#[derive(Debug)]
pub struct HeadView {
    /// [T, 1024].
    pub audio: Vec<f32>,
    /// [T, 1280].
    pub visual: Vec<f32>,
    /// [T, 14, 1280].
    pub patches: Vec<f32>,
    /// [T]: 1 for a second holding data, 0 for padding.
    pub valid: Vec<f32>,
    /// [T] segment index of each row (padding repeats the newest).
    pub index: Vec<u64>,
    /// [`Window::version`] when this view was filled (`u64::MAX`: never).
    pub version: u64,
}

impl HeadView {
    /// Buffers for a head of `seconds` seconds.
    pub fn new(seconds: usize) -> Self {
        HeadView {
            audio: vec![0.0; seconds * AUDIO_DIM],
            visual: vec![0.0; seconds * VISUAL_DIM],
            patches: vec![0.0; seconds * PATCH_LEN],
            valid: vec![0.0; seconds],
            index: vec![0; seconds],
            version: u64::MAX,
        }
    }

    /// The number of rows (T).
    pub fn seconds(&self) -> usize {
        self.valid.len()
    }
}

/// The ring.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    audio: Vec<f32>,
    visual: Vec<f32>,
    patches: Vec<f32>,
    info: Vec<SecondInfo>,
    /// Slot of the oldest second.
    start: usize,
    len: usize,
    version: u64,
}

impl Window {
    /// A window of `capacity` seconds (≥ 1), all buffers allocated now.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Window {
            capacity,
            audio: vec![0.0; capacity * AUDIO_DIM],
            visual: vec![0.0; capacity * VISUAL_DIM],
            patches: vec![0.0; capacity * PATCH_LEN],
            info: vec![SecondInfo::default(); capacity],
            start: 0,
            len: 0,
            version: 0,
        }
    }

    /// Seconds it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Seconds it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Changes whenever a second is added.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The seconds held, oldest first.
    pub fn seconds(&self) -> impl Iterator<Item = &SecondInfo> {
        (0..self.len).map(|i| &self.info[(self.start + i) % self.capacity])
    }

    /// The newest second, if any.
    pub fn newest(&self) -> Option<&SecondInfo> {
        self.len
            .checked_sub(1)
            .map(|i| &self.info[(self.start + i) % self.capacity])
    }

    /// Adds one second, replacing the oldest when full. Slices must be [1024], [1280] and
    /// [14 × 1280] long.
    ///
    /// # Panics
    /// If a slice has the wrong length (a programming error: the sizes are fixed by the
    /// model contract, checked at load).
    pub fn push(&mut self, info: SecondInfo, audio: &[f32], visual: &[f32], patches: &[f32]) {
        let slot = if self.len < self.capacity {
            self.len += 1;
            (self.start + self.len - 1) % self.capacity
        } else {
            let slot = self.start;
            self.start = (self.start + 1) % self.capacity;
            slot
        };
        self.audio[slot * AUDIO_DIM..(slot + 1) * AUDIO_DIM].copy_from_slice(audio);
        self.visual[slot * VISUAL_DIM..(slot + 1) * VISUAL_DIM].copy_from_slice(visual);
        self.patches[slot * PATCH_LEN..(slot + 1) * PATCH_LEN].copy_from_slice(patches);
        self.info[slot] = info;
        self.version = self.version.wrapping_add(1);
    }

    /// Lays the window out for the head, oldest second first; rows past the held seconds are
    /// zeros with `valid = 0`. Seconds beyond the view's length (a window longer than the
    /// head) keep the newest ones. Does nothing if the view is already of this version.
    pub fn fill(&self, view: &mut HeadView) {
        if view.version == self.version {
            return;
        }
        let rows = view.seconds();
        let take = self.len.min(rows);
        let skip = self.len - take;
        for row in 0..rows {
            if row < take {
                let slot = (self.start + skip + row) % self.capacity;
                view.audio[row * AUDIO_DIM..(row + 1) * AUDIO_DIM]
                    .copy_from_slice(&self.audio[slot * AUDIO_DIM..(slot + 1) * AUDIO_DIM]);
                view.visual[row * VISUAL_DIM..(row + 1) * VISUAL_DIM]
                    .copy_from_slice(&self.visual[slot * VISUAL_DIM..(slot + 1) * VISUAL_DIM]);
                view.patches[row * PATCH_LEN..(row + 1) * PATCH_LEN]
                    .copy_from_slice(&self.patches[slot * PATCH_LEN..(slot + 1) * PATCH_LEN]);
                view.valid[row] = 1.0;
                view.index[row] = self.info[slot].index;
            } else {
                view.audio[row * AUDIO_DIM..(row + 1) * AUDIO_DIM].fill(0.0);
                view.visual[row * VISUAL_DIM..(row + 1) * VISUAL_DIM].fill(0.0);
                view.patches[row * PATCH_LEN..(row + 1) * PATCH_LEN].fill(0.0);
                view.valid[row] = 0.0;
                view.index[row] = self.newest().map_or(0, |s| s.index);
            }
        }
        view.version = self.version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(w: &mut Window, index: u64) {
        let v = index as f32;
        w.push(
            SecondInfo {
                index,
                audio: index.is_multiple_of(2),
                video: true,
            },
            &[v; AUDIO_DIM],
            &[v; VISUAL_DIM],
            &[v; PATCH_LEN],
        );
    }

    #[test]
    fn keeps_the_newest_seconds_in_time_order() {
        let mut w = Window::new(10);
        for i in 0..25 {
            second(&mut w, i);
        }
        assert_eq!(w.len(), 10);
        let held: Vec<u64> = w.seconds().map(|s| s.index).collect();
        assert_eq!(held, (15..25).collect::<Vec<_>>());
        let mut view = HeadView::new(10);
        w.fill(&mut view);
        for row in 0..10 {
            let expected = (15 + row) as f32;
            assert_eq!(view.audio[row * AUDIO_DIM], expected);
            assert_eq!(view.visual[row * VISUAL_DIM + 7], expected);
            assert_eq!(view.patches[(row + 1) * PATCH_LEN - 1], expected);
            assert_eq!(view.valid[row], 1.0);
        }
    }

    #[test]
    fn a_short_window_is_padded_invalid() {
        let mut w = Window::new(60);
        for i in 100..103 {
            second(&mut w, i);
        }
        let mut view = HeadView::new(12);
        w.fill(&mut view);
        assert_eq!(&view.valid[..4], &[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(&view.index[..4], &[100, 101, 102, 102]);
        assert_eq!(view.audio[3 * AUDIO_DIM], 0.0);
        // Filling again at the same version is a no-op; a new second changes the view.
        let v = view.version;
        w.fill(&mut view);
        assert_eq!(view.version, v);
        second(&mut w, 103);
        w.fill(&mut view);
        assert_eq!(view.valid[3], 1.0);
    }

    #[test]
    fn a_window_longer_than_the_view_gives_the_newest() {
        let mut w = Window::new(20);
        for i in 0..20 {
            second(&mut w, i);
        }
        let mut view = HeadView::new(10);
        w.fill(&mut view);
        assert_eq!(view.index, (10..20).collect::<Vec<_>>());
    }
}
