//! Configuration: the TOML file as written (`Raw*`, serde, unknown keys refused) and the
//! typed, validated [`Config`] the rest of the program uses.
//!
//! The default file is compiled in (`config/tspm-edge.toml`) and printed by
//! `tspm-edge print-default-config`, so the documented defaults and the real ones cannot drift.
//! A user file is merged over the default key by key, so it only needs the keys it changes.
//! Every validation error names the key and the expected form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::prompts::Question;

/// The built-in default configuration, with comments.
pub const DEFAULT_CONFIG: &str = include_str!("../config/tspm-edge.toml");

/// Environment variable that overrides `models.dir`.
pub const MODEL_DIR_ENV: &str = "TSPM_MODEL_DIR";

/// Environment variable that overrides `api.socket`.
pub const SOCKET_ENV: &str = "TSPM_EDGE_SOCKET";

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("parsing config {origin}")]
    Parse {
        /// The file, or "built-in default".
        origin: String,
        /// The parser's message (it names the key and line).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A preset question fits no template (or its id is empty or repeated).
    #[error("config key `presets.question[{index}].{field}` ({id:?}): {message}")]
    Preset {
        /// Position in the `[[presets.question]]` array, from 0.
        index: usize,
        /// `id` or `text`.
        field: &'static str,
        /// The preset's id as given.
        id: String,
        /// What is wrong (for a question, the prompt constructor's message).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("config key `{key}` = {value}: expected {expected}")]
    Invalid {
        /// Dotted key, e.g. `capture.video_fps`.
        key: &'static str,
        /// The value as given.
        value: String,
        /// The accepted form.
        expected: &'static str,
    },
}

/// How a model's precision is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// The faster variant on this CPU among those that passed the accuracy check.
    Auto,
    /// Always the float model.
    Fp32,
    /// Always the int8 model (an error if it is missing).
    Int8,
}

impl PrecisionChoice {
    /// The configuration value (`"auto"`, `"fp32"`, `"int8"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }

    fn parse(key: &'static str, value: &str) -> Result<Self, ConfigError> {
        match value {
            "auto" => Ok(Self::Auto),
            "fp32" => Ok(Self::Fp32),
            "int8" => Ok(Self::Int8),
            _ => Err(ConfigError::Invalid {
                key,
                value: format!("{value:?}"),
                expected: "one of \"auto\", \"fp32\", \"int8\"",
            }),
        }
    }
}

/// Where question and prompt embeddings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextChoice {
    /// The table when it was built, else the encoder.
    Auto,
    /// The table built with the models (an error if it is missing).
    Table,
    /// The MiniLM encoder in tract.
    Encoder,
}

impl TextChoice {
    fn parse(key: &'static str, value: &str) -> Result<Self, ConfigError> {
        match value {
            "auto" => Ok(Self::Auto),
            "table" => Ok(Self::Table),
            "encoder" => Ok(Self::Encoder),
            _ => Err(ConfigError::Invalid {
                key,
                value: format!("{value:?}"),
                expected: "one of \"auto\", \"table\", \"encoder\"",
            }),
        }
    }
}

/// Where the models are and how to run them.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// Directory holding `manifest.toml` and the ONNX files.
    pub dir: PathBuf,
    /// Precision of the audio encoder (YAMNet).
    pub audio_precision: PrecisionChoice,
    /// Precision of the visual encoder (EfficientNet-Lite0).
    pub visual_precision: PrecisionChoice,
    /// Minimum mean cosine for an int8 model to be eligible under `auto`.
    pub int8_min_cosine: f32,
    /// Precision of the TSPM head.
    pub head_precision: PrecisionChoice,
    /// Minimum int8-vs-fp32 answer agreement for an int8 head to be eligible under `auto`.
    pub int8_min_agreement: f32,
    /// Under `auto`, fp32 is taken over an eligible int8 variant only when it runs at least
    /// this many times as fast (≥ 1; 1 = the faster variant).
    pub auto_fp32_min_speedup: f32,
    /// Where question and prompt embeddings come from.
    pub text: TextChoice,
}

/// The live sources of `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveSources {
    /// One file (looped) or URI with both streams.
    Media(String),
    /// Two gst-launch descriptions, one pipeline each.
    Devices {
        /// The audio source description.
        audio: String,
        /// The video source description.
        video: String,
    },
}

