//! Accuracy of the models as tract runs them, on the real inputs the model build saved in
//! `<model dir>/check_inputs.npz` (speech, instruments, the golden waveform, real photos):
//! tract fp32 against onnxruntime fp32 (max abs difference), and tract int8 against tract
//! fp32 (embedding cosine, top-1 agreement).

use std::path::Path;

use anyhow::Context;
use ndarray::{ArrayD, Axis};
use ndarray_npy::NpzReader;

use super::Manifest;
use super::Model;

/// What one model variant measured.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// `yamnet.int8` etc.
    pub model: String,
    /// Inputs compared.
    pub inputs: usize,
    /// Max abs difference of the embedding to onnxruntime fp32.
    pub max_abs_vs_ort: f32,
    /// Mean embedding cosine to tract fp32 (1 for fp32 itself).
    pub mean_cosine: f32,
    /// Worst embedding cosine to tract fp32.
    pub min_cosine: f32,
    /// Fraction of inputs whose top class equals tract fp32's.
    pub top1_agreement: f32,
}

/// One encoder's check: its input array and reference outputs in the npz.
struct Plan {
    model: &'static str,
    input: &'static str,
    embedding: (&'static str, &'static str),
    logits: (&'static str, &'static str),
}

const PLANS: [Plan; 2] = [
    Plan {
        model: "yamnet",
        input: "logmel",
        embedding: ("embedding", "yamnet_embedding"),
        logits: ("logits", "yamnet_logits"),
    },
    Plan {
        model: "efficientnet_lite0",
        input: "image",
        embedding: ("pooled", "effnet_pooled"),
        logits: ("logits", "effnet_logits"),
    },
];

/// Runs every model variant in the manifest on the saved inputs.
pub fn check_models(dir: &Path) -> anyhow::Result<Vec<CheckRow>> {
    let manifest = Manifest::load(dir)?;
    let path = dir.join("check_inputs.npz");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut npz = NpzReader::new(file).with_context(|| format!("reading {}", path.display()))?;
    let mut read = |name: &str| -> anyhow::Result<ArrayD<f32>> {
        npz.by_name(&format!("{name}.npy"))
            .or_else(|_| npz.by_name(name))
            .with_context(|| format!("array {name:?} in {}", path.display()))
    };
    let mut rows = Vec::new();
    for plan in &PLANS {
        let inputs = read(plan.input)?;
        let ref_emb = read(plan.embedding.1)?;
        let n = inputs.len_of(Axis(0));
        let mut fp32_emb: Vec<Vec<f32>> = Vec::new();
        let mut fp32_top: Vec<usize> = Vec::new();
        // fp32 first (the reference), then every other variant of the model in the manifest
        // (`int8`, and any experimental variant a model build wrote).
        let mut precisions = vec!["fp32".to_string()];
        precisions.extend(
            manifest
                .models
                .iter()
                .filter(|m| m.name == plan.model && m.precision != "fp32")
                .map(|m| m.precision.clone()),
        );
        for precision in &precisions {
            let Some(entry) = manifest.find(plan.model, precision) else {
                continue;
            };
            if precision != "fp32" && fp32_emb.is_empty() {
                continue;
            }
            let mut model = Model::load(&manifest, entry, 1)?;
            let emb_index = entry
                .output(plan.embedding.0)
                .with_context(|| format!("{} has no output {}", entry.id(), plan.embedding.0))?
                .0;
            let logits_index = entry
                .output(plan.logits.0)
                .with_context(|| format!("{} has no output {}", entry.id(), plan.logits.0))?
                .0;
            let mut row = CheckRow {
                model: entry.id(),
                inputs: n,
                max_abs_vs_ort: 0.0,
                mean_cosine: 0.0,
                min_cosine: f32::INFINITY,
                top1_agreement: 0.0,
            };
            for i in 0..n {
                let x = inputs.index_axis(Axis(0), i).to_owned();
                let mut shape = vec![1];
                shape.extend_from_slice(x.shape());
                let data: Vec<f32> = x.iter().copied().collect();
                model.run(&[(&shape, &data)])?;
                let emb = model.output(emb_index)?.to_vec();
                let top = argmax(model.output(logits_index)?);
                let reference = ref_emb.index_axis(Axis(0), i);
                for (a, b) in emb.iter().zip(reference.iter()) {
                    row.max_abs_vs_ort = row.max_abs_vs_ort.max((a - b).abs());
                }
                if precision == "fp32" {
                    fp32_emb.push(emb);
                    fp32_top.push(top);
                    row.mean_cosine += 1.0 / n as f32;
                    row.min_cosine = 1.0;
                    row.top1_agreement += 1.0 / n as f32;
                } else {
                    let c = cosine(&emb, &fp32_emb[i]);
                    row.mean_cosine += c / n as f32;
                    row.min_cosine = row.min_cosine.min(c);
                    if top == fp32_top[i] {
                        row.top1_agreement += 1.0 / n as f32;
                    }
                }
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (ab / (aa.sqrt() * bb.sqrt())) as f32
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}
