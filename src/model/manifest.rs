//! The model contract: `manifest.toml` in the model directory, written by `models/build.sh`.
//!
//! Each `[[model]]` names a file, its sha256, and its inputs and outputs (names, shapes with
//! symbolic dims, dtypes). The model layer checks every file against its entry at load time.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;

/// One dimension of a declared tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size (e.g. the batch `N`), any positive size.
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
        }
    }
}

/// A declared tensor: name, shape and element type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The ONNX input or output name.
    pub name: String,
    /// The shape, fixed or symbolic per axis.
    pub shape: Vec<Dim>,
    /// The element type, e.g. `f32`.
    pub dtype: String,
}

impl TensorSpec {
    /// Whether a concrete shape fits this declaration.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(d, &n)| match d {
                Dim::Fixed(f) => *f == n,
                Dim::Symbol(_) => n > 0,
            })
    }

    /// The shape as `[N, 1, 96, 64]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }

    /// The number of elements per batch row: product of the fixed dims after axis 0.
    pub fn row_len(&self) -> usize {
        self.shape
            .iter()
            .skip(1)
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Symbol(_) => 1,
            })
            .product()
    }
}

/// Accuracy of an int8 model against its fp32 twin, measured at build time on real inputs.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckSpec {
    /// Mean embedding cosine.
    pub mean_cosine: f32,
    /// Worst embedding cosine.
    #[serde(default)]
    pub min_cosine: Option<f32>,
    /// Fraction of inputs whose top class agrees.
    #[serde(default)]
    pub top1_agreement: Option<f32>,
    /// Number of real inputs measured.
    #[serde(default)]
    pub inputs: Option<usize>,
}

/// Image preparation the visual encoder expects.
#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessSpec {
    /// Side of the square input.
    pub size: usize,
    /// Per-channel mean (on 0..1 values).
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// One model file.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// Logical model name (`yamnet`, `efficientnet_lite0`, …).
    pub name: String,
    /// `fp32` or `int8`.
    pub precision: String,
    /// File name relative to the manifest.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// Where the weights come from.
    #[serde(default)]
    pub source: String,
    /// Licence of the weights.
    #[serde(default)]
    pub licence: String,
    /// How it was quantised (int8 only).
    #[serde(default)]
    pub recipe: Option<String>,
    /// Declared inputs, in order.
    #[serde(rename = "input")]
    pub inputs: Vec<TensorSpec>,
    /// Declared outputs, in order.
    #[serde(rename = "output")]
    pub outputs: Vec<TensorSpec>,
    /// int8 accuracy check.
    #[serde(default)]
    pub check: Option<CheckSpec>,
    /// Image preparation (visual models).
    #[serde(default)]
    pub preprocess: Option<PreprocessSpec>,
    /// Class-name file (one name per line), relative to the manifest.
    #[serde(default)]
    pub classes: Option<String>,
    /// Reduction lengths K of the file's int8 products (int8 files; the head's exporters
    /// record them). tract's Intel AMX int8 kernel may run the file only when every K is a
    /// multiple of [`super::AMX_INT8_K_STEP`]; absent = unknown, so never.
    #[serde(default)]
    pub int8_k: Option<Vec<u64>>,
    /// Any other keys the build records (kept, not interpreted).
    #[serde(flatten)]
    pub extra: toml::Table,
}

impl ModelEntry {
    /// `yamnet.int8`-style id used in messages and benchmarks.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.precision)
    }

    /// Whether tract's Intel AMX int8 kernel can run this file: a float one (`fp32`, or an
    /// experiment's `fp32-<form>`), or one whose recorded int8 products all have K a multiple
    /// of [`super::AMX_INT8_K_STEP`]. Any other precision (`int8`, an experiment's int8
    /// variant) without `int8_k` is not.
    pub fn amx_int8_safe(&self) -> bool {
        self.precision == "fp32"
            || self.precision.starts_with("fp32-")
            || self
                .int8_k
                .as_ref()
                .is_some_and(|ks| ks.iter().all(|k| k % super::AMX_INT8_K_STEP == 0 && *k > 0))
    }

    /// The recorded int8 reduction lengths for messages: `[9, 512]`, or "not recorded".
    pub fn int8_k_text(&self) -> String {
        self.int8_k
            .as_ref()
            .map_or("not recorded".into(), |ks| format!("{ks:?}"))
    }

    /// The declared output named `name`, with its index.
    pub fn output(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.outputs
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == name)
    }
}

/// The parsed `manifest.toml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Directory the manifest was read from; model files are relative to it.
    pub dir: PathBuf,
    /// Every model file.
    pub models: Vec<ModelEntry>,
    /// The text embedding table, when it was built.
    pub text_table: Option<TextTableEntry>,
}

/// The text embedding table (`manifest-text-table.toml`, written by
/// `models/export_text_table.py`): the embedding of every question and prompt text.
#[derive(Debug, Clone, Deserialize)]
pub struct TextTableEntry {
    /// The rows: `rows × dim` little-endian float16.
    pub file: String,
    /// Hex sha256 of `file`.
    pub sha256: String,
    /// The texts, one per line, row `i` for line `i`.
    pub keys: String,
    /// Hex sha256 of `keys`.
    pub keys_sha256: String,
    /// Number of texts.
    pub rows: usize,
    /// Embedding width.
    pub dim: usize,
    /// Element type of `file`; `f16` is the only one written.
    pub dtype: String,
    /// The encoder that made it, e.g. `minilm.fp32`.
    pub encoder: String,
    /// Hex sha256 of the encoder's ONNX file.
    pub encoder_sha256: String,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "model", default)]
    models: Vec<ModelEntry>,
    text_table: Option<TextTableEntry>,
}

