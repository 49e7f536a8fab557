//! The binary end to end: `extract` on real media with the real models, configuration
//! errors, and the messages a user sees.

use ndarray::{Array1, Array2, Array3};
use ndarray_npy::NpzReader;

use crate::util;

fn run(args: &[&str], config: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = util::bin();
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    // The config file decides: TSPM_MODEL_DIR (set by CI) would override its models.dir.
    cmd.args(args)
        .env_remove("TSPM_EDGE_CONFIG")
        .env_remove("TSPM_MODEL_DIR")
        .output()
        .unwrap()
}

/// `extract <media> --out <dir>/f.npz` with a config in `dir` whose models.dir is `models`.
fn extract(
    dir: &std::path::Path,
    models: &std::path::Path,
    media: &std::path::Path,
) -> std::process::Output {
    let config = util::write_config(dir, models, "");
    let out = dir.join("f.npz");
    run(
        &[
            "extract",
            media.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Some(&config),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// 5 s of test pattern + 440 Hz → 5 seconds of features with the documented shapes; the
/// audio features match what the library path computes for the same seconds.
#[test]
fn extract_writes_per_second_features() {
    let tmp = tempfile::tempdir().unwrap();
    let config = util::write_config(tmp.path(), &util::model_dir(), "");
    let out_path = tmp.path().join("f.npz");
    let media = util::fixtures_dir().join("av_5s.webm");
    let out = run(
        &[
            "extract",
            media.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ],
        Some(&config),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("extracted 5 s"), "{}", stderr(&out));

    let mut npz = NpzReader::new(std::fs::File::open(&out_path).unwrap()).unwrap();
    let audio: Array2<f32> = npz.by_name("audio").unwrap();
    let logits: Array2<f32> = npz.by_name("audio_logits").unwrap();
    let visual: Array2<f32> = npz.by_name("visual").unwrap();
    let tokens: Array3<f32> = npz.by_name("tokens").unwrap();
    let pts: Array1<f64> = npz.by_name("pts_s").unwrap();
    let has_frame: Array1<u8> = npz.by_name("has_frame").unwrap();
    assert_eq!(audio.dim(), (5, 1024));
    assert_eq!(logits.dim(), (5, 521));
    assert_eq!(visual.dim(), (5, 1280));
    assert_eq!(tokens.dim(), (5, 49, 1280));
    assert_eq!(pts.to_vec(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    assert!(has_frame.iter().all(|&f| f == 1));
    // The pooled feature is the mean of the 49 tokens (same feature map).
    for t in 0..5 {
        let mean = tokens
            .index_axis(ndarray::Axis(0), t)
            .mean_axis(ndarray::Axis(0))
            .unwrap();
        let diff = (&mean - &visual.row(t))
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(diff < 1e-3, "second {t}: pooled vs mean(tokens) {diff}");
    }
    // A steady 440 Hz tone: YAMNet hears the same tone-like class every second (it says
    // "Telephone", as for a dial tone), never speech, music or silence.
    let classes = std::fs::read_to_string(util::model_dir().join("yamnet_classes.txt")).unwrap();
    let classes: Vec<&str> = classes.lines().collect();
    let top: Vec<&str> = (0..5)
        .map(|t| {
            let row = logits.row(t);
            classes[row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0]
        })
        .collect();
    assert!(top.iter().all(|c| *c == top[0]), "{top:?}");
    assert!(
        [
            "Telephone",
            "Dial tone",
            "Sine wave",
            "Beep, bleep",
            "Tuning fork",
            "Hum"
        ]
        .contains(&top[0]),
        "{top:?}"
    );
}

#[test]
fn extract_of_a_missing_file_names_it_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = util::write_config(tmp.path(), &util::model_dir(), "");
    let out_path = tmp.path().join("f.npz");
    let out = run(
        &[
            "extract",
            "/nonexistent/clip.webm",
            "--out",
            out_path.to_str().unwrap(),
        ],
        Some(&config),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/clip.webm"),
        "{}",
        stderr(&out)
    );
    assert!(!out_path.exists());
}

#[test]
fn extract_of_a_video_only_file_says_which_stream_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let media = util::fixtures_dir().join("video_only.webm");
    let out = extract(tmp.path(), &util::model_dir(), &media);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("video_only.webm") && err.contains("audio"),
        "{err}"
    );
    // The error chain is printed once, on one line, prefixed by the program name.
    assert_eq!(err.matches("tspm-edge:").count(), 1, "{err}");
}

#[test]
fn models_dir_without_models_explains_how_to_build_them() {
    let tmp = tempfile::tempdir().unwrap();
    let media = util::fixtures_dir().join("av_5s.webm");
    let out = extract(tmp.path(), tmp.path(), &media);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("models/build.sh"), "{}", stderr(&out));
}

#[test]
fn default_config_round_trips_and_bad_keys_are_named() {
    let out = run(&["print-default-config"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[models]") && text.contains("audio_precision = \"auto\""));
    tspm_edge::config::Config::from_toml_str(&text, "printed default").unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[capture]\nvideo_fps = 0\n").unwrap();
    let out = run(&["check-models"], Some(&bad));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("capture.video_fps") && err.contains("expected"),
        "{err}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "extract",
        "answer",
        "bench",
        "check-models",
        "print-default-config",
    ] {
        let out = run(&[sub, "--help"], None);
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: tspm-edge"),
            "{sub}"
        );
    }
}

