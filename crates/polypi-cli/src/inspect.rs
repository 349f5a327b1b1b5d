//! `polypi inspect`: what a model file holds — graph nodes with output shapes and parameters, the
//! compiled layers with MACs and activation counts (elements entering each Poly/ReLU), the model
//! card, and the range check from the calibrated ranges (bits used, headroom and failure
//! probability per layer).

use crate::common;
use crate::range::{self, MarginArgs};
use anyhow::{Context, Result};
use clap::Args;
use polypi_core::model::graph::{ModelCard, Normalize};
use polypi_core::model::range::{RangeReport, Ranges};
use polypi_core::model::LayerOp;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.safetensors). Default: the shipped models/netm-x2act-fmnist.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub margin: MarginArgs,
}

#[derive(Serialize)]
struct NodeInfo {
    name: String,
    op: String,
    inputs: Vec<String>,
    out_shape: Vec<usize>,
    params: usize,
}

#[derive(Serialize)]
struct LayerInfo {
    name: String,
    op: String,
    out_shape: Vec<usize>,
    macs: u64,
    /// Elements entering this activation (Poly/ReLU), per sample.
    activations: u64,
    /// Polynomial degree (Poly only).
    degree: Option<usize>,
}

#[derive(Serialize)]
struct InspectOutput {
    model: String,
    card: Option<ModelCard>,
    input_shape: Vec<usize>,
    frac_bits: u32,
    normalize: Option<Normalize>,
    labels: Vec<String>,
    nodes: Vec<NodeInfo>,
    layers: Vec<LayerInfo>,
    params: usize,
    macs: u64,
    poly_activations: u64,
    relu_activations: u64,
    /// Calibrated value ranges (`polypi calibrate`), if any.
    ranges: Option<Ranges>,
    /// The plan range check from the ranges x margin.
    range_check: Option<RangeReport>,
}

/// Runs `polypi inspect`.
pub fn run(a: InspectArgs) -> Result<ExitCode> {
    let path = common::model_path(a.model.as_deref())?;
    let m = common::load_model(&path)?;
    let shapes = m.file.infer_shapes().context("cannot infer the graph's shapes")?;
    let nodes: Vec<NodeInfo> = m
        .file
        .graph
        .nodes
        .iter()
        .zip(shapes)
        .map(|(n, s)| {
            // Every string attribute that names a tensor of the file is a parameter of the node.
            let params = serde_json::to_value(&n.op)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .map(|o| {
                    o.values()
                        .filter_map(|v| v.as_str())
                        .filter_map(|t| m.file.tensors.get(t))
                        .map(|t| t.numel())
                        .sum::<usize>()
                })
                .unwrap_or(0);
            NodeInfo {
                name: n.name.clone(),
                op: n.op.kind().to_string(),
                inputs: n.inputs.clone(),
                out_shape: s,
                params,
            }
        })
        .collect();
    let layers: Vec<LayerInfo> = m
        .plan
        .layers
        .iter()
        .map(|l| {
            let numel = l.out_shape.iter().product::<usize>() as u64;
            let (macs, activations, degree) = match &l.op {
                LayerOp::Conv2d(c) => (c.geom.macs(), 0, None),
                LayerOp::Linear(c) => ((c.in_features * c.out_features) as u64, 0, None),
                LayerOp::Poly(p) => (0, numel, Some(p.degree)),
                LayerOp::Relu => (0, numel, None),
                _ => (0, 0, None),
            };
            LayerInfo {
                name: l.name.clone(),
                op: l.op.kind().to_string(),
                out_shape: l.out_shape.clone(),
                macs,
                activations,
                degree,
            }
        })
        .collect();
    let count =
        |k: &str| -> u64 { layers.iter().filter(|l| l.op == k).map(|l| l.activations).sum() };
    let range_check = range::report(&m, &a.margin)?;
    let doc = InspectOutput {
        model: path.display().to_string(),
        card: m.file.card.clone(),
        input_shape: m.plan.input_shape().to_vec(),
        frac_bits: m.plan.frac_bits,
        normalize: m.plan.normalize.clone(),
        labels: m.plan.labels.clone(),
        params: m.file.num_values(),
        macs: layers.iter().map(|l| l.macs).sum(),
        poly_activations: count("Poly"),
        relu_activations: count("Relu"),
        nodes,
        layers,
        ranges: m.file.ranges.clone(),
        range_check,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&doc);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(d: &InspectOutput) {
    println!("model {}", d.model);
    match &d.card {
        Some(c) => {
            println!("card: name {:?}, dataset {:?}, split {:?}", c.name, c.dataset, c.split);
            if let Some(acc) = c.test_accuracy {
                println!("      test accuracy {acc:.2}%");
            }
            if !c.recipe.is_empty() {
                println!("      recipe: {}", c.recipe);
            }
        }
        None => println!("card: none"),
    }
    println!("input {:?}, frac bits {}", d.input_shape, d.frac_bits);
    if let Some(n) = &d.normalize {
        println!("normalize: mean {:?}, std {:?}", n.mean, n.std);
    }
    if !d.labels.is_empty() {
        println!("labels: {}", d.labels.join(", "));
    }
    println!("\ngraph ({} nodes):", d.nodes.len());
    println!("{:<20} {:<12} {:<22} {:<16} {:>10}", "node", "op", "inputs", "out shape", "params");
    for n in &d.nodes {
        println!(
            "{:<20} {:<12} {:<22} {:<16} {:>10}",
            n.name,
            n.op,
            n.inputs.join(","),
            format!("{:?}", n.out_shape),
            n.params
        );
    }
    println!(
        "\ncompiled ({} layers; BatchNorm folded, activations as polynomials):",
        d.layers.len()
    );
    println!(
        "{:<20} {:<13} {:<16} {:>12} {:>12} {:>6}",
        "layer", "op", "out shape", "MACs", "act elems", "degree"
    );
    for l in &d.layers {
        println!(
            "{:<20} {:<13} {:<16} {:>12} {:>12} {:>6}",
            l.name,
            l.op,
            format!("{:?}", l.out_shape),
            l.macs,
            l.activations,
            l.degree.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "total: {} parameters, {} MACs per sample, {} polynomial activations, {} ReLUs per sample",
        d.params, d.macs, d.poly_activations, d.relu_activations
    );
    match (&d.ranges, &d.range_check) {
        (Some(r), Some(c)) => {
            println!("\ncalibrated ranges: {} ({} samples)", r.data, r.samples);
            print!("{}", c.table());
        }
        _ => println!(
            "\nno calibrated ranges: no range check and no runtime range guard (run `polypi \
             calibrate --model FILE --data DIR`)"
        ),
    }
}
