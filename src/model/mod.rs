//! The model layer: the only module that knows tract.
//!
//! It reads the model contract ([`manifest`]), checks each ONNX file against it (sha256, input
//! and output names, shapes, dtypes), loads each model once into a tract plan, and keeps one
//! tract state per model alive between segments ([`Encoder`]). Every input is checked against
//! the declared shape before it reaches tract, because tract's own shape errors do not name
//! the input or the axis. [`precision`] picks fp32 or int8 per model by measurement.
//!
//! Owned by one thread (the engine, or the CLI command that runs segments); not shared.

pub mod check;
pub mod encoders;
pub mod head;
pub mod head_parts;
pub mod manifest;
pub mod precision;
mod quantize;
mod residual_add;
pub mod text;
pub mod text_table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tract::prelude::*;

pub use encoders::{AudioEncoder, Encoders, VisualEncoder};
pub use manifest::{Dim, Manifest, ModelEntry, TensorSpec};

/// Why a model could not be loaded or run. Every message names the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `manifest.toml` is missing or unreadable.
    #[error(
        "reading model manifest {path} (build the models with `bash models/build.sh`, or point \
         models.dir / TSPM_MODEL_DIR at their directory)"
    )]
    ManifestRead {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `manifest.toml` is not a valid manifest.
    #[error("parsing model manifest {path}")]
    ManifestParse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The manifest has no entry for a model the program needs.
    #[error("model manifest in {dir} has no {name} model at {precision} precision")]
    NotInManifest {
        /// The model directory.
        dir: PathBuf,
        /// Logical name.
        name: String,
        /// `fp32` or `int8`.
        precision: String,
    },
    /// The model file cannot be read.
    #[error("reading model {model} from {path}")]
    FileRead {
        /// Model id, e.g. `yamnet.fp32`.
        model: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's sha256 differs from the manifest (corrupt or replaced file).
    #[error(
        "model {model}: {path} has sha256 {actual}, the manifest says {expected} (corrupt or \
         replaced file; rebuild with `bash models/build.sh`)"
    )]
    Checksum {
        /// Model id.
        model: String,
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// tract could not parse or optimise the file.
    #[error("model {model}: tract could not load {path}")]
    Load {
        /// Model id.
        model: String,
        /// The file.
        path: PathBuf,
        /// tract's error.
        #[source]
        source: anyhow::Error,
    },
    /// The file's inputs or outputs differ from the manifest.
    #[error("model {model}: {tensor} is {actual} in the file, the manifest declares {expected}")]
    Contract {
        /// Model id.
        model: String,
        /// `input 0 "logmel"` or similar.
        tensor: String,
        /// As declared.
        expected: String,
        /// As found.
        actual: String,
    },
    /// The caller gave no value for one of the declared symbolic dims.
    #[error(
        "model {model}: {tensor:?} has the symbolic dim {symbol:?}, but the loader gave only \
         {given}"
    )]
    MissingDim {
        /// Model id.
        model: String,
        /// Tensor name.
        tensor: String,
        /// The symbol.
        symbol: String,
        /// The values given.
        given: String,
    },
    /// An input given to `run` does not fit the declared shape.
    #[error("model {model}: input {tensor:?} has shape {actual:?}, expected {expected}")]
    InputShape {
        /// Model id.
        model: String,
        /// Input name.
        tensor: String,
        /// Declared shape.
        expected: String,
        /// Given shape.
        actual: Vec<usize>,
    },
    /// The text table has no row for a text (a question outside the templates' vocabulary,
    /// or a table built before the templates changed).
    #[error(
        "the text table {path} has no embedding for {text:?} (it holds every question and \
         prompt the templates make with their known values; rebuild it with `bash \
         models/build.sh`, or set models.text = \"encoder\")"
    )]
    NotInTextTable {
        /// The table's keys file.
        path: PathBuf,
        /// The text.
        text: String,
    },
    /// The text table's files do not match its manifest.
    #[error("text table {path}: {problem} (rebuild it with `bash models/build.sh`)")]
    TextTable {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the expected form.
        problem: String,
    },
    /// An int8 file tract's Intel AMX int8 kernel cannot run safely, in a process that let
    /// tract use that kernel ([`allow_amx_int8`]).
    #[error(
        "model {model}: this process lets tract use its Intel AMX int8 kernel, which needs \
         every int8 product's K to be a multiple of {AMX_INT8_K_STEP} (the file's: {k}); run \
         it at fp32, or with TRACT_CPU_ISA=-amx-int8 in the environment"
    )]
    AmxInt8 {
        /// Model id.
        model: String,
        /// The file's int8 reduction lengths, as the manifest records them.
        k: String,
    },
    /// tract failed while running.
    #[error("model {model}: inference failed")]
    Run {
        /// Model id.
        model: String,
        /// tract's error.
        #[source]
        source: anyhow::Error,
    },
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// One typed input for [`Model::run_inputs`]: its shape and its data.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// f32 data.
    F32(&'a [usize], &'a [f32]),
    /// i64 data (token ids, masks).
    I64(&'a [usize], &'a [i64]),
}

