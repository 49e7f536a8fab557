//! Wire types: what goes over the socket, one JSON object per line, version 1.
//!
//! Requests: `{"v":1,"op":"ask","question":"is the violin louder than the piano"}`;
//! `{"v":1,"op":"ask","template":"Is the <Object> louder than the <Object>?","values":["violin","piano"]}`;
//! `{"v":1,"op":"ask","preset":"count"}`; `{"v":1,"op":"presets"}`; `{"v":1,"op":"templates"}`;
//! `{"v":1,"op":"status"}`; `{"v":1,"op":"subscribe","every_s":5,"on_change":false}`. `v` may be
//! omitted (1); any request may carry an `id`, echoed in the reply.
//!
//! Replies: `{"v":1,"id":…,"ok":true,"answer":{…}}` or
//! `{"v":1,"id":…,"ok":false,"error":{"code":"no_template","message":"…"}}`. Subscribers then
//! get `{"v":1,"event":"presets","answers":[…]}` lines. The error codes are stable
//! ([`ErrorCode`]); messages are for people.
//!
//! The engine's types never go on the wire directly: they are converted here, so the wire
//! format changes only on purpose.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capture::SourceStatus;
use crate::engine::{Answer, PresetAnswers, Status};
use crate::prompts::{self, SlotKind};

/// The protocol version.
pub const VERSION: u32 = 1;

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, or a field of the wrong type.
    BadRequest,
    /// The line is longer than `api.max_request_bytes`.
    TooLong,
    /// `v` is not a version this daemon speaks.
    UnsupportedVersion,
    /// `op` is not one of the operations.
    UnknownOp,
    /// The question fits no template.
    NoTemplate,
    /// The template's slots got the wrong number of values, or unknown ones.
    BadSlots,
    /// No preset has that id.
    UnknownPreset,
    /// Nothing captured yet.
    NoData,
    /// The engine's queue is full or it is stopping.
    Busy,
    /// The engine did not answer in time.
    Timeout,
    /// A model failed.
    ModelError,
    /// The peer is not allowed to connect.
    Forbidden,
    /// Too many connections.
    TooManyClients,
}

/// An error reply's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Free-text question.
    AskText(String),
    /// Template with slot values.
    AskTemplate {
        /// The template text with `<Object>`-style slots.
        template: String,
        /// One value per slot.
        values: Vec<String>,
    },
    /// A preset by id.
    AskPreset(String),
    /// The presets.
    Presets,
    /// The templates and slot values.
    Templates,
    /// The daemon's status.
    Status,
    /// Preset answers pushed every `every_s` seconds (or only on change).
    Subscribe {
        /// Seconds between pushes; `None`: `presets.interval_s`.
        every_s: Option<f64>,
        /// Push only when an answer changed.
        on_change: bool,
    },
}

/// The raw request object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default)]
    v: Option<u32>,
    /// Read from the raw value before this struct (so rejected requests keep it too).
    #[serde(default, rename = "id")]
    _id: Option<Value>,
    op: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    values: Option<Vec<String>>,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    every_s: Option<f64>,
    #[serde(default)]
    on_change: Option<bool>,
}

/// A request line that could not be used, with the id if it had one.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The request's id, if it could be read.
    pub id: Option<Value>,
    /// Why.
    pub error: WireError,
}

fn reject(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Rejected {
    Rejected {
        id,
        error: WireError {
            code,
            message: message.into(),
        },
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<(Option<Value>, Op), Rejected> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        reject(
            None,
            ErrorCode::BadRequest,
            format!("not a JSON object: {e}; expected e.g. {{\"v\":1,\"op\":\"status\"}}"),
        )
    })?;
    let id = value.get("id").cloned();
    let raw: RawRequest = serde_json::from_value(value).map_err(|e| {
        reject(
            id.clone(),
            ErrorCode::BadRequest,
            format!(
                "{e}; fields: v, id, op, question | template + values | preset, every_s, on_change"
            ),
        )
    })?;
    if let Some(v) = raw.v
        && v != VERSION
    {
        return Err(reject(
            id,
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} is not supported; this daemon speaks {VERSION}"),
        ));
    }
    let op = match raw.op.as_str() {
        "ask" => match (raw.question, raw.template, raw.preset) {
            (Some(q), None, None) => Op::AskText(q),
            (None, Some(template), None) => Op::AskTemplate {
                template,
                values: raw.values.unwrap_or_default(),
            },
            (None, None, Some(p)) => Op::AskPreset(p),
            _ => {
                return Err(reject(
                    id,
                    ErrorCode::BadRequest,
                    "ask needs exactly one of: question, template (+ values), preset",
                ));
            }
        },
        "presets" => Op::Presets,
        "templates" => Op::Templates,
        "status" => Op::Status,
        "subscribe" => {
            if let Some(every) = raw.every_s
                && !(every.is_finite() && (0.5..=86_400.0).contains(&every))
            {
                return Err(reject(
                    id,
                    ErrorCode::BadRequest,
                    format!("every_s = {every}: expected 0.5..=86400 seconds"),
                ));
            }
            Op::Subscribe {
                every_s: raw.every_s,
                on_change: raw.on_change.unwrap_or(false),
            }
        }
        other => {
            return Err(reject(
                id,
                ErrorCode::UnknownOp,
                format!("unknown op {other:?}; known: ask, presets, templates, status, subscribe"),
            ));
        }
    };
    Ok((id, op))
}

