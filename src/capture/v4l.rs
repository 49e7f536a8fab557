//! A direct V4L2 camera backend (cargo feature `v4l`), for boards where the GStreamer `v4l2src`
//! plugin is not wanted: the `v4l` crate streams a `/dev/videoN` node with mmap buffers, and
//! frames are converted to RGB here, under the same supervisor as the GStreamer sources, with
//! the same status, backoff and drop counting. Selected by `capture.video = "v4l:/dev/video0"`.
//!
//! **Owns** one camera device per run: format negotiation, the mmap stream, the conversion
//! to the packed RGB [`Frame`] the segmenter expects (what the GStreamer video branch
//! delivers: RGB, at most [`V4lConfig::max_frame_size`], at [`V4lConfig::video_fps`]), and
//! the frame buffers it hands out. Runs on the source's
//! supervisor thread; nothing else touches the device.
//!
//! **Formats.** Of what the device offers, it takes the size whose output (after shrinking by
//! a whole factor to fit the maximum size, averaging each block of pixels) is largest, then
//! the format that is cheapest to convert: `RGB3`, `BGR3`, `YUYV`, `UYVY` (BT.601 limited
//! range, what UVC cameras send) and, last, `MJPG` (decoded by the `image` crate). The frame
//! interval is the slowest the device offers that still reaches `video_fps`; frames beyond
//! `video_fps` are skipped before conversion, as `videorate` does in the GStreamer branch.
//!
//! **Never blocks.** The device is polled in 100 ms steps, so a stop request or a camera that
//! goes quiet ([`V4lConfig::stall_timeout`]) is noticed; frames go to the consumer with
//! `try_send`, and a full channel drops the frame and counts it. A missing device, an unplug
//! (`ENODEV`) or any other device error ends the run with an error that names the device,
//! and the supervisor reconnects with backoff.
//!
//! **Timestamps** are the driver's buffer timestamps (exact spacing within a run), anchored on
//! the daemon's [`LiveClock`] at the first frame, with the clock itself as the fallback when
//! a driver gives none; they always increase within a run.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use image::ImageDecoder;
use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::{CaptureStream, Stream};
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC, Fraction};

use super::live::{Ended, Play, Shared, Supervised, mark_playing};
use super::{
    Backoff, CaptureError, Captured, FrameRate, FrameSize, LiveClock, LiveSource, Recycler,
    Restart, sink,
};
use crate::pts::Pts;
use crate::segmenter::Frame;

/// Mmap buffers asked of the driver: one held by us while converting, the rest filling.
const BUFFERS: u32 = 4;
/// How long one wait for a frame lasts before the stop request and the stall are checked.
const POLL_MS: i32 = 100;
/// Device timestamps further than this from the daemon's clock are re-anchored.
const MAX_SKEW_NS: u64 = Pts::SECOND_NS;

/// How to run a V4L2 camera.
#[derive(Debug, Clone)]
pub struct V4lConfig {
    /// Name for logs and status.
    pub name: String,
    /// The device node, e.g. `/dev/video0` or `/dev/v4l/by-id/usb-…-video-index0`.
    pub device: PathBuf,
    /// Frames per second delivered (the device runs at the slowest rate that reaches it).
    pub video_fps: FrameRate,
    /// Frames larger than this are shrunk by a whole factor to fit; `None` keeps the size.
    pub max_frame_size: Option<FrameSize>,
    /// A device that delivers no usable frame for this long is closed and opened again.
    pub stall_timeout: Duration,
    /// Waits between restarts.
    pub backoff: Backoff,
}

