//! Per-model precision: fp32, int8, or `auto` — among the variants that passed the int8
//! accuracy check recorded in the manifest, int8 unless fp32 is at least
//! `models.auto_fp32_min_speedup` times as fast on this CPU (int8 weights take about half the
//! memory: the head's parts 26.6 vs 48.7 MB resident, the difference between the daemon's RSS
//! meeting its 120 MB target or not; a speed-up below that is a fraction of a millisecond).
//!
//! `auto` times both variants once (tract, one thread, a warm-up run then the median of a few)
//! and caches the verdict in `<model dir>/precision-cache.toml` (or `$CACHE_DIRECTORY`), keyed
//! by the CPU, the tract version, plan form and CPU-feature edit, and both files' sha256, so a
//! later start reads the verdict instead of re-timing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::manifest::{Dim, Manifest, ModelEntry};
use super::{Model, ModelError};
use crate::config::PrecisionChoice;

/// File name of the cache inside the model directory.
pub const CACHE_FILE: &str = "precision-cache.toml";

/// A model entry and why it was chosen.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The chosen file.
    pub entry: ModelEntry,
    /// Human-readable reason, e.g. `auto: fp32 1.93 ms vs int8 45.33 ms per run on this CPU;
    /// fp32 (…)`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Verdict {
    cpu: String,
    tract: String,
    /// sha256 of the file(s) each variant's timing ran (the head: its three parts', joined
    /// by `+`).
    fp32_sha256: String,
    int8_sha256: String,
    fp32_ms: f64,
    int8_ms: f64,
}

/// Picks `name`'s variant by `choice`; under `auto`, an int8 encoder is eligible when its
/// recorded mean embedding cosine reaches `int8_min_cosine`, and taken unless fp32 runs at
/// least `fp32_min_speedup` times as fast.
pub fn choose(
    manifest: &Manifest,
    name: &str,
    choice: PrecisionChoice,
    int8_min_cosine: f32,
    fp32_min_speedup: f32,
) -> Result<Chosen, ModelError> {
    let gate = |int8: &ModelEntry| {
        let cosine = int8.check.as_ref().map(|c| c.mean_cosine);
        match cosine {
            Some(c) if c >= int8_min_cosine => None,
            _ => Some(format!(
                "auto: int8 mean cosine {} below the {int8_min_cosine} required",
                cosine.map_or("unmeasured".to_string(), |c| format!("{c:.4}"))
            )),
        }
    };
    let rule = Rule {
        gate,
        fp32_min_speedup,
        files: |_: &Manifest, e: &ModelEntry| e.sha256.clone(),
    };
    choose_by(manifest, name, name, choice, rule, time_model)
}