impl Input<'_> {
    fn describe(&self) -> (&[usize], usize, &'static str) {
        match self {
            Input::F32(shape, data) => (shape, data.len(), "f32"),
            Input::I64(shape, data) => (shape, data.len(), "i64"),
        }
    }

    /// A tract tensor holding a copy of the data.
    fn to_tensor(self) -> anyhow::Result<Tensor> {
        match self {
            Input::F32(shape, data) => Tensor::from_slice(shape, data),
            Input::I64(shape, data) => Tensor::from_slice(shape, data),
        }
    }
}

/// tract transforms every model gets before tract optimises it. `conv_nhwc` runs float
/// convolutions channel-last (depthwise ones on tract's `DepthWise` kernel); quantised convs
/// are left as they are. Measured with `bench --no-ort --cpu-time --only fp32 [--transform
/// conv_nhwc]` on the 2-core x86 machine (dev build): EfficientNet-Lite0 43.3 -> 29.9 ms,
/// YAMNet 6.3 -> 3.6 ms; outputs stay within the goldens' tolerances (`tests/model.rs`,
/// `tests/dsp.rs`, `check-models`). `fast_quantize_linear` (this crate's, `quantize.rs`)
/// computes tract's `QuantizeLinear` to u8 byte for byte in a loop that vectorises: the int8
/// head parts' window part 1.9 -> 1.75 ms. `unfused_residual_add` (`residual_add.rs`) keeps an
/// attention's residual add out of its weights-times-values product, whose fused add tract
/// reads across rows on x86: the int8 window part 1.84 -> 1.70 ms. Neither changes a bit.
pub const DEFAULT_TRANSFORMS: &[&str] = &["conv_nhwc", quantize::NAME, residual_add::NAME];

/// tract's instruction-set edit this runtime installs on x86_64, below the environment
/// (`TRACT_CPU_ISA` there wins), unless the process called [`allow_amx_int8`] first: tract
/// 0.23.9's Intel AMX int8 kernels (`avx512amx_mmm_i32_8x8`, `_16x16`) load 64 K-bytes of the
/// packed B operand per step, but B is padded only to a multiple of 4, so a matmul whose K is
/// not a multiple of 64 (the encoders' depthwise convs: K = 9, 25; pointwise ones: K = 24,
/// 40, 80, …) reads past its buffer. The extra bytes meet A's zero padding, so results stay
/// right, but a read that crosses into an unmapped page is a SIGSEGV: `bench --profile --only
/// efficientnet_lite0.int8` crashed in 2 of 4 runs on a Sapphire Rapids Xeon (gdb: `tileloadd
/// tmm2` at avx512amx_mmm_i32_8x8.S:259). Without AMX, int8 matmuls run on AVX-512 VNNI.
/// None elsewhere: tract refuses (panics on) a feature of another architecture.
#[cfg(target_arch = "x86_64")]
pub const TRACT_CPU_ISA_DEFAULT: Option<&str> = Some("-amx-int8");
/// See the x86_64 value: nothing to edit on this architecture.
#[cfg(not(target_arch = "x86_64"))]
pub const TRACT_CPU_ISA_DEFAULT: Option<&str> = None;

