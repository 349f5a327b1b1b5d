//! Lambda sweeps of the architecture search ([`crate::search`]): one search + retraining per
//! lambda, plus the all-ReLU (ReLU + max pooling) and all-X2act (X2act + avg pooling) reference
//! networks trained with the same recipe; private latency measured by polypi-core's engine
//! ([`polypi_core::engine::bench::bench_local`], the code behind `polypi bench`); a table
//! (markdown + CSV) and an accuracy-vs-latency Pareto plot (SVG).
//!
//! Files in the output folder: `<point>/arch.json`, `<point>/model.safetensors` (+ burn
//! checkpoint, metrics CSV, training plot) per point, and `sweep.json`, `sweep.md`, `sweep.csv`,
//! `pareto.svg`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use polypi_core::engine::bench::bench_local;
use polypi_core::engine::session::Transport;
use polypi_core::model::compile::compile;
use polypi_core::model::file::ModelFile;
use polypi_core::net::LinkModel;
use serde::{Deserialize, Serialize};

use crate::layers::ActKind;
use crate::nets::PoolKind;
use crate::search::{self, Arch, DerivedArch, SearchConfig};

/// A private-inference measurement of one model on one link (batch 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// Link (`none`, `wan`, ...).
    pub link: String,
    /// Median online time over the runs, ms.
    pub online_ms: f64,
    /// Fastest run's online time, ms (less sensitive to other load on a shared machine).
    #[serde(default)]
    pub online_ms_min: f64,
    /// Median offline time, ms.
    pub offline_ms: f64,
    /// Online bytes both ways.
    pub online_bytes: u64,
    /// Dealer bytes.
    pub dealer_bytes: u64,
    /// Online rounds.
    pub rounds: u64,
    /// Runs measured.
    pub runs: usize,
}

/// One point of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    /// `lambda=<L>`, `all-ReLU` or `all-X2act`.
    pub label: String,
    /// Lambda of a searched point (None for the references).
    pub lambda: Option<f64>,
    /// Per-site choices.
    pub arch: Arch,
    /// Predicted site latency on the search profile (its unit).
    pub predicted: f64,
    /// Test accuracy of the retrained network, percent.
    pub test_accuracy: f64,
    /// The exported model file.
    pub model: PathBuf,
    /// Measurements (filled by [`measure_points`]).
    pub measured: Vec<Measured>,
}

/// A whole sweep (written as `sweep.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sweep {
    /// The search / retraining settings (lambda = that of the first point).
    pub config: SearchConfig,
    /// Unit of `predicted`.
    pub time_unit: String,
    /// Points: searched ones in lambda order, then the references.
    pub points: Vec<SweepPoint>,
}

fn lambda_dir(l: f64) -> String {
    format!("lambda-{l:e}")
}

/// Runs a search + retraining for every lambda in `lambdas`, trains the two references (when
/// `references`), writes everything into `out` and returns the sweep (not yet measured).
///
/// # Errors
/// Whatever [`search::search`] or [`crate::train()`] report; I/O errors on the outputs.
pub fn run_sweep(
    cfg: &SearchConfig,
    lambdas: &[f64],
    references: bool,
    out: &Path,
    command: &str,
) -> Result<Sweep> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut points = Vec::new();
    let mut last: Option<DerivedArch> = None;
    let mut unit = String::new();
    for &l in lambdas {
        let c = SearchConfig { lambda: l, ..cfg.clone() };
        let dir = out.join(lambda_dir(l));
        let (d, acc, model) = search_and_retrain(&c, &dir, command)?;
        unit = d.time_unit.clone();
        points.push(SweepPoint {
            label: format!("lambda={l:e}"),
            lambda: Some(l),
            arch: d.arch.clone(),
            predicted: d.predicted_latency,
            test_accuracy: acc,
            model,
            measured: vec![],
        });
        last = Some(d);
        save(out, cfg, &unit, &points)?;
    }
    if references {
        for (label, act, pool) in [
            ("all-ReLU", ActKind::Relu, PoolKind::Max),
            ("all-X2act", ActKind::X2act, PoolKind::Avg),
        ] {
            let arch = Arch::uniform(cfg.site_counts()?, act, pool);
            let dir = out.join(label.to_ascii_lowercase());
            std::fs::create_dir_all(&dir)?;
            let model = dir.join("model.safetensors");
            if cfg.progress {
                eprintln!("== reference {label}: training {} epochs", cfg.epochs);
            }
            let r = crate::train(&cfg.retrain_config(&arch, Some(model.clone()), None, command))?;
            let predicted = last.as_ref().map_or(f64::NAN, |d| search::predicted_latency(&arch, d));
            points.push(SweepPoint {
                label: label.into(),
                lambda: None,
                arch,
                predicted,
                test_accuracy: r.test_accuracy,
                model,
                measured: vec![],
            });
            save(out, cfg, &unit, &points)?;
        }
    }
    let sweep = Sweep { config: cfg.clone(), time_unit: unit, points };
    write_reports(&sweep, out)?;
    Ok(sweep)
}

