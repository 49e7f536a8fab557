//! The model layer on the real built models: goldens, the manifest checks and their messages.

use std::path::Path;

use tspm_edge::model::{Manifest, Model, ModelError};

use crate::util;

fn manifest() -> Manifest {
    Manifest::load(&util::model_dir()).unwrap()
}

fn load(name: &str, precision: &str) -> Model {
    let m = manifest();
    let entry = m
        .find(name, precision)
        .unwrap_or_else(|| panic!("{name}.{precision} built"));
    Model::load(&m, entry, 1).unwrap()
}

/// The golden log-mel patch (flattened [96, 64]) and Google's YAMNet embedding of it.
fn golden_patch_and_embedding() -> (Vec<f32>, ndarray::Array1<f32>) {
    let patch: ndarray::Array2<f32> =
        ndarray_npy::read_npy(util::golden("yamnet/logmel_patch_96x64.npy")).unwrap();
    let emb = ndarray_npy::read_npy(util::golden("yamnet/yamnet_embedding_1024.npy")).unwrap();
    (patch.iter().copied().collect(), emb)
}

/// tract's fp32 YAMNet on the golden patch gives Google's embedding and logits to 1e-4.
#[test]
fn yamnet_fp32_matches_the_golden_embedding() {
    let (data, want_emb) = golden_patch_and_embedding();
    let want_logits: ndarray::Array1<f32> =
        ndarray_npy::read_npy(util::golden("yamnet/yamnet_logits_521.npy")).unwrap();
    let mut model = load("yamnet", "fp32");
    model.run(&[(&[1, 1, 96, 64], &data)]).unwrap();
    let emb = model.output_by_name("embedding").unwrap();
    let logits = model.output_by_name("logits").unwrap();
    let max_emb = emb
        .iter()
        .zip(want_emb.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let max_logit = logits
        .iter()
        .zip(want_logits.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_emb <= 1e-4, "embedding max abs diff {max_emb}");
    assert!(max_logit <= 1e-4, "logits max abs diff {max_logit}");
}

/// A plan in half precision (tract's `f32_to_f16` transform, as `bench --transform` applies
/// it) still takes and gives f32: the model layer converts at the boundary of each run. On the
/// golden patch f16 YAMNet stays close to Google's embedding (f16 keeps ~3 decimal digits).
#[test]
fn a_half_precision_plan_takes_and_gives_f32() {
    let (data, want) = golden_patch_and_embedding();
    let m = manifest();
    let entry = m.find("yamnet", "fp32").unwrap();
    let mut model = Model::load_with(&m, entry, 1, &["f32_to_f16".to_string()]).unwrap();
    model.run(&[(&[1, 1, 96, 64], &data)]).unwrap();
    let emb = model.output_by_name("embedding").unwrap();
    assert_eq!(emb.len(), 1024);
    let dot: f32 = emb.iter().zip(want.iter()).map(|(a, b)| a * b).sum();
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
    let cos = dot / (norm(&mut emb.iter().copied()) * norm(&mut want.iter().copied()));
    assert!(
        cos >= 0.999,
        "f16 YAMNet embedding cosine to the golden {cos}"
    );
}

/// The log-mel front end and YAMNet together, from the golden waveform.
#[test]
fn waveform_to_embedding_matches_the_golden() {
    let wave: ndarray::Array1<f32> =
        ndarray_npy::read_npy(util::golden("yamnet/wave_16k_15600.npy")).unwrap();
    let want: ndarray::Array1<f32> =
        ndarray_npy::read_npy(util::golden("yamnet/yamnet_embedding_1024.npy")).unwrap();
    let mut fe = tspm_edge::dsp::MelFrontend::new();
    let mut patch = vec![0.0; 96 * 64];
    fe.process(wave.as_slice().unwrap(), &mut patch).unwrap();
    let mut model = load("yamnet", "fp32");
    model.run(&[(&[1, 1, 96, 64], &patch)]).unwrap();
    let emb = model.output_by_name("embedding").unwrap();
    let cos = tspm_edge::model::check::cosine(emb, want.as_slice().unwrap());
    let max = emb
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    // The patch itself is within 1e-4 of the golden; through the net that stays small.
    assert!(cos > 0.99999 && max < 1e-3, "cosine {cos}, max abs {max}");
}

/// Every built variant runs in tract on the saved real inputs; fp32 matches onnxruntime and
/// int8 stays close to fp32 (the thresholds are the ones the model build checks).
#[test]
fn tract_check_on_real_inputs() {
    let rows = tspm_edge::model::check::check_models(&util::model_dir()).unwrap();
    assert!(rows.iter().any(|r| r.model == "yamnet.fp32"), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.model == "efficientnet_lite0.fp32"),
        "{rows:?}"
    );
    for r in &rows {
        assert!(r.inputs >= 3, "{r:?}");
        if r.model.ends_with("fp32") {
            assert!(r.max_abs_vs_ort <= 1e-3, "tract fp32 vs onnxruntime: {r:?}");
        } else {
            let recorded = manifest()
                .models
                .iter()
                .find(|m| m.id() == r.model)
                .and_then(|m| m.check.clone())
                .map(|c| c.mean_cosine)
                .unwrap_or(0.0);
            // tract must reproduce what onnxruntime measured at build time, within 0.01.
            assert!(
                r.mean_cosine >= recorded - 0.01,
                "{r:?} vs build-time cosine {recorded}"
            );
        }
    }
}

