//! Calibrated value ranges of a model and the plan range check (design.md §4: "Before running, a
//! range check on the plan (from calibration data) warns when a layer's values can leave the safe
//! fixed-point range").
//!
//! **Ranges.** `polypi calibrate` runs the plaintext executors (f32 and the fixed-point twin,
//! [`crate::engine::calibrate`]) over real data and records, for the output of every compiled
//! layer (the input, every activation input, every linear output, the logits), the largest
//! `|value|`, its 99.99th percentile and its mean. They are stored in the model file under the
//! safetensors metadata key [`KEY_RANGES`] as the JSON form of [`Ranges`] (versioned by
//! [`RANGES_VERSION`], parsed strictly: unknown fields, a wrong version, negative or non-finite
//! values, a percentile above the max, or a layer name that is not a graph node are load errors).
//! A file without the key simply has no ranges.
//!
//! **Plan check** ([`check_plan`]). Each calibrated max is multiplied by a margin (default
//! [`DEFAULT_MARGIN`] = 2) to give the bound `M` of a layer's values. A real `|x| <= M` held at
//! scale `s` (fractional bits) is the ring integer `|x| * 2^s`; with its sign it occupies
//! `bits = log2(M) + s + 1` of the 64 ring bits; the headroom is `64 - bits`. For every place
//! where the protocols need values to fit ([`Site`]):
//! - **truncation** (SecureML local truncation, Mohassel & Zhang 2017, Thm. 1, see
//!   [`crate::ring::trunc`]): a shared value with `|x| < 2^l` is truncated correctly except with
//!   probability at most `2^(l + 1 - 64)` per element. With `l = log2(M) + s` that is
//!   `2^(bits - 64) = 2^-headroom` per element; a layer with `n` elements per sample fails with
//!   probability at most `n * 2^-headroom` per inference (union bound), and the whole plan with at
//!   most the sum over its sites. A failed element is off by about `2^(64 - t)` ring units (`t` =
//!   truncated bits): garbage, not a small error.
//! - **wrap-around**: a value with `bits > 64` does not fit the ring at all: failure probability 1.
//! - **comparison** (ReLU, max-pool; [`crate::mpc::relu`]): DReLU runs on the low
//!   [`RING_BITS`] = `l` bits and is exact for `-2^(l-1) <= x < 2^(l-1)` ring units, i.e. when
//!   `bits <= l` (the limit of a comparison site is `l`, not 64); otherwise the sign can be wrong
//!   (failure probability 1 in the worst case). Max-pool compares differences `a - b`, bounded
//!   by `2M`.
//!
//! Sites per layer (`f` = the plan's frac bits, `M_in`/`M_out` = input/output bound):
//! - `Input`: the encoded input, scale f (wrap-around only).
//! - `Conv2d`/`Linear`: the product plus bias at scale 2f, truncated by f (`n` = output elements).
//! - `Poly`: for each power group of [`crate::mpc::encode::encode_poly`] with `f_g < f`, the input
//!   truncated from f to `f_g` bits; each power `x^k` at scale `k * f_g`, truncated back to f;
//!   the combination `sum_k c_k x^k` (= the output) at scale 2f, truncated by f.
//! - `Relu`: comparison of the input (scale f). `MaxPool2d`: comparison of `2 * M_in`.
//! - `AvgPool2d`/`GlobalAvgPool`: the window sum `count * M_out` at scale f truncated by
//!   `log2(count)` (power-of-two count), or `M_out` at scale 2f truncated by f (other counts).
//! - `Add`: the sum at scale f (wrap-around only). `Flatten`: nothing.

use serde::{Deserialize, Serialize};

use super::plan::{LayerOp, Plan};
use crate::error::{Error, Result};
use crate::mpc::encode::encode_poly;
pub use crate::mpc::relu::RING_BITS as COMPARE_BITS;

/// Metadata key of the calibrated ranges (JSON of [`Ranges`]).
pub const KEY_RANGES: &str = "polypi.ranges";
/// Version of the [`Ranges`] JSON this build reads and writes.
pub const RANGES_VERSION: u32 = 1;
/// Default factor applied to every calibrated max (bounds = margin x calibrated max).
pub const DEFAULT_MARGIN: f64 = 2.0;
/// Bits of the ring Z_2^64.
pub const RING_BITS: u32 = 64;