/// The K step of tract's AMX int8 kernels: they may run an int8 product only when its
/// reduction length K is a multiple of this ([`TRACT_CPU_ISA_DEFAULT`]).
pub const AMX_INT8_K_STEP: u64 = 64;

/// Set by [`allow_amx_int8`]; read once, when [`cpu_features`] installs the edit.
static AMX_INT8_ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets tract use its Intel AMX int8 kernels in this process (where the CPU has them): call
/// it before the first model loads, from a process that will run only int8 files whose
/// products all have K a multiple of [`AMX_INT8_K_STEP`] (the head's: `int8_k` in the
/// manifest). Loading any other int8 file then fails with [`ModelError::AmxInt8`] instead of
/// risking the kernel's over-read, and `auto` precision does not consider it. The TSPM head's
/// int8 parts gain from it: `tspm_second.int8` 2.65 → 1.64 ms, `tspm_window.int8` 2.37 →
/// 2.07 ms on a Sapphire Rapids Xeon (`bench --stage … --runs 300 --cpu-time`, twice each
/// way). Returns whether it took effect (false once a model has loaded).
pub fn allow_amx_int8() -> bool {
    AMX_INT8_ALLOWED.store(true, std::sync::atomic::Ordering::SeqCst);
    cpu_features().is_ok_and(|_| amx_int8_allowed_here())
}

/// Whether this process runs tract without [`TRACT_CPU_ISA_DEFAULT`]'s edit.
fn amx_int8_allowed_here() -> bool {
    INSTALLED.get().is_some_and(|r| matches!(r, Ok(false)))
}

/// `Ok(true)`: [`TRACT_CPU_ISA_DEFAULT`] installed; `Ok(false)`: left out (see
/// [`allow_amx_int8`]).
static INSTALLED: std::sync::OnceLock<Result<bool, String>> = std::sync::OnceLock::new();

/// Installs [`TRACT_CPU_ISA_DEFAULT`] below the environment, once per process, before tract
/// first probes the CPU (it caches the probe), unless [`allow_amx_int8`] came first. Returns
/// tract's instruction-set edit in force ("" for none).
pub fn cpu_features() -> anyhow::Result<String> {
    let installed = INSTALLED
        .get_or_init(|| {
            let allowed = AMX_INT8_ALLOWED.load(std::sync::atomic::Ordering::SeqCst);
            match TRACT_CPU_ISA_DEFAULT {
                Some(edit) if !allowed => {
                    tract_data::knobs::set_config_global("TRACT_CPU_ISA", edit)
                        .map(|()| true)
                        .map_err(|e| format!("setting tract's TRACT_CPU_ISA={edit}: {e:#}"))
                }
                _ => Ok(false),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(std::env::var("TRACT_CPU_ISA")
        .ok()
        .or(TRACT_CPU_ISA_DEFAULT
            .filter(|_| installed)
            .map(str::to_string))
        .unwrap_or_default())
}

/// Whether tract may pick its Intel AMX int8 kernels in this process: the CPU has AMX int8
/// and tile support (`/proc/cpuinfo`) and the edit in force does not take them out.
pub fn amx_int8_in_force() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let Ok(edit) = cpu_features() else {
        return false;
    };
    let removed = edit
        .split(',')
        .map(str::trim)
        .any(|t| matches!(t, "-amx-int8" | "-amx-tile" | "-avx512f"));
    !removed && cpu_has_amx_int8()
}

/// Whether this CPU has Intel AMX int8 and tiles (`/proc/cpuinfo` flags), whatever tract is
/// told; reads no tract state, so it installs no instruction-set edit.
pub fn cpu_has_amx_int8() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    cfg!(target_arch = "x86_64") && has("amx_int8") && has("amx_tile")
}

/// One loaded model with its live tract state.
///
/// Loaded once; [`Model::run`] reuses the state, so tract's scratch space stays warm between
/// segments.
pub struct Model {
    entry: ModelEntry,
    /// Values of the symbolic dims the plan was built for (`N` = batch, `T` = seconds, …).
    dims: Vec<(String, usize)>,
    runnable: Runnable,
    state: State,
    outputs: Vec<Tensor>,
    /// Whether the plan runs in half precision (the `f32_to_f16` transform): its f32 inputs
    /// and outputs are then f16 inside tract, converted at the boundary of each run.
    half: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.entry.id())
            .field("dims", &self.dims)
            .finish()
    }
}