/// Starts a V4L2 camera under the live-source supervisor.
pub fn spawn(
    cfg: V4lConfig,
    clock: LiveClock,
    tx: Sender<Captured>,
) -> Result<LiveSource, CaptureError> {
    let counters = Arc::new(sink::Counters::default());
    let (frame_pool, pool) = crossbeam_channel::bounded(4);
    // Audio never comes from this source; the pool only satisfies the recycler's shape.
    let (audio_pool, _) = crossbeam_channel::bounded(1);
    let runner = V4lRunner {
        cfg: cfg.clone(),
        clock,
        tx,
        pool,
        counters: Arc::clone(&counters),
    };
    LiveSource::supervise(
        Supervised {
            name: cfg.name,
            description: format!("v4l:{}", cfg.device.display()),
            provides: (false, true),
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

struct V4lRunner {
    cfg: V4lConfig,
    clock: LiveClock,
    tx: Sender<Captured>,
    pool: Receiver<Vec<u8>>,
    counters: Arc<sink::Counters>,
}

impl Play for V4lRunner {
    fn play_once(&mut self, shared: &Shared, stop: &Receiver<()>) -> Ended {
        match self.run(shared, stop) {
            Ok(ended) => ended,
            Err(e) => Ended::Failed(format!("V4L2 device {:?}: {e:#}", self.cfg.device)),
        }
    }
}

impl V4lRunner {
    /// One run: open, negotiate, stream until stopped or lost.
    fn run(&mut self, shared: &Shared, stop: &Receiver<()>) -> anyhow::Result<Ended> {
        let dev = Device::with_path(&self.cfg.device).context("opening")?;
        let caps = dev.query_caps().context("querying capabilities")?;
        if !caps
            .capabilities
            .contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING)
        {
            anyhow::bail!(
                "{} ({}) is not a video capture node with streaming I/O (a UVC camera's second \
                 node carries metadata: try the first one)",
                caps.card,
                caps.driver
            );
        }
        let negotiated = negotiate(&dev, &self.cfg)?;
        let mut converter = Converter::new(negotiated.layout, negotiated.factor);
        let (out_width_px, out_height_px) = converter.out_size();
        tracing::info!(
            source = %self.cfg.name,
            camera = %caps.card,
            format = %negotiated.layout.format.name(),
            width = negotiated.layout.width_px,
            height = negotiated.layout.height_px,
            fps = negotiated.fps.unwrap_or(f64::NAN),
            out_width = out_width_px,
            out_height = out_height_px,
            "camera format"
        );

        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, BUFFERS)
            .context("allocating mmap buffers")?;
        // `next()` queues the buffer it returned last time (buffer 0 on its first call) and
        // then waits for one without a timeout (with one, a timeout leaves it re-queueing a
        // queued buffer). So queue the others here, start, and call `next()` only once poll
        // says a frame is ready: every wait is ours and bounded.
        for index in 1..BUFFERS as usize {
            match CaptureStream::queue(&mut stream, index) {
                Ok(()) => {}
                // The driver gave fewer buffers than asked; two are enough.
                Err(e) if index >= 2 && e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e).context("queueing buffers"),
            }
        }
        stream.start().context("starting the stream")?;
        let handle = stream.handle();

        let mut timeline = Timeline::default();
        let mut decimator = Decimator::new(self.cfg.video_fps);
        let mut last_usable = Instant::now();
        let mut last_problem: Option<String> = None;
        let mut playing = false;
        loop {
            match stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(()) | Err(TryRecvError::Disconnected) => return Ok(Ended::Stop),
            }
            if last_usable.elapsed() >= self.cfg.stall_timeout {
                let waited = self.cfg.stall_timeout.as_secs_f64();
                return Ok(Ended::Failed(match last_problem {
                    Some(problem) => format!(
                        "V4L2 device {:?}: no usable frame for {waited:.1} s (last: {problem})",
                        self.cfg.device
                    ),
                    None => format!(
                        "V4L2 device {:?}: no frames for {waited:.1} s",
                        self.cfg.device
                    ),
                }));
            }
            match handle.poll(libc::POLLIN, POLL_MS) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("waiting for a frame"),
            }
            // Readable (or an error, e.g. unplugged: then `next()` fails with it).
            let (buf, meta) = stream.next().context("reading a frame")?;
            if meta.flags.contains(BufferFlags::ERROR) {
                last_problem = Some("the driver marked the frame corrupt".into());
                continue;
            }
            let now_ns = self.clock.now_ns();
            let device_ns = timestamp_ns(meta.timestamp.sec, meta.timestamp.usec);
            let pts = Pts(timeline.pts(now_ns, device_ns));
            if !decimator.take(pts.0) {
                last_usable = Instant::now();
                continue;
            }
            let used = meta.bytesused as usize;
            let bytes = if used > 0 && used <= buf.len() {
                &buf[..used]
            } else {
                buf
            };
            let mut data = self.pool.try_recv().unwrap_or_default();
            if let Err(e) = converter.convert(bytes, &mut data) {
                last_problem = Some(e.to_string());
                continue;
            }
            last_usable = Instant::now();
            let frame = Frame {
                pts,
                width_px: out_width_px,
                height_px: out_height_px,
                stride_bytes: 3 * out_width_px as usize,
                data,
            };
            self.counters.video_frames.fetch_add(1, Ordering::Relaxed);
            match self.tx.try_send(Captured::Video(frame)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.counters
                        .dropped_video_frames
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return Ok(Ended::Stop),
            }
            if !playing {
                playing = true;
                mark_playing(shared, &self.cfg.name);
            }
        }
    }
}

/// A driver timestamp in nanoseconds, or `None` if it has none (all zero) or a negative one.
fn timestamp_ns(sec: i64, usec: i64) -> Option<u64> {
    let ns = u64::try_from(sec)
        .ok()?
        .checked_mul(Pts::SECOND_NS)?
        .checked_add(u64::try_from(usec).ok()?.checked_mul(1_000)?)?;
    (ns > 0).then_some(ns)
}

/// The pixel formats this backend converts, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PixelFormat {
    /// Packed R, G, B.
    Rgb3,
    /// Packed B, G, R.
    Bgr3,
    /// 4:2:2 Y0 U Y1 V.
    Yuyv,
    /// 4:2:2 U Y0 V Y1.
    Uyvy,
    /// Motion JPEG: one JPEG image per frame.
    Mjpg,
}

impl PixelFormat {
    const ALL: [PixelFormat; 5] = [
        PixelFormat::Rgb3,
        PixelFormat::Bgr3,
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Mjpg,
    ];

    fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Rgb3 => *b"RGB3",
            PixelFormat::Bgr3 => *b"BGR3",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Uyvy => *b"UYVY",
            PixelFormat::Mjpg => *b"MJPG",
        }
    }

    fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb3 => "RGB3",
            PixelFormat::Bgr3 => "BGR3",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Uyvy => "UYVY",
            PixelFormat::Mjpg => "MJPG",
        }
    }

    fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    /// Bytes of one row of `width_px` pixels without padding (`None`: compressed).
    fn row_bytes(self, width_px: u32) -> Option<usize> {
        let w = width_px as usize;
        match self {
            PixelFormat::Rgb3 | PixelFormat::Bgr3 => Some(3 * w),
            // Two pixels share four bytes; an odd last pixel still takes a whole pair.
            PixelFormat::Yuyv | PixelFormat::Uyvy => Some(w.div_ceil(2) * 4),
            PixelFormat::Mjpg => None,
        }
    }
}

/// A frame size in pixels as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    width_px: u32,
    height_px: u32,
}

/// The whole factor that shrinks `size` to fit `max` (1: it fits already).
fn shrink_factor(size: Size, max: Option<FrameSize>) -> u32 {
    let Some(max) = max else { return 1 };
    let w = size.width_px.div_ceil(max.width_px.max(1));
    let h = size.height_px.div_ceil(max.height_px.max(1));
    w.max(h).max(1)
}

/// What [`choose`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Choice {
    format: PixelFormat,
    size: Size,
    factor: u32,
}

/// Picks the format and size: the largest output after shrinking to fit `max`, then the
/// cheapest format, then the smallest device size (the least to read and convert).
fn choose(offers: &[(PixelFormat, Vec<Size>)], max: Option<FrameSize>) -> Option<Choice> {
    offers
        .iter()
        .flat_map(|(format, sizes)| {
            sizes.iter().map(move |&size| Choice {
                format: *format,
                size,
                factor: shrink_factor(size, max),
            })
        })
        .filter(|c| c.size.width_px >= c.factor && c.size.height_px >= c.factor)
        .min_by_key(|c| {
            let out =
                u64::from(c.size.width_px / c.factor) * u64::from(c.size.height_px / c.factor);
            let area = u64::from(c.size.width_px) * u64::from(c.size.height_px);
            (std::cmp::Reverse(out), c.format, area)
        })
}

/// The sizes worth trying from a stepwise or continuous range: the largest, and the largest
/// that fits `max` with the largest's aspect ratio.
fn stepwise_sizes(
    (min_w, max_w, step_w): (u32, u32, u32),
    (min_h, max_h, step_h): (u32, u32, u32),
    max: Option<FrameSize>,
) -> Vec<Size> {
    let largest = Size {
        width_px: max_w,
        height_px: max_h,
    };
    let Some(fit) = max else {
        return vec![largest];
    };
    let snap = |v: u32, min: u32, hi: u32, step: u32| {
        let v = v.clamp(min, hi);
        min + (v - min) / step.max(1) * step.max(1)
    };
    // Scale both sides by the same ratio so the aspect ratio stays.
    let (num, den) = if u64::from(max_w) * u64::from(fit.height_px)
        >= u64::from(max_h) * u64::from(fit.width_px)
    {
        (fit.width_px, max_w)
    } else {
        (fit.height_px, max_h)
    };
    let scale = |v: u32| (u64::from(v) * u64::from(num) / u64::from(den.max(1))) as u32;
    let fitted = Size {
        width_px: snap(scale(max_w), min_w, max_w, step_w),
        height_px: snap(scale(max_h), min_h, max_h, step_h),
    };
    if fitted == largest {
        vec![largest]
    } else {
        vec![largest, fitted]
    }
}

/// The frame interval to ask for: the slowest offered that still reaches `fps`, else the
/// fastest offered. `None` when the device lists no discrete intervals.
fn choose_interval(offered: &[(u32, u32)], fps: FrameRate) -> Option<(u32, u32)> {
    // An interval n/d seconds is d/n frames per second; compare d/n with num/den exactly.
    let rate = |(n, d): (u32, u32)| (u64::from(d), u64::from(n));
    let reaches = |i: (u32, u32)| {
        let (d, n) = rate(i);
        d * u64::from(fps.den) >= u64::from(fps.num) * n
    };
    let slower = |a: (u32, u32), b: (u32, u32)| {
        let ((da, na), (db, nb)) = (rate(a), rate(b));
        da * nb < db * na
    };
    let valid = offered.iter().copied().filter(|&(n, d)| n > 0 && d > 0);
    let reaching = valid.clone().filter(|&i| reaches(i));
    reaching
        .reduce(|best, i| if slower(i, best) { i } else { best })
        .or_else(|| valid.reduce(|best, i| if slower(best, i) { i } else { best }))
}

/// What the device agreed to.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    layout: Layout,
    factor: u32,
    /// Frames per second the device says it runs at, for the log.
    fps: Option<f64>,
}