/// Builds the sweep of `lambdas` from point folders already in `out` (written by separate
/// `search --lambda L --out <out>/lambda-<L>` runs and, for the references, training runs with
/// `--out <out>/all-relu/model.safetensors` / `<out>/all-x2act/model.safetensors`), without
/// training anything; writes the reports.
///
/// # Errors
/// A missing or unreadable `arch.json` / model file, a model without test accuracy.
pub fn collect_sweep(
    cfg: &SearchConfig,
    lambdas: &[f64],
    references: bool,
    out: &Path,
) -> Result<Sweep> {
    let acc_of = |m: &Path| -> Result<f64> {
        let f = ModelFile::load(m).with_context(|| format!("loading model {}", m.display()))?;
        f.card
            .and_then(|c| c.test_accuracy)
            .map(|a| a as f64)
            .with_context(|| format!("{} has no test accuracy in its model card", m.display()))
    };
    let mut points = Vec::new();
    let mut last: Option<DerivedArch> = None;
    for &l in lambdas {
        let dir = out.join(lambda_dir(l));
        let d = DerivedArch::load(&dir.join("arch.json"))?;
        let model = dir.join("model.safetensors");
        points.push(SweepPoint {
            label: format!("lambda={l:e}"),
            lambda: Some(l),
            arch: d.arch.clone(),
            predicted: d.predicted_latency,
            test_accuracy: acc_of(&model)?,
            model,
            measured: vec![],
        });
        last = Some(d);
    }
    if references {
        for (label, act, pool) in [
            ("all-ReLU", ActKind::Relu, PoolKind::Max),
            ("all-X2act", ActKind::X2act, PoolKind::Avg),
        ] {
            let arch = Arch::uniform(cfg.site_counts()?, act, pool);
            let model = out.join(label.to_ascii_lowercase()).join("model.safetensors");
            let predicted = last.as_ref().map_or(f64::NAN, |d| search::predicted_latency(&arch, d));
            points.push(SweepPoint {
                label: label.into(),
                lambda: None,
                arch,
                predicted,
                test_accuracy: acc_of(&model)?,
                model,
                measured: vec![],
            });
        }
    }
    let unit = last.map_or_else(String::new, |d| d.time_unit);
    let sweep = Sweep { config: cfg.clone(), time_unit: unit, points };
    write_reports(&sweep, out)?;
    Ok(sweep)
}

fn save(out: &Path, cfg: &SearchConfig, unit: &str, points: &[SweepPoint]) -> Result<()> {
    let s = Sweep { config: cfg.clone(), time_unit: unit.into(), points: points.to_vec() };
    std::fs::write(out.join("sweep.json"), serde_json::to_string_pretty(&s)?)
        .with_context(|| format!("writing {}", out.join("sweep.json").display()))
}

