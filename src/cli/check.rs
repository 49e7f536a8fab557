//! `tspm-edge check-models`: the int8-vs-fp32 check as tract runs the models.

use crate::config::Config;
use crate::model::check::check_models;

/// Arguments of `check-models`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `check-models` and prints one row per model file.
pub fn run(cfg: &Config, _args: Args) -> anyhow::Result<()> {
    let rows = check_models(&cfg.models.dir)?;
    println!(
        "{:<26} {:>6} {:>14} {:>12} {:>11} {:>8}",
        "model (tract)", "inputs", "max|d| vs ort", "mean cosine", "min cosine", "top-1 ="
    );
    for r in rows {
        println!(
            "{:<26} {:>6} {:>14.2e} {:>12.4} {:>11.4} {:>7.0}%",
            r.model,
            r.inputs,
            r.max_abs_vs_ort,
            r.mean_cosine,
            r.min_cosine,
            r.top1_agreement * 100.0
        );
    }
    println!("(cosine and top-1 are against tract fp32; max|d| is against onnxruntime fp32)");
    Ok(())
}