/// What capture asks of its sources.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Video frames per second delivered to the segmenter.
    pub video_fps: u32,
    /// Longest video side in pixels after scaling; `None` keeps the source size.
    pub max_video_side_px: Option<u32>,
    /// What `serve` captures.
    pub sources: LiveSources,
    /// A playing source that delivers nothing this long is restarted.
    pub stall_timeout: Duration,
    /// First wait before restarting a lost source.
    pub reconnect_initial: Duration,
    /// Longest wait before restarting a lost source.
    pub reconnect_max: Duration,
}

/// The rolling window of `serve`.
#[derive(Debug, Clone)]
pub struct WindowConfig {
    /// Seconds kept (and answered over).
    pub seconds: usize,
}

/// The Unix-socket API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The socket path, resolved (see the default config for the rules).
    pub socket: PathBuf,
    /// Group whose members may connect besides root and the daemon's user.
    pub group: Option<String>,
    /// Connections served at once.
    pub max_clients: usize,
    /// Longest request line.
    pub max_request_bytes: usize,
    /// An idle connection is closed after this.
    pub idle_timeout: Duration,
    /// A client that does not read for this long is disconnected.
    pub write_timeout: Duration,
}

/// One preset question.
#[derive(Debug, Clone)]
pub struct Preset {
    /// Its id (what `ask --preset` and subscribers see).
    pub id: String,
    /// The parsed question.
    pub question: Question,
}

/// `[presets]`.
#[derive(Debug, Clone)]
pub struct PresetsConfig {
    /// How often subscribers and the LED get fresh answers.
    pub interval: Duration,
    /// The questions, in file order.
    pub questions: Vec<Preset>,
}

