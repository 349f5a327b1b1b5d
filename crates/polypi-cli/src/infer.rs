//! `polypi infer`: server, client and dealer in one process, one session over loopback TCP (or
//! in-memory channels), one private inference per input image, compared with the plaintext f32
//! prediction.

use crate::common::{self, ClassProb};
use crate::range::{self, CheckArgs, GuardArgs, MarginArgs};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use polypi_core::engine::guard::{GuardCheck, GuardMode, GuardPolicy, RangeViolation};
use polypi_core::engine::report::{InferenceReport, SetupReport};
use polypi_core::engine::run_f32;

use polypi_core::engine::session::{run_local_guarded, run_local_two_party, LocalOpts, Transport};
use polypi_core::net::LinkModel;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Channels between the three in-process roles.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TransportArg {
    /// TCP on 127.0.0.1 (as on a network, without latency).
    Tcp,
    /// In-memory channels.
    Mem,
    /// TLS 1.3 over TCP on 127.0.0.1 with fresh in-memory certificates (the cost of a
    /// deployment's encrypted links).
    Tls,
}

impl TransportArg {
    /// The engine's transport.
    pub fn transport(self) -> Transport {
        match self {
            TransportArg::Tcp => Transport::Tcp,
            TransportArg::Mem => Transport::Mem,
            TransportArg::Tls => Transport::Tls,
        }
    }
}

/// Arguments of `polypi infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model file (.safetensors). Default: the shipped models/netm-x2act-fmnist.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Input images (PNG, PGM/PPM), exactly the model's input size, or `.npy` files (float32,
    /// NCHW, the model's input shape with or without the batch dimension 1, already
    /// normalised). Default: the shipped samples
    /// of the model's input shape (data/samples/*.png for [1, 28, 28], data/samples/cifar/*.png for
    /// [3, 32, 32]).
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Compare every layer with the fixed-point twin and report the max |error|.
    #[arg(long)]
    pub check: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Channels between server, client and dealer.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: TransportArg,
    #[command(flatten)]
    pub poly: crate::common::PolyProtocolArg,
    #[command(flatten)]
    pub pre: crate::common::PreprocessingArg,
    #[command(flatten)]
    pub check_args: CheckArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub margin: MarginArgs,
}

/// A prediction (private or plaintext).
#[derive(Debug, Serialize)]
pub struct Prediction {
    /// Predicted class index.
    pub class: usize,
    /// Its name.
    pub label: String,
    /// Three most probable classes (softmax of the logits).
    pub top3: Vec<ClassProb>,
    /// The logits.
    pub logits: Vec<f32>,
}

impl Prediction {
    /// Builds the prediction of `logits`.
    pub fn new(plan: &polypi_core::model::Plan, logits: Vec<f32>) -> Self {
        let class = common::argmax(&logits);
        Prediction {
            class,
            label: common::class_name(plan, class),
            top3: common::top_k(plan, &logits, 3),
            logits,
        }
    }
}

#[derive(Serialize)]
struct InputResult {
    file: String,
    private: Prediction,
    plaintext: Prediction,
    agree: bool,
    /// A failed range-guard check: with --range-guard warn any violation; with refuse (default)
    /// only a plausible logit violation (`kind` = `plausible`: outside the calibrated range but
    /// below the garbage threshold), delivered with the result (input and garbage violations are
    /// refused, exit code 3).
    range_violation: Option<RangeViolation>,
    report: InferenceReport,
}

#[derive(Serialize)]
struct InferOutput {
    model: String,
    transport: String,
    setup: SetupReport,
    inputs: Vec<InputResult>,
    all_agree: bool,
    mean_online_ms: f64,
    wall_ms: f64,
}