/// The binary allocates through jemalloc with the options built into it (src/main.rs): two
/// arenas, the background purging thread, a 2 s decay, and on aarch64 a 16 KiB page so it
/// starts on a Pi 5's kernel. jemalloc prints its options at exit when asked to.
#[test]
#[cfg(feature = "jemalloc")]
fn the_binary_runs_on_jemalloc_with_its_built_in_options() {
    let out = util::bin()
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    for option in [
        "opt.narenas: 2",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 2000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(
            stats.contains(option),
            "no {option:?} in jemalloc's statistics:\n{stats}"
        );
    }
    let page = if cfg!(target_arch = "aarch64") {
        16384
    } else {
        4096
    };
    assert!(
        stats.contains(&format!("Page size: {page}\n")),
        "jemalloc not built for {page}-byte pages:\n{stats}"
    );
}

/// The whole TSPM path on a 5 s clip (padded to the head's 10 selected seconds with invalid
/// seconds): a valid answer from the vocabulary, top-3, and selected seconds that exist.
#[test]
fn answer_runs_the_whole_path_and_reports_selected_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let config = util::write_config(tmp.path(), &util::model_dir(), "");
    let media = util::fixtures_dir().join("av_5s.webm");
    let out = run(
        &[
            "answer",
            media.to_str().unwrap(),
            "-q",
            "is the violin louder than the piano",
            "-q",
            "How many instruments are sounding in the video?",
            "--json",
        ],
        Some(&config),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answers = std::fs::read_to_string(util::model_dir().join("tspm_head_answers.txt")).unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["question"], "Is the violin louder than the piano?");
    assert_eq!(
        first["template"],
        "Is the <Object> louder than the <Object>?"
    );
    assert_eq!(
        first["prompt"],
        "The violin and piano have different sounds in the video."
    );
    assert!(answers.lines().any(|a| a == first["answer"]), "{first}");
    let p = first["probability"].as_f64().unwrap();
    assert!(p > 0.0 && p <= 1.0, "{first}");
    assert_eq!(first["top"].as_array().unwrap().len(), 3);
    // Only the 5 real seconds can be selected, in time order.
    let secs: Vec<f64> = first["selected_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(secs, vec![0.0, 1.0, 2.0, 3.0, 4.0], "{first}");
}

#[test]
fn answer_refuses_questions_that_fit_no_template_before_extracting() {
    let tmp = tempfile::tempdir().unwrap();
    let config = util::write_config(tmp.path(), &util::model_dir(), "");
    let out = run(
        &[
            "answer",
            "/nonexistent.webm",
            "-q",
            "is the kazoo louder than the piano",
        ],
        Some(&config),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("kazoo") && err.contains("known: accordion"),
        "{err}"
    );
}