impl Model {
    /// Checks `entry`'s file against the manifest and loads it for a fixed batch size.
    ///
    /// The symbolic batch axis is pinned to `batch` so tract can plan for concrete shapes.
    pub fn load(manifest: &Manifest, entry: &ModelEntry, batch: usize) -> Result<Self, ModelError> {
        Self::load_with(manifest, entry, batch, &[])
    }

    /// [`Model::load`], applying tract model transforms by name (e.g. `conv_nhwc`; after
    /// [`DEFAULT_TRANSFORMS`], of which `-NAME` leaves one out) to the
    /// decluttered model before tract optimises it into a plan. For experiments (`bench
    /// --transform`); the runtime uses [`Model::load`].
    pub fn load_with(
        manifest: &Manifest,
        entry: &ModelEntry,
        batch: usize,
        transforms: &[String],
    ) -> Result<Self, ModelError> {
        Self::load_sized(manifest, entry, &[("N", batch)], transforms)
    }

    /// Loads with a value for every symbolic dim of the manifest entry (`N` = batch, `T` =
    /// seconds in a window, `L` = tokens, …), so tract plans for concrete shapes.
    pub fn load_sized(
        manifest: &Manifest,
        entry: &ModelEntry,
        dims: &[(&str, usize)],
        transforms: &[String],
    ) -> Result<Self, ModelError> {
        let dims: Vec<(String, usize)> = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let id = entry.id();
        let path = manifest.path_of(entry);
        let actual = sha256_file(&path).map_err(|source| ModelError::FileRead {
            model: id.clone(),
            path: path.clone(),
            source,
        })?;
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(ModelError::Checksum {
                model: id,
                path,
                expected: entry.sha256.clone(),
                actual,
            });
        }
        let started = Instant::now();
        let load_err = |source: anyhow::Error| ModelError::Load {
            model: id.clone(),
            path: path.clone(),
            source,
        };
        cpu_features().map_err(load_err)?;
        if !entry.amx_int8_safe() && amx_int8_in_force() {
            return Err(ModelError::AmxInt8 {
                model: id,
                k: entry.int8_k_text(),
            });
        }
        // onnxruntime's quantiser writes symbolic value_info that tract would trust over the
        // real shapes: ignore it and pin the inputs from the manifest instead.
        let mut inference = onnx()
            .and_then(|o| o.load_with_options(&path, OnnxOptions::new().ignore_value_info(true)))
            .map_err(load_err)?;
        let inputs = inference.input_count().map_err(load_err)?;
        let outputs = inference.output_count().map_err(load_err)?;
        check_names(
            &id,
            "input",
            &entry.inputs,
            |i| inference.input_name(i),
            inputs,
        )?;
        check_names(
            &id,
            "output",
            &entry.outputs,
            |i| inference.output_name(i),
            outputs,
        )?;
        for (i, spec) in entry.inputs.iter().enumerate() {
            let fact = fact_string(spec, &dims, &id)?;
            inference
                .set_input_fact(i, fact.as_str())
                .map_err(load_err)?;
        }
        let model = inference.into_model().map_err(load_err)?;
        for (i, spec) in entry.outputs.iter().enumerate() {
            let fact = model.output_fact(i).map_err(load_err)?;
            let shape = concrete_shape(&fact).map_err(load_err)?;
            let expected = concrete_dims(spec, &dims, &id)?;
            if shape != expected || fact.datum_type().map_err(load_err)? != dtype_of(spec, &id)? {
                return Err(ModelError::Contract {
                    model: id,
                    tensor: format!("output {i} {:?}", spec.name),
                    expected: format!(
                        "{} {} ({})",
                        spec.shape_string(),
                        spec.dtype,
                        dims_string(&dims)
                    ),
                    actual: format!("{fact}"),
                });
            }
        }
        let mut model = model;
        // `-NAME` leaves a default transform out (for comparisons in `bench`).
        let defaults = DEFAULT_TRANSFORMS
            .iter()
            .copied()
            .filter(|d| !transforms.iter().any(|t| t.strip_prefix('-') == Some(*d)));
        let extra = transforms
            .iter()
            .map(String::as_str)
            .filter(|t| !t.starts_with('-') && !DEFAULT_TRANSFORMS.contains(t));
        for t in defaults.chain(extra) {
            model
                .transform(t)
                .with_context(|| format!("applying tract transform {t:?}"))
                .map_err(load_err)?;
        }
        // `f32_to_f16` turns the f32 inputs and outputs into f16 as well; callers keep
        // handing in and reading f32.
        let half = model
            .input_facts()
            .map_err(load_err)?
            .any(|f| f.datum_type().is_ok_and(|dt| dt == DatumType::F16));
        let runnable = model.into_runnable().map_err(load_err)?;
        let state = runnable.spawn_state().map_err(load_err)?;
        tracing::debug!(model = %id, ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Model {
            entry: entry.clone(),
            dims,
            runnable,
            state,
            outputs: Vec::new(),
            half,
        })
    }

    /// The manifest entry this model was loaded from.
    pub fn entry(&self) -> &ModelEntry {
        &self.entry
    }

    /// The batch size the plan was built for (the value of `N`, 1 if the model has none).
    pub fn batch(&self) -> usize {
        self.dim("N").unwrap_or(1)
    }

    /// The value a symbolic dim was pinned to at load time.
    pub fn dim(&self, symbol: &str) -> Option<usize> {
        self.dims.iter().find(|(k, _)| k == symbol).map(|(_, v)| *v)
    }

    /// Runs the model on one f32 input per declared input and keeps the outputs for
    /// [`Model::output`]. Each input is checked against its declared shape first.
    pub fn run(&mut self, inputs: &[(&[usize], &[f32])]) -> Result<(), ModelError> {
        let inputs: Vec<Input<'_>> = inputs.iter().map(|(s, d)| Input::F32(s, d)).collect();
        self.run_inputs(&inputs)
    }

    /// Runs the model on typed inputs, one per declared input, each checked against its
    /// declared shape and dtype (with the symbolic dims pinned at load time) before tract
    /// sees it.
    pub fn run_inputs(&mut self, inputs: &[Input<'_>]) -> Result<(), ModelError> {
        let id = || self.entry.id();
        if inputs.len() != self.entry.inputs.len() {
            return Err(ModelError::InputShape {
                model: id(),
                tensor: format!("{} inputs", inputs.len()),
                expected: format!("{} inputs", self.entry.inputs.len()),
                actual: vec![inputs.len()],
            });
        }
        let run_err = |source| ModelError::Run {
            model: id(),
            source,
        };
        let mut tensors = Vec::with_capacity(inputs.len());
        for (spec, input) in self.entry.inputs.iter().zip(inputs) {
            let expected = concrete_dims(spec, &self.dims, &id())?;
            let (shape, len, dtype) = input.describe();
            let fits = shape == expected.as_slice()
                && shape.iter().product::<usize>() == len
                && dtype == spec.dtype;
            if !fits {
                return Err(ModelError::InputShape {
                    model: id(),
                    tensor: spec.name.clone(),
                    expected: format!(
                        "{} {} with {} ({} values)",
                        spec.shape_string(),
                        spec.dtype,
                        dims_string(&self.dims),
                        expected.iter().product::<usize>()
                    ),
                    actual: if shape.iter().product::<usize>() == len {
                        shape.to_vec()
                    } else {
                        vec![len]
                    },
                });
            }
            tensors.push(self.tensor_for(*input).map_err(run_err)?);
        }
        self.outputs = self.state.run(tensors).map_err(run_err)?;
        if self.half {
            for t in &mut self.outputs {
                if t.datum_type().map_err(run_err)? == DatumType::F16 {
                    *t = t.convert_to(DatumType::F32).map_err(run_err)?;
                }
            }
        }
        Ok(())
    }

    /// The tract tensor for one input: a copy of the data, in f16 for a half-precision plan.
    fn tensor_for(&self, input: Input<'_>) -> anyhow::Result<Tensor> {
        let tensor = input.to_tensor()?;
        match input {
            Input::F32(..) if self.half => tensor.convert_to(DatumType::F16),
            _ => Ok(tensor),
        }
    }

    /// Output `index` of the last run, as a flat i64 slice (e.g. selected indices).
    pub fn output_i64(&self, index: usize) -> Result<&[i64], ModelError> {
        let tensor = self.outputs.get(index).ok_or_else(|| ModelError::Run {
            model: self.entry.id(),
            source: anyhow::anyhow!("no output {index} (was the model run?)"),
        })?;
        tensor.as_slice::<i64>().map_err(|source| ModelError::Run {
            model: self.entry.id(),
            source,
        })
    }

    /// Output `index` of the last run, as a flat f32 slice.
    pub fn output(&self, index: usize) -> Result<&[f32], ModelError> {
        let tensor = self.outputs.get(index).ok_or_else(|| ModelError::Run {
            model: self.entry.id(),
            source: anyhow::anyhow!("no output {index} (was the model run?)"),
        })?;
        tensor.as_slice::<f32>().map_err(|source| ModelError::Run {
            model: self.entry.id(),
            source,
        })
    }

    /// Output `name` of the last run.
    pub fn output_by_name(&self, name: &str) -> Result<&[f32], ModelError> {
        let (index, _) = self
            .entry
            .output(name)
            .ok_or_else(|| ModelError::Contract {
                model: self.entry.id(),
                tensor: format!("output {name:?}"),
                expected: format!("an output named {name:?}"),
                actual: "no such output in the manifest".into(),
            })?;
        self.output(index)
    }
}