/// One search at `cfg.lambda`, `arch.json` and the supernet checkpoint
/// `supernet.ckpt.safetensors` in `dir`, then (when `cfg.epochs > 0`) the retraining of the
/// derived net (from scratch, or fine-tuned from the supernet with `cfg.finetune`) to
/// `dir/model.safetensors`. Returns the derived architecture,
/// the retrained test accuracy (NaN without retraining) and the model path.
///
/// # Errors
/// Search or training errors, I/O.
pub fn search_and_retrain(
    cfg: &SearchConfig,
    dir: &Path,
    command: &str,
) -> Result<(DerivedArch, f64, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if cfg.progress {
        eprintln!("== search: lambda {:e}, profile {}, link {}", cfg.lambda, cfg.profile, cfg.link);
    }
    let supernet = dir.join("supernet.ckpt.safetensors");
    let d = search::search(cfg, Some(&supernet))?;
    d.save(&dir.join("arch.json"))?;
    if cfg.progress {
        eprintln!(
            "derived {} (predicted {:.4e} {}; all-ReLU {:.4e}, all-X2act {:.4e})",
            d.arch.summary(),
            d.predicted_latency,
            d.time_unit,
            d.predicted_all_relu,
            d.predicted_all_x2act
        );
    }
    let model = dir.join("model.safetensors");
    if cfg.epochs == 0 {
        return Ok((d, f64::NAN, model));
    }
    let init = cfg.finetune.then_some(supernet);
    let r = crate::train(&cfg.retrain_config(&d.arch, Some(model.clone()), init, command))?;
    Ok((d, r.test_accuracy, model))
}

/// Measures every point's model with the engine (server, client, dealer in this process over
/// loopback TCP, batch 1, `runs` inferences, median) on each link.
///
/// # Errors
/// Unreadable model, compile errors, engine errors.
pub fn measure_points(sweep: &mut Sweep, links: &[LinkModel], runs: usize) -> Result<()> {
    for p in sweep.points.iter_mut() {
        let file = ModelFile::load(&p.model)
            .with_context(|| format!("loading model {}", p.model.display()))?;
        let plan = compile(&file).with_context(|| format!("compiling {}", p.model.display()))?;
        p.measured.clear();
        for l in links {
            let s = bench_local(&plan, 1, runs.max(1), Transport::Tcp, *l, 7)
                .with_context(|| format!("benchmark of {}", p.model.display()))?;
            eprintln!("measured {} on {}: online {:.2} ms", p.label, s.link, s.online_ms.median);
            p.measured.push(Measured {
                link: s.link.clone(),
                online_ms: s.online_ms.median,
                online_ms_min: s.online_ms.min,
                offline_ms: s.offline_ms.median,
                online_bytes: s.bytes_client_to_server + s.bytes_server_to_client,
                dealer_bytes: s.dealer_bytes,
                rounds: s.rounds,
                runs: s.runs,
            });
        }
    }
    Ok(())
}

/// Reads `sweep.json` from `dir`. Errors: I/O, malformed JSON.
pub fn load_sweep(dir: &Path) -> Result<Sweep> {
    let p = dir.join("sweep.json");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))
}

fn links_of(sweep: &Sweep) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in &sweep.points {
        for m in &p.measured {
            if !v.contains(&m.link) {
                v.push(m.link.clone());
            }
        }
    }
    v
}

/// The sweep as a markdown table: point, lambda, choices, accuracy, predicted latency, then per
/// measured link the online ms, and online MB / rounds (from the first link).
pub fn markdown(sweep: &Sweep) -> String {
    let links = links_of(sweep);
    let mut s =
        format!("| point | lambda | acts | pools | test acc % | predicted ({}) |", sweep.time_unit);
    for l in &links {
        s += &format!(" online ms ({l}): median (min) |");
    }
    s += " online MB | rounds |\n|---|---|---|---|---|---|";
    for _ in &links {
        s += "---|";
    }
    s += "---|---|\n";
    for p in &sweep.points {
        let (a, pl) = split_summary(&p.arch);
        s += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.4e} |",
            p.label,
            p.lambda.map_or("-".into(), |l| format!("{l:e}")),
            a,
            pl,
            p.test_accuracy,
            p.predicted
        );
        for l in &links {
            match p.measured.iter().find(|m| &m.link == l) {
                Some(m) => s += &format!(" {:.2} ({:.2}) |", m.online_ms, m.online_ms_min),
                None => s += " - |",
            }
        }
        match p.measured.first() {
            Some(m) => s += &format!(" {:.3} | {} |\n", m.online_bytes as f64 / 1e6, m.rounds),
            None => s += " - | - |\n",
        }
    }
    s
}

fn split_summary(a: &Arch) -> (String, String) {
    let s = a.summary();
    let (x, y) = s.split_once('|').unwrap_or((&s, ""));
    (x.to_string(), if y.is_empty() { "-".into() } else { y.to_string() })
}