/// `[gpio]`: BCM pin numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpioConfig {
    /// A button that asks the presets.
    pub button_pin: Option<u8>,
    /// An LED for liveness and sound.
    pub led_pin: Option<u8>,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// A `tracing` level filter.
    pub level: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[models]`.
    pub models: ModelsConfig,
    /// `[capture]`.
    pub capture: CaptureConfig,
    /// `[logging]`.
    pub logging: LoggingConfig,
    /// `[window]`.
    pub window: WindowConfig,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[presets]`.
    pub presets: PresetsConfig,
    /// `[gpio]`.
    pub gpio: GpioConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: RawModels,
    capture: RawCapture,
    logging: RawLogging,
    window: RawWindow,
    api: RawApi,
    presets: RawPresets,
    gpio: RawGpio,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: String,
    group: String,
    max_clients: i64,
    max_request_bytes: i64,
    idle_timeout_s: f64,
    write_timeout_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPresets {
    interval_s: i64,
    #[serde(default)]
    question: Vec<RawPreset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    id: String,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpio {
    button_pin: i64,
    led_pin: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    dir: String,
    audio_precision: String,
    visual_precision: String,
    int8_min_cosine: f64,
    head_precision: String,
    int8_min_agreement: f64,
    auto_fp32_min_speedup: f64,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    video_fps: i64,
    max_video_side_px: i64,
    media: String,
    audio: String,
    video: String,
    stall_timeout_s: f64,
    reconnect_initial_s: f64,
    reconnect_max_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: String,
}

impl Config {
    /// The built-in default, validated.
    pub fn default_config() -> Result<Self, ConfigError> {
        Self::from_toml_str(DEFAULT_CONFIG, "built-in default")
    }

    /// Reads `path` and merges it over the built-in default.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses `text` (named `origin` in errors), merged over the built-in default.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse = |s: &str, origin: &str| {
            s.parse::<toml::Table>()
                .map_err(|source| ConfigError::Parse {
                    origin: origin.to_string(),
                    source: Box::new(source),
                })
        };
        let mut merged = parse(DEFAULT_CONFIG, "built-in default")?;
        let user = parse(text, origin)?;
        merge(&mut merged, user);
        let raw = RawConfig::deserialize(merged).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let models = {
            let m = raw.models;
            let dir = match std::env::var_os(MODEL_DIR_ENV) {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => expand_home(&m.dir).ok_or(ConfigError::Invalid {
                    key: "models.dir",
                    value: format!("{:?}", m.dir),
                    expected: "a directory path (\"~/\" needs HOME to be set)",
                })?,
            };
            if !(0.0..=1.0).contains(&m.int8_min_cosine) {
                return Err(ConfigError::Invalid {
                    key: "models.int8_min_cosine",
                    value: m.int8_min_cosine.to_string(),
                    expected: "a number between 0 and 1",
                });
            }
            if !(0.0..=1.0).contains(&m.int8_min_agreement) {
                return Err(ConfigError::Invalid {
                    key: "models.int8_min_agreement",
                    value: m.int8_min_agreement.to_string(),
                    expected: "a number between 0 and 1",
                });
            }
            if !(1.0..=1000.0).contains(&m.auto_fp32_min_speedup) {
                return Err(ConfigError::Invalid {
                    key: "models.auto_fp32_min_speedup",
                    value: m.auto_fp32_min_speedup.to_string(),
                    expected: "a number from 1 to 1000 (1 = auto takes the faster variant)",
                });
            }
            ModelsConfig {
                dir,
                audio_precision: PrecisionChoice::parse(
                    "models.audio_precision",
                    &m.audio_precision,
                )?,
                visual_precision: PrecisionChoice::parse(
                    "models.visual_precision",
                    &m.visual_precision,
                )?,
                int8_min_cosine: m.int8_min_cosine as f32,
                head_precision: PrecisionChoice::parse("models.head_precision", &m.head_precision)?,
                int8_min_agreement: m.int8_min_agreement as f32,
                auto_fp32_min_speedup: m.auto_fp32_min_speedup as f32,
                text: TextChoice::parse("models.text", &m.text)?,
            }
        };
        let capture = CaptureConfig {
            video_fps: in_range(
                "capture.video_fps",
                raw.capture.video_fps,
                1..=60,
                "an integer from 1 to 60",
            )? as u32,
            max_video_side_px: match raw.capture.max_video_side_px {
                0 => None,
                px => Some(in_range(
                    "capture.max_video_side_px",
                    px,
                    224..=8192,
                    "0 (keep the source size) or 224..=8192 pixels",
                )? as u32),
            },
            sources: {
                let c = &raw.capture;
                let media = c.media.trim();
                if !media.is_empty() {
                    LiveSources::Media(media.to_string())
                } else {
                    for (key, value) in [("capture.audio", &c.audio), ("capture.video", &c.video)] {
                        if value.trim().is_empty() {
                            return Err(ConfigError::Invalid {
                                key,
                                value: format!("{value:?}"),
                                expected: "a gst-launch source description (or set capture.media)",
                            });
                        }
                    }
                    if let Some(device) = c.video.trim().strip_prefix("v4l:")
                        && device.trim().is_empty()
                    {
                        return Err(ConfigError::Invalid {
                            key: "capture.video",
                            value: format!("{:?}", c.video),
                            expected: "a device node after v4l:, e.g. \"v4l:/dev/video0\"",
                        });
                    }
                    LiveSources::Devices {
                        audio: c.audio.trim().to_string(),
                        video: c.video.trim().to_string(),
                    }
                }
            },
            stall_timeout: seconds(
                "capture.stall_timeout_s",
                raw.capture.stall_timeout_s,
                0.5,
                600.0,
            )?,
            reconnect_initial: seconds(
                "capture.reconnect_initial_s",
                raw.capture.reconnect_initial_s,
                0.01,
                600.0,
            )?,
            reconnect_max: seconds(
                "capture.reconnect_max_s",
                raw.capture.reconnect_max_s,
                0.01,
                3600.0,
            )?,
        };
        let window = WindowConfig {
            seconds: in_range(
                "window.seconds",
                raw.window.seconds,
                10..=3600,
                "an integer from 10 (the head selects 10 seconds) to 3600",
            )? as usize,
        };
        let api = {
            let a = &raw.api;
            ApiConfig {
                socket: resolve_socket(&a.socket)?,
                group: Some(a.group.trim().to_string()).filter(|g| !g.is_empty()),
                max_clients: in_range("api.max_clients", a.max_clients, 1..=1024, "1..=1024")?
                    as usize,
                max_request_bytes: in_range(
                    "api.max_request_bytes",
                    a.max_request_bytes,
                    256..=1_048_576,
                    "256..=1048576 bytes",
                )? as usize,
                idle_timeout: seconds("api.idle_timeout_s", a.idle_timeout_s, 0.1, 86_400.0)?,
                write_timeout: seconds("api.write_timeout_s", a.write_timeout_s, 0.01, 600.0)?,
            }
        };
        let presets = PresetsConfig {
            interval: Duration::from_secs(in_range(
                "presets.interval_s",
                raw.presets.interval_s,
                1..=86_400,
                "1..=86400 seconds",
            )? as u64),
            questions: presets(raw.presets.question)?,
        };
        let pin = |key: &'static str, value: i64| -> Result<Option<u8>, ConfigError> {
            match value {
                -1 => Ok(None),
                _ => Ok(Some(
                    in_range(key, value, 0..=27, "-1 (unused) or a BCM pin 0..=27")? as u8,
                )),
            }
        };
        let gpio = GpioConfig {
            button_pin: pin("gpio.button_pin", raw.gpio.button_pin)?,
            led_pin: pin("gpio.led_pin", raw.gpio.led_pin)?,
        };
        let level = raw.logging.level.to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "logging.level",
                value: format!("{:?}", raw.logging.level),
                expected: "one of \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
            });
        }
        Ok(Config {
            models,
            capture,
            logging: LoggingConfig { level },
            window,
            api,
            presets,
            gpio,
        })
    }
}