/// Time spent in one node of tract's optimised plan, from [`Model::profile`].
#[derive(Debug, Clone)]
pub struct OpCost {
    /// Node name in the optimised plan (ONNX node name plus tract's suffix, e.g. `.pack`).
    pub node: String,
    /// tract op name, e.g. `OptMatMul`, `DepthWise`, `Im2col`.
    pub op: String,
    /// What the op is for, e.g. `depthwise conv`, `pointwise conv`, `conv (im2col)`.
    pub kind: String,
    /// Mean milliseconds per run.
    pub ms: f64,
    /// Multiply-accumulates per run tract counts for the node (0 when it counts none).
    pub macs: u64,
}

/// A per-node profile of one model, from [`Model::profile`].
#[derive(Debug, Clone)]
pub struct Profile {
    /// Mean milliseconds of a whole run while profiling (per-node timing adds overhead).
    pub total_ms: f64,
    /// Runs averaged.
    pub iterations: usize,
    /// One entry per plan node, slowest first.
    pub ops: Vec<OpCost>,
}

impl Model {
    /// Profiles the optimised plan node by node on one input (tract's own profiler: about
    /// 5 s of runs). Needs the `profile` cargo feature; without it this is an error.
    pub fn profile(&self, shape: &[usize], data: &[f32]) -> Result<Profile, ModelError> {
        self.profile_inputs(&[Input::F32(shape, data)])
    }