/// Picks the precision of the TSPM head's parts by `choice` (the question part's entry stands
/// for the three); under `auto`, int8 parts are eligible when the question part's recorded
/// answer agreement with fp32 reaches `int8_min_agreement`, and both are timed as a busy
/// daemon runs them per new second (the per-second part, the window part and a question over
/// `seconds` seconds: [`super::head_parts::time_parts`]); eligible int8 parts are taken
/// unless fp32 runs at least `fp32_min_speedup` times as fast.
pub fn choose_head(
    manifest: &Manifest,
    choice: PrecisionChoice,
    int8_min_agreement: f32,
    fp32_min_speedup: f32,
    seconds: usize,
) -> Result<Chosen, ModelError> {
    use super::head_parts::{QUESTION_PART, SECOND_PART, WINDOW_PART, time_parts};
    let gate = |int8: &ModelEntry| {
        // The question part stands for the three (choose_by checks it); the others must be
        // as safe for tract's AMX int8 kernel when this process lets tract use it.
        if super::amx_int8_in_force()
            && let Some(part) = [SECOND_PART, WINDOW_PART]
                .into_iter()
                .find(|p| manifest.find(p, "int8").is_some_and(|e| !e.amx_int8_safe()))
        {
            return Some(format!(
                "auto: int8 not considered: this process lets tract use its AMX int8 kernel, \
                 and {part}.int8's int8 products are not all recorded as multiples of {}",
                super::AMX_INT8_K_STEP
            ));
        }
        let agreement = int8.check.as_ref().and_then(|c| c.top1_agreement);
        match agreement {
            Some(a) if a >= int8_min_agreement => None,
            _ => Some(format!(
                "auto: int8 answer agreement {} below the {int8_min_agreement} required",
                agreement.map_or("unmeasured".to_string(), |a| format!("{a:.4}"))
            )),
        }
    };
    let timer = |m: &Manifest, e: &ModelEntry| time_parts(m, &e.precision, seconds);
    // "+second": the timing covers the per-second part too (verdicts timed without it re-time).
    let key = format!("{QUESTION_PART}+second@T{seconds}");
    // The question part's entry stands for the three, but the timing covers all three files.
    let files = |m: &Manifest, e: &ModelEntry| {
        [SECOND_PART, WINDOW_PART, QUESTION_PART]
            .map(|part| {
                m.find(part, &e.precision)
                    .map_or("-", |p| p.sha256.as_str())
            })
            .join("+")
    };
    let rule = Rule {
        gate,
        fp32_min_speedup,
        files,
    };
    choose_by(manifest, QUESTION_PART, &key, choice, rule, timer)
}

/// How `auto` decides: `gate` says why an int8 entry is not eligible (`None` = eligible); an
/// eligible int8 entry is taken unless fp32 runs at least `fp32_min_speedup` times as fast.
/// `files` names what a variant's timing ran (its files' sha256), which a cached verdict must
/// match.
struct Rule<G, H> {
    gate: G,
    fp32_min_speedup: f32,
    files: H,
}

/// `timer` gives one run's milliseconds; `key` names the verdict in the cache.
fn choose_by<G, H>(
    manifest: &Manifest,
    name: &str,
    key: &str,
    choice: PrecisionChoice,
    rule: Rule<G, H>,
    timer: impl Fn(&Manifest, &ModelEntry) -> Result<f64, ModelError>,
) -> Result<Chosen, ModelError>
where
    G: FnOnce(&ModelEntry) -> Option<String>,
    H: Fn(&Manifest, &ModelEntry) -> String,
{
    let find = |precision: &str| {
        manifest
            .find(name, precision)
            .cloned()
            .ok_or_else(|| ModelError::NotInManifest {
                dir: manifest.dir.clone(),
                name: name.to_string(),
                precision: precision.to_string(),
            })
    };
    match choice {
        PrecisionChoice::Fp32 => Ok(Chosen {
            entry: find("fp32")?,
            reason: "configured fp32".into(),
        }),
        PrecisionChoice::Int8 => Ok(Chosen {
            entry: find("int8")?,
            reason: "configured int8".into(),
        }),
        PrecisionChoice::Auto => {
            let fp32 = find("fp32")?;
            let Some(int8) = manifest.find(name, "int8").cloned() else {
                return Ok(Chosen {
                    entry: fp32,
                    reason: "auto: no int8 model built".into(),
                });
            };
            if !int8.amx_int8_safe() && super::amx_int8_in_force() {
                return Ok(Chosen {
                    entry: fp32,
                    reason: format!(
                        "auto: int8 not considered: this process lets tract use its AMX int8 \
                         kernel, and {}'s int8 products (K = {}) are not all multiples of {}",
                        int8.id(),
                        int8.int8_k_text(),
                        super::AMX_INT8_K_STEP
                    ),
                });
            }
            if let Some(reason) = (rule.gate)(&int8) {
                return Ok(Chosen {
                    entry: fp32,
                    reason,
                });
            }
            let files = ((rule.files)(manifest, &fp32), (rule.files)(manifest, &int8));
            let verdict = cached_or_measured(manifest, key, (&fp32, &int8), files, timer)?;
            let speedup = verdict.int8_ms / verdict.fp32_ms;
            let take_fp32 = speedup >= f64::from(rule.fp32_min_speedup);
            let reason = format!(
                "auto: fp32 {:.2} ms vs int8 {:.2} ms per run on this CPU; {} (fp32 {speedup:.2}x \
                 as fast, {} the {}x of models.auto_fp32_min_speedup)",
                verdict.fp32_ms,
                verdict.int8_ms,
                if take_fp32 { "fp32" } else { "int8" },
                if take_fp32 { "at least" } else { "below" },
                rule.fp32_min_speedup,
            );
            Ok(Chosen {
                entry: if take_fp32 { fp32 } else { int8 },
                reason,
            })
        }
    }
}