/// The sweep as CSV (header row; one row per point and measured link, or one row without
/// measurements): `label,lambda,acts,pools,test_acc,predicted,link,online_ms,online_ms_min,offline_ms,online_bytes,dealer_bytes,rounds`.
pub fn csv(sweep: &Sweep) -> String {
    let mut s = String::from(
        "label,lambda,acts,pools,test_acc,predicted,link,online_ms,online_ms_min,offline_ms,online_bytes,dealer_bytes,rounds\n",
    );
    for p in &sweep.points {
        let (a, pl) = split_summary(&p.arch);
        let head = format!(
            "{},{},{},{},{:.3},{:.6e}",
            p.label,
            p.lambda.map_or(String::new(), |l| format!("{l:e}")),
            a.replace(',', ";"),
            pl.replace(',', ";"),
            p.test_accuracy,
            p.predicted
        );
        if p.measured.is_empty() {
            s += &format!("{head},,,,,,,\n");
        }
        for m in &p.measured {
            s += &format!(
                "{head},{},{:.3},{:.3},{:.3},{},{},{}\n",
                m.link,
                m.online_ms,
                m.online_ms_min,
                m.offline_ms,
                m.online_bytes,
                m.dealer_bytes,
                m.rounds
            );
        }
    }
    s
}

/// Writes `sweep.json`, `sweep.md`, `sweep.csv` and `pareto.svg` into `dir`.
///
/// # Errors
/// I/O or plotting errors.
pub fn write_reports(sweep: &Sweep, dir: &Path) -> Result<()> {
    std::fs::write(dir.join("sweep.json"), serde_json::to_string_pretty(sweep)?)?;
    std::fs::write(dir.join("sweep.md"), markdown(sweep))?;
    std::fs::write(dir.join("sweep.csv"), csv(sweep))?;
    pareto_svg(sweep, &dir.join("pareto.svg"))
}

/// Accuracy (y) vs latency (x, log scale) of every point: the measured online ms on the first
/// measured link, or the predicted latency when nothing was measured. Searched points blue,
/// references red, each labelled.
///
/// # Errors
/// Plotting / I/O errors.
pub fn pareto_svg(sweep: &Sweep, path: &Path) -> Result<()> {
    let link = links_of(sweep).into_iter().next();
    let x_of = |p: &SweepPoint| match &link {
        Some(l) => p.measured.iter().find(|m| &m.link == l).map_or(f64::NAN, |m| m.online_ms),
        None => p.predicted,
    };
    let pts: Vec<(f64, f64, &SweepPoint)> = sweep
        .points
        .iter()
        .map(|p| (x_of(p), p.test_accuracy, p))
        .filter(|(x, y, _)| x.is_finite() && *x > 0.0 && y.is_finite())
        .collect();
    let xlabel = match &link {
        Some(l) => format!("measured online latency, ms (link {l}, log scale)"),
        None => format!("predicted latency, {} (log scale)", sweep.time_unit),
    };
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (760, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let (xmin, xmax) =
            pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (ymin, ymax) =
            pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (xmin, xmax) = if pts.is_empty() { (1.0, 10.0) } else { (xmin / 1.5, xmax * 1.5) };
        let (ymin, ymax) = if pts.is_empty() { (0.0, 100.0) } else { (ymin - 1.0, ymax + 1.0) };
        let mut c = ChartBuilder::on(&root)
            .caption("accuracy vs private latency (architecture search sweep)", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((xmin..xmax).log_scale(), ymin..ymax)?;
        c.configure_mesh().x_desc(xlabel.as_str()).y_desc("test accuracy %").draw()?;
        // Labels at alternating pixel offsets: points of equal architecture coincide.
        c.draw_series(pts.iter().enumerate().map(|(i, (x, y, p))| {
            let col = if p.lambda.is_some() { BLUE } else { RED };
            let dy = -16 + 14 * (i as i32 % 3);
            EmptyElement::at((*x, *y))
                + Circle::new((0, 0), 5, col.filled())
                + Text::new(p.label.clone(), (8, dy), ("sans-serif", 12).into_font().color(&col))
        }))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("plotting {}: {e}", path.display()))
}
