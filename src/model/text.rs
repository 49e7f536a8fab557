//! The text encoder: all-MiniLM-L6-v2 sentence embeddings of questions and prompts.
//!
//! The model build (`models/export_text.py`) ships the network as `minilm.fp32.onnx` with
//! sentence-transformers' mean pooling and L2 normalisation inside the graph, and the model's
//! own `tokenizer.json` beside it (the manifest's `tokenizer` key). This module only tokenizes:
//! the `tokenizers` crate applies that file as it is written (BERT normaliser: lower-casing,
//! accent stripping, control-character cleanup; BERT pre-tokenizer; WordPiece; `[CLS] … [SEP]`),
//! pads to the fixed length the plan was built for and runs the model. The result is the
//! sentence embedding, unit length, as `SentenceTransformer.encode` gives it.
//!
//! **Length.** The plan is built for `max_tokens` tokens ([`MAX_TOKENS`] = 32 by default; the
//! longest MUSIC-AVQA question is 21 tokens and the longest TPC prompt 23, `[CLS]` and `[SEP]`
//! included, measured by the model build over the test and validation splits). Shorter text is
//! padded with `[PAD]` and attention mask 0, which leaves the embedding unchanged. Longer text is
//! **truncated**: `[CLS]`, the first `max_tokens − 2` word pieces, `[SEP]` — what
//! sentence-transformers does at its own maximum length — and [`Embedded::truncated`] says so.
//! Nothing is logged; the caller decides whether that matters.
//!
//! Text is embedded once per configured question, not per second: `embed` allocates (the
//! tokenizer does). The `tokenizers` types stay inside this module.

use std::fmt;

use super::manifest::{Manifest, ModelEntry};
use super::text_table::TextTable;
use super::{Input, Model, ModelError};
use crate::config::TextChoice;

/// Logical name of the text encoder in the manifest.
pub const TEXT_MODEL: &str = "minilm";
/// Width of the sentence embedding.
pub const EMBEDDING_DIM: usize = 384;
/// Default token length of the plan (`L`), `[CLS]` and `[SEP]` included.
pub const MAX_TOKENS: usize = 32;

/// What [`TextEncoder::embed`] did with a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    /// Tokens the model saw, `[CLS]` and `[SEP]` included (≤ the encoder's `max_tokens`).
    pub tokens: usize,
    /// Whether the text had more word pieces than fit and its tail was dropped.
    pub truncated: bool,
}

/// The loaded text encoder: tokenizer, tract plan with its live state, input buffers.
pub struct TextEncoder {
    tokenizer: tokenizers::Tokenizer,
    model: Model,
    max_tokens: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
}

impl fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextEncoder")
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl TextEncoder {
    /// Loads the fp32 text encoder for [`MAX_TOKENS`] tokens.
    pub fn load(manifest: &Manifest) -> Result<Self, ModelError> {
        Self::load_with(manifest, "fp32", MAX_TOKENS)
    }

    /// Loads the text encoder at `precision` with a plan for `max_tokens` tokens (≥ 2:
    /// `[CLS]` and `[SEP]`).
    pub fn load_with(
        manifest: &Manifest,
        precision: &str,
        max_tokens: usize,
    ) -> Result<Self, ModelError> {
        let entry =
            manifest
                .find(TEXT_MODEL, precision)
                .ok_or_else(|| ModelError::NotInManifest {
                    dir: manifest.dir.clone(),
                    name: TEXT_MODEL.into(),
                    precision: precision.into(),
                })?;
        if max_tokens < 2 {
            return Err(ModelError::Contract {
                model: entry.id(),
                tensor: "token length L".into(),
                expected: "at least 2 tokens ([CLS] and [SEP])".into(),
                actual: max_tokens.to_string(),
            });
        }
        match entry.output("embedding") {
            Some((_, spec)) if spec.row_len() == EMBEDDING_DIM => {}
            found => {
                return Err(ModelError::Contract {
                    model: entry.id(),
                    tensor: "output \"embedding\"".into(),
                    expected: format!("[N, {EMBEDDING_DIM}]"),
                    actual: found.map_or("absent".into(), |(_, s)| s.shape_string()),
                });
            }
        }
        let tokenizer = load_tokenizer(manifest, entry, max_tokens)?;
        let model = Model::load_sized(manifest, entry, &[("N", 1), ("L", max_tokens)], &[])?;
        Ok(TextEncoder {
            tokenizer,
            model,
            max_tokens,
            ids: vec![0; max_tokens],
            mask: vec![0; max_tokens],
        })
    }

    /// The model (id, manifest entry).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The token length the plan was built for (`L`).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids the model sees for `text`: `[CLS]`, word pieces, `[SEP]`, truncated to
    /// [`TextEncoder::max_tokens`], without padding.
    pub fn token_ids(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let (ids, mask, _) = self.encode(text)?;
        Ok(ids
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m != 0)
            .map(|(&id, _)| i64::from(id))
            .collect())
    }

    /// Writes the unit-length sentence embedding of `text` into `out` (384 values).
    pub fn embed(&mut self, text: &str, out: &mut [f32]) -> Result<Embedded, ModelError> {
        if out.len() != EMBEDDING_DIM {
            return Err(ModelError::InputShape {
                model: self.model.entry().id(),
                tensor: "embedding output buffer".into(),
                expected: format!("{EMBEDDING_DIM} values"),
                actual: vec![out.len()],
            });
        }
        let (ids, mask, truncated) = self.encode(text)?;
        if ids.len() != self.max_tokens || mask.len() != self.max_tokens {
            return Err(self.run_error(format!(
                "the tokenizer gave {} ids for a plan of {} tokens",
                ids.len(),
                self.max_tokens
            )));
        }
        for (dst, &src) in self.ids.iter_mut().zip(&ids) {
            *dst = i64::from(src);
        }
        for (dst, &src) in self.mask.iter_mut().zip(&mask) {
            *dst = i64::from(src);
        }
        let shape = [1, self.max_tokens];
        self.model.run_inputs(&[
            Input::I64(&shape, &self.ids),
            Input::I64(&shape, &self.mask),
        ])?;
        let embedding = self.model.output_by_name("embedding")?;
        if embedding.len() != EMBEDDING_DIM {
            return Err(self.run_error(format!(
                "the model gave {} values, expected {EMBEDDING_DIM}",
                embedding.len()
            )));
        }
        out.copy_from_slice(embedding);
        Ok(Embedded {
            tokens: mask.iter().filter(|&&m| m != 0).count(),
            truncated,
        })
    }

    /// Tokenizes, padded to `max_tokens`: (ids, attention mask, truncated).
    fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>, bool), ModelError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| self.run_error(format!("tokenizing {text:?}: {e}")))?;
        Ok((
            encoding.get_ids().to_vec(),
            encoding.get_attention_mask().to_vec(),
            !encoding.get_overflowing().is_empty(),
        ))
    }

    fn run_error(&self, message: String) -> ModelError {
        ModelError::Run {
            model: self.model.entry().id(),
            source: anyhow::anyhow!(message),
        }
    }
}