/// Asks the device for the best format, size and frame interval it offers.
fn negotiate(dev: &Device, cfg: &V4lConfig) -> anyhow::Result<Negotiated> {
    let formats = dev.enum_formats().context("listing formats")?;
    let current = dev.format().context("reading the current format")?;
    let current_size = Size {
        width_px: current.width,
        height_px: current.height,
    };
    let mut offers = Vec::new();
    for desc in &formats {
        let Some(format) = PixelFormat::from_fourcc(desc.fourcc.repr) else {
            continue;
        };
        let mut sizes = Vec::new();
        // Drivers that cannot list sizes take any and adjust it: offer the current one.
        for size in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
            match size.size {
                FrameSizeEnum::Discrete(d) => sizes.push(Size {
                    width_px: d.width,
                    height_px: d.height,
                }),
                FrameSizeEnum::Stepwise(s) => sizes.extend(stepwise_sizes(
                    (s.min_width, s.max_width, s.step_width),
                    (s.min_height, s.max_height, s.step_height),
                    cfg.max_frame_size,
                )),
            }
        }
        if sizes.is_empty() {
            sizes.push(current_size);
        }
        offers.push((format, sizes));
    }
    let Some(choice) = choose(&offers, cfg.max_frame_size) else {
        let offered: Vec<String> = formats.iter().map(|d| d.fourcc.to_string()).collect();
        anyhow::bail!(
            "it offers none of the pixel formats this backend converts (RGB3, BGR3, YUYV, UYVY, \
             MJPG) but {}; use a GStreamer description (v4l2src device=…) instead",
            offered.join(", ")
        );
    };
    let wanted = Format::new(
        choice.size.width_px,
        choice.size.height_px,
        FourCC::new(&choice.format.fourcc()),
    );
    let got = dev.set_format(&wanted).context("setting the format")?;
    // The driver may adjust what it cannot do; take what it reports, if it is convertible.
    let format = PixelFormat::from_fourcc(got.fourcc.repr).with_context(|| {
        format!(
            "asked for {} but the driver set {}",
            choice.format.name(),
            got.fourcc
        )
    })?;
    let layout = Layout::new(format, got.width, got.height, got.stride)?;
    let factor = shrink_factor(
        Size {
            width_px: got.width,
            height_px: got.height,
        },
        cfg.max_frame_size,
    );

    let intervals: Vec<(u32, u32)> = dev
        .enum_frameintervals(got.fourcc, got.width, got.height)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.interval {
            FrameIntervalEnum::Discrete(f) => Some((f.numerator, f.denominator)),
            FrameIntervalEnum::Stepwise(_) => None,
        })
        .collect();
    // Without a list (a range, or none), ask for the rate itself and let the driver round.
    let (num, den) = choose_interval(&intervals, cfg.video_fps)
        .unwrap_or((cfg.video_fps.den, cfg.video_fps.num));
    // Not every driver sets the rate (S_PARM is optional); the decimator copes either way.
    let fps = dev
        .set_params(&Parameters::new(Fraction::new(num, den)))
        .ok()
        .filter(|p| p.interval.numerator > 0)
        .map(|p| f64::from(p.interval.denominator) / f64::from(p.interval.numerator));
    Ok(Negotiated {
        layout,
        factor,
        fps,
    })
}

/// How the device lays out one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    format: PixelFormat,
    width_px: u32,
    height_px: u32,
    /// Bytes from one row to the next (raw formats).
    stride_bytes: usize,
}

impl Layout {
    fn new(
        format: PixelFormat,
        width_px: u32,
        height_px: u32,
        stride: u32,
    ) -> anyhow::Result<Self> {
        if width_px == 0 || height_px == 0 {
            anyhow::bail!("the driver set an empty frame size {width_px}x{height_px}");
        }
        let row = format.row_bytes(width_px).unwrap_or(0);
        // Some drivers leave bytesperline 0 for packed formats: then rows are unpadded.
        let stride_bytes = (stride as usize).max(row);
        Ok(Layout {
            format,
            width_px,
            height_px,
            stride_bytes,
        })
    }
}

/// Why one frame could not be converted (the frame is skipped; the device goes on).
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("a frame of {got} bytes, {need} expected for its format")]
    Short { need: usize, got: usize },
    #[error("decoding an MJPG frame")]
    Jpeg(#[source] image::ImageError),
    #[error("an MJPG frame of {got_w}x{got_h} ({color:?}), {want_w}x{want_h} RGB expected")]
    JpegShape {
        got_w: u32,
        got_h: u32,
        color: image::ColorType,
        want_w: u32,
        want_h: u32,
    },
}

/// Turns device frames into packed RGB, shrunk by a whole factor (each output pixel is the
/// mean of a `factor × factor` block). Its scratch rows are allocated once per run.
struct Converter {
    layout: Layout,
    factor: u32,
    /// One source row as RGB.
    row: Vec<u8>,
    /// Sums of one output row (factor > 1).
    acc: Vec<u32>,
    /// A whole decoded MJPG image, RGB, unpadded.
    decoded: Vec<u8>,
}

impl Converter {
    fn new(layout: Layout, factor: u32) -> Self {
        let factor = factor.max(1);
        let w = layout.width_px as usize;
        let out_w = (layout.width_px / factor) as usize;
        Converter {
            layout,
            factor,
            row: vec![0; 3 * w],
            acc: vec![0; if factor > 1 { 3 * out_w } else { 0 }],
            decoded: Vec::new(),
        }
    }

    /// Width and height of the RGB frames out.
    fn out_size(&self) -> (u32, u32) {
        (
            self.layout.width_px / self.factor,
            self.layout.height_px / self.factor,
        )
    }

