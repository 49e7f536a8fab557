//! The rolling window: the last N seconds of features, laid out for the head.
//!
//! **Owns** one row per second — the head's per-second part (`tspm_second`: projections, the
//! second's spatial attention over its merged tokens, keys and values for the question and
//! audio-visual attention; see `models/tspm_parts.py`) — with what each second really had
//! (audio and video present, or stood in for while a source was lost). The rows are computed
//! once, when the second arrives, so a question only pays for the question part.
//!
//! The rows are kept in time order, oldest first, in the layout the head's parts read: the
//! window part's columns of every row contiguous (`[T × window width]`), the question part's
//! likewise, padded to the head's length T with zero rows marked invalid. The head reads the
//! buffers as they are — no copy per question, no second buffer. Every buffer is allocated in
//! [`Window::new`]; once full, [`Window::push`] shifts the held seconds one row towards the
//! start (a memmove of the window, 2.6 MB for 60 s: well under a millisecond, once per second)
//! and writes the new one last, so memory does not grow with uptime. The engine thread owns
//! the window; nothing here is shared.

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

/// The window.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    row_len: usize,
    window_columns: Range<usize>,
    question_columns: Range<usize>,
    /// [T, window width]: the window part's columns of the held seconds' rows, oldest first;
    /// padding rows are zeros.
    window_rows: Vec<f32>,
    /// [T, question width]: the question part's columns, likewise.
    question_rows: Vec<f32>,
    /// [T]: 1 for a row holding a second, 0 for padding.
    valid: Vec<f32>,
    /// [T]: segment index of each row (padding repeats the newest).
    index: Vec<u64>,
    /// [capacity]: the held seconds, oldest first.
    info: Vec<SecondInfo>,
    len: usize,
    version: u64,
}

impl Window {
    /// A window of `capacity` seconds (1 ..= `head_seconds`) for a head of `head_seconds`
    /// rows, of rows of `row_len` values of which the head's window part reads
    /// `window_columns` and its question part `question_columns` (`HeadParts::window_columns`
    /// / `question_columns`). All buffers are allocated now.
    ///
    /// # Panics
    /// If a column range reaches past `row_len` (a programming error: the model layer checks
    /// the widths against the manifest at load).
    pub fn new(
        capacity: usize,
        head_seconds: usize,
        row_len: usize,
        window_columns: Range<usize>,
        question_columns: Range<usize>,
    ) -> Self {
        assert!(
            window_columns.end <= row_len && question_columns.end <= row_len,
            "window columns {window_columns:?} / {question_columns:?} past a row of {row_len}"
        );
        // The engine makes the head at least as long as the window.
        let head_seconds = head_seconds.max(1);
        let capacity = capacity.clamp(1, head_seconds);
        Window {
            capacity,
            row_len,
            window_rows: vec![0.0; head_seconds * window_columns.len()],
            question_rows: vec![0.0; head_seconds * question_columns.len()],
            window_columns,
            question_columns,
            valid: vec![0.0; head_seconds],
            index: vec![0; head_seconds],
            info: vec![SecondInfo::default(); capacity],
            len: 0,
            version: 0,
        }
    }

    /// Seconds it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows the head reads (T): the held seconds, then padding.
    pub fn head_seconds(&self) -> usize {
        self.valid.len()
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
        self.info[..self.len].iter()
    }

    /// The newest second, if any.
    pub fn newest(&self) -> Option<&SecondInfo> {
        self.len.checked_sub(1).map(|i| &self.info[i])
    }

    /// [T × window width]: the head's window part's input.
    pub fn window_rows(&self) -> &[f32] {
        &self.window_rows
    }

    /// [T × question width]: the head's question part's input.
    pub fn question_rows(&self) -> &[f32] {
        &self.question_rows
    }

    /// [T]: 1 for a row holding a second, 0 for padding.
    pub fn valid(&self) -> &[f32] {
        &self.valid
    }

    /// [T]: the segment index of each row (padding repeats the newest).
    pub fn index(&self) -> &[u64] {
        &self.index
    }