/// Integer range check with an error that names the key and the accepted form.
fn in_range(
    key: &'static str,
    value: i64,
    range: std::ops::RangeInclusive<i64>,
    expected: &'static str,
) -> Result<i64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            key,
            value: value.to_string(),
            expected,
        })
    }
}

/// A duration in seconds within `min..=max`.
fn seconds(key: &'static str, value: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::Invalid {
            key,
            value: value.to_string(),
            expected: "a number of seconds in range (see the default config)",
        })
    }
}

/// Parses every preset question; ids must be unique and non-empty.
fn presets(raw: Vec<RawPreset>) -> Result<Vec<Preset>, ConfigError> {
    let mut out: Vec<Preset> = Vec::with_capacity(raw.len());
    for (index, p) in raw.into_iter().enumerate() {
        let id = p.id.trim().to_string();
        let bad_id = |message: &str| ConfigError::Preset {
            index,
            field: "id",
            id: id.clone(),
            message: message.to_string(),
        };
        if id.is_empty() {
            return Err(bad_id("expected a non-empty id"));
        }
        if out.iter().any(|q| q.id == id) {
            return Err(bad_id("this id is used by an earlier preset"));
        }
        let question = Question::parse_free_text(&p.text).map_err(|e| ConfigError::Preset {
            index,
            field: "text",
            id: id.clone(),
            message: e.to_string(),
        })?;
        out.push(Preset { id, question });
    }
    Ok(out)
}

/// `api.socket` (or its environment override), or the first of the default places.
fn resolve_socket(configured: &str) -> Result<PathBuf, ConfigError> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(path) = env(SOCKET_ENV) {
        return Ok(path);
    }
    let configured = configured.trim();
    if !configured.is_empty() {
        return expand_home(configured).ok_or(ConfigError::Invalid {
            key: "api.socket",
            value: format!("{configured:?}"),
            expected: "a socket path (\"~/\" needs HOME to be set)",
        });
    }
    if let Some(dir) = env("RUNTIME_DIRECTORY") {
        // systemd may list several directories separated by ':'; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return Ok(PathBuf::from(first).join("api.sock"));
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR") {
        return Ok(dir.join("tspm-edge").join("api.sock"));
    }
    let uid = nix::unistd::getuid();
    Ok(PathBuf::from(format!("/tmp/tspm-edge-{uid}")).join("api.sock"))
}

/// Tables merge key by key; any other value in `over` replaces the one in `base`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A path from the config: a leading "~/" is the home directory (kept as is without HOME).
pub fn expand_path(path: &str) -> PathBuf {
    expand_home(path).unwrap_or_else(|| PathBuf::from(path))
}

