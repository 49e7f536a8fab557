//! Builds the GStreamer pipeline: a source (a file through `decodebin`, or two source
//! descriptions), and two conversion branches that end in appsinks whose caps fix the output
//! format:
//!
//! ```text
//! filesrc ! decodebin ─┬─ audioconvert ! audioresample ! appsink  audio/x-raw,F32LE,16000,mono
//!                      └─ videorate ! videoconvert ! videoscale ! appsink  video/x-raw,RGB,fps[,≤max]
//! ```
//!
//! `decodebin` exposes its pads later, on a streaming thread; `pad-added` links the first
//! audio and the first video pad and gives any further streams a `fakesink` (an unlinked pad
//! would stop the demuxer with `not-linked`). `no-more-pads` is the moment every stream is
//! known: if one of the two is missing, the error goes to the control channel right away, so
//! the consumer never waits for a stream that does not exist.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::Sender;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;
use gstreamer_video as gst_video;

use super::sink::{self, SinkCtx};
use super::{CaptureConfig, CaptureError, Control, Source, StreamKind};
use crate::segmenter::SAMPLE_RATE_HZ;

/// Makes one element, mapping a missing plugin to a clear error.
fn make(factory: &str, name: &str) -> Result<gst::Element, CaptureError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| CaptureError::MissingElement {
            factory: factory.to_owned(),
        })
}

/// Adds `elements` to `pipeline` and links them in order; returns the first one's sink pad.
fn add_chain(pipeline: &gst::Pipeline, elements: &[gst::Element]) -> gst::Pad {
    pipeline
        .add_many(elements)
        .expect("element names are unique in a fresh pipeline");
    gst::Element::link_many(elements).expect("converters link before caps are known");
    elements[0]
        .static_pad("sink")
        .expect("converters have a static sink pad")
}

/// The audio branch; returns its input pad.
fn audio_branch(
    pipeline: &gst::Pipeline,
    cfg: &CaptureConfig,
    ctx: SinkCtx,
) -> Result<gst::Pad, CaptureError> {
    let sink = gst_app::AppSink::builder()
        .name("audio-sink")
        .caps(
            &gst_audio::AudioCapsBuilder::new_interleaved()
                .format(gst_audio::AudioFormat::F32le)
                .rate(SAMPLE_RATE_HZ as i32)
                .channels(1)
                .build(),
        )
        // Decode files as fast as possible (the timestamps carry the timing), unless a file
        // stands in for a live source and must play at its own pace.
        .sync(cfg.realtime)
        .build();
    sink::install_audio(&sink, ctx);
    Ok(add_chain(
        pipeline,
        &[
            make("audioconvert", "audio-convert")?,
            make("audioresample", "audio-resample")?,
            sink.upcast(),
        ],
    ))
}

/// The video branch; returns its input pad.
fn video_branch(
    pipeline: &gst::Pipeline,
    cfg: &CaptureConfig,
    ctx: SinkCtx,
) -> Result<gst::Pad, CaptureError> {
    let rate = gst::Fraction::new(cfg.video_fps.num as i32, cfg.video_fps.den as i32);
    let mut caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .framerate(rate);
    if let Some(max) = cfg.max_frame_size {
        // Ranges let videoscale keep the native size when it fits; square pixels make it
        // scale (keeping the display aspect ratio) instead of changing the pixel aspect.
        caps = caps
            .width_range(1..=max.width_px as i32)
            .height_range(1..=max.height_px as i32)
            .pixel_aspect_ratio(gst::Fraction::new(1, 1));
    }
    let sink = gst_app::AppSink::builder()
        .name("video-sink")
        .caps(&caps.build())
        .sync(cfg.realtime)
        .build();
    sink::install_video(&sink, ctx);
    // videorate first, so frames that are dropped anyway are never converted.
    Ok(add_chain(
        pipeline,
        &[
            make("videorate", "video-rate")?,
            make("videoconvert", "video-convert")?,
            make("videoscale", "video-scale")?,
            sink.upcast(),
        ],
    ))
}

/// The pipeline with its sinks installed; the source is linked (or will be, by decodebin).
pub(super) fn build(
    source: &Source,
    cfg: &CaptureConfig,
    ctx: SinkCtx,
    ctrl: Sender<Control>,
) -> Result<gst::Pipeline, CaptureError> {
    let pipeline = gst::Pipeline::with_name("capture");
    match source {
        Source::File(path) => {
            let (audio_in, video_in) = both_branches(&pipeline, cfg, ctx)?;
            let filesrc = make("filesrc", "file")?;
            filesrc.set_property("location", path);
            let decode = make("decodebin", "decode")?;
            pipeline
                .add_many([&filesrc, &decode])
                .expect("element names are unique in a fresh pipeline");
            filesrc
                .link(&decode)
                .expect("filesrc links to decodebin's always sink pad");
            link_decoder(
                &decode,
                &pipeline,
                path.display().to_string(),
                audio_in,
                video_in,
                ctrl,
            );
        }
        Source::Uri(uri) => {
            let (audio_in, video_in) = both_branches(&pipeline, cfg, ctx)?;
            let decode = make("uridecodebin", "decode")?;
            decode.set_property("uri", uri);
            pipeline
                .add(&decode)
                .expect("element names are unique in a fresh pipeline");
            link_decoder(&decode, &pipeline, uri.clone(), audio_in, video_in, ctrl);
        }
        Source::Pipelines { audio, video } => {
            let (audio_in, video_in) = both_branches(&pipeline, cfg, ctx)?;
            add_description(&pipeline, StreamKind::Audio, audio, &audio_in)?;
            add_description(&pipeline, StreamKind::Video, video, &video_in)?;
        }
        Source::Audio(audio) => {
            let audio_in = audio_branch(&pipeline, cfg, ctx)?;
            add_description(&pipeline, StreamKind::Audio, audio, &audio_in)?;
        }
        Source::Video(video) => {
            let video_in = video_branch(&pipeline, cfg, ctx)?;
            add_description(&pipeline, StreamKind::Video, video, &video_in)?;
        }
    }
    Ok(pipeline)
}

