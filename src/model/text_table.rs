//! The text embedding table: the sentence embedding of every question text and prompt the
//! templates can make, computed at model build time (`models/export_text_table.py`, the same
//! MiniLM ONNX file the [`super::text::TextEncoder`] runs).
//!
//! Why a table: a question must match one of the 33 templates and every slot takes a value
//! from a closed vocabulary, so the texts are a finite set (22,808). Looking one up takes
//! microseconds where the encoder takes milliseconds, and the encoder's weights (90 MB) stay
//! out of the daemon's memory. The rows stay on disk: a lookup reads one row (768 bytes) at
//! its offset, so only the index of texts (about 2 MB) is resident.
//!
//! **Owns** the open table file and the text → row index. Both files are checked against the
//! manifest's sha256 and shape at load.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::manifest::{Manifest, TextTableEntry};
use super::text::EMBEDDING_DIM;
use super::{ModelError, sha256_file};

/// Bytes of one float16 row.
const ROW_BYTES: usize = EMBEDDING_DIM * 2;

/// The loaded table: the open rows file and the index of its texts.
#[derive(Debug)]
pub struct TextTable {
    file: File,
    path: PathBuf,
    keys_path: PathBuf,
    index: HashMap<Box<str>, u32>,
    entry: TextTableEntry,
}

impl TextTable {
    /// Loads the table the manifest lists, or `None` if none was built.
    pub fn load(manifest: &Manifest) -> Result<Option<Self>, ModelError> {
        let Some(entry) = manifest.text_table.clone() else {
            return Ok(None);
        };
        let path = manifest.dir.join(&entry.file);
        let keys_path = manifest.dir.join(&entry.keys);
        let bad = |path: &PathBuf, problem: String| ModelError::TextTable {
            path: path.clone(),
            problem,
        };
        if entry.dim != EMBEDDING_DIM || entry.dtype != "f16" {
            return Err(bad(
                &path,
                format!(
                    "the manifest declares {} × {} {}, expected {EMBEDDING_DIM} f16 values per row",
                    entry.rows, entry.dim, entry.dtype
                ),
            ));
        }
        for (file, expected) in [(&path, &entry.sha256), (&keys_path, &entry.keys_sha256)] {
            let actual = sha256_file(file).map_err(|e| bad(file, format!("reading: {e}")))?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(bad(
                    file,
                    format!("sha256 {actual}, the manifest says {expected} (corrupt or replaced)"),
                ));
            }
        }
        let keys = std::fs::read_to_string(&keys_path)
            .map_err(|e| bad(&keys_path, format!("reading: {e}")))?;
        let mut index = HashMap::with_capacity(entry.rows);
        for (row, text) in keys.lines().enumerate() {
            let row = u32::try_from(row).map_err(|_| bad(&keys_path, "too many rows".into()))?;
            index.insert(text.into(), row);
        }
        if index.len() != entry.rows {
            return Err(bad(
                &keys_path,
                format!(
                    "{} distinct texts, the manifest says {} rows",
                    index.len(),
                    entry.rows
                ),
            ));
        }
        let file = File::open(&path).map_err(|e| bad(&path, format!("opening: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad(&path, format!("reading: {e}")))?
            .len();
        let expected = (entry.rows * ROW_BYTES) as u64;
        if len != expected {
            return Err(bad(
                &path,
                format!(
                    "{len} bytes, expected {expected} ({} rows of {EMBEDDING_DIM} float16)",
                    entry.rows
                ),
            ));
        }
        Ok(Some(TextTable {
            file,
            path,
            keys_path,
            index,
            entry,
        }))
    }

    /// Identifier for logs and status: `text_table.f16`.
    pub fn id(&self) -> String {
        format!("text_table.{}", self.entry.dtype)
    }

    /// The manifest entry.
    pub fn entry(&self) -> &TextTableEntry {
        &self.entry
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table holds no text.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the table has a row for `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.index.contains_key(text)
    }

    /// Writes the embedding of `text` into `out` (384 values).
    pub fn embed(&self, text: &str, out: &mut [f32]) -> Result<(), ModelError> {
        if out.len() != EMBEDDING_DIM {
            return Err(ModelError::InputShape {
                model: self.id(),
                tensor: "embedding output buffer".into(),
                expected: format!("{EMBEDDING_DIM} values"),
                actual: vec![out.len()],
            });
        }
        let row = *self
            .index
            .get(text)
            .ok_or_else(|| ModelError::NotInTextTable {
                path: self.keys_path.clone(),
                text: text.to_owned(),
            })?;
        let mut bytes = [0u8; ROW_BYTES];
        self.file
            .read_exact_at(&mut bytes, u64::from(row) * ROW_BYTES as u64)
            .map_err(|e| ModelError::TextTable {
                path: self.path.clone(),
                problem: format!("reading row {row}: {e}"),
            })?;
        for (dst, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *dst = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
        Ok(())
    }
}
