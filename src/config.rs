//! Configuration: the TOML file as written (`Raw*`, serde, unknown keys refused) and the
//! typed, validated [`Config`] the rest of the program uses.
//!
//! The default file is compiled in (`config/tspm-edge.toml`) and printed by
//! `tspm-edge print-default-config`, so the documented defaults and the real ones cannot drift.
//! A user file is merged over the default key by key, so it only needs the keys it changes.
//! Every validation error names the key and the expected form.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The built-in default configuration, with comments.
pub const DEFAULT_CONFIG: &str = include_str!("../config/tspm-edge.toml");

/// Environment variable that overrides `models.dir`.
pub const MODEL_DIR_ENV: &str = "TSPM_MODEL_DIR";

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

/// How an encoder's precision is chosen.
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
}

/// What capture asks of its sources.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Video frames per second delivered to the segmenter.
    pub video_fps: u32,
    /// Longest video side in pixels after scaling; `None` keeps the source size.
    pub max_video_side_px: Option<u32>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: RawModels,
    capture: RawCapture,
    logging: RawLogging,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    dir: String,
    audio_precision: String,
    visual_precision: String,
    int8_min_cosine: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    video_fps: i64,
    max_video_side_px: i64,
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
        ] {
            let msg = Config::from_toml_str(text, "t").unwrap_err().to_string();
            assert!(msg.contains(key), "{text} -> {msg}");
        }
    }

    #[test]
    fn wrong_type_is_a_parse_error_naming_the_key() {
        let err = Config::from_toml_str("[capture]\nvideo_fps = \"two\"\n", "t").unwrap_err();
        let msg = format!("{:#}", anyhow::Error::from(err));
        assert!(msg.contains("video_fps"), "{msg}");
    }
}