fn expand_home(path: &str) -> Option<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(rest)),
        None => Some(PathBuf::from(path)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_parses() {
        let cfg = Config::default_config().unwrap();
        assert_eq!(cfg.models.audio_precision, PrecisionChoice::Auto);
        assert_eq!(cfg.capture.video_fps, 2);
        assert_eq!(cfg.capture.max_video_side_px, Some(640));
        assert_eq!(cfg.models.auto_fp32_min_speedup, 1.5);
    }

    #[test]
    fn user_file_overrides_only_its_keys() {
        let cfg = Config::from_toml_str("[capture]\nvideo_fps = 5\n", "test").unwrap();
        assert_eq!(cfg.capture.video_fps, 5);
        assert_eq!(cfg.models.visual_precision, PrecisionChoice::Auto);
    }

    #[test]
    fn bad_precision_names_the_key() {
        let err = Config::from_toml_str("[models]\naudio_precision = \"int4\"\n", "t").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("models.audio_precision"), "{msg}");
        assert!(msg.contains("\"auto\", \"fp32\", \"int8\""), "{msg}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Config::from_toml_str("[models]\nthreads = 2\n", "my.toml").unwrap_err();
        let msg = format!("{:#}", anyhow::Error::from(err));
        assert!(msg.contains("my.toml"), "{msg}");
        assert!(msg.contains("threads"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (text, key) in [
            ("[capture]\nvideo_fps = 0\n", "capture.video_fps"),
            (
                "[capture]\nmax_video_side_px = 100\n",
                "capture.max_video_side_px",
            ),
            ("[logging]\nlevel = \"loud\"\n", "logging.level"),
            (
                "[models]\nint8_min_cosine = 2.0\n",
                "models.int8_min_cosine",
            ),
            (
                "[models]\nauto_fp32_min_speedup = 0.5\n",
                "models.auto_fp32_min_speedup",
            ),
        ] {
            let msg = Config::from_toml_str(text, "t").unwrap_err().to_string();
            assert!(msg.contains(key), "{text} -> {msg}");
        }
    }

    #[test]
    fn default_has_test_sources_and_presets() {
        let cfg = Config::default_config().unwrap();
        assert!(matches!(cfg.capture.sources, LiveSources::Devices { .. }));
        assert_eq!(cfg.window.seconds, 60);
        let ids: Vec<&str> = cfg
            .presets
            .questions
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(ids, ["count", "louder"]);
        assert_eq!(
            cfg.presets.questions[1].question.values(),
            ["violin", "piano"]
        );
        assert_eq!(
            cfg.gpio,
            GpioConfig {
                button_pin: None,
                led_pin: None
            }
        );
    }

    #[test]
    fn a_preset_that_fits_no_template_names_its_key() {
        let text = "[[presets.question]]\nid = \"a\"\ntext = \"How many instruments are sounding in the video?\"\n\
                    [[presets.question]]\nid = \"b\"\ntext = \"what is the weather\"\n";
        let msg = Config::from_toml_str(text, "t").unwrap_err().to_string();
        assert!(msg.contains("presets.question[1].text"), "{msg}");
        assert!(msg.contains("\"b\""), "{msg}");
        assert!(msg.contains("closest templates"), "{msg}");
        let dup = "[[presets.question]]\nid = \"a\"\ntext = \"Is there a voiceover?\"\n\
                   [[presets.question]]\nid = \"a\"\ntext = \"Is there a voiceover?\"\n";
        let msg = Config::from_toml_str(dup, "t").unwrap_err().to_string();
        assert!(msg.contains("presets.question[1].id"), "{msg}");
    }

    #[test]
    fn media_replaces_the_two_descriptions() {
        let cfg = Config::from_toml_str("[capture]\nmedia = \"/srv/a.webm\"\n", "t").unwrap();
        assert_eq!(
            cfg.capture.sources,
            LiveSources::Media("/srv/a.webm".into())
        );
        let msg = Config::from_toml_str("[capture]\naudio = \" \"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("capture.audio"), "{msg}");
        let msg = Config::from_toml_str("[capture]\nvideo = \"v4l: \"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("capture.video"), "{msg}");
        assert!(msg.contains("v4l:/dev/video0"), "{msg}");
        let cfg = Config::from_toml_str("[capture]\nvideo = \"v4l:/dev/video2\"\n", "t").unwrap();
        assert!(
            matches!(&cfg.capture.sources, LiveSources::Devices { video, .. } if video == "v4l:/dev/video2")
        );
        let msg = Config::from_toml_str("[window]\nseconds = 5\n", "t")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("window.seconds"), "{msg}");
        let msg = Config::from_toml_str("[gpio]\nled_pin = 40\n", "t")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("gpio.led_pin"), "{msg}");
    }

    #[test]
    fn wrong_type_is_a_parse_error_naming_the_key() {
        let err = Config::from_toml_str("[capture]\nvideo_fps = \"two\"\n", "t").unwrap_err();
        let msg = format!("{:#}", anyhow::Error::from(err));
        assert!(msg.contains("video_fps"), "{msg}");
    }
}