/// Reads the entry's `tokenizer` file and sets truncation and padding to `max_tokens`
/// (tokenizer.json as shipped truncates and pads to 128; the pad token and id stay the file's).
fn load_tokenizer(
    manifest: &Manifest,
    entry: &ModelEntry,
    max_tokens: usize,
) -> Result<tokenizers::Tokenizer, ModelError> {
    let file = entry
        .extra
        .get("tokenizer")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ModelError::Contract {
            model: entry.id(),
            tensor: "tokenizer".into(),
            expected: "a `tokenizer = \"<file>\"` key naming its tokenizer.json".into(),
            actual: "no tokenizer key".into(),
        })?;
    let path = manifest.dir.join(file);
    let bytes = std::fs::read(&path).map_err(|source| ModelError::FileRead {
        model: entry.id(),
        path: path.clone(),
        source,
    })?;
    let load_err = |e: tokenizers::Error| ModelError::Load {
        model: entry.id(),
        path: path.clone(),
        source: anyhow::anyhow!("tokenizer: {e}"),
    };
    let mut tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(load_err)?;
    let padding = tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::Fixed(max_tokens),
        direction: tokenizers::PaddingDirection::Right,
        pad_to_multiple_of: None,
        ..tokenizer.get_padding().cloned().unwrap_or_default()
    };
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_tokens,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            stride: 0,
            direction: tokenizers::TruncationDirection::Right,
        }))
        .map_err(load_err)?
        .with_padding(Some(padding));
    Ok(tokenizer)
}

/// Where the daemon and `answer` take question and prompt embeddings from: the table the
/// model build made of every template question ([`TextTable`]), or the encoder.
#[derive(Debug)]
pub enum TextEmbedder {
    /// Looked up in the table; the encoder is not loaded.
    Table(Box<TextTable>),
    /// Run through MiniLM in tract.
    Encoder(Box<TextEncoder>),
}

impl TextEmbedder {
    /// Loads what `choice` asks for: `Auto` takes the table when it was built.
    pub fn load(manifest: &Manifest, choice: TextChoice) -> Result<Self, ModelError> {
        let table = match choice {
            TextChoice::Encoder => None,
            TextChoice::Auto | TextChoice::Table => TextTable::load(manifest)?,
        };
        match (table, choice) {
            (Some(table), _) => Ok(TextEmbedder::Table(Box::new(table))),
            (None, TextChoice::Table) => Err(ModelError::NotInManifest {
                dir: manifest.dir.clone(),
                name: "text_table".into(),
                precision: "f16".into(),
            }),
            (None, _) => Ok(TextEmbedder::Encoder(Box::new(TextEncoder::load(
                manifest,
            )?))),
        }
    }

    /// Writes the unit-length sentence embedding of `text` into `out` (384 values).
    pub fn embed(&mut self, text: &str, out: &mut [f32]) -> Result<(), ModelError> {
        match self {
            TextEmbedder::Table(table) => table.embed(text, out),
            TextEmbedder::Encoder(encoder) => encoder.embed(text, out).map(|_| ()),
        }
    }

    /// Identifier for logs and status (`text_table.f16`, `minilm.fp32`).
    pub fn id(&self) -> String {
        match self {
            TextEmbedder::Table(table) => table.id(),
            TextEmbedder::Encoder(encoder) => encoder.model().entry().id(),
        }
    }

    /// Hex sha256 of the table's rows or the encoder's ONNX file.
    pub fn sha256(&self) -> &str {
        match self {
            TextEmbedder::Table(table) => &table.entry().sha256,
            TextEmbedder::Encoder(encoder) => &encoder.model().entry().sha256,
        }
    }

    /// Why this one, for status.
    pub fn reason(&self) -> String {
        match self {
            TextEmbedder::Table(table) => format!(
                "text embeddings: {} template questions and prompts, made by {}",
                table.len(),
                table.entry().encoder
            ),
            TextEmbedder::Encoder(_) => "text encoder".into(),
        }
    }
}
