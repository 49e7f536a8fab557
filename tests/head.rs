//! The TSPM head in tract against onnxruntime, on the cases `models/export_head.py` saved
//! (T = 10, 30 with masked seconds, 60, and 60 with only 7 valid seconds).

use ndarray::ArrayD;
use ndarray_npy::NpzReader;
use tspm_edge::model::Manifest;
use tspm_edge::model::head::{Head, HeadInputs};
use tspm_edge::model::head_parts::HeadParts;

use crate::util;

struct Case {
    t: usize,
    arrays: std::collections::HashMap<String, ArrayD<f32>>,
    selected: Vec<i64>,
    int8_selected: Vec<i64>,
}

fn cases() -> Vec<(String, Case)> {
    let path = util::model_dir().join("tspm_head_check.npz");
    let mut npz = NpzReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let names = npz.names().unwrap();
    let mut out = Vec::new();
    for case in ["t10", "t30_masked", "t60", "t60_7valid"] {
        let mut arrays = std::collections::HashMap::new();
        for name in &names {
            let Some(key) = name.strip_prefix(&format!("{case}/")) else {
                continue;
            };
            let key = key.trim_end_matches(".npy").to_string();
            if key.ends_with("selected") {
                continue;
            }
            let a: ArrayD<f32> = npz.by_name(name).unwrap();
            arrays.insert(key, a);
        }
        let sel = |npz: &mut NpzReader<std::fs::File>, k: &str| -> Vec<i64> {
            let a: ArrayD<i64> = npz
                .by_name(&format!("{case}/{k}.npy"))
                .or_else(|_| npz.by_name(&format!("{case}/{k}")))
                .unwrap();
            a.iter().copied().collect()
        };
        let selected = sel(&mut npz, "selected");
        let int8_selected = sel(&mut npz, "int8_selected");
        let t = arrays["valid"].shape()[1];
        out.push((
            case.to_string(),
            Case {
                t,
                arrays,
                selected,
                int8_selected,
            },
        ));
    }
    out
}

