//! `polypi import`: an ONNX model (as PyTorch exports it, both exporters) to a polypi model file,
//! with its polynomial activations recognised (polypi-import; docs/import.md).

use anyhow::{bail, Context, Result};
use clap::Args;
use polypi_core::model::Normalize;
use polypi_import::{import_onnx, ImportOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The ONNX model (`torch.onnx.export`, either exporter). Weights in an external
    /// `FILE.data` beside it are read from there.
    #[arg(long)]
    pub onnx: PathBuf,
    /// Output model file (.safetensors). Not written when anything fails.
    #[arg(long)]
    pub out: PathBuf,
    /// Per-channel mean of the image input scaled to [0, 1], e.g. 0.4914,0.4822,0.4465: images
    /// given to infer / query / eval become `(x/255 - mean) / std`. `.npy` inputs are used as
    /// given (already normalised).
    #[arg(long, value_delimiter = ',', requires = "std")]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, with --mean.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Vec<f32>,
    /// Class names, one per line, in logit order.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Fixed-point fractional bits the model runs at (1..=32). Check with `polypi calibrate`
    /// and `polypi inspect` that its values fit.
    #[arg(long, default_value_t = 16)]
    pub frac_bits: u32,
    /// Model card name (default: the ONNX file's name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Model card: the dataset the network was trained on, e.g. "CIFAR-10".
    #[arg(long)]
    pub dataset: Option<String>,
    /// Model card: its plaintext test accuracy in percent (0..=100), as you measured it.
    #[arg(long)]
    pub test_accuracy: Option<f32>,
}

/// Runs `polypi import`.
pub fn run(a: ImportArgs) -> Result<ExitCode> {
    let normalize = match (a.mean.is_empty(), a.std.is_empty()) {
        (true, true) => None,
        _ if a.mean.len() != a.std.len() => {
            bail!("--mean has {} values but --std has {}", a.mean.len(), a.std.len())
        }
        _ => Some(Normalize { mean: a.mean.clone(), std: a.std.clone() }),
    };
    let labels = match &a.labels {
        None => Vec::new(),
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the labels file {}", p.display()))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    };
    if let Some(acc) = a.test_accuracy {
        if !(0.0..=100.0).contains(&acc) {
            bail!("--test-accuracy must be a percentage in 0..=100, got {acc}");
        }
    }
    let opts = ImportOptions {
        name: a.name.clone(),
        normalize,
        labels,
        frac_bits: a.frac_bits,
        dataset: a.dataset.clone(),
        test_accuracy: a.test_accuracy,
    };
    let imp = import_onnx(&a.onnx, &opts)
        .with_context(|| format!("cannot import {} (nothing written)", a.onnx.display()))?;
    imp.model.save(&a.out).with_context(|| {
        format!("cannot write {} (does its folder exist and is it writable?)", a.out.display())
    })?;
    let g = &imp.model.graph;
    let s = &imp.source;
    println!(
        "imported {} (ONNX opset {}, {}; {} ONNX nodes) -> {}: {} nodes, {} values, input {:?}, \
         {} outputs, frac bits {}",
        a.onnx.display(),
        s.opset,
        if s.producer.is_empty() { "unknown exporter" } else { &s.producer },
        s.onnx_nodes,
        a.out.display(),
        g.nodes.len(),
        imp.model.num_values(),
        g.input_shape,
        imp.model
            .infer_shapes()
            .ok()
            .and_then(|v| v.last().map(|l| l.iter().product::<usize>()))
            .unwrap_or(0),
        g.frac_bits
    );
    for act in &imp.activations {
        println!("  activation {act}");
    }
    for n in &imp.notes {
        println!("note: {n}");
    }
    println!(
        "next: `polypi inspect --model {0}`, then `polypi calibrate` on real data, and `polypi \
         infer --model {0} --input IMG_OR_NPY`",
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