    /// Converts one frame into `out` (cleared first; `3 · width` bytes per row, no padding).
    fn convert(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let l = self.layout;
        if l.format == PixelFormat::Mjpg && self.factor == 1 {
            return decode_jpeg(src, l, out);
        }
        let (format, stride) = if l.format == PixelFormat::Mjpg {
            decode_jpeg(src, l, &mut self.decoded)?;
            (PixelFormat::Rgb3, 3 * l.width_px as usize)
        } else {
            let row = l.format.row_bytes(l.width_px).unwrap_or(0);
            let need = l.stride_bytes * (l.height_px as usize - 1) + row;
            if src.len() < need {
                return Err(FrameError::Short {
                    need,
                    got: src.len(),
                });
            }
            (l.format, l.stride_bytes)
        };
        let src = if l.format == PixelFormat::Mjpg {
            &self.decoded[..]
        } else {
            src
        };
        let (out_w, out_h) = self.out_size();
        let (out_w, out_h) = (out_w as usize, out_h as usize);
        out.clear();
        out.resize(3 * out_w * out_h, 0);
        let w = l.width_px as usize;
        if self.factor == 1 {
            for (y, dst) in out.chunks_exact_mut(3 * w).enumerate() {
                row_to_rgb(format, &src[y * stride..], w, dst);
            }
            return Ok(());
        }
        let k = self.factor as usize;
        let area = (k * k) as u32;
        for (oy, dst) in out.chunks_exact_mut(3 * out_w).enumerate() {
            self.acc.fill(0);
            for dy in 0..k {
                let y = oy * k + dy;
                row_to_rgb(format, &src[y * stride..], w, &mut self.row);
                for (ox, sum) in self.acc.chunks_exact_mut(3).enumerate() {
                    for px in self.row[3 * ox * k..3 * (ox + 1) * k].chunks_exact(3) {
                        sum[0] += u32::from(px[0]);
                        sum[1] += u32::from(px[1]);
                        sum[2] += u32::from(px[2]);
                    }
                }
            }
            for (d, &s) in dst.iter_mut().zip(&self.acc) {
                *d = ((s + area / 2) / area) as u8;
            }
        }
        Ok(())
    }
}

/// Decodes a JPEG into `out` as unpadded RGB; it must have the negotiated size. (The decoder
/// allocates its own scratch per frame; only the frames kept at `video_fps` are decoded.)
fn decode_jpeg(src: &[u8], layout: Layout, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let decoder =
        image::codecs::jpeg::JpegDecoder::new(io::Cursor::new(src)).map_err(FrameError::Jpeg)?;
    let (w, h) = decoder.dimensions();
    let color = decoder.color_type();
    if (w, h) != (layout.width_px, layout.height_px) || color != image::ColorType::Rgb8 {
        return Err(FrameError::JpegShape {
            got_w: w,
            got_h: h,
            color,
            want_w: layout.width_px,
            want_h: layout.height_px,
        });
    }
    out.clear();
    out.resize(3 * w as usize * h as usize, 0);
    decoder.read_image(out).map_err(FrameError::Jpeg)
}

/// Converts the first `width` pixels of `src` (one row of `format`) into packed RGB in `out`
/// (`3 · width` bytes).
fn row_to_rgb(format: PixelFormat, src: &[u8], width: usize, out: &mut [u8]) {
    let out = &mut out[..3 * width];
    match format {
        PixelFormat::Rgb3 | PixelFormat::Mjpg => out.copy_from_slice(&src[..3 * width]),
        PixelFormat::Bgr3 => {
            for (d, s) in out.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
                d.copy_from_slice(&[s[2], s[1], s[0]]);
            }
        }
        PixelFormat::Yuyv | PixelFormat::Uyvy => {
            // (Y0, U, Y1, V) positions in each four-byte pair.
            let (y0, u, y1, v) = if format == PixelFormat::Yuyv {
                (0, 1, 2, 3)
            } else {
                (1, 0, 3, 2)
            };
            for (d, s) in out.chunks_mut(6).zip(src.chunks_exact(4)) {
                d[..3].copy_from_slice(&yuv_to_rgb(s[y0], s[u], s[v]));
                if d.len() == 6 {
                    d[3..].copy_from_slice(&yuv_to_rgb(s[y1], s[u], s[v]));
                }
            }
        }
    }
}

/// BT.601 limited-range Y'CbCr to R'G'B' (the integer form of ITU-R BT.601: Y in 16..=235,
/// Cb and Cr in 16..=240 around 128), what UVC cameras send.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clip(c + 409 * e),
        clip(c - 100 * d - 208 * e),
        clip(c + 516 * d),
    ]
}

/// Places frames on the daemon's timeline: the driver's timestamps (exact spacing) anchored
/// at the clock's time of the first frame, the clock alone when the driver gives none.
#[derive(Debug, Default)]
struct Timeline {
    /// (clock ns, device ns) of the anchor frame.
    anchor: Option<(u64, u64)>,
    last: Option<u64>,
}

impl Timeline {
    /// The pts of a frame dequeued at `now_ns` with the driver's timestamp `device_ns`;
    /// strictly increasing.
    fn pts(&mut self, now_ns: u64, device_ns: Option<u64>) -> u64 {
        let pts = match (self.anchor, device_ns) {
            (Some((clock0, dev0)), Some(d))
                if d >= dev0 && (clock0 + (d - dev0)).abs_diff(now_ns) <= MAX_SKEW_NS =>
            {
                clock0 + (d - dev0)
            }
            // The first frame, or a device clock that jumped: anchor again.
            (_, Some(d)) => {
                self.anchor = Some((now_ns, d));
                now_ns
            }
            (_, None) => now_ns,
        };
        let pts = match self.last {
            Some(last) if pts <= last => last + 1,
            _ => pts,
        };
        self.last = Some(pts);
        pts
    }
}

