//! The rolling window: a fixed-capacity ring of the last N seconds of features.
//!
//! **Owns** one row per second — the head's per-second part (`tspm_second`: projections, the
//! second's spatial attention over its merged tokens, keys and values for the question
//! attention; see `models/tspm_parts.py`) — with what each second really had (audio and video
//! present, or stood in for while a source was lost). The rows are computed once, when the
//! second arrives, so a question only pays for the question part. Every buffer is allocated in
//! [`Window::new`]; [`Window::push`] overwrites the oldest second in place, so memory does not
//! grow with uptime. The engine thread owns the window; nothing here is shared.

use std::ops::Range;

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

/// The head's view of the window, time-ordered and padded to the head's length, laid out for
/// the head's window and question parts: each holds only the columns of every row its part
/// reads, contiguous, so a run copies no more into tract than the part needs.
#[derive(Debug)]
pub struct HeadView {
    /// [T, window width]: the window part's columns of the seconds' rows; padding rows are
    /// zeros.
    pub window_rows: Vec<f32>,
    /// [T, question width]: the question part's columns of the seconds' rows; padding rows
    /// are zeros.
    pub question_rows: Vec<f32>,
    /// [T]: 1 for a second holding data, 0 for padding.
    pub valid: Vec<f32>,
    /// [T] segment index of each row (padding repeats the newest).
    pub index: Vec<u64>,
    /// [`Window::version`] when this view was filled (`u64::MAX`: never).
    pub version: u64,
    row_len: usize,
    window_columns: Range<usize>,
    question_columns: Range<usize>,
}

impl HeadView {
    /// Buffers for a head of `seconds` seconds and rows of `row_len` values, of which the
    /// window part reads `window_columns` and the question part `question_columns`
    /// (`HeadParts::window_columns` / `question_columns`).
    ///
    /// # Panics
    /// If a column range reaches past `row_len` (a programming error: the model layer checks
    /// the widths against the manifest at load).
    pub fn new(
        seconds: usize,
        row_len: usize,
        window_columns: Range<usize>,
        question_columns: Range<usize>,
    ) -> Self {
        assert!(
            window_columns.end <= row_len && question_columns.end <= row_len,
            "head view columns {window_columns:?} / {question_columns:?} past a row of {row_len}"
        );
        HeadView {
            window_rows: vec![0.0; seconds * window_columns.len()],
            question_rows: vec![0.0; seconds * question_columns.len()],
            valid: vec![0.0; seconds],
            index: vec![0; seconds],
            version: u64::MAX,
            row_len,
            window_columns,
            question_columns,
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
        let (wc, qc) = (view.window_columns.clone(), view.question_columns.clone());
        let (ww, qw) = (wc.len(), qc.len());
        for row in 0..rows {
            let w_dst = &mut view.window_rows[row * ww..(row + 1) * ww];
            let q_dst = &mut view.question_rows[row * qw..(row + 1) * qw];
            if row < take {
                let slot = (self.start + skip + row) % self.capacity;
                let src = &self.rows[slot * n..(slot + 1) * n];
                w_dst.copy_from_slice(&src[wc.clone()]);
                q_dst.copy_from_slice(&src[qc.clone()]);
                view.valid[row] = 1.0;
                view.index[row] = self.info[slot].index;
            } else {
                w_dst.fill(0.0);
                q_dst.fill(0.0);
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
    // As the head's parts read rows: the window part the last columns, the question part the
    // first ones, overlapping.
    const WINDOW_COLUMNS: Range<usize> = 20..ROW;
    const QUESTION_COLUMNS: Range<usize> = 0..25;

    fn view(seconds: usize) -> HeadView {
        HeadView::new(seconds, ROW, WINDOW_COLUMNS, QUESTION_COLUMNS)
    }

    /// Second `index`'s row: value `index + column / 100` in each column.
    fn second(w: &mut Window, index: u64) {
        let row: Vec<f32> = (0..ROW).map(|c| index as f32 + c as f32 / 100.0).collect();
        w.push(
            SecondInfo {
                index,
                audio: index.is_multiple_of(2),
                video: true,
            },
            &row,
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
        let mut view = view(10);
        w.fill(&mut view);
        let (ww, qw) = (WINDOW_COLUMNS.len(), QUESTION_COLUMNS.len());
        for row in 0..10 {
            let at = |c: usize| (15 + row) as f32 + c as f32 / 100.0;
            // Each part's columns, in order, for this second.
            let want_w: Vec<f32> = WINDOW_COLUMNS.map(at).collect();
            let want_q: Vec<f32> = QUESTION_COLUMNS.map(at).collect();
            assert_eq!(&view.window_rows[row * ww..(row + 1) * ww], &want_w[..]);
            assert_eq!(&view.question_rows[row * qw..(row + 1) * qw], &want_q[..]);
            assert_eq!(view.valid[row], 1.0);
        }
    }

    #[test]
    fn a_short_window_is_padded_invalid() {
        let mut w = Window::new(60, ROW);
        for i in 100..103 {
            second(&mut w, i);
        }
        let mut view = view(12);
        w.fill(&mut view);
        assert_eq!(&view.valid[..4], &[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(&view.index[..4], &[100, 101, 102, 102]);
        assert!(
            view.window_rows[3 * WINDOW_COLUMNS.len()..]
                .iter()
                .all(|&x| x == 0.0)
        );
        assert!(
            view.question_rows[3 * QUESTION_COLUMNS.len()..]
                .iter()
                .all(|&x| x == 0.0)
        );
        // Filling again at the same version is a no-op; a new second changes the view.
        let v = view.version;
        w.fill(&mut view);
        assert_eq!(view.version, v);
        second(&mut w, 103);
        w.fill(&mut view);
        assert_eq!(view.valid[3], 1.0);
        assert_eq!(view.question_rows[3 * QUESTION_COLUMNS.len()], 103.0);
    }

    #[test]
    fn a_window_longer_than_the_view_gives_the_newest() {
        let mut w = Window::new(20, ROW);
        for i in 0..20 {
            second(&mut w, i);
        }
        let mut view = view(10);
        w.fill(&mut view);
        assert_eq!(view.index, (10..20).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "past a row of 37")]
    fn columns_past_the_row_are_a_programming_error() {
        let _ = HeadView::new(10, ROW, 20..38, QUESTION_COLUMNS);
    }
}