/// Runs `polypi infer`.
pub fn run(a: InferArgs) -> Result<ExitCode> {
    let path = common::model_path(a.model.as_deref())?;
    let mut model = common::load_model(&path)?;
    model.plan.poly_protocol = a.poly.poly_protocol;
    let plan = &model.plan;
    let files = if a.input.is_empty() { common::default_inputs(plan)? } else { a.input.clone() };
    let mut inputs = Vec::with_capacity(files.len());
    for f in &files {
        inputs.push((common::load_input(f, plan)?, 1usize));
    }
    let transport = a.transport.transport();
    range::gate(&model, &a.check_args, &a.margin)?;
    let guard = range::guard_bounds(&model);
    let policy = range::policy(&a.guard, &a.margin)?;
    tracing::info!(model = %path.display(), inputs = files.len(), "private inference");
    let spinner = (!a.json).then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(format!("private inference of {} input(s)...", files.len()));
        pb.enable_steady_tick(std::time::Duration::from_millis(100));
        pb
    });
    let t0 = Instant::now();
    let opts = LocalOpts { transport, check: a.check };
    // The guard policy is applied here, at the plan's frac bits: inputs are checked before
    // anything runs, the roles run in warn mode, then each violation is classified and refused
    // only when it is an input violation or garbage (a plausible result is delivered).
    let res = (|| -> polypi_core::Result<_> {
        if let Some(b) = guard.as_ref().filter(|_| policy.mode == GuardMode::Refuse) {
            for (x, _) in &inputs {
                policy.apply(Some(b), GuardCheck::Input, x, plan.frac_bits)?;
            }
        }
        let run_policy = GuardPolicy {
            mode: if policy.mode == GuardMode::Off { GuardMode::Off } else { GuardMode::Warn },
            ..policy
        };
        let (setup, mut results) = if a.pre.preprocessing == common::Preprocessing::TwoParty {
            run_local_two_party(plan, guard, run_policy, &inputs, opts, LinkModel::none())?
        } else {
            run_local_guarded(plan, guard, run_policy, &inputs, opts, LinkModel::none())?
        };
        for r in &mut results {
            r.range_violation =
                policy.resolve(r.range_violation.map(|v| v.reclassify(plan.frac_bits)))?;
        }
        Ok((setup, results))
    })();
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    let (setup, results) = res.context("private inference failed")?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;

    let mut out = Vec::new();
    for ((f, (x, _)), r) in files.iter().zip(&inputs).zip(results) {
        let plain = run_f32(plan, x, 1).context("plaintext inference failed")?;
        let private = Prediction::new(plan, r.logits);
        let plaintext = Prediction::new(plan, plain);
        out.push(InputResult {
            file: f.display().to_string(),
            agree: private.class == plaintext.class,
            range_violation: r.range_violation,
            private,
            plaintext,
            report: r.report,
        });
    }
    let all_agree = out.iter().all(|r| r.agree);
    let mean_online_ms =
        out.iter().map(|r| r.report.online_ms).sum::<f64>() / out.len().max(1) as f64;
    let doc = InferOutput {
        model: path.display().to_string(),
        transport: format!("{:?}", a.transport).to_lowercase(),
        setup,
        inputs: out,
        all_agree,
        mean_online_ms,
        wall_ms,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&doc, &model);
    }
    if !all_agree {
        eprintln!(
            "error: the private prediction differs from the plaintext one for {} input(s); \
             rerun with --check to see which layer loses precision",
            doc.inputs.iter().filter(|r| !r.agree).count()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(d: &InferOutput, model: &common::Model) {
    let name = model.file.card.as_ref().map(|c| c.name.as_str()).filter(|s| !s.is_empty());
    println!(
        "model {}{} — {} input(s), transport {}",
        d.model,
        name.map(|n| format!(" ({n})")).unwrap_or_default(),
        d.inputs.len(),
        d.transport
    );
    for r in &d.inputs {
        println!(
            "{}: private {} [{}] | plaintext {} | {} | online {:.2} ms, {:.3} MB, {} rounds",
            r.file,
            r.private.label,
            common::fmt_top(&r.private.top3),
            r.plaintext.label,
            match (&r.range_violation, r.agree) {
                (Some(v), _) => format!(
                    "RANGE WARNING ({:?}): {:?} max |x| {:.3e} > bound {:.3e} (garbage above \
                     {:.3e})",
                    v.kind, v.check, v.value, v.bound, v.garbage_threshold
                ),
                (None, true) => "agree".into(),
                (None, false) => "DISAGREE".into(),
            },
            r.report.online_ms,
            r.report.online_bytes as f64 / 1e6,
            r.report.rounds
        );
    }
    if let Some(first) = d.inputs.first() {
        println!("\nper layer (input 1: {}):", first.file);
        print!("{}", first.report.table());
    }
    let two_party = d.inputs.first().is_some_and(|i| i.report.preprocessing_bytes > 0);
    println!(
        "setup (once per session): {:.2} ms, {:.3} MB {}",
        d.setup.ms,
        d.setup.bytes as f64 / 1e6,
        if two_party {
            "both ways (skeleton; the client's public keys)"
        } else {
            "server -> client"
        }
    );
    println!(
        "mean online latency {:.2} ms over {} input(s); wall time {:.0} ms; private == plaintext: {}",
        d.mean_online_ms,
        d.inputs.len(),
        d.wall_ms,
        if d.all_agree { "yes" } else { "NO" }
    );
}
