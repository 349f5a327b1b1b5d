//! `polypi calibrate`: runs the plaintext executors (f32 and the fixed-point twin) over real data
//! and stores the per-layer value ranges in the model file (`polypi.ranges`), then prints them
//! with the plan range check (bits used, headroom, failure probability per layer).

use crate::common;
use crate::eval::{load_split, DatasetArg, SplitArg};
use crate::range::{self, MarginArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use polypi_core::engine::calibrate::Calibrator;
use polypi_core::model::range::{RangeReport, Ranges};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Model file (.safetensors). Default: the shipped models/netm-x2act-fmnist.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Data folder (as for `polypi eval`: `data/fetched` after `scripts/fetch-data.sh`, or the
    /// folder of the IDX files or of the CIFAR-10 binary batches).
    #[arg(long)]
    pub data: PathBuf,
    /// Which dataset.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetArg,
    /// Which split to calibrate on (train keeps the test split unseen by the calibration).
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Use only the first N images of the split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the calibrated model here instead of updating --model in place (atomic write).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub margin: MarginArgs,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct CalibrateOutput {
    model: String,
    written: String,
    ranges: Ranges,
    check: RangeReport,
    ms: f64,
}

/// Runs `polypi calibrate`.
pub fn run(a: CalibrateArgs) -> Result<ExitCode> {
    let path = common::model_path(a.model.as_deref())?;
    let mut m = common::load_model(&path)?;
    let ds = load_split(a.dataset, &a.data, a.split)?;
    if m.plan.input_shape() != ds.shape {
        bail!(
            "the model expects inputs {:?} but the {:?} data has {:?}: pass the --dataset the \
             model was trained on",
            m.plan.input_shape(),
            a.dataset,
            ds.shape
        );
    }
    let n = a.limit.map_or(ds.len(), |l| l.min(ds.len()));
    if n == 0 {
        bail!("no images to calibrate on (--limit 0 or an empty split)");
    }
    let t0 = std::time::Instant::now();
    let mut cal = Calibrator::new(&m.plan).context("cannot encode the model's weights")?;
    let pb = if a.json { ProgressBar::hidden() } else { ProgressBar::new(n as u64) };
    if let Ok(s) = ProgressStyle::with_template("calibrating [{bar:30}] {pos}/{len} ({eta})") {
        pb.set_style(s.progress_chars("=> "));
    }
    const BATCH: usize = 50;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let x: Vec<f32> = (start..end).flat_map(|i| ds.input(i, &m.plan)).collect();
        cal.add_batch(&x, end - start)
            .with_context(|| format!("calibration failed on images {start}..{end}"))?;
        pb.set_position(end as u64);
    }
    pb.finish_and_clear();
    let split = match a.split {
        SplitArg::Train => "train",
        SplitArg::Test => "test",
    };
    let ranges = cal.finish(&format!("{:?} {split} split, first {n} images", a.dataset))?;
    m.file.ranges = Some(ranges.clone());
    let out = a.out.clone().unwrap_or_else(|| path.clone());
    m.file
        .save(&out)
        .with_context(|| format!("cannot write the calibrated model {}", out.display()))?;
    let check = range::report(&m, &a.margin)?.context("ranges were just added")?;
    let doc = CalibrateOutput {
        model: path.display().to_string(),
        written: out.display().to_string(),
        ranges,
        check,
        ms: t0.elapsed().as_secs_f64() * 1e3,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "calibrated {} on {} ({} images, {:.1} s); written to {}",
        doc.model,
        doc.ranges.data,
        n,
        doc.ms / 1e3,
        doc.written
    );
    println!(
        "{:<20} {:<13} {:>12} {:>12} {:>12}",
        "layer", "op", "max |x|", "p99.99 |x|", "mean |x|"
    );
    for l in &doc.ranges.layers {
        println!(
            "{:<20} {:<13} {:>12.4} {:>12.4} {:>12.4}",
            l.name, l.op, l.max_abs, l.p9999_abs, l.mean_abs
        );
    }
    println!();
    print!("{}", doc.check.table());
    Ok(ExitCode::SUCCESS)
}