/// Calibrated value ranges of one model, stored under [`KEY_RANGES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranges {
    /// Format version (= [`RANGES_VERSION`]).
    pub version: u32,
    /// What the ranges were measured on, e.g. "Fashion-MNIST train, 60000 images".
    pub data: String,
    /// Number of samples (images) measured.
    pub samples: u64,
    /// Frac bits of the fixed-point twin that was run (informational; the check uses the plan's).
    pub frac_bits: u32,
    /// One entry per compiled layer, in plan order.
    pub layers: Vec<LayerRange>,
}

/// The measured range of one compiled layer's output (real values, not ring integers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRange {
    /// Name of the compiled layer (= the graph node it came from).
    pub name: String,
    /// Op of the compiled layer ("Conv2d", "Poly", ...), informational.
    pub op: String,
    /// Largest `|value|` seen (max over the f32 executor and the fixed-point twin).
    pub max_abs: f64,
    /// 99.99th percentile of `|value|` over all elements (f32 executor; from a log-scale histogram
    /// with 64 bins per octave, so at most 1.1% above the exact percentile; never above
    /// `max_abs`).
    pub p9999_abs: f64,
    /// Mean `|value|` over all elements (f32 executor).
    pub mean_abs: f64,
}

impl Ranges {
    /// Parses and checks the JSON of [`KEY_RANGES`]; `file` names the model file in errors.
    /// Errors: [`Error::ModelFile`] for bad JSON, unknown fields, another version, an empty layer
    /// list, an empty or duplicate name, a negative or non-finite value, or `p9999_abs` /
    /// `mean_abs` above `max_abs`.
    pub fn from_json(json: &str, file: &str) -> Result<Ranges> {
        let bad = |m: String| Error::model_file(file, format!("'{KEY_RANGES}': {m}"));
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        match v.get("version").and_then(serde_json::Value::as_u64) {
            Some(x) if x == RANGES_VERSION as u64 => {}
            Some(x) => {
                return Err(bad(format!(
                    "version {x} is not supported (this build reads version {RANGES_VERSION}); \
                     re-run `polypi calibrate`"
                )))
            }
            None => return Err(bad("no numeric 'version'".into())),
        }
        let r: Ranges = serde_json::from_str(json).map_err(|e| bad(format!("{e}")))?;
        r.check().map_err(bad)?;
        Ok(r)
    }

    /// The JSON stored under [`KEY_RANGES`]. Errors: `InvalidArgument` (non-finite value).
    pub fn to_json(&self) -> Result<String> {
        self.check().map_err(Error::InvalidArgument)?;
        serde_json::to_string(self).map_err(|e| Error::InvalidArgument(format!("ranges JSON: {e}")))
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.version != RANGES_VERSION {
            return Err(format!("version {} (expected {RANGES_VERSION})", self.version));
        }
        if self.layers.is_empty() {
            return Err("no layers".into());
        }
        let mut seen = std::collections::HashSet::new();
        for l in &self.layers {
            if l.name.is_empty() {
                return Err("a layer has an empty name".into());
            }
            if !seen.insert(l.name.as_str()) {
                return Err(format!("layer '{}' appears twice", l.name));
            }
            for (what, x) in
                [("max_abs", l.max_abs), ("p9999_abs", l.p9999_abs), ("mean_abs", l.mean_abs)]
            {
                if !(x.is_finite() && x >= 0.0) {
                    return Err(format!(
                        "layer '{}': {what} = {x} is not a finite value >= 0",
                        l.name
                    ));
                }
            }
            if l.p9999_abs > l.max_abs || l.mean_abs > l.max_abs {
                return Err(format!(
                    "layer '{}': p9999_abs {} / mean_abs {} above max_abs {}",
                    l.name, l.p9999_abs, l.mean_abs, l.max_abs
                ));
            }
        }
        Ok(())
    }