/// Keeps `fps` frames per second of a faster device, as `videorate` does before conversion.
#[derive(Debug)]
struct Decimator {
    period_ns: u64,
    next_due: Option<u64>,
    /// The pts of the previous frame seen, kept or not.
    last_seen: Option<u64>,
}

impl Decimator {
    fn new(fps: FrameRate) -> Self {
        let period_ns = Pts::SECOND_NS * u64::from(fps.den) / u64::from(fps.num.max(1));
        Decimator {
            period_ns,
            next_due: None,
            last_seen: None,
        }
    }

    /// Whether the frame at `pts_ns` is kept.
    fn take(&mut self, pts_ns: u64) -> bool {
        // A frame a little early still counts, so a device running at exactly `fps` with some
        // jitter keeps every frame: up to a quarter period, and less than half the device's
        // own spacing, so a fast device gives the frame nearest the due time, not one before.
        let spacing = self.last_seen.map(|last| pts_ns.saturating_sub(last));
        self.last_seen = Some(pts_ns);
        let early = spacing.map_or(self.period_ns / 4, |s| (s / 2).min(self.period_ns / 4));
        match self.next_due {
            Some(due) if pts_ns + early < due => false,
            Some(due) => {
                let next = due + self.period_ns;
                // After a gap, start the grid again from this frame.
                self.next_due = Some(if next + early <= pts_ns {
                    pts_ns + self.period_ns
                } else {
                    next
                });
                true
            }
            None => {
                self.next_due = Some(pts_ns + self.period_ns);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::SourceState;

    fn size(width_px: u32, height_px: u32) -> Size {
        Size {
            width_px,
            height_px,
        }
    }

    fn fit(px: u32) -> Option<FrameSize> {
        Some(FrameSize {
            width_px: px,
            height_px: px,
        })
    }

    #[test]
    fn yuv_to_rgb_matches_hand_computed_bt601_values() {
        // c = 298·(Y−16), d = U−128, e = V−128; R = (c + 409e + 128) >> 8, …
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        // 298·219 = 65262; (65262 + 128) >> 8 = 255.
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        // 298·112 = 33376; (33376 + 128) >> 8 = 130.
        assert_eq!(yuv_to_rgb(128, 128, 128), [130, 130, 130]);
        // BT.601 red (Y 81, Cb 90, Cr 240): c = 19370, d = −38, e = 112.
        // R = (19370 + 45808 + 128) >> 8 = 255; G = (19370 + 3800 − 23296 + 128) >> 8 = 0;
        // B = (19370 − 19608 + 128) >> 8 = −1 → 0.
        assert_eq!(yuv_to_rgb(81, 90, 240), [255, 0, 0]);
        // Y 100, Cb 150, Cr 90: c = 25032, d = 22, e = −38.
        // R = (25032 − 15542 + 128) >> 8 = 37; G = (25032 − 2200 + 7904 + 128) >> 8 = 120;
        // B = (25032 + 11352 + 128) >> 8 = 142.
        assert_eq!(yuv_to_rgb(100, 150, 90), [37, 120, 142]);
    }

    #[test]
    fn yuyv_and_uyvy_rows_share_chroma_between_two_pixels() {
        let mut out = [0u8; 9];
        // Black then white, grey chroma; a third (odd) pixel from a pair of its own.
        row_to_rgb(
            PixelFormat::Yuyv,
            &[16, 128, 235, 128, 81, 90, 0, 240],
            3,
            &mut out,
        );
        assert_eq!(out, [0, 0, 0, 255, 255, 255, 255, 0, 0]);
        let mut out = [0u8; 6];
        row_to_rgb(PixelFormat::Uyvy, &[90, 81, 240, 16], 2, &mut out);
        // The second pixel: c = 0, d = −38, e = 112; R = (45808 + 128) >> 8 = 179.
        assert_eq!(out, [255, 0, 0, 179, 0, 0]);
        row_to_rgb(PixelFormat::Bgr3, &[1, 2, 3, 4, 5, 6], 2, &mut out);
        assert_eq!(out, [3, 2, 1, 6, 5, 4]);
    }

    #[test]
    fn a_padded_yuyv_frame_becomes_unpadded_rgb() {
        // 2x2 YUYV with 4 bytes of padding per row (stride 8).
        let layout = Layout::new(PixelFormat::Yuyv, 2, 2, 8).unwrap();
        let mut c = Converter::new(layout, 1);
        let src = [
            16, 128, 235, 128, 9, 9, 9, 9, //
            235, 128, 16, 128, 9, 9, 9, 9,
        ];
        let mut out = Vec::new();
        c.convert(&src, &mut out).unwrap();
        assert_eq!(c.out_size(), (2, 2));
        assert_eq!(
            out,
            [0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0],
            "rows are 6 bytes, padding gone"
        );
        // The last row may end without its padding; one byte less is too short.
        c.convert(&src[..12], &mut out).unwrap();
        let err = c.convert(&src[..11], &mut out).unwrap_err().to_string();
        assert_eq!(err, "a frame of 11 bytes, 12 expected for its format");
    }

    #[test]
    fn shrinking_averages_each_block() {
        // 4x2 RGB, factor 2 -> 2x1; each output pixel is the rounded mean of a 2x2 block.
        let layout = Layout::new(PixelFormat::Rgb3, 4, 2, 0).unwrap();
        let mut c = Converter::new(layout, 2);
        #[rustfmt::skip]
        let src = [
            0, 0, 0,   10, 20, 30,   100, 0, 0,   200, 0, 0,
            1, 1, 1,   10, 20, 31,   100, 0, 0,   201, 255, 0,
        ];
        let mut out = Vec::new();
        c.convert(&src, &mut out).unwrap();
        assert_eq!(c.out_size(), (2, 1));
        // (0+10+1+10)/4 = 5.25 → 5; (0+20+1+20)/4 = 10.25 → 10; (0+30+1+31)/4 = 15.5 → 16;
        // (100+200+100+201)/4 = 150.25 → 150; 255/4 = 63.75 → 64; 0.
        assert_eq!(out, [5, 10, 16, 150, 64, 0]);
    }

    #[test]
    fn an_mjpg_frame_decodes_to_rgb() {
        // A flat colour survives JPEG almost exactly.
        let (w, h) = (32u32, 16u32);
        let rgb: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 40, 90]).collect();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        let layout = Layout::new(PixelFormat::Mjpg, w, h, 0).unwrap();
        let mut c = Converter::new(layout, 2);
        let mut out = Vec::new();
        c.convert(&jpeg, &mut out).unwrap();
        assert_eq!(c.out_size(), (16, 8));
        assert_eq!(out.len(), 16 * 8 * 3);
        for px in out.chunks_exact(3) {
            for (got, want) in px.iter().zip([200u8, 40, 90]) {
                assert!(got.abs_diff(want) <= 4, "{px:?}");
            }
        }
        // A frame of another size, or not a JPEG, is an error for that frame only.
        let other = Layout::new(PixelFormat::Mjpg, 64, 16, 0).unwrap();
        let msg = Converter::new(other, 1)
            .convert(&jpeg, &mut out)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("32x16"), "{msg}");
        assert!(c.convert(b"not a jpeg", &mut out).is_err());
    }