/// A successful reply's envelope around `body` (a JSON object whose fields are merged in).
pub fn ok_line(id: &Option<Value>, field: &str, body: Value) -> String {
    let mut map = serde_json::Map::new();
    map.insert("v".into(), VERSION.into());
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    map.insert("ok".into(), true.into());
    map.insert(field.into(), body);
    Value::Object(map).to_string()
}

/// An error reply line.
pub fn error_line(id: &Option<Value>, error: &WireError) -> String {
    let mut map = serde_json::Map::new();
    map.insert("v".into(), VERSION.into());
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    map.insert("ok".into(), false.into());
    map.insert(
        "error".into(),
        serde_json::to_value(error).unwrap_or(Value::Null),
    );
    Value::Object(map).to_string()
}

/// A preset-answers event line.
pub fn event_line(answers: &PresetAnswers) -> String {
    serde_json::json!({
        "v": VERSION,
        "event": "presets",
        "answers": presets_answers(answers),
    })
    .to_string()
}

/// An answer as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireAnswer {
    /// The filled question.
    pub question: String,
    /// Template id.
    pub template_id: usize,
    /// The declarative prompt.
    pub prompt: String,
    /// The answer.
    pub answer: String,
    /// Its probability.
    pub probability: f32,
    /// Top-3 `[answer, probability]`.
    pub top: Vec<(String, f32)>,
    /// Seconds (since the daemon started) the head looked at.
    pub selected_seconds: Vec<u64>,
    /// First and last second of the window.
    pub window_s: (u64, u64),
    /// Seconds in the window.
    pub window_len: usize,
    /// The head's id.
    pub head: String,
    /// Served from the cache.
    pub cached: bool,
    /// Engine time, ms.
    pub compute_ms: f64,
}

/// Converts an engine answer.
pub fn answer(a: &Answer) -> WireAnswer {
    WireAnswer {
        question: a.question.clone(),
        template_id: a.template_id,
        prompt: a.prompt.clone(),
        answer: a.answer.clone(),
        probability: a.probability,
        top: a.top.clone(),
        selected_seconds: a.selected_seconds.clone(),
        window_s: a.window,
        window_len: a.window_len,
        head: a.head.clone(),
        cached: a.cached,
        compute_ms: a.compute_ms,
    }
}

fn presets_answers(answers: &PresetAnswers) -> Value {
    Value::Array(
        answers
            .answers
            .iter()
            .map(|(id, a)| match a {
                Ok(a) => serde_json::json!({"id": id, "ok": true, "answer": answer(a)}),
                Err(e) => serde_json::json!({"id": id, "ok": false, "error": {
                    "code": super::error_code(e), "message": e.to_string()}}),
            })
            .collect(),
    )
}

/// The presets as JSON.
pub fn presets(presets: &[crate::config::Preset]) -> Value {
    Value::Array(
        presets
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "question": p.question.text(),
                    "template_id": p.question.template().id(),
                })
            })
            .collect(),
    )
}

/// The templates and slot vocabularies as JSON.
pub fn templates() -> Value {
    let templates: Vec<Value> = prompts::templates()
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id(),
                "text": t.text(),
                "slots": t.slots().iter().map(|s| s.marker()).collect::<Vec<_>>(),
                "type": t.question_type().to_string(),
                "example": t.example().text(),
            })
        })
        .collect();
    let values: serde_json::Map<String, Value> = prompts::known_values()
        .iter()
        .map(|(kind, values): &(SlotKind, &[&str])| {
            (kind.marker().to_string(), serde_json::json!(values))
        })
        .collect();
    serde_json::json!({"templates": templates, "values": values})
}