/// `files`: the sha256 of what each variant's timing runs (fp32, int8).
fn cached_or_measured(
    manifest: &Manifest,
    key: &str,
    (fp32, int8): (&ModelEntry, &ModelEntry),
    files: (String, String),
    timer: impl Fn(&Manifest, &ModelEntry) -> Result<f64, ModelError>,
) -> Result<Verdict, ModelError> {
    let path = cache_path(&manifest.dir);
    let mut cache = read_cache(&path);
    let cpu = cpu_id();
    // The plan form and tract's kernel set are part of what was timed: a change of default
    // transforms or of the CPU features tract may use (TRACT_CPU_ISA) re-times.
    let tract = format!(
        "{} {} isa{}",
        tract::version(),
        super::DEFAULT_TRANSFORMS.join("+"),
        super::cpu_features().unwrap_or_default()
    );
    if let Some(v) = cache.get(key)
        && v.cpu == cpu
        && v.tract == tract
        && v.fp32_sha256 == files.0
        && v.int8_sha256 == files.1
    {
        return Ok(v.clone());
    }
    tracing::info!(model = %key, "timing fp32 and int8 once on this CPU (precision = auto)");
    let fp32_ms = timer(manifest, fp32)?;
    let int8_ms = timer(manifest, int8)?;
    let verdict = Verdict {
        cpu,
        tract,
        fp32_sha256: files.0,
        int8_sha256: files.1,
        fp32_ms,
        int8_ms,
    };
    cache.insert(key.to_string(), verdict.clone());
    match toml::to_string(&cache) {
        Ok(text) => {
            if let Err(err) = std::fs::write(&path, text) {
                tracing::warn!(path = %path.display(), %err, "could not cache the precision verdict");
            }
        }
        Err(err) => tracing::warn!(%err, "could not serialise the precision verdict"),
    }
    Ok(verdict)
}

/// Where the verdicts are cached: systemd's `CacheDirectory=` (`$CACHE_DIRECTORY`) when the
/// daemon runs as a service with read-only models, else the model directory.
pub fn cache_path(model_dir: &Path) -> std::path::PathBuf {
    match std::env::var("CACHE_DIRECTORY") {
        Ok(dirs) if !dirs.is_empty() => {
            std::path::PathBuf::from(dirs.split(':').next().unwrap_or_default()).join(CACHE_FILE)
        }
        _ => model_dir.join(CACHE_FILE),
    }
}

fn read_cache(path: &Path) -> BTreeMap<String, Verdict> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default()
}

/// Median milliseconds of a single-input model on a zero input, after one warm-up run.
pub fn time_model(manifest: &Manifest, entry: &ModelEntry) -> Result<f64, ModelError> {
    let mut model = Model::load(manifest, entry, 1)?;
    let spec = &entry.inputs[0];
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Symbol(_) => 1,
        })
        .collect();
    let input = vec![0.0f32; shape.iter().product()];
    model.run(&[(&shape, &input)])?;
    let mut times = Vec::new();
    let budget = Instant::now();
    for _ in 0..5 {
        let t = Instant::now();
        model.run(&[(&shape, &input)])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if budget.elapsed().as_secs() >= 3 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A string naming this CPU: architecture and model name from /proc/cpuinfo.
pub fn cpu_id() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("CPU part"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    format!("{} {}", std::env::consts::ARCH, model)
}
