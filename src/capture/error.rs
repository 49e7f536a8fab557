//! The errors capture reports. Callers branch on them (a missing stream is a user error, a
//! stall or a decoder error is a broken file), so they are a typed enum; GStreamer's own
//! error objects are turned into strings here and never leave `capture`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Which of the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The 16 kHz mono audio stream.
    Audio,
    /// The RGB video stream.
    Video,
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Audio => "audio",
            StreamKind::Video => "video",
        })
    }
}

/// Why capture could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// `gst_init` failed (no usable GStreamer installation).
    #[error("initialising GStreamer")]
    Init {
        /// GStreamer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The media file does not exist.
    #[error("{}: no such file", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The file has no audio stream.
    #[error("{}: the file has no audio stream; an audio and a video stream are both expected", path.display())]
    NoAudioStream {
        /// The file.
        path: PathBuf,
    },
    /// The file has no video stream.
    #[error("{}: the file has no video stream; an audio and a video stream are both expected", path.display())]
    NoVideoStream {
        /// The file.
        path: PathBuf,
    },
    /// The file has a stream of the kind but no installed decoder can decode it.
    #[error("{}: no GStreamer decoder is installed for its {kind} stream ({caps})", path.display())]
    MissingDecoder {
        /// The file.
        path: PathBuf,
        /// Which stream cannot be decoded.
        kind: StreamKind,
        /// The stream's caps, e.g. `video/x-h265, …`.
        caps: String,
    },
    /// A GStreamer element the pipeline needs is not installed.
    #[error("GStreamer element `{factory}` is not installed (gstreamer1.0-plugins-base/-good)")]
    MissingElement {
        /// The element factory name, e.g. `audioresample`.
        factory: String,
    },
    /// A source pipeline description does not parse or has no free source pad.
    #[error("invalid {kind} source description {description:?}: {message}")]
    Description {
        /// Which stream the description was for.
        kind: StreamKind,
        /// The description as given.
        description: String,
        /// What is wrong with it.
        message: String,
    },
    /// An element of the running pipeline posted an error: a corrupt or truncated file, an
    /// unsupported format, a device that went away.
    #[error("GStreamer element `{element}` failed: {message}")]
    Element {
        /// The name of the element that posted the error (e.g. `decode`, `matroskademux0`).
        element: String,
        /// GStreamer's message.
        message: String,
        /// GStreamer's debug details (source location, element path), for logs.
        debug: Option<String>,
    },
    /// A decoded stream could not be connected to its conversion branch.
    #[error("connecting the decoded {kind} stream: {message}")]
    Link {
        /// Which stream.
        kind: StreamKind,
        /// GStreamer's reason.
        message: String,
    },
    /// The pipeline refused to start without saying why on the bus.
    #[error("the capture pipeline could not be started")]
    Start,
    /// Neither data nor end of stream arrived for the configured stall timeout.
    #[error("no data and no end of stream for {waited:?}: the capture pipeline is stuck")]
    Stalled {
        /// How long `recv` waited.
        waited: Duration,
    },
    /// The pipeline's channels closed without an end of stream.
    #[error("the capture pipeline went away without an end of stream")]
    Disconnected,
    /// `recv` was called again after it had returned an error.
    #[error("capture has already stopped after an error")]
    Stopped,
}