    /// Adds one second after the held ones, dropping the oldest when full.
    ///
    /// # Panics
    /// If `row` is not [`Window::row_len`] long (a programming error: the length is fixed by
    /// the model contract, checked at load).
    pub fn push(&mut self, info: SecondInfo, row: &[f32]) {
        assert_eq!(row.len(), self.row_len, "a row of another length");
        let (ww, qw) = (self.window_columns.len(), self.question_columns.len());
        let at = if self.len < self.capacity {
            self.len += 1;
            self.len - 1
        } else {
            let held = self.capacity;
            self.window_rows.copy_within(ww..held * ww, 0);
            self.question_rows.copy_within(qw..held * qw, 0);
            self.info.copy_within(1..held, 0);
            self.index.copy_within(1..held, 0);
            held - 1
        };
        self.window_rows[at * ww..(at + 1) * ww].copy_from_slice(&row[self.window_columns.clone()]);
        self.question_rows[at * qw..(at + 1) * qw]
            .copy_from_slice(&row[self.question_columns.clone()]);
        self.info[at] = info;
        self.valid[at] = 1.0;
        self.index[at..].fill(info.index);
        self.version = self.version.wrapping_add(1);
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

    fn window(capacity: usize, head_seconds: usize) -> Window {
        Window::new(
            capacity,
            head_seconds,
            ROW,
            WINDOW_COLUMNS,
            QUESTION_COLUMNS,
        )
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

    /// Asserts that head row `row` holds second `index`'s columns.
    fn holds(w: &Window, row: usize, index: u64) {
        let at = |c: usize| index as f32 + c as f32 / 100.0;
        let (ww, qw) = (WINDOW_COLUMNS.len(), QUESTION_COLUMNS.len());
        let want_w: Vec<f32> = WINDOW_COLUMNS.map(at).collect();
        let want_q: Vec<f32> = QUESTION_COLUMNS.map(at).collect();
        assert_eq!(&w.window_rows()[row * ww..(row + 1) * ww], &want_w[..]);
        assert_eq!(&w.question_rows()[row * qw..(row + 1) * qw], &want_q[..]);
        assert_eq!(w.valid()[row], 1.0);
        assert_eq!(w.index()[row], index);
    }

    #[test]
    fn keeps_the_newest_seconds_in_time_order() {
        let mut w = window(10, 10);
        for i in 0..25 {
            second(&mut w, i);
        }
        assert_eq!(w.len(), 10);
        let held: Vec<u64> = w.seconds().map(|s| s.index).collect();
        assert_eq!(held, (15..25).collect::<Vec<_>>());
        assert_eq!(w.newest().map(|s| s.index), Some(24));
        for row in 0..10 {
            holds(&w, row, 15 + row as u64);
        }
    }

    #[test]
    fn a_short_window_is_padded_invalid() {
        let mut w = window(60, 12);
        assert_eq!(w.capacity(), 12, "no more seconds than the head reads");
        for i in 100..103 {
            second(&mut w, i);
        }
        assert_eq!(&w.valid()[..4], &[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(&w.index()[..4], &[100, 101, 102, 102]);
        assert!(
            w.window_rows()[3 * WINDOW_COLUMNS.len()..]
                .iter()
                .all(|&x| x == 0.0)
        );
        assert!(
            w.question_rows()[3 * QUESTION_COLUMNS.len()..]
                .iter()
                .all(|&x| x == 0.0)
        );
        let v = w.version();
        second(&mut w, 103);
        assert_ne!(w.version(), v);
        holds(&w, 3, 103);
        assert_eq!(w.index()[11], 103, "padding repeats the newest");
    }

    #[test]
    fn a_window_shorter_than_the_head_pads_after_it_when_full() {
        let mut w = window(5, 10);
        for i in 0..8 {
            second(&mut w, i);
        }
        for row in 0..5 {
            holds(&w, row, 3 + row as u64);
        }
        assert!(w.valid()[5..].iter().all(|&v| v == 0.0));
        assert!(w.index()[5..].iter().all(|&i| i == 7));
    }

    #[test]
    #[should_panic(expected = "past a row of 37")]
    fn columns_past_the_row_are_a_programming_error() {
        let _ = Window::new(10, 10, ROW, 20..38, QUESTION_COLUMNS);
    }
}