fn copy_model_dir(to: &Path) -> Manifest {
    let src = util::model_dir();
    for f in ["manifest.toml", "yamnet.fp32.onnx"] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
    Manifest::load(to).unwrap()
}

#[test]
fn corrupt_file_is_refused_by_checksum_naming_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let m = copy_model_dir(tmp.path());
    let path = tmp.path().join("yamnet.fp32.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = Model::load(&m, m.find("yamnet", "fp32").unwrap(), 1).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("yamnet.fp32") && msg.contains("sha256"),
        "{msg}"
    );
}

#[test]
fn truncated_file_with_matching_checksum_is_a_load_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = copy_model_dir(tmp.path());
    let path = tmp.path().join("yamnet.fp32.onnx");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let sha = tspm_edge::model::sha256_file(&path).unwrap();
    m.models.iter_mut().for_each(|e| e.sha256 = sha.clone());
    let err = Model::load(&m, m.find("yamnet", "fp32").unwrap(), 1).unwrap_err();
    assert!(matches!(err, ModelError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("yamnet.fp32.onnx"), "{err}");
}

#[test]
fn model_that_differs_from_the_manifest_names_tensor_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = copy_model_dir(tmp.path());
    // Declare a 512-wide embedding: the file's 1024-wide output no longer fits the contract.
    let entry = m
        .models
        .iter_mut()
        .find(|e| e.id() == "yamnet.fp32")
        .unwrap();
    let out = entry
        .outputs
        .iter_mut()
        .find(|o| o.name == "embedding")
        .unwrap();
    out.shape[1] = tspm_edge::model::Dim::Fixed(512);
    let err = Model::load(&m, m.find("yamnet", "fp32").unwrap(), 1).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Contract { .. }), "{err:?}");
    assert!(
        msg.contains("yamnet.fp32") && msg.contains("embedding"),
        "{msg}"
    );
    assert!(msg.contains("512") && msg.contains("1024"), "{msg}");

    // A renamed input is refused too.
    let mut m = copy_model_dir(tmp.path());
    m.models
        .iter_mut()
        .for_each(|e| e.inputs[0].name = "spectrogram".into());
    let msg = Model::load(&m, m.find("yamnet", "fp32").unwrap(), 1)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("spectrogram") && msg.contains("logmel"),
        "{msg}"
    );
}

#[test]
fn wrong_input_shape_is_refused_before_tract_with_names() {
    let mut model = load("yamnet", "fp32");
    let data = vec![0.0f32; 64 * 96];
    let err = model.run(&[(&[1, 1, 64, 96], &data)]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("yamnet.fp32") && msg.contains("logmel"),
        "{msg}"
    );
    assert!(
        msg.contains("[N, 1, 96, 64]") && msg.contains("[1, 1, 64, 96]"),
        "{msg}"
    );
    // Too few values for the declared shape.
    let err = model.run(&[(&[1, 1, 96, 64], &data[..100])]).unwrap_err();
    assert!(err.to_string().contains("6144 values"), "{err}");
}