fn source(s: &SourceStatus) -> Value {
    serde_json::json!({
        "name": s.name,
        "description": s.description,
        "state": s.state.name(),
        "state_for_s": round3(s.since.elapsed().as_secs_f64()),
        "reconnects": s.reconnects,
        "loops": s.loops,
        "last_error": s.last_error,
        "audio_chunks": s.stats.audio_chunks,
        "video_frames": s.stats.video_frames,
        "dropped_audio_chunks": s.stats.dropped_audio_chunks,
        "dropped_video_frames": s.stats.dropped_video_frames,
    })
}

/// This process's resident memory, from `/proc/self/status` (`None` where it cannot be read).
pub fn rss_kb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// The status as JSON.
pub fn status(s: &Status) -> Value {
    let dropped_audio: u64 = s.sources.iter().map(|x| x.stats.dropped_audio_chunks).sum();
    let dropped_video: u64 = s.sources.iter().map(|x| x.stats.dropped_video_frames).sum();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "rss_kb": rss_kb(),
        "heap_kb": crate::memory::heap_allocated().map(|b| b / 1024),
        "uptime_s": round3(s.uptime.as_secs_f64()),
        "segments": s.segments,
        "segment_errors": s.segment_errors,
        "window": {
            "capacity_s": s.window_capacity,
            "filled_s": s.window_len,
            "missing_audio_s": s.window_missing_audio,
            "missing_video_s": s.window_missing_video,
            "newest_s": s.newest_second,
        },
        "lag_ms": round3(s.lag.as_secs_f64() * 1e3),
        "segment_ms": {"mean": round3(s.segment_ms_mean), "max": round3(s.segment_ms_max)},
        "dropped": {"audio_chunks": dropped_audio, "video_frames": dropped_video},
        "sources": s.sources.iter().map(source).collect::<Vec<_>>(),
        "asks": s.asks,
        "subscribers": s.subscribers,
        "subscriber_drops": s.subscriber_drops,
        "sound": s.sound,
        "last_error": s.last_error,
        "models": s.models.iter().map(|m| serde_json::json!({
            "id": m.id, "sha256": m.sha256, "reason": m.reason,
        })).collect::<Vec<_>>(),
        "presets": s.presets,
        "segmenter": {
            "gap_samples": s.segmenter.gap_samples,
            "overlap_samples": s.segmenter.overlap_samples,
            "repeated_frames": s.segmenter.repeated_frames,
            "dropped_frames": s.segmenter.dropped_frames,
            "forced_segments": s.segmenter.forced_segments,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_get_their_code() {
        let ok = |s: &str| parse_request(s.as_bytes()).unwrap();
        let code = |s: &str| parse_request(s.as_bytes()).unwrap_err().error.code;
        assert_eq!(
            ok(r#"{"op":"ask","question":"is there a voiceover","id":7}"#),
            (Some(7.into()), Op::AskText("is there a voiceover".into()))
        );
        assert_eq!(ok(r#"{"v":1,"op":"status"}"#).1, Op::Status);
        assert_eq!(
            ok(r#"{"op":"ask","template":"Is the <Object> playing?","values":["cello"]}"#).1,
            Op::AskTemplate {
                template: "Is the <Object> playing?".into(),
                values: vec!["cello".into()]
            }
        );
        assert_eq!(code("not json"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"status","extra":1}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"v":2,"op":"status"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"op":"reboot"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":"ask"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","every_s":0}"#),
            ErrorCode::BadRequest
        );
        let rejected = parse_request(br#"{"op":"nope","id":"x"}"#).unwrap_err();
        assert_eq!(rejected.id, Some("x".into()));
    }

    #[test]
    fn reply_lines_carry_version_id_and_ok() {
        let line = ok_line(&Some(3.into()), "presets", serde_json::json!([]));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["id"], 3);
        assert_eq!(v["ok"], true);
        let line = error_line(
            &None,
            &WireError {
                code: ErrorCode::NoData,
                message: "m".into(),
            },
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], "no_data");
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn templates_list_all_33_with_values() {
        let t = templates();
        assert_eq!(t["templates"].as_array().unwrap().len(), 33);
        assert!(
            t["values"]["<Object>"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "violin")
        );
    }
}
