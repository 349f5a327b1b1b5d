//! Per-epoch metrics as CSV and an SVG plot of the curves (plotters' SVG backend: no font files).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::train::EpochMetrics;

/// Writes the metrics as CSV with a header row
/// (`epoch,lr,train_loss,train_acc,test_loss,test_acc,oor_frac,max_abs,penalty,train_secs,eval_secs`;
/// accuracies in percent, times in seconds).
pub fn write_csv(epochs: &[EpochMetrics], path: &Path) -> Result<()> {
    let mut s = String::from("epoch,lr,train_loss,train_acc,test_loss,test_acc,oor_frac,max_abs,penalty,train_secs,eval_secs\n");
    for m in epochs {
        s += &format!(
            "{},{:.6},{:.6},{:.3},{:.6},{:.3},{:.6e},{:.4},{:.6e},{:.2},{:.2}\n",
            m.epoch + 1,
            m.lr,
            m.train_loss,
            m.train_acc,
            m.test_loss,
            m.test_acc,
            m.oor_frac,
            m.max_abs,
            m.penalty,
            m.train_secs,
            m.eval_secs
        );
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Draws loss (left) and accuracy (right) curves per epoch into an SVG file.
pub fn write_svg(epochs: &[EpochMetrics], path: &Path, title: &str) -> Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 18))?;
        let (left, right) = root.split_horizontally(480);
        let n = epochs.len().max(2) as f64;
        let xs: Vec<f64> = epochs.iter().map(|m| (m.epoch + 1) as f64).collect();
        let max_loss = epochs
            .iter()
            .flat_map(|m| [m.train_loss, m.test_loss])
            .filter(|v| v.is_finite())
            .fold(0.1f64, f64::max);
        let mut c = ChartBuilder::on(&left)
            .caption("loss", ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(1f64..n, 0f64..max_loss * 1.05)?;
        c.configure_mesh().x_desc("epoch").draw()?;
        c.draw_series(LineSeries::new(
            xs.iter().zip(epochs).map(|(x, m)| (*x, m.train_loss)),
            &BLUE,
        ))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
        c.draw_series(LineSeries::new(
            xs.iter().zip(epochs).map(|(x, m)| (*x, m.test_loss)),
            &RED,
        ))?
        .label("test")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
        let min_acc = epochs.iter().flat_map(|m| [m.train_acc, m.test_acc]).fold(100f64, f64::min);
        let mut a = ChartBuilder::on(&right)
            .caption("accuracy %", ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(1f64..n, (min_acc - 1.0).max(0.0)..100f64)?;
        a.configure_mesh().x_desc("epoch").draw()?;
        a.draw_series(LineSeries::new(
            xs.iter().zip(epochs).map(|(x, m)| (*x, m.train_acc)),
            &BLUE,
        ))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
        a.draw_series(LineSeries::new(xs.iter().zip(epochs).map(|(x, m)| (*x, m.test_acc)), &RED))?
            .label("test")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        a.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("plotting {}: {e}", path.display()))
}
