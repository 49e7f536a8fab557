//! `tspm-edge`: parses the command line, loads the configuration, starts logging, runs the
//! subcommand, and prints the error chain once.

use std::process::ExitCode;

use clap::Parser;
use tspm_edge::cli::{self, Cli};

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