    /// The range of the layer named `name`, if calibrated.
    pub fn get(&self, name: &str) -> Option<&LayerRange> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// Calibrated max `|value|` of the plan's input and of its output (logits), for the client's
    /// runtime guard ([`crate::engine::guard`]); `None` when either layer has no range.
    pub fn io_max(&self, plan: &Plan) -> Option<(f64, f64)> {
        let first = plan.layers.first()?;
        let last = plan.layers.last()?;
        Some((self.get(&first.name)?.max_abs, self.get(&last.name)?.max_abs))
    }
}

/// One place in a layer where values must fit (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    /// What is checked, e.g. "product, truncated by 16".
    pub what: String,
    /// Bound of the real value (margin x calibrated max, or derived from it).
    pub bound: f64,
    /// Fractional bits the value is held at.
    pub scale: u32,
    /// Bits the ring integer occupies with its sign: `log2(bound) + scale + 1`.
    pub bits: f64,
    /// Bits available: 64, or [`COMPARE_BITS`] (the comparison ring's width) for a comparison.
    pub limit: u32,
    /// `limit - bits` (negative: the value does not fit).
    pub headroom: f64,
    /// Elements per sample.
    pub elements: u64,
    /// Failure probability per inference of one sample (see the module doc), in [0, 1].
    pub fail_prob: f64,
    /// Expected failures per inference on data like the calibration data (no margin): the
    /// per-element bound `|v| 2^(s+1-64)` is linear in `|v|`, so its mean over the data is at
    /// most `E|v| 2^(s+1-64)`, with `E|v|` the calibrated mean (for a power `x^k`:
    /// `max|x|^(k-1) E|x|`). Far below `fail_prob`, which puts every element at the bound.
    pub expected_fail: f64,
}

/// The range check of one compiled layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerCheck {
    /// Layer name.
    pub name: String,
    /// Op of the layer.
    pub op: String,
    /// Calibrated max `|output|` (None: the ranges have no entry for this layer).
    pub max_abs: Option<f64>,
    /// The layer's sites (empty for Flatten, or when unchecked).
    pub sites: Vec<Site>,
    /// Largest `bits` over the sites.
    pub bits: Option<f64>,
    /// Smallest headroom over the sites.
    pub headroom: Option<f64>,
    /// Sum of the sites' failure probabilities (capped at 1), per inference of one sample.
    pub fail_prob: f64,
    /// Sum of the sites' expected failures per inference on calibration-like data.
    pub expected_fail: f64,
}

/// The range check of a whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeReport {
    /// Margin applied to the calibrated maxima.
    pub margin: f64,
    /// The plan's frac bits.
    pub frac_bits: u32,
    /// Width of the comparison ring ([`COMPARE_BITS`] = `relu::RING_BITS`).
    pub compare_bits: u32,
    /// Per compiled layer, in plan order.
    pub layers: Vec<LayerCheck>,
    /// Layers without a calibrated range (their values are not checked).
    pub unchecked: Vec<String>,
    /// Upper bound on the probability that one inference of one sample fails (sum over the
    /// layers, capped at 1).
    pub fail_prob: f64,
    /// Smallest headroom over all sites, bits.
    pub min_headroom: Option<f64>,
    /// Expected failures per inference on calibration-like data (sum over the layers, capped at
    /// 1; see [`Site::expected_fail`]).
    pub expected_fail: f64,
}

