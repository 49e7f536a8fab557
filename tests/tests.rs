//! The one integration-test binary. Each module tests one part against real inputs;
//! `util` holds the harness (paths to goldens and models, the counting allocator).

mod util;

mod capture;
mod dsp;
mod model;