#[test]
fn missing_manifest_tells_how_to_build() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Manifest::load(tmp.path()).unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains("models/build.sh") && msg.contains("manifest.toml"),
        "{msg}"
    );
}

#[test]
fn precision_choice_follows_config_and_accuracy_gate() {
    use tspm_edge::config::PrecisionChoice;
    use tspm_edge::model::precision::choose;
    let m = manifest();
    let fixed = choose(&m, "yamnet", PrecisionChoice::Int8, 0.98, 1.5).unwrap();
    assert_eq!(fixed.entry.precision, "int8");
    let fixed = choose(&m, "yamnet", PrecisionChoice::Fp32, 0.98, 1.5).unwrap();
    assert_eq!(fixed.entry.precision, "fp32");
    // An int8 model below the required cosine is never picked by auto, and the reason says so.
    let gated = choose(&m, "efficientnet_lite0", PrecisionChoice::Auto, 0.9999, 1.5).unwrap();
    assert_eq!(gated.entry.precision, "fp32");
    assert!(gated.reason.contains("below"), "{}", gated.reason);
    // An unknown model is an error naming it.
    let err = choose(&m, "vggish", PrecisionChoice::Fp32, 0.98, 1.5).unwrap_err();
    assert!(err.to_string().contains("vggish"), "{err}");
}

