//! The text embedding table (`models/export_text_table.py`): it holds every question and
//! prompt the templates make, its rows are what the text encoder in tract gives, and a
//! damaged or incomplete table is refused with a message that names the file.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tspm_edge::config::TextChoice;
use tspm_edge::model::check::cosine;
use tspm_edge::model::text::{EMBEDDING_DIM, TextEmbedder, TextEncoder};
use tspm_edge::model::text_table::TextTable;
use tspm_edge::model::{Manifest, ModelError};
use tspm_edge::prompts::{Question, every_question, every_text};

use crate::util;

fn table() -> TextTable {
    TextTable::load(&Manifest::load(&util::model_dir()).unwrap())
        .unwrap()
        .expect("the model build writes the text table (models/export_text_table.py)")
}

#[test]
fn every_template_question_and_prompt_has_a_row() {
    let table = table();
    assert_eq!(table.len(), every_text().len());
    let mut out = vec![0.0f32; EMBEDDING_DIM];
    let mut questions = 0;
    for q in every_question() {
        for text in [q.text(), q.prompt()] {
            table.embed(text, &mut out).unwrap();
            let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 2e-3, "{text:?}: norm {norm}");
        }
        questions += 1;
    }
    assert!(questions > 11_000, "{questions} questions");
}

/// The table is the encoder, precomputed: on a spread of texts (and on real MUSIC-AVQA
/// questions typed as free text), a row is the tract embedding to float16 precision.
#[test]
fn rows_equal_the_text_encoder_in_tract() {
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    let table = table();
    let mut encoder = TextEncoder::load(&manifest).unwrap();
    let texts = every_text();
    let mut picked: Vec<String> = texts.iter().step_by(texts.len() / 40).cloned().collect();
    for typed in [
        "is the violin louder than the piano",
        "How many instruments are sounding in the video?",
        "where is the first sounding instrument",
    ] {
        let q = Question::parse_free_text(typed).unwrap();
        picked.push(q.text().to_string());
        picked.push(q.prompt().to_string());
    }
    let (mut from_table, mut from_encoder) = (vec![0.0; EMBEDDING_DIM], vec![0.0; EMBEDDING_DIM]);
    for text in &picked {
        table.embed(text, &mut from_table).unwrap();
        encoder.embed(text, &mut from_encoder).unwrap();
        let cos = cosine(&from_table, &from_encoder);
        let max_abs = from_table
            .iter()
            .zip(&from_encoder)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // float16 rows: relative error ≤ 2^-11 per value; onnxruntime vs tract ≤ 1e-5.
        assert!(cos >= 0.99999, "{text:?}: cosine {cos}");
        assert!(max_abs <= 1e-3, "{text:?}: max |d| {max_abs}");
    }
}

#[test]
fn a_text_outside_the_templates_is_an_error_naming_it() {
    let table = table();
    let mut out = vec![0.0; EMBEDDING_DIM];
    let err = table
        .embed("Is the kazoo louder than the piano?", &mut out)
        .unwrap_err();
    assert!(matches!(err, ModelError::NotInTextTable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("kazoo") && msg.contains("models.text"),
        "{msg}"
    );
}

/// A model directory with the text table's files copied (the rest of the manifest is not
/// needed by the table).
fn copy_table(to: &Path) -> Manifest {
    let src = util::model_dir();
    let m = Manifest::load(&src).unwrap();
    let entry = m.text_table.clone().unwrap();
    for f in [
        "manifest.toml",
        Manifest::TEXT_TABLE_FILE_NAME,
        &entry.file,
        &entry.keys,
    ] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
    Manifest::load(to).unwrap()
}

#[test]
fn a_damaged_table_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let m = copy_table(tmp.path());
    let entry = m.text_table.clone().unwrap();
    let path = tmp.path().join(&entry.file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = TextTable::load(&m).unwrap_err();
    assert!(matches!(err, ModelError::TextTable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&entry.file) && err.to_string().contains("sha256"),
        "{err}"
    );

    // Right checksum, wrong size: the rows do not fit the declared shape.
    std::fs::write(&path, &bytes[..bytes.len() - 768]).unwrap();
    let mut m = m;
    let t = m.text_table.as_mut().unwrap();
    t.sha256 = tspm_edge::model::sha256_file(&path).unwrap();
    let err = TextTable::load(&m).unwrap_err();
    assert!(err.to_string().contains("bytes, expected"), "{err}");
}

#[test]
fn the_embedder_takes_the_table_unless_told_otherwise() {
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    let auto = TextEmbedder::load(&manifest, TextChoice::Auto).unwrap();
    assert!(matches!(auto, TextEmbedder::Table(_)), "{auto:?}");
    assert_eq!(auto.id(), "text_table.f16");
    let encoder = TextEmbedder::load(&manifest, TextChoice::Encoder).unwrap();
    assert_eq!(encoder.id(), "minilm.fp32");

    // No table built: `auto` falls back to the encoder, `table` is an error.
    let mut without = manifest.clone();
    without.text_table = None;
    let auto = TextEmbedder::load(&without, TextChoice::Auto).unwrap();
    assert_eq!(auto.id(), "minilm.fp32");
    let err = TextEmbedder::load(&without, TextChoice::Table).unwrap_err();
    assert!(err.to_string().contains("text_table"), "{err}");
}
