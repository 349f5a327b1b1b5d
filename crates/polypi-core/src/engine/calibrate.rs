//! Calibration of value ranges: runs the plaintext executors (f32 and the fixed-point twin) over
//! real data and records, for every compiled layer's output, the largest `|value|`, its 99.99th
//! percentile and its mean ([`crate::model::range::Ranges`]). Used by `polypi calibrate`.

use super::plain::{check_input, EncodedPlan, F32Backend, FixedBackend};
use super::walk::walk;
use crate::error::{Error, Result};
use crate::model::range::{LayerRange, Ranges, RANGES_VERSION};
use crate::model::Plan;
use crate::ring::FixedPoint;

/// Histogram bins per octave of `|value|` (bin edges a factor `2^(1/64)` = 1.0109 apart).
const BINS_PER_OCTAVE: f64 = 64.0;
/// Smallest octave of the histogram: values below `2^-MIN_EXP` share the first bin.
const MIN_EXP: f64 = 32.0;
/// Octaves covered: `2^-32 .. 2^64`.
const OCTAVES: usize = 96;

#[derive(Debug, Clone)]
struct LayerStats {
    max_abs: f64,
    sum_abs: f64,
    count: u64,
    hist: Vec<u64>,
}

impl LayerStats {
    fn new() -> Self {
        LayerStats { max_abs: 0.0, sum_abs: 0.0, count: 0, hist: vec![0; OCTAVES * 64] }
    }

    fn bin(a: f64) -> usize {
        if a <= 0.0 {
            return 0;
        }
        let b = ((a.log2() + MIN_EXP) * BINS_PER_OCTAVE).floor();
        b.clamp(0.0, (OCTAVES * 64 - 1) as f64) as usize
    }

    fn add(&mut self, xs: &[f32]) {
        for &x in xs {
            let a = if x.is_finite() { x.abs() as f64 } else { f64::INFINITY };
            self.max_abs = self.max_abs.max(a);
            self.sum_abs += a;
            self.hist[Self::bin(a)] += 1;
        }
        self.count += xs.len() as u64;
    }

    /// Upper edge of the bin holding the `q`-quantile of `|value|`, at most `max_abs`.
    fn quantile(&self, q: f64) -> f64 {
        let want = ((q * self.count as f64).ceil() as u64).max(1);
        let mut acc = 0u64;
        for (i, &c) in self.hist.iter().enumerate() {
            acc += c;
            if acc >= want {
                let edge = ((i + 1) as f64 / BINS_PER_OCTAVE - MIN_EXP).exp2();
                return edge.min(self.max_abs);
            }
        }
        self.max_abs
    }
}

/// `x` with 12 significant digits (`how` = ceil or round on the last digit): such values
/// survive a JSON round trip exactly, so a model file re-saved after loading is byte-identical.
fn round_sig(x: f64, how: fn(f64) -> f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return x;
    }
    let e = x.log10().floor() as i32 - 11;
    let p = 10f64.powi(e.abs());
    let r = if e >= 0 { how(x / p) * p } else { how(x * p) / p };
    if r.is_finite() {
        r
    } else {
        x
    }
}

/// Accumulates value ranges of a plan over batches of inputs.
pub struct Calibrator<'a> {
    plan: &'a Plan,
    enc: EncodedPlan,
    stats: Vec<LayerStats>,
    samples: u64,
}

impl<'a> Calibrator<'a> {
    /// A calibrator for `plan` (weights included). Errors: `RangeExceeded` for weights that do not
    /// encode at the plan's frac bits.
    pub fn new(plan: &'a Plan) -> Result<Self> {
        Ok(Calibrator {
            plan,
            enc: EncodedPlan::new(plan)?,
            stats: vec![LayerStats::new(); plan.layers.len()],
            samples: 0,
        })
    }

    /// Runs both executors on `batch` samples `input` (`[batch, C, H, W]`, normalised) and adds
    /// every layer's output values. Errors: `ShapeMismatch`, `RangeExceeded` (input not
    /// encodable).
    pub fn add_batch(&mut self, input: &[f32], batch: usize) -> Result<()> {
        check_input(self.plan, input, batch)?;
        let mut fb = F32Backend::new(input, true);
        walk(self.plan, &mut fb, batch)?;
        let fp = FixedPoint { frac_bits: self.plan.frac_bits };
        let x = fp.encode_slice(input)?;
        let mut xb = FixedBackend::new(&self.enc, &x, self.plan.frac_bits, true);
        walk(self.plan, &mut xb, batch)?;
        for (i, st) in self.stats.iter_mut().enumerate() {
            let name = &self.plan.layers[i].name;
            let missing = || Error::graph(name, "layer output was not recorded");
            let t = fb.recorded.get(i).and_then(Option::as_ref).ok_or_else(missing)?;
            st.add(&t.data);
            let r = xb.recorded.get(i).and_then(Option::as_ref).ok_or_else(missing)?;
            let m = r.data.iter().map(|&v| fp.decode(v).abs()).fold(0.0, f64::max);
            st.max_abs = st.max_abs.max(m);
        }
        self.samples += batch as u64;
        Ok(())
    }

    /// Samples added so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The ranges measured so far; `data` describes the calibration data. Errors:
    /// `InvalidArgument` when no sample was added or a value was not finite.
    pub fn finish(&self, data: &str) -> Result<Ranges> {
        if self.samples == 0 {
            return Err(Error::InvalidArgument("no calibration samples".into()));
        }
        let layers = self
            .plan
            .layers
            .iter()
            .zip(&self.stats)
            .map(|(l, st)| {
                let max_abs = round_sig(st.max_abs, f64::ceil);
                LayerRange {
                    name: l.name.clone(),
                    op: l.op.kind().to_string(),
                    max_abs,
                    p9999_abs: round_sig(st.quantile(0.9999), f64::round).min(max_abs),
                    mean_abs: round_sig(st.sum_abs / st.count.max(1) as f64, f64::round)
                        .min(max_abs),
                }
            })
            .collect();
        let r = Ranges {
            version: RANGES_VERSION,
            data: data.to_string(),
            samples: self.samples,
            frac_bits: self.plan.frac_bits,
            layers,
        };
        r.to_json()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounded_values_survive_json_exactly() {
        for x in [1.0 / 3.0, 2.0f64.sqrt() * 1e7, 123.456e-9, 0.1 + 0.2, 7.0] {
            let r = round_sig(x, f64::ceil);
            assert!(r >= x && (r - x) / x < 1e-11, "{x} -> {r}");
            let back: f64 = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(back.to_bits(), r.to_bits(), "{x}");
        }
    }

    #[test]
    fn histogram_quantile_is_close_and_bounded() {
        let mut s = LayerStats::new();
        let xs: Vec<f32> = (1..=10000).map(|i| i as f32 / 100.0).collect();
        s.add(&xs);
        assert_eq!(s.max_abs, 100.0);
        let q = s.quantile(0.9999);
        assert!((99.99..=100.0).contains(&q), "{q}");
        let med = s.quantile(0.5);
        assert!((50.0..=50.0 * 1.011).contains(&med), "{med}");
        s.add(&[0.0]);
        assert!(s.quantile(0.00001) <= 100.0);
    }
}
