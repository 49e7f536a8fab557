//! Timestamps shared by capture, the segmenter and the feature files.
//!
//! GStreamer's `ClockTime` never leaves `capture`; it becomes a [`Pts`] at its edge.

use std::fmt;

/// A presentation timestamp in nanoseconds from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pts(pub u64);

impl Pts {
    /// Nanoseconds in one second.
    pub const SECOND_NS: u64 = 1_000_000_000;

    /// The timestamp as seconds, for printing and for feature files.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / Self::SECOND_NS as f64
    }

    /// The timestamp in whole nanoseconds.
    pub fn as_nanos(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Pts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}