fn both_branches(
    pipeline: &gst::Pipeline,
    cfg: &CaptureConfig,
    ctx: SinkCtx,
) -> Result<(gst::Pad, gst::Pad), CaptureError> {
    Ok((
        audio_branch(pipeline, cfg, ctx.clone())?,
        video_branch(pipeline, cfg, ctx)?,
    ))
}

/// `description` (e.g. `audiotestsrc num-buffers=10`) as a bin linked to `target`.
fn add_description(
    pipeline: &gst::Pipeline,
    kind: StreamKind,
    description: &str,
    target: &gst::Pad,
) -> Result<(), CaptureError> {
    let invalid = |message: String| CaptureError::Description {
        kind,
        description: description.to_owned(),
        message,
    };
    // A trailing caps string (`v4l2src ! video/x-raw,width=640`) is only a filter between two
    // elements in gst-launch syntax, so give it an element to filter into.
    let with_tail = format!("{description} ! identity silent=true");
    let bin = gst::parse::bin_from_description(&with_tail, true)
        .map_err(|e| invalid(e.message().to_owned()))?;
    bin.set_property("name", format!("{kind}-source"));
    let src = bin
        .static_pad("src")
        .ok_or_else(|| invalid("it has no unlinked source pad".to_owned()))?;
    pipeline.add(&bin).expect("source bin names are unique");
    src.link(target)
        .map_err(|e| invalid(format!("cannot link it to the {kind} branch: {e}")))?;
    Ok(())
}

/// Which decoded streams have been linked, and what decodebin could not decode.
#[derive(Debug, Default)]
struct Streams {
    audio: bool,
    video: bool,
    /// Caps of streams for which no decoder is installed.
    undecodable: Vec<String>,
}

/// Links a `decodebin`/`uridecodebin`'s pads to the branches as they appear; `origin` (the
/// path or URI) names the media in errors.
fn link_decoder(
    decode: &gst::Element,
    pipeline: &gst::Pipeline,
    origin: String,
    audio_in: gst::Pad,
    video_in: gst::Pad,
    ctrl: Sender<Control>,
) {
    let streams = Arc::new(Mutex::new(Streams::default()));

    let undecodable = Arc::clone(&streams);
    decode.connect("unknown-type", false, move |args| {
        // (decodebin, pad, caps): a stream decodebin found but cannot decode.
        if let Some(caps) = args.get(2).and_then(|v| v.get::<gst::Caps>().ok()) {
            lock(&undecodable).undecodable.push(caps.to_string());
        }
        None
    });

    let linked = Arc::clone(&streams);
    let weak_pipeline = pipeline.downgrade();
    let link_ctrl = ctrl.clone();
    decode.connect_pad_added(move |_, pad| {
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let media = caps.structure(0).map(|s| s.name().as_str()).unwrap_or("");
        let (kind, target) = if media.starts_with("audio/") {
            (StreamKind::Audio, &audio_in)
        } else if media.starts_with("video/") {
            (StreamKind::Video, &video_in)
        } else {
            discard_stream(&weak_pipeline, pad);
            return;
        };
        {
            let mut streams = lock(&linked);
            let taken = match kind {
                StreamKind::Audio => &mut streams.audio,
                StreamKind::Video => &mut streams.video,
            };
            if *taken {
                // A second audio (or video) stream: only the first one is used.
                drop(streams);
                discard_stream(&weak_pipeline, pad);
                return;
            }
            *taken = true;
        }
        if let Err(e) = pad.link(target) {
            let _ = link_ctrl.send(Control::Error(CaptureError::Link {
                kind,
                message: e.to_string(),
            }));
        }
    });

    let path = PathBuf::from(origin);
    decode.connect_no_more_pads(move |_| {
        let streams = lock(&streams);
        let missing = if !streams.audio {
            Some(StreamKind::Audio)
        } else if !streams.video {
            Some(StreamKind::Video)
        } else {
            None
        };
        let Some(kind) = missing else { return };
        let prefix = format!("{kind}/");
        let err = match streams.undecodable.iter().find(|c| c.starts_with(&prefix)) {
            Some(caps) => CaptureError::MissingDecoder {
                path: path.clone(),
                kind,
                caps: caps.clone(),
            },
            None if kind == StreamKind::Audio => CaptureError::NoAudioStream { path: path.clone() },
            None => CaptureError::NoVideoStream { path: path.clone() },
        };
        let _ = ctrl.send(Control::Error(err));
    });
}

/// Gives an unused decoded stream a fakesink, so it neither blocks nor stops the demuxer.
fn discard_stream(pipeline: &gst::glib::WeakRef<gst::Pipeline>, pad: &gst::Pad) {
    let Some(pipeline) = pipeline.upgrade() else {
        return;
    };
    let Ok(sink) = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
    else {
        return;
    };
    if pipeline.add(&sink).is_err() {
        return;
    }
    let _ = sink.sync_state_with_parent();
    if let Some(sink_pad) = sink.static_pad("sink") {
        let _ = pad.link(&sink_pad);
    }
}

/// The mutex only guards bookkeeping; a panic while holding it cannot leave it inconsistent.
fn lock(streams: &Mutex<Streams>) -> std::sync::MutexGuard<'_, Streams> {
    streams.lock().unwrap_or_else(PoisonError::into_inner)
}
