//! The rolling window: a fixed-capacity ring of the last N seconds of features.
//!
//! **Owns** one row per second — the head's per-second part (`tspm_second`: projections, the
//! second's spatial attention over its merged tokens, keys and values for the question
//! attention; see `models/tspm_parts.py`) — with what each second really had (audio and video
//! present, or stood in for while a source was lost). The rows are computed once, when the
//! second arrives, so a question only pays for the question part. Every buffer is allocated in
//! [`Window::new`]; [`Window::push`] overwrites the oldest second in place, so memory does not
//! grow with uptime. The engine thread owns the window; nothing here is shared.

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
    /// [T, row length]: the seconds' rows; padding rows are zeros.
    pub rows: Vec<f32>,
    /// [T]: 1 for a second holding data, 0 for padding.
    pub valid: Vec<f32>,
    /// [T] segment index of each row (padding repeats the newest).
    pub index: Vec<u64>,
    /// [`Window::version`] when this view was filled (`u64::MAX`: never).
    pub version: u64,
    row_len: usize,
}

impl HeadView {
    /// Buffers for a head of `seconds` seconds and rows of `row_len` values.
    pub fn new(seconds: usize, row_len: usize) -> Self {
        HeadView {
            rows: vec![0.0; seconds * row_len],
            valid: vec![0.0; seconds],
            index: vec![0; seconds],
            version: u64::MAX,
            row_len,
        }
    }

    /// The number of rows (T).
    pub fn seconds(&self) -> usize {
        self.valid.len()
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }
}

/// The ring.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    row_len: usize,
    rows: Vec<f32>,
    info: Vec<SecondInfo>,
    /// Slot of the oldest second.
    start: usize,
    len: usize,
    version: u64,
}

impl Window {
    /// A window of `capacity` seconds (≥ 1) of `row_len` values each, all buffers allocated
    /// now.
    pub fn new(capacity: usize, row_len: usize) -> Self {
        let capacity = capacity.max(1);
        Window {
            capacity,
            row_len,
            rows: vec![0.0; capacity * row_len],
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

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.row_len
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

    /// Adds one second, replacing the oldest when full.
    ///
    /// # Panics
    /// If `row` is not [`Window::row_len`] long (a programming error: the length is fixed by
    /// the model contract, checked at load).
    pub fn push(&mut self, info: SecondInfo, row: &[f32]) {
        let slot = if self.len < self.capacity {
            self.len += 1;
            (self.start + self.len - 1) % self.capacity
        } else {
            let slot = self.start;
            self.start = (self.start + 1) % self.capacity;
            slot
        };
        let n = self.row_len;
        self.rows[slot * n..(slot + 1) * n].copy_from_slice(row);
        self.info[slot] = info;
        self.version = self.version.wrapping_add(1);
    }

    /// Lays the window out for the head, oldest second first; rows past the held seconds are
    /// zeros with `valid = 0`. Seconds beyond the view's length (a window longer than the
    /// head) keep the newest ones. Does nothing if the view is already of this version.
    ///
    /// # Panics
    /// If the view's rows are not this window's length (a programming error).
    pub fn fill(&self, view: &mut HeadView) {
        if view.version == self.version {
            return;
        }
        assert_eq!(
            view.row_len, self.row_len,
            "head view of another row length"
        );
        let n = self.row_len;
        let rows = view.seconds();
        let take = self.len.min(rows);
        let skip = self.len - take;
        for row in 0..rows {
            let dst = &mut view.rows[row * n..(row + 1) * n];
            if row < take {
                let slot = (self.start + skip + row) % self.capacity;
                dst.copy_from_slice(&self.rows[slot * n..(slot + 1) * n]);
                view.valid[row] = 1.0;
                view.index[row] = self.info[slot].index;
            } else {
                dst.fill(0.0);
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

    const ROW: usize = 37;

    fn second(w: &mut Window, index: u64) {
        let v = index as f32;
        w.push(
            SecondInfo {
                index,
                audio: index.is_multiple_of(2),
                video: true,
            },
            &[v; ROW],
        );
    }

    #[test]
    fn keeps_the_newest_seconds_in_time_order() {
        let mut w = Window::new(10, ROW);
        for i in 0..25 {
            second(&mut w, i);
        }
        assert_eq!(w.len(), 10);
        let held: Vec<u64> = w.seconds().map(|s| s.index).collect();
        assert_eq!(held, (15..25).collect::<Vec<_>>());
        let mut view = HeadView::new(10, ROW);
        w.fill(&mut view);
        for row in 0..10 {
            let expected = (15 + row) as f32;
            assert_eq!(view.rows[row * ROW], expected);
            assert_eq!(view.rows[(row + 1) * ROW - 1], expected);
            assert_eq!(view.valid[row], 1.0);
        }
    }

    #[test]
    fn a_short_window_is_padded_invalid() {
        let mut w = Window::new(60, ROW);
        for i in 100..103 {
            second(&mut w, i);
        }
        let mut view = HeadView::new(12, ROW);
        w.fill(&mut view);
        assert_eq!(&view.valid[..4], &[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(&view.index[..4], &[100, 101, 102, 102]);
        assert!(view.rows[3 * ROW..].iter().all(|&x| x == 0.0));
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
        let mut w = Window::new(20, ROW);
        for i in 0..20 {
            second(&mut w, i);
        }
        let mut view = HeadView::new(10, ROW);
        w.fill(&mut view);
        assert_eq!(view.index, (10..20).collect::<Vec<_>>());
    }
}