/// Calls `f` with the case's saved inputs as the head takes them.
fn with_inputs<R>(case: &Case, f: impl FnOnce(&HeadInputs) -> R) -> R {
    let a = &case.arrays;
    let (audio, visual, patches) = (flat(&a["audio"]), flat(&a["visual"]), flat(&a["patches"]));
    let (question, prompt, valid) = (flat(&a["question"]), flat(&a["prompt"]), flat(&a["valid"]));
    f(&HeadInputs {
        audio: &audio,
        visual: &visual,
        patches: &patches,
        question: &question,
        prompt: &prompt,
        valid: &valid,
    })
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

fn max_abs(a: &[f32], b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn head_in_tract_matches_onnxruntime() {
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    for (name, case) in cases() {
        for precision in ["fp32", "int8"] {
            if manifest.find("tspm_head", precision).is_none() {
                continue;
            }
            let mut head = Head::load(&manifest, precision, case.t).unwrap();
            let a = &case.arrays;
            let out = with_inputs(&case, |x| head.run(x)).unwrap();
            let p = if precision == "int8" { "int8_" } else { "" };
            let tol = if precision == "int8" { 1e-3 } else { 1e-4 };
            let d = max_abs(&out.logits, &a[&format!("{p}logits")]);
            assert!(d <= tol, "{name} {precision}: logits max abs {d}");
            let d = max_abs(&out.temporal_weights, &a[&format!("{p}temporal_weights")]);
            assert!(d <= tol, "{name} {precision}: temporal weights max abs {d}");
            // int8: tract and onnxruntime requantise with different rounding, and a one-step
            // difference in the per-column patch projection moves the 14-token SPM softmax by
            // up to ~0.008 (measured) while logits stay within 1e-3 and the picks are equal.
            let spm_tol = if precision == "int8" { 2e-2 } else { 1e-4 };
            let d = max_abs(&out.spm_attention, &a[&format!("{p}spm_attention")]);
            assert!(
                d <= spm_tol,
                "{name} {precision}: spm attention max abs {d}"
            );
            let want = if precision == "int8" {
                &case.int8_selected
            } else {
                &case.selected
            };
            assert_eq!(&out.selected, want, "{name} {precision}: selected seconds");
            // The real picks (min(k, valid seconds)) are valid and in time order; padding
            // slots repeat the first pick.
            let valid = flat(&a["valid"]);
            let n = valid.iter().filter(|&&v| v > 0.5).count().min(10);
            let (real, pad) = out.selected.split_at(n);
            assert!(
                real.iter().all(|&s| valid[s as usize] > 0.5),
                "{name}: {:?}",
                out.selected
            );
            assert!(
                real.windows(2).all(|w| w[0] < w[1]),
                "{name}: {:?}",
                out.selected
            );
            assert!(
                pad.iter().all(|&s| s == real[0]),
                "{name}: {:?}",
                out.selected
            );
        }
    }
}

#[test]
fn head_refuses_short_windows_and_empty_masks() {
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    let err = Head::load(&manifest, "fp32", 9).unwrap_err().to_string();
    assert!(err.contains("at least 10 seconds"), "{err}");
    let mut head = Head::load(&manifest, "fp32", 10).unwrap();
    let z = |n: usize| vec![0.0f32; n];
    let (audio, visual, patches, text, valid) =
        (z(10 * 1024), z(10 * 1280), z(10 * 14 * 1280), z(384), z(10));
    let x = HeadInputs {
        audio: &audio,
        visual: &visual,
        patches: &patches,
        question: &text,
        prompt: &text,
        valid: &valid,
    };
    let err = head.run(&x).unwrap_err().to_string();
    assert!(err.contains("at least one valid second"), "{err}");
    // A window of the wrong length is refused before tract, naming the input.
    let short = z(9 * 1024);
    let err = head
        .run(&HeadInputs {
            audio: &short,
            valid: &[1.0; 10],
            ..x
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("\"audio\"") && err.to_string().contains("T = 10"),
        "{err}"
    );
}

#[test]
fn head_parts_in_tract_compose_to_the_whole_head() {
    // The runtime's path (a row per second, the window's context, the question part) gives
    // the whole head's onnxruntime outputs.
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    for (name, case) in cases() {
        let mut head = HeadParts::load(&manifest, "fp32", case.t).unwrap();
        let a = &case.arrays;
        let out = with_inputs(&case, |x| head.run(x)).unwrap();
        let d = max_abs(&out.logits, &a["logits"]);
        assert!(d <= 1e-4, "{name}: logits max abs {d}");
        let d = max_abs(&out.temporal_weights, &a["temporal_weights"]);
        assert!(d <= 1e-4, "{name}: temporal weights max abs {d}");
        let d = max_abs(&out.spm_attention, &a["spm_attention"]);
        assert!(d <= 1e-4, "{name}: spm attention max abs {d}");
        assert_eq!(out.selected, case.selected, "{name}: selected seconds");
    }
}

#[test]
fn int8_head_parts_in_tract_give_the_fp32_answers() {
    // The int8 parts (models/quantize_parts.py) as the daemon runs them: the same answer and
    // the same selected seconds as the fp32 whole head, logits close (the build's gate is
    // answer agreement on the held-out test questions; here, the saved cases).
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    assert!(
        manifest.find("tspm_question", "int8").is_some(),
        "the model build writes the int8 head parts (models/export_head_parts.py)"
    );
    for (name, case) in cases() {
        let mut head = HeadParts::load(&manifest, "int8", case.t).unwrap();
        let a = &case.arrays;
        let out = with_inputs(&case, |x| head.run(x)).unwrap();
        let want = flat(&a["logits"]);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|(i, _)| i)
        };
        assert_eq!(argmax(&out.logits), argmax(&want), "{name}: answer");
        let cos = tspm_edge::model::check::cosine(&out.logits, &want);
        assert!(cos >= 0.999, "{name}: logits cosine {cos}");
        assert_eq!(out.selected, case.selected, "{name}: selected seconds");
    }
}

#[test]
fn head_parts_check_their_inputs() {
    let manifest = Manifest::load(&util::model_dir()).unwrap();
    let err = HeadParts::load(&manifest, "fp32", 9)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 10 seconds"), "{err}");
    let mut head = HeadParts::load(&manifest, "fp32", 10).unwrap();
    let n = head.row_len();
    assert_eq!(
        n,
        16 * 512 + 14,
        "models/tspm_parts.py: 16 slots of H = 512, the 14 SPM weights"
    );
    let mut row = vec![0.0f32; n - 1];
    let err = head
        .second(&[0.0; 1024], &[0.0; 1280], &[0.0; 14 * 1280], &mut row)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row buffer") && err.contains(&n.to_string()),
        "{err}"
    );
    // Each part reads its own columns: the question part the row's first 7 x 512 + 14, the
    // window part its last 10 x 512 (models/tspm_parts.py).
    assert_eq!(head.question_columns(), 0..7 * 512 + 14);
    assert_eq!(head.window_columns(), n - 10 * 512..n);
    let rows: Vec<f32> = (0..10 * n).map(|i| (i % n) as f32).collect();
    let (window_rows, question_rows) = head.part_rows(&rows);
    assert_eq!(window_rows.len(), 10 * 10 * 512);
    assert_eq!(question_rows.len(), 10 * (7 * 512 + 14));
    assert_eq!(window_rows[0], (n - 10 * 512) as f32);
    assert_eq!(window_rows[10 * 512 - 1], (n - 1) as f32);
    assert_eq!(
        question_rows[7 * 512 + 14],
        0.0,
        "the second row starts at column 0"
    );
    let mut context = vec![0.0f32; head.context_len()];
    let err = head
        .context(&window_rows, &[0.0; 10], &mut context)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one valid second"), "{err}");
    // Rows of the wrong length reach the model layer's check with the tensor named.
    let err = head
        .context(&rows, &[1.0; 10], &mut context)
        .unwrap_err()
        .to_string();
    assert!(err.contains("packed"), "{err}");
    let err = head
        .question(&window_rows, &[1.0; 10], &context, &[0.0; 384], &[0.0; 384])
        .unwrap_err()
        .to_string();
    assert!(err.contains("packed"), "{err}");
}