impl Manifest {
    /// The manifest's file name inside a model directory.
    pub const FILE_NAME: &'static str = "manifest.toml";

    /// The head's manifest, written by `models/export_head.py` beside the encoders' one.
    pub const HEAD_FILE_NAME: &'static str = "manifest-head.toml";

    /// The head parts' manifest, written by `models/export_head_parts.py`.
    pub const HEAD_PARTS_FILE_NAME: &'static str = "manifest-head-parts.toml";

    /// The text table's manifest, written by `models/export_text_table.py`.
    pub const TEXT_TABLE_FILE_NAME: &'static str = "manifest-text-table.toml";

    /// Reads `<dir>/manifest.toml`, plus `<dir>/manifest-head.toml`,
    /// `<dir>/manifest-head-parts.toml` and `<dir>/manifest-text-table.toml` when built.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ModelError::ManifestRead {
                path: path.to_path_buf(),
                source,
            })
        };
        let path = dir.join(Self::FILE_NAME);
        let mut manifest = Self::parse(&read(&path)?, dir, &path)?;
        for name in [
            Self::HEAD_FILE_NAME,
            Self::HEAD_PARTS_FILE_NAME,
            Self::TEXT_TABLE_FILE_NAME,
        ] {
            let path = dir.join(name);
            if path.is_file() {
                let more = Self::parse(&read(&path)?, dir, &path)?;
                manifest.models.extend(more.models);
                if more.text_table.is_some() {
                    manifest.text_table = more.text_table;
                }
            }
        }
        Ok(manifest)
    }

    /// Parses manifest text; `path` is only for messages.
    pub fn parse(text: &str, dir: &Path, path: &Path) -> Result<Self, ModelError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|source| ModelError::ManifestParse {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        Ok(Manifest {
            dir: dir.to_path_buf(),
            models: raw.models,
            text_table: raw.text_table,
        })
    }

    /// The entry for `name` at `precision`, if the build produced it.
    pub fn find(&self, name: &str, precision: &str) -> Option<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.name == name && m.precision == precision)
    }

    /// The path of an entry's file.
    pub fn path_of(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(&entry.file)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[model]]
name = "yamnet"
precision = "fp32"
file = "yamnet.fp32.onnx"
sha256 = "00"
[[model.input]]
name = "logmel"
shape = ["N", 1, 96, 64]
dtype = "f32"
[[model.output]]
name = "embedding"
shape = ["N", 1024]
dtype = "f32"
"#;

    #[test]
    fn parses_symbolic_and_fixed_dims() {
        let m = Manifest::parse(SAMPLE, Path::new("/m"), Path::new("/m/manifest.toml")).unwrap();
        let e = m.find("yamnet", "fp32").unwrap();
        assert_eq!(e.inputs[0].shape[0], Dim::Symbol("N".into()));
        assert_eq!(e.inputs[0].shape_string(), "[N, 1, 96, 64]");
        assert!(e.inputs[0].accepts(&[3, 1, 96, 64]));
        assert!(!e.inputs[0].accepts(&[1, 1, 64, 96]));
        assert!(!e.inputs[0].accepts(&[1, 96, 64]));
        assert_eq!(e.outputs[0].row_len(), 1024);
        assert_eq!(m.path_of(e), Path::new("/m/yamnet.fp32.onnx"));
    }

    /// tract's AMX int8 kernel may run an int8 file only when the manifest records every
    /// int8 product's K as a multiple of 64; fp32 files always.
    #[test]
    fn amx_int8_safety_comes_from_the_recorded_reduction_lengths() {
        let int8 = |k: &str| {
            let text = SAMPLE
                .replace("\"fp32\"", "\"int8\"")
                .replace("sha256 = \"00\"", &format!("sha256 = \"00\"\n{k}"));
            let m = Manifest::parse(&text, Path::new("/m"), Path::new("/m/manifest.toml")).unwrap();
            m.find("yamnet", "int8").unwrap().clone()
        };
        let fp32 = Manifest::parse(SAMPLE, Path::new("/m"), Path::new("/m/manifest.toml")).unwrap();
        assert!(fp32.find("yamnet", "fp32").unwrap().amx_int8_safe());
        assert!(int8("int8_k = [512, 1024, 1280]").amx_int8_safe());
        assert!(int8("int8_k = []").amx_int8_safe(), "no int8 products");
        assert!(!int8("int8_k = [9, 512]").amx_int8_safe());
        assert!(!int8("").amx_int8_safe(), "not recorded: unknown");
        let variant = ModelEntry {
            precision: "pw-u8-tensor".into(),
            ..int8("")
        };
        assert!(
            !variant.amx_int8_safe(),
            "an int8 experiment without int8_k"
        );
        let form = ModelEntry {
            precision: "fp32-nchw".into(),
            ..variant
        };
        assert!(form.amx_int8_safe(), "a float experiment");
        assert_eq!(int8("int8_k = [9, 512]").int8_k, Some(vec![9, 512]));
    }
}