    /// [`Model::profile`] on typed inputs, one per declared input (the head's parts).
    pub fn profile_inputs(&self, inputs: &[Input<'_>]) -> Result<Profile, ModelError> {
        let model = self.entry.id();
        let run_err = |source: anyhow::Error| ModelError::Run {
            model: model.clone(),
            source,
        };
        let tensors = inputs
            .iter()
            .map(|input| self.tensor_for(*input))
            .collect::<Result<Vec<_>, _>>()
            .map_err(run_err)?;
        let json = self.runnable.profile_json(Some(tensors)).map_err(run_err)?;
        parse_profile(&json).map_err(run_err)
    }
}

/// Reads tract's `GraphPerfInfo` JSON (`nodes[]` with `op_name`, `node_name`, `cost`,
/// `secs_per_iter`; `profiling_info`).
fn parse_profile(json: &str) -> anyhow::Result<Profile> {
    let v: serde_json::Value = serde_json::from_str(json).context("parsing tract's profile")?;
    let info = &v["profiling_info"];
    let total_ms = info["secs_per_iter"]
        .as_f64()
        .context("profile has no total time")?
        * 1e3;
    let iterations = info["iterations"].as_u64().unwrap_or(0) as usize;
    let mut ops = Vec::new();
    for node in v["nodes"].as_array().context("profile has no nodes")? {
        let op = node["op_name"].as_str().unwrap_or("?").to_string();
        let name = node["node_name"].as_str().unwrap_or("?").to_string();
        let ms = node["secs_per_iter"].as_f64().unwrap_or(0.0) * 1e3;
        let macs = node["cost"]
            .as_object()
            .map(|c| {
                c.iter()
                    .filter(|(k, _)| k.starts_with("FMA"))
                    .filter_map(|(_, v)| v.as_str()?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        ops.push(OpCost {
            kind: op_kind(&op, &name),
            node: name,
            op,
            ms,
            macs,
        });
    }
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(Profile {
        total_ms,
        iterations,
        ops,
    })
}

/// Groups tract's optimised ops by what they do in these conv nets: which layer they belong to
/// (depthwise conv, from tract's op or the ONNX node name tract keeps as a prefix; or the
/// matmul-shaped rest: 1×1 and stem convs, Gemm) and what part of it they are.
fn op_kind(op: &str, node: &str) -> String {
    let depthwise = op.starts_with("DepthWise") || node.contains("depthwise");
    let quant =
        node.contains("_quant") || op.starts_with("Quantize") || op.starts_with("Dequantize");
    let part = match op {
        o if o.starts_with("DepthWise") => "DepthWise kernel",
        "OptMatMul" | "MatMul" | "EinSum" => "matmul",
        "OptMatMulPack" => "pack",
        "Im2col" | "LazyIm2col" => "im2col",
        o if o.starts_with("Quantize") || o.starts_with("Dequantize") => "(de)quantize",
        "Scale" | "Max" | "Min" | "Mul" | "Sub" | "Add" | "Reduce<Sum>" | "Cast"
        | "OffsetU8asI8" | "QSumB"
            if quant =>
        {
            "int8 requant/zero-point"
        }
        o if o.starts_with("OptBinChain") || o.starts_with("OptMaxByScalar") => "activation",
        "Source" | "Const" | "IntoShape" | "MoveAxis" => "free (shape/const)",
        _ => "other",
    };
    let layer = if depthwise {
        "depthwise conv"
    } else if matches!(
        part,
        "matmul" | "pack" | "im2col" | "int8 requant/zero-point"
    ) {
        "1x1/stem conv, gemm"
    } else {
        "rest"
    };
    format!("{layer}: {part}")
}

fn check_names(
    model: &str,
    kind: &str,
    specs: &[TensorSpec],
    name_of: impl Fn(usize) -> anyhow::Result<String>,
    count: usize,
) -> Result<(), ModelError> {
    if count != specs.len() {
        return Err(ModelError::Contract {
            model: model.to_string(),
            tensor: format!("the {kind} count"),
            expected: specs.len().to_string(),
            actual: count.to_string(),
        });
    }
    for (i, spec) in specs.iter().enumerate() {
        let actual = name_of(i).map_err(|source| ModelError::Load {
            model: model.to_string(),
            path: PathBuf::new(),
            source,
        })?;
        if actual != spec.name {
            return Err(ModelError::Contract {
                model: model.to_string(),
                tensor: format!("{kind} {i} name"),
                expected: format!("{:?}", spec.name),
                actual: format!("{actual:?}"),
            });
        }
    }
    Ok(())
}

fn dtype_of(spec: &TensorSpec, model: &str) -> Result<DatumType, ModelError> {
    match spec.dtype.as_str() {
        "f32" => Ok(DatumType::F32),
        "i64" => Ok(DatumType::I64),
        "i32" => Ok(DatumType::I32),
        other => Err(ModelError::Contract {
            model: model.to_string(),
            tensor: format!("{:?} dtype", spec.name),
            expected: "f32, i32 or i64".into(),
            actual: other.to_string(),
        }),
    }
}

/// tract's fact syntax for a declared input with its symbolic dims pinned, e.g.
/// `1,1,96,64,f32`.
fn fact_string(
    spec: &TensorSpec,
    dims: &[(String, usize)],
    model: &str,
) -> Result<String, ModelError> {
    dtype_of(spec, model)?;
    let shape: Vec<String> = concrete_dims(spec, dims, model)?
        .iter()
        .map(usize::to_string)
        .collect();
    Ok(format!("{},{}", shape.join(","), spec.dtype))
}

/// A declared shape with its symbolic dims replaced by their pinned values.
fn concrete_dims(
    spec: &TensorSpec,
    dims: &[(String, usize)],
    model: &str,
) -> Result<Vec<usize>, ModelError> {
    spec.shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbol(s) => dims
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| ModelError::MissingDim {
                    model: model.to_string(),
                    tensor: spec.name.clone(),
                    symbol: s.clone(),
                    given: dims_string(dims),
                }),
        })
        .collect()
}

fn dims_string(dims: &[(String, usize)]) -> String {
    let parts: Vec<String> = dims.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    parts.join(", ")
}

fn concrete_shape(fact: &Fact) -> anyhow::Result<Vec<usize>> {
    let rank = fact.rank()?;
    (0..rank)
        .map(|axis| Ok(usize::try_from(fact.dim(axis)?.to_int64()?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tract_runs_without_its_amx_int8_kernel_unless_the_environment_says_otherwise() {
        let edit = super::cpu_features().unwrap();
        // Twice is fine (installed once per process).
        assert_eq!(super::cpu_features().unwrap(), edit);
        let knob = tract_data::knobs::all()
            .into_iter()
            .find(|k| k.name == "TRACT_CPU_ISA")
            .expect("tract declares the TRACT_CPU_ISA knob");
        let current = (knob.current)();
        if std::env::var_os("TRACT_CPU_ISA").is_none() {
            match super::TRACT_CPU_ISA_DEFAULT {
                Some(default) => {
                    assert_eq!(default, "-amx-int8");
                    assert_eq!(edit, default);
                    assert_eq!(current, edit, "the edit tract will apply");
                }
                None => {
                    assert_eq!(edit, "");
                    assert_eq!(current, "(unset)", "no edit on this architecture");
                }
            }
        } else {
            assert_eq!(current, edit, "the environment's edit wins");
        }
    }
}
