//! `tspm-edge`: parses the command line, loads the configuration, starts logging, runs the
//! subcommand, and prints the error chain once.

use std::process::ExitCode;

use clap::Parser;
use tspm_edge::cli::{self, Cli};

/// jemalloc, not glibc malloc, for every Rust allocation of the program (tract's tensors and
/// plans, the window, the API's buffers); GStreamer's C allocations stay with glibc. The
/// daemon frees large tract temporaries on the encoder thread every segment and small API
/// buffers on many short-lived connection threads; glibc keeps such freed memory in its
/// arenas (and, after a large free, raises its mmap threshold so the next ones come from the
/// heap too), so `serve`'s resident set wandered with how the threads met the arenas.
/// Measured with `soak` (README, "The daemon"): see [`MALLOC_CONF`].
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment is
/// applied after these, for experiments): two arenas (not 4 × cores: the daemon has one busy
/// allocating thread, the encoder); freed pages given back over two seconds by jemalloc's own
/// background thread, not on the allocating threads' paths; no "muzzy" stage (MADV_FREE pages
/// count in RSS until the kernel needs them). The decay time is measured (release build,
/// `soak --realtime-s 30 --segments 600`, two runs each): 1 s returns the encoder's
/// temporaries between real-time segments and each segment faults them back in (44-50 ms a
/// segment vs 41-43); 5 s lets more freed memory stand (peak 119.6 and 123.3 MB); 2 s: peak
/// 117.5 and 119.0 MB, 41.4-42.5 ms a segment.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
// SAFETY: jemalloc reads this symbol (with tikv-jemalloc-sys's `_rjem_` prefix) as a
// `const char *` to a NUL-terminated string during its initialisation; a thin reference to
// the first byte of a static byte string is exactly that, and it is never written.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"narenas:2,background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tspm-edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}