/// `eval` on a small set over `extract`'s features: the head's parts (what `serve` runs, the
/// default) and the whole head file give the same fp32 answers, and the report names the
/// form that ran.
#[test]
fn eval_runs_the_parts_and_the_whole_head_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let media = util::fixtures_dir().join("av_5s.webm");
    let out = extract(tmp.path(), &util::model_dir(), &media);
    assert!(out.status.success(), "{}", stderr(&out));
    let npz = tmp.path().join("f.npz");
    let questions = [
        (
            "Is the <Object> louder than the <Object>?",
            vec!["violin", "piano"],
            ["Audio", "Comparative"],
            "yes",
        ),
        (
            "How many instruments are sounding in the video?",
            vec![],
            ["Audio-Visual", "Counting"],
            "two",
        ),
        (
            "Where is the <FL> sounding instrument?",
            vec!["first"],
            ["Audio-Visual", "Temporal"],
            "left",
        ),
        (
            "Is there a voiceover?",
            vec![],
            ["Audio-Visual", "Existential"],
            "no",
        ),
    ];
    let set = tmp.path().join("set.jsonl");
    let lines: Vec<String> = questions
        .iter()
        .enumerate()
        .map(|(i, (template, values, kind, answer))| {
            serde_json::json!({
                "npz": npz, "question_id": i, "type": kind, "question_content": template,
                "templ_values": values, "answer": answer,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&set, lines.join("\n")).unwrap();
    let config = util::write_config(tmp.path(), &util::model_dir(), "");
    let mut answers = Vec::new();
    for form in ["parts", "whole"] {
        let predictions = tmp.path().join(format!("{form}.jsonl"));
        let out = run(
            &[
                "eval",
                set.to_str().unwrap(),
                "--head",
                form,
                "--predictions",
                predictions.to_str().unwrap(),
            ],
            Some(&config),
        );
        assert!(out.status.success(), "{form}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["questions"], 4, "{report}");
        let id = if form == "parts" {
            "tspm_parts"
        } else {
            "tspm_head"
        };
        assert_eq!(report["heads"]["fp32"], format!("{id}.fp32"), "{report}");
        assert_eq!(report["heads"]["int8"], format!("{id}.int8"), "{report}");
        let got: Vec<String> = std::fs::read_to_string(&predictions)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["fp32"].to_string())
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1], "parts vs whole head, fp32");
}

/// tract's Intel AMX int8 kernel: the binary lets tract use it where the CPU has it, and then
/// refuses an int8 file whose products it cannot run safely (the int8 encoders: K = 9, …)
/// with a message that names the model and the way out, instead of risking the kernel's
/// over-read (a SIGSEGV in 2 of 4 runs before). With the kernel taken out
/// (`TRACT_CPU_ISA=-amx-int8`), or on a CPU without it, the same file runs; the head's int8
/// parts (every K a multiple of 64) run either way; and `bench` times the int8 encoders in a
/// child process without the kernel.
#[test]
fn int8_files_the_amx_kernel_cannot_run_are_refused_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    // fp32 encoders named, so `bench` loads them without timing both variants (`auto`).
    let config = util::write_config(
        tmp.path(),
        &util::model_dir(),
        "audio_precision = \"fp32\"\nvisual_precision = \"fp32\"\n",
    );
    let bench = |args: &[&str], isa: Option<&str>| {
        let mut cmd = util::bin();
        cmd.arg("--config")
            .arg(&config)
            .arg("bench")
            .args(args)
            .env_remove("TSPM_EDGE_CONFIG")
            .env_remove("TSPM_MODEL_DIR")
            .env_remove("TRACT_CPU_ISA");
        if let Some(isa) = isa {
            cmd.env("TRACT_CPU_ISA", isa);
        }
        cmd.output().unwrap()
    };
    let stage = |s: &str, isa: Option<&str>| bench(&["--stage", s, "--runs", "1"], isa);
    let out = stage("yamnet.int8", None);
    if tspm_edge::model::cpu_has_amx_int8() {
        assert!(!out.status.success(), "ran: {}", stderr(&out));
        let err = stderr(&out);
        for needle in ["yamnet.int8", "AMX int8", "[9, ", "TRACT_CPU_ISA=-amx-int8"] {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
        let out = stage("yamnet.int8", Some("-amx-int8"));
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for part in ["tspm_second.int8", "tspm_window.int8", "tspm_question.int8"] {
        let out = stage(part, None);
        assert!(out.status.success(), "{part}: {}", stderr(&out));
    }
    let out = bench(&["--only", "yamnet.int8", "--runs", "1", "--no-ort"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("tract yamnet.int8"), "{err}");
    assert_eq!(
        err.contains("in a child process with TRACT_CPU_ISA=-amx-int8"),
        tspm_edge::model::cpu_has_amx_int8(),
        "{err}"
    );
}
