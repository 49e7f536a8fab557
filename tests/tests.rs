//! The one integration-test binary. Each module tests one part against real inputs;
//! `util` holds the harness (paths to goldens and models, the counting allocator).

#![allow(clippy::unwrap_used)]

mod util;

mod capture;
mod cli;
mod daemon;
mod dsp;
mod head;
mod model;
mod prompts;
mod text;
mod text_table;
mod token_merge;
mod window;