impl RangeReport {
    /// A text table: per layer, calibrated max, bound, bits used, headroom, failure probability.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "range check (margin {}x, frac bits {}, ring 64 bits, comparison {} bits):",
            self.margin, self.frac_bits, self.compare_bits
        );
        let _ = writeln!(
            s,
            "{:<20} {:<13} {:>11} {:>11} {:>9} {:>9} {:>10} {:>10}",
            "layer", "op", "max |x|", "bound", "bits", "headroom", "P(fail)", "E[fail]"
        );
        for l in &self.layers {
            let opt = |x: Option<f64>, p: usize| {
                x.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into())
            };
            let bound = l.max_abs.map(|m| m * self.margin);
            let _ = writeln!(
                s,
                "{:<20} {:<13} {:>11} {:>11} {:>9} {:>9} {:>10} {:>10}",
                l.name,
                l.op,
                l.max_abs.map(|v| format!("{v:.4}")).unwrap_or_else(|| "no range".into()),
                opt(bound, 4),
                opt(l.bits, 1),
                opt(l.headroom, 1),
                if l.sites.is_empty() { "-".into() } else { format!("{:.1e}", l.fail_prob) },
                if l.sites.is_empty() { "-".into() } else { format!("{:.1e}", l.expected_fail) }
            );
        }
        let _ = writeln!(
            s,
            "failure probability per inference <= {:.2e} (SecureML truncation bound 2^-headroom \
             per element, union bound); min headroom {} bits; expected failures per inference \
             on calibration-like data <= {:.2e}",
            self.fail_prob,
            self.min_headroom.map(|h| format!("{h:.1}")).unwrap_or_else(|| "-".into()),
            self.expected_fail
        );
        if !self.unchecked.is_empty() {
            let _ = writeln!(s, "not calibrated (unchecked): {}", self.unchecked.join(", "));
        }
        s
    }
}

/// One site: `bound` = margin x calibrated max of the value, `typical` = its calibrated mean
/// `|value|` (see [`Site::expected_fail`]), both real.
fn site(
    what: String,
    (bound, typical): (f64, f64),
    scale: u32,
    limit: u32,
    elements: u64,
    truncated: bool,
) -> Site {
    let bits = if bound > 0.0 { bound.log2() + scale as f64 + 1.0 } else { 1.0 };
    let headroom = limit as f64 - bits;
    let per_value = |v: f64| v * (scale as f64 + 1.0 - RING_BITS as f64).exp2();
    let (fail_prob, expected_fail) = if headroom <= 0.0 {
        (1.0, 1.0)
    } else if truncated {
        (
            (elements as f64 * (-headroom).exp2()).min(1.0),
            (elements as f64 * per_value(typical)).min(1.0),
        )
    } else {
        (0.0, 0.0)
    };
    Site { what, bound, scale, bits, limit, headroom, elements, fail_prob, expected_fail }
}