/// A model directory holding only YAMNet's two variants and the manifest (a cache of its own).
fn yamnet_alone() -> (tempfile::TempDir, Manifest) {
    let tmp = tempfile::tempdir().unwrap();
    let src = util::model_dir();
    for f in ["manifest.toml", "yamnet.fp32.onnx", "yamnet.int8.onnx"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let m = Manifest::load(tmp.path()).unwrap();
    (tmp, m)
}

/// The precision cache's text with its `key` timing (`fp32_ms` / `int8_ms`) set to `ms`.
fn with_timing(cache: &str, key: &str, ms: f64) -> String {
    let line = cache.lines().find(|l| l.starts_with(key)).unwrap();
    cache.replace(line, &format!("{key} = {ms:?}"))
}

/// `auto` times both variants once and caches the verdict; the cached verdict is reused.
#[test]
fn auto_precision_is_measured_once_and_cached() {
    use tspm_edge::config::PrecisionChoice;
    use tspm_edge::model::precision::{CACHE_FILE, choose};
    let (tmp, m) = yamnet_alone();
    let first = choose(&m, "yamnet", PrecisionChoice::Auto, 0.98, 1.5).unwrap();
    assert!(first.reason.contains("ms"), "{}", first.reason);
    let cache = std::fs::read_to_string(tmp.path().join(CACHE_FILE)).unwrap();
    assert!(
        cache.contains("[yamnet]") && cache.contains("fp32_ms") && cache.contains("int8_ms"),
        "{cache}"
    );
    // Tamper with the cached timings: a second choice must read them instead of re-timing.
    let fast = if first.entry.precision == "int8" {
        "fp32_ms"
    } else {
        "int8_ms"
    };
    std::fs::write(tmp.path().join(CACHE_FILE), with_timing(&cache, fast, 1e-3)).unwrap();
    let second = choose(&m, "yamnet", PrecisionChoice::Auto, 0.98, 1.5).unwrap();
    assert_ne!(second.entry.precision, first.entry.precision);
}

/// `auto` takes fp32 over an eligible int8 variant only when fp32 is at least
/// `auto_fp32_min_speedup` times as fast (int8 holds half the memory), and says why.
#[test]
fn auto_takes_int8_unless_fp32_is_enough_faster() {
    use tspm_edge::config::PrecisionChoice;
    use tspm_edge::model::precision::{CACHE_FILE, choose};
    let (tmp, m) = yamnet_alone();
    choose(&m, "yamnet", PrecisionChoice::Auto, 0.98, 1.0).unwrap();
    // Known timings: fp32 2 ms, int8 5 ms (fp32 2.5x as fast).
    let cache = std::fs::read_to_string(tmp.path().join(CACHE_FILE)).unwrap();
    let cache = with_timing(&with_timing(&cache, "fp32_ms", 2.0), "int8_ms", 5.0);
    std::fs::write(tmp.path().join(CACHE_FILE), cache).unwrap();
    for (min_speedup, expected) in [(1.0, "fp32"), (2.5, "fp32"), (2.6, "int8"), (100.0, "int8")] {
        let c = choose(&m, "yamnet", PrecisionChoice::Auto, 0.98, min_speedup).unwrap();
        assert_eq!(
            c.entry.precision, expected,
            "min speed-up {min_speedup}: {}",
            c.reason
        );
        assert!(
            c.reason.contains("2.50x") && c.reason.contains("auto_fp32_min_speedup"),
            "{}",
            c.reason
        );
    }
    // The accuracy gate still comes first: an int8 variant below it is never taken.
    let gated = choose(&m, "yamnet", PrecisionChoice::Auto, 1.0, 100.0).unwrap();
    assert_eq!(gated.entry.precision, "fp32", "{}", gated.reason);
}

/// The model layer's own tract transforms, `fast_quantize_linear` (a vectorised
/// QuantizeLinear) and `unfused_residual_add` (the attention's residual add kept out of its
/// product), change no bit of a model's outputs: the head's per-second and window parts, fp32
/// and int8, on the saved real features of a 60-second case, with every default transform and
/// with each of the two left out.
#[test]
fn the_model_layers_own_transforms_change_no_output_bit() {
    let m = manifest();
    let path = util::model_dir().join("tspm_head_check.npz");
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut read = |k: &str| -> Vec<f32> {
        let a: ndarray::ArrayD<f32> = npz
            .by_name(&format!("t60/{k}.npy"))
            .or_else(|_| npz.by_name(&format!("t60/{k}")))
            .unwrap();
        a.iter().copied().collect()
    };
    let (audio, visual, patches, valid) = (
        read("audio"),
        read("visual"),
        read("patches"),
        read("valid"),
    );
    let t = valid.len();
    let variants = [
        Vec::new(),
        vec!["-fast_quantize_linear".to_string()],
        vec!["-unfused_residual_add".to_string()],
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let dim = |d: &tspm_edge::model::Dim| d.to_string().parse::<usize>().unwrap();

    for precision in ["fp32", "int8"] {
        let second = m.find("tspm_second", precision).unwrap();
        let rows: Vec<Vec<f32>> = variants
            .iter()
            .map(|tr| {
                let mut s = Model::load_sized(&m, second, &[("N", t)], tr).unwrap();
                s.run(&[
                    (&[t, 1024], &audio),
                    (&[t, 1280], &visual),
                    (&[t, 14, 1280], &patches),
                ])
                .unwrap();
                s.output_by_name("packed").unwrap().to_vec()
            })
            .collect();
        for (r, tr) in rows.iter().zip(&variants).skip(1) {
            assert_eq!(
                bits(&rows[0]),
                bits(r),
                "tspm_second.{precision} rows, {tr:?}"
            );
        }

        let window = m.find("tspm_window", precision).unwrap();
        let width = dim(second.outputs[0].shape.last().unwrap());
        let cols = dim(window.inputs[0].shape.last().unwrap());
        let packed: Vec<f32> = rows[0]
            .chunks(width)
            .flat_map(|row| row[width - cols..].iter().copied())
            .collect();
        let contexts: Vec<Vec<u32>> = variants
            .iter()
            .map(|tr| {
                let mut w = Model::load_sized(&m, window, &[("N", 1), ("T", t)], tr).unwrap();
                w.run(&[(&[1, t, cols], &packed), (&[1, t], &valid)])
                    .unwrap();
                bits(w.output(0).unwrap())
            })
            .collect();
        for (c, tr) in contexts.iter().zip(&variants).skip(1) {
            assert_eq!(&contexts[0], c, "tspm_window.{precision} context, {tr:?}");
        }
    }
}
