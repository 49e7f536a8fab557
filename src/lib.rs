//! tspm-edge: offline audio-visual question answering for ARM edge boards.
//!
//! The modules follow the data: [`capture`] (GStreamer) → [`segmenter`] (one-second
//! windows by timestamp) → [`dsp`] (log-mel, image preparation) → [`model`] (tract, the only
//! module that knows it) → [`features`] (per-second feature sets written for Python).
//! `config` turns the TOML file into typed values; the CLI glue lives in `main.rs` and
//! [`cli`].

// Docs write tensor shapes in brackets, `[T, 1024]`, as the code comments do; they are not
// intra-doc links.
#![allow(rustdoc::broken_intra_doc_links)]

pub mod api;
pub mod capture;
pub mod cli;
pub mod config;
pub mod dsp;
pub mod engine;
pub mod features;
pub mod featurizer;
pub mod gpio;
pub mod memory;
pub mod model;
pub mod prompts;
pub mod pts;
pub mod segmenter;
pub mod systemd;
pub mod window;