/// Checks every layer of `plan` against the calibrated `ranges` times `margin` (see the module
/// doc for the sites and the bound). Layers without a range are listed in
/// [`RangeReport::unchecked`]. Errors: `InvalidArgument` for a margin that is not a finite number
/// >= 1; `InvalidArgument` / `RangeExceeded` from encoding a polynomial layer.
pub fn check_plan(plan: &Plan, ranges: &Ranges, margin: f64) -> Result<RangeReport> {
    if !(margin.is_finite() && margin >= 1.0) {
        return Err(Error::InvalidArgument(format!("range margin must be >= 1, got {margin}")));
    }
    let f = plan.frac_bits;
    let cmp = COMPARE_BITS;
    let bound_of = |i: usize| ranges.get(&plan.layers[i].name).map(|r| r.max_abs * margin);
    let mut layers = Vec::with_capacity(plan.layers.len());
    let mut unchecked = Vec::new();
    for (i, l) in plan.layers.iter().enumerate() {
        let n: u64 = l.out_shape.iter().product::<usize>() as u64;
        let max_abs = ranges.get(&l.name).map(|r| r.max_abs);
        let m_out = bound_of(i);
        let m_in = l.inputs.first().and_then(|&j| bound_of(j));
        let mean_of = |j: usize| ranges.get(&plan.layers[j].name).map_or(0.0, |r| r.mean_abs);
        let mean_out = mean_of(i);
        let (mean_in, max_in) = l.inputs.first().map_or((0.0, 0.0), |&j| {
            (mean_of(j), ranges.get(&plan.layers[j].name).map_or(0.0, |r| r.max_abs))
        });
        let n_in: u64 = l
            .inputs
            .first()
            .map(|&j| plan.layers[j].out_shape.iter().product::<usize>() as u64)
            .unwrap_or(n);
        let mut sites = Vec::new();
        let mut missing = false;
        let mut need = |x: Option<f64>| {
            if x.is_none() {
                missing = true;
            }
            x.unwrap_or(0.0)
        };
        match &l.op {
            LayerOp::Input => {
                sites.push(site(
                    "encoded input".into(),
                    (need(m_out), mean_out),
                    f,
                    RING_BITS,
                    n,
                    false,
                ));
            }
            LayerOp::Conv2d(_) | LayerOp::Linear(_) => {
                sites.push(site(
                    format!("product + bias, truncated by {f}"),
                    (need(m_out), mean_out),
                    2 * f,
                    RING_BITS,
                    n,
                    true,
                ));
            }
            LayerOp::Poly(p) => {
                let pp = encode_poly(p, f, &l.name)?;
                let mi = need(m_in);
                for g in &pp.groups {
                    if g.frac_bits < f {
                        sites.push(site(
                            format!("input, truncated to {} frac bits", g.frac_bits),
                            (mi, mean_in),
                            f,
                            RING_BITS,
                            n_in,
                            true,
                        ));
                    }
                    for &k in &g.powers {
                        let sc = k as u32 * g.frac_bits;
                        sites.push(site(
                            format!("power x^{k}, truncated by {}", sc.saturating_sub(f)),
                            (mi.powi(k as i32), max_in.powi(k as i32 - 1) * mean_in),
                            sc,
                            RING_BITS,
                            n_in,
                            sc > f,
                        ));
                    }
                }
                sites.push(site(
                    format!("sum c_k x^k, truncated by {f}"),
                    (need(m_out), mean_out),
                    2 * f,
                    RING_BITS,
                    n,
                    true,
                ));
            }
            LayerOp::Relu => {
                sites.push(site(
                    "comparison (DReLU) input".into(),
                    (need(m_in), mean_in),
                    f,
                    cmp,
                    n_in,
                    false,
                ));
            }
            LayerOp::MaxPool2d { .. } => {
                sites.push(site(
                    "comparison of differences a - b".into(),
                    (2.0 * need(m_in), 2.0 * mean_in),
                    f,
                    cmp,
                    n_in,
                    false,
                ));
            }
            LayerOp::AvgPool2d { kernel, .. } => {
                sites.push(pool_site(kernel * kernel, (need(m_out), mean_out), f, n));
            }
            LayerOp::GlobalAvgPool => {
                let hw = l
                    .inputs
                    .first()
                    .map(|&j| plan.layers[j].out_shape.iter().skip(1).product::<usize>())
                    .unwrap_or(1);
                sites.push(pool_site(hw, (need(m_out), mean_out), f, n));
            }
            LayerOp::Add => {
                sites.push(site("sum".into(), (need(m_out), mean_out), f, RING_BITS, n, false));
            }
            LayerOp::Flatten => {}
        }
        if missing {
            unchecked.push(l.name.clone());
            sites.clear();
        }
        let bits = sites.iter().map(|s| s.bits).reduce(f64::max);
        let headroom = sites.iter().map(|s| s.headroom).reduce(f64::min);
        let fail_prob = sites.iter().map(|s| s.fail_prob).sum::<f64>().min(1.0);
        let expected_fail = sites.iter().map(|s| s.expected_fail).sum::<f64>().min(1.0);
        layers.push(LayerCheck {
            name: l.name.clone(),
            op: l.op.kind().to_string(),
            max_abs,
            sites,
            bits,
            headroom,
            fail_prob,
            expected_fail,
        });
    }
    let fail_prob = layers.iter().map(|l| l.fail_prob).sum::<f64>().min(1.0);
    let expected_fail = layers.iter().map(|l| l.expected_fail).sum::<f64>().min(1.0);
    let min_headroom = layers.iter().filter_map(|l| l.headroom).reduce(f64::min);
    Ok(RangeReport {
        margin,
        frac_bits: f,
        compare_bits: COMPARE_BITS,
        layers,
        unchecked,
        fail_prob,
        min_headroom,
        expected_fail,
    })
}