    #[test]
    fn the_choice_prefers_the_largest_output_then_the_cheapest_format() {
        let vga = size(640, 480);
        let hd = size(1280, 720);
        let full_hd = size(1920, 1080);
        // A typical UVC camera: YUYV and MJPG at the same sizes. 640x480 fits 640 as it is
        // (307 200 px out); 1280x720 would be shrunk by 2 to 640x360 (230 400 px).
        let uvc = [
            (PixelFormat::Mjpg, vec![full_hd, hd, vga]),
            (PixelFormat::Yuyv, vec![full_hd, hd, vga, size(320, 240)]),
        ];
        assert_eq!(
            choose(&uvc, fit(640)),
            Some(Choice {
                format: PixelFormat::Yuyv,
                size: vga,
                factor: 1
            })
        );
        // No limit: the largest size, YUYV before MJPG.
        assert_eq!(
            choose(&uvc, None),
            Some(Choice {
                format: PixelFormat::Yuyv,
                size: full_hd,
                factor: 1
            })
        );
        // Equal outputs: the smaller device size (less to read and convert).
        assert_eq!(
            choose(&uvc, fit(320)),
            Some(Choice {
                format: PixelFormat::Yuyv,
                size: size(320, 240),
                factor: 1
            })
        );
        // YUYV only small, MJPG large: MJPG gives the larger output.
        let old = [
            (PixelFormat::Yuyv, vec![size(320, 240)]),
            (PixelFormat::Mjpg, vec![vga]),
        ];
        assert_eq!(choose(&old, fit(640)).unwrap().format, PixelFormat::Mjpg);
        // Only larger than the limit: shrink by the smallest whole factor that fits.
        let big = [(PixelFormat::Rgb3, vec![full_hd])];
        assert_eq!(
            choose(&big, fit(640)),
            Some(Choice {
                format: PixelFormat::Rgb3,
                size: full_hd,
                factor: 3
            })
        );
        assert_eq!(choose(&[], fit(640)), None);
    }

    #[test]
    fn stepwise_ranges_offer_their_largest_and_a_fitting_size() {
        // A continuous 16..=1920 x 16..=1080 range (step 1) and a limit of 640.
        let sizes = stepwise_sizes((16, 1920, 1), (16, 1080, 1), fit(640));
        assert_eq!(sizes, [size(1920, 1080), size(640, 360)]);
        // Steps of 8 from 16: 360 stays (16 + 43·8), 640 stays.
        let sizes = stepwise_sizes((16, 1920, 8), (16, 1080, 8), fit(640));
        assert_eq!(sizes[1], size(640, 360));
        assert_eq!(
            stepwise_sizes((16, 320, 1), (16, 240, 1), fit(640)),
            [size(320, 240)]
        );
        assert_eq!(
            stepwise_sizes((16, 320, 1), (16, 240, 1), None),
            [size(320, 240)]
        );
    }

    #[test]
    fn the_interval_is_the_slowest_that_reaches_the_rate() {
        let two = FrameRate { num: 2, den: 1 };
        // 30, 15, 10 and 5 fps: 5 fps is the slowest that reaches 2 fps.
        let offered = [(1, 30), (1, 15), (1, 10), (1, 5)];
        assert_eq!(choose_interval(&offered, two), Some((1, 5)));
        // Exactly 2 fps (as 1/2 or 2/4 s) reaches it.
        assert_eq!(choose_interval(&[(1, 30), (2, 4)], two), Some((2, 4)));
        // Nothing fast enough: the fastest there is.
        assert_eq!(choose_interval(&[(1, 1), (2, 1)], two), Some((1, 1)));
        assert_eq!(choose_interval(&[], two), None);
        // NTSC rates: 1001/30000 s is 29.97 fps.
        let thirty = FrameRate { num: 30, den: 1 };
        assert_eq!(
            choose_interval(&[(1001, 30000), (1, 30)], thirty),
            Some((1, 30))
        );
    }

    #[test]
    fn the_decimator_keeps_the_rate_and_every_frame_of_a_slow_device() {
        let mut d = Decimator::new(FrameRate { num: 2, den: 1 });
        // 30 fps for two seconds: the frames on the 500 ms grid are kept, not earlier ones.
        let kept: Vec<u64> = (0..60u64)
            .map(|i| i * Pts::SECOND_NS / 30)
            .filter(|&t| d.take(t))
            .map(|t| t / 1_000_000)
            .collect();
        assert_eq!(kept, [0, 500, 1000, 1500]);
        // 5 fps: two frames a second, the nearest at or just before each due time.
        let mut d = Decimator::new(FrameRate { num: 2, den: 1 });
        let kept: Vec<u64> = (0..11u64)
            .map(|i| i * 200)
            .filter(|&t| d.take(t * 1_000_000))
            .collect();
        assert_eq!(kept, [0, 400, 1000, 1400, 2000]);
        // A device at 2 fps with jitter: every frame is kept.
        let mut d = Decimator::new(FrameRate { num: 2, den: 1 });
        for t_ms in [0u64, 490, 1010, 1495, 2003] {
            assert!(d.take(t_ms * 1_000_000), "{t_ms} ms");
        }
        // After a gap of seconds, the next frame is kept and the grid restarts from it.
        assert!(d.take(9_000_000_000));
        assert!(!d.take(9_100_000_000));
        assert!(d.take(9_500_000_000));
    }

    #[test]
    fn the_timeline_follows_the_device_clock_and_always_increases() {
        let mut t = Timeline::default();
        // Anchored at the first frame: clock 5 s, device 100 s.
        assert_eq!(t.pts(5_000_000_000, Some(100_000_000_000)), 5_000_000_000);
        // 33 ms later by the device, whatever the dequeue jitter.
        assert_eq!(t.pts(5_040_000_000, Some(100_033_000_000)), 5_033_000_000);
        // No device timestamp: the clock.
        assert_eq!(t.pts(5_100_000_000, None), 5_100_000_000);
        // A device clock that jumped far: anchored again on the clock.
        assert_eq!(t.pts(5_200_000_000, Some(900_000_000_000)), 5_200_000_000);
        assert_eq!(t.pts(5_300_000_000, Some(900_100_000_000)), 5_300_000_000);
        // Never backwards.
        assert_eq!(t.pts(5_250_000_000, None), 5_300_000_001);
        assert_eq!(timestamp_ns(0, 0), None);
        assert_eq!(timestamp_ns(-1, 0), None);
        assert_eq!(timestamp_ns(2, 5), Some(2_000_005_000));
    }

    fn test_config(device: &str) -> V4lConfig {
        V4lConfig {
            name: "video".into(),
            device: device.into(),
            video_fps: FrameRate { num: 2, den: 1 },
            max_frame_size: fit(640),
            stall_timeout: Duration::from_secs(5),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                reset_after: Duration::from_secs(10),
            },
        }
    }

    /// Spawns the source on `device` and waits for its second failed start.
    fn lost(device: &str) -> crate::capture::SourceStatus {
        let (tx, _rx) = crossbeam_channel::bounded(4);
        let source = spawn(test_config(device), LiveClock::start(), tx).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let s = source.status();
            if s.reconnects >= 1 && s.state == SourceState::Reconnecting {
                break s;
            }
            assert!(Instant::now() < deadline, "no reconnect: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        let monitor = source.monitor();
        source.stop();
        assert_eq!(monitor.status().state, SourceState::Stopped);
        status
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it_and_the_source_reconnects() {
        let s = lost("/dev/video-tspm-missing");
        assert_eq!(s.description, "v4l:/dev/video-tspm-missing");
        assert!((s.audio, s.video) == (false, true));
        let err = s.last_error.unwrap();
        assert_eq!(
            err,
            "V4L2 device \"/dev/video-tspm-missing\": opening: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_node_that_is_not_a_camera_is_an_error_naming_it() {
        // /dev/null opens, but answers no V4L2 ioctl.
        let err = lost("/dev/null").last_error.unwrap();
        assert!(
            err.starts_with("V4L2 device \"/dev/null\": querying capabilities: "),
            "{err}"
        );
    }
}