fn pool_site(count: usize, (m_out, mean): (f64, f64), f: u32, n: u64) -> Site {
    let count = count.max(1);
    if count.is_power_of_two() {
        let t = count.trailing_zeros();
        let c = count as f64;
        site(format!("window sum, truncated by {t}"), (c * m_out, c * mean), f, RING_BITS, n, t > 0)
    } else {
        site(format!("window mean, truncated by {f}"), (m_out, mean), 2 * f, RING_BITS, n, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile::compile;
    use crate::model::zoo::{build, Act, Pool, RefNet};

    fn ranges_for(plan: &Plan, max: f64) -> Ranges {
        Ranges {
            version: RANGES_VERSION,
            data: "test".into(),
            samples: 1,
            frac_bits: plan.frac_bits,
            layers: plan
                .layers
                .iter()
                .map(|l| LayerRange {
                    name: l.name.clone(),
                    op: l.op.kind().into(),
                    max_abs: max,
                    p9999_abs: max / 2.0,
                    mean_abs: max / 4.0,
                })
                .collect(),
        }
    }

    #[test]
    fn json_round_trip_and_strict_parsing() {
        let plan = compile(&build(RefNet::NetM, Act::X2Act, Pool::Avg, 0.25, 3).unwrap()).unwrap();
        let r = ranges_for(&plan, 8.0);
        let j = r.to_json().unwrap();
        assert_eq!(Ranges::from_json(&j, "m").unwrap(), r);
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v["extra"] = 1.into();
        let e = Ranges::from_json(&v.to_string(), "m").unwrap_err().to_string();
        assert!(e.contains(KEY_RANGES) && e.contains("extra"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v["version"] = 7.into();
        let e = Ranges::from_json(&v.to_string(), "m").unwrap_err().to_string();
        assert!(e.contains("version 7"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v["layers"][1]["max_abs"] = (-1.0).into();
        assert!(Ranges::from_json(&v.to_string(), "m").is_err());
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v["layers"][1]["p9999_abs"] = 100.0.into();
        assert!(Ranges::from_json(&v.to_string(), "m").is_err());
        assert!(Ranges::from_json("{", "m").is_err());
        assert!(Ranges::from_json("[]", "m").is_err());
    }

    #[test]
    fn bits_headroom_and_failure_bound() {
        let plan = compile(&build(RefNet::NetM, Act::X2Act, Pool::Avg, 0.25, 3).unwrap()).unwrap();
        let f = plan.frac_bits as f64;
        let rep = check_plan(&plan, &ranges_for(&plan, 8.0), 2.0).unwrap();
        assert!(rep.unchecked.is_empty());
        let conv = rep.layers.iter().find(|l| l.op == "Conv2d").unwrap();
        // bound 16 = 2^4 at scale 2f, plus the sign bit.
        let s = &conv.sites[0];
        assert!((s.bits - (4.0 + 2.0 * f + 1.0)).abs() < 1e-9);
        assert!((s.headroom - (64.0 - s.bits)).abs() < 1e-9);
        assert!((s.fail_prob - s.elements as f64 * (-s.headroom).exp2()).abs() < 1e-18);
        assert!(rep.fail_prob > 0.0 && rep.fail_prob < 1e-3, "{}", rep.fail_prob);
        // The expected rate uses the mean (max / 4 here) without the margin: 8x below the bound
        // for a linear site.
        assert!((s.expected_fail * 8.0 - s.fail_prob).abs() < 1e-12 * s.fail_prob.max(1e-30));
        assert!(rep.expected_fail < rep.fail_prob);
        // Huge ranges: the x^2 power no longer fits the ring.
        let rep = check_plan(&plan, &ranges_for(&plan, 1e9), 2.0).unwrap();
        assert_eq!(rep.fail_prob, 1.0);
        assert!(rep.min_headroom.unwrap() < 0.0);
        assert!(rep.table().contains("headroom"));
        // A missing layer is reported, not guessed.
        let mut r = ranges_for(&plan, 8.0);
        let gone = r.layers.remove(2).name;
        let rep = check_plan(&plan, &r, 2.0).unwrap();
        assert!(rep.unchecked.contains(&gone));
        assert!(check_plan(&plan, &r, 0.5).is_err());
    }
}
