//! Plaintext backends of the walk: [`F32Backend`] (the float reference that reproduces the trained
//! network) and [`FixedBackend`] (the fixed-point twin: the exact ring computation the secure
//! parties perform, with floor truncation instead of share truncation).

use super::walk::{walk, Backend, LayerTrace};
use crate::error::{Error, Result};
use crate::model::{ConvLayer, Layer, LinearLayer, Plan, PolyLayer};
use crate::mpc::encode::{
    encode_conv, encode_linear, encode_poly, power_frac_bits, EncodedConv, EncodedLinear, PolyPlan,
};
use crate::mpc::ops::{self, Trunc};
use crate::ring::{FixedPoint, RingTensor};
use std::collections::HashMap;

/// A dense f32 tensor, row-major, NCHW or `[N, F]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions (batch first).
    pub shape: Vec<usize>,
    /// Elements.
    pub data: Vec<f32>,
}

/// Checks that `input` holds `batch` samples of the plan's input shape.
/// Errors: `ShapeMismatch` naming the input layer.
pub fn check_input(plan: &Plan, input: &[f32], batch: usize) -> Result<Vec<usize>> {
    let mut shape = vec![batch];
    shape.extend_from_slice(plan.input_shape());
    let want: usize = shape.iter().product();
    if input.len() != want || batch == 0 {
        return Err(Error::ShapeMismatch {
            node: plan.layers[0].name.clone(),
            expected: shape,
            got: vec![input.len()],
        });
    }
    Ok(shape)
}

/// The float reference executor.
pub struct F32Backend<'a> {
    input: &'a [f32],
    /// Per-layer outputs when `record` is on (index = layer).
    pub recorded: Vec<Option<Tensor>>,
    record: bool,
}

impl<'a> F32Backend<'a> {
    /// A backend that feeds `input` (NCHW, already normalised). With `record`, keeps every layer's
    /// output in `recorded`.
    pub fn new(input: &'a [f32], record: bool) -> Self {
        F32Backend { input, recorded: Vec::new(), record }
    }
}

fn out_shape(layer: &Layer, batch: usize) -> Vec<usize> {
    let mut s = vec![batch];
    s.extend_from_slice(&layer.out_shape);
    s
}

impl Backend for F32Backend<'_> {
    type Value = Tensor;
    fn input(&mut self, _idx: usize, layer: &Layer, batch: usize) -> Result<Tensor> {
        Ok(Tensor { shape: out_shape(layer, batch), data: self.input.to_vec() })
    }
    fn conv2d(&mut self, _idx: usize, layer: &Layer, c: &ConvLayer, x: &Tensor) -> Result<Tensor> {
        let g = &c.geom;
        let n = x.shape[0];
        let (oh, ow) = (g.out_h(), g.out_w());
        let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
        let mut y = vec![0f32; n * g.c_out * oh * ow];
        for img in 0..n {
            for co in 0..g.c_out {
                let grp = co / cog;
                let out =
                    &mut y[(img * g.c_out + co) * oh * ow..(img * g.c_out + co + 1) * oh * ow];
                out.iter_mut().for_each(|v| *v = c.bias[co]);
                for ci in 0..cig {
                    let plane =
                        &x.data[((img * g.c_in) + grp * cig + ci) * g.h * g.w..][..g.h * g.w];
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let wv = c.weight[((co * cig + ci) * g.kh + ky) * g.kw + kx];
                            for oy in 0..oh {
                                let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                if iy < 0 || iy as usize >= g.h {
                                    continue;
                                }
                                let row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                                let orow = &mut out[oy * ow..(oy + 1) * ow];
                                for (ox, o) in orow.iter_mut().enumerate() {
                                    let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                    if ix >= 0 && (ix as usize) < g.w {
                                        *o += wv * row[ix as usize];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Tensor { shape: out_shape(layer, n), data: y })
    }
    fn linear(
        &mut self,
        _idx: usize,
        layer: &Layer,
        l: &LinearLayer,
        x: &Tensor,
    ) -> Result<Tensor> {
        let n = x.shape[0];
        let mut y = vec![0f32; n * l.out_features];
        for img in 0..n {
            let xi = &x.data[img * l.in_features..(img + 1) * l.in_features];
            for o in 0..l.out_features {
                let w = &l.weight[o * l.in_features..(o + 1) * l.in_features];
                y[img * l.out_features + o] =
                    l.bias[o] + w.iter().zip(xi).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        Ok(Tensor { shape: out_shape(layer, n), data: y })
    }
    fn poly(&mut self, _idx: usize, _layer: &Layer, p: &PolyLayer, x: &Tensor) -> Result<Tensor> {
        let (n, c) = (x.shape[0], x.shape[1]);
        let inner = x.data.len() / (n * c);
        let mut y = x.data.clone();
        for (j, v) in y.iter_mut().enumerate() {
            let co = p.coeffs_of((j / inner) % c);
            *v = co.iter().rev().fold(0f32, |acc, ck| acc * *v + ck);
        }
        Ok(Tensor { shape: x.shape.clone(), data: y })
    }
    fn relu(&mut self, _idx: usize, _layer: &Layer, x: &Tensor) -> Result<Tensor> {
        Ok(Tensor { shape: x.shape.clone(), data: x.data.iter().map(|v| v.max(0.0)).collect() })
    }
    fn maxpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &Tensor,
    ) -> Result<Tensor> {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let shape = out_shape(layer, n);
        let (oh, ow) = (shape[2], shape[3]);
        let mut y = vec![f32::NEG_INFINITY; n * c * oh * ow];
        for nc in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * s + ky) as isize - p as isize,
                                (ox * s + kx) as isize - p as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                m = m.max(x.data[nc * h * w + iy as usize * w + ix as usize]);
                            }
                        }
                    }
                    y[nc * oh * ow + oy * ow + ox] = m;
                }
            }
        }
        Ok(Tensor { shape, data: y })
    }
    fn avgpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &Tensor,
    ) -> Result<Tensor> {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let shape = out_shape(layer, n);
        let (oh, ow) = (shape[2], shape[3]);
        let mut y = vec![0f32; n * c * oh * ow];
        for nc in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f32;
                    for ky in 0..k {
                        for kx in 0..k {
                            // Padding cells are zeros (they count in the divisor k^2).
                            let (iy, ix) =
                                ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                            if iy < h && ix < w {
                                acc += x.data[nc * h * w + iy * w + ix];
                            }
                        }
                    }
                    y[nc * oh * ow + oy * ow + ox] = acc / (k * k) as f32;
                }
            }
        }
        Ok(Tensor { shape, data: y })
    }
    fn global_avgpool(&mut self, _idx: usize, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let (n, c) = (x.shape[0], x.shape[1]);
        let hw = x.data.len() / (n * c);
        let data = x.data.chunks(hw).map(|ch| ch.iter().sum::<f32>() / hw as f32).collect();
        Ok(Tensor { shape: out_shape(layer, n), data })
    }
    fn flatten(&mut self, _idx: usize, layer: &Layer, x: Tensor) -> Result<Tensor> {
        Ok(Tensor { shape: out_shape(layer, x.shape[0]), data: x.data })
    }
    fn add(&mut self, _idx: usize, _layer: &Layer, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(Tensor {
            shape: a.shape.clone(),
            data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
        })
    }
    fn observe(&mut self, idx: usize, value: &Tensor) {
        if self.record {
            self.recorded.resize(idx + 1, None);
            self.recorded[idx] = Some(value.clone());
        }
    }
}

/// Runs the float reference: `input` is `[batch, C, H, W]` (normalised). Returns the logits
/// `[batch, classes]`. Errors: `ShapeMismatch` for an input of the wrong size.
pub fn run_f32(plan: &Plan, input: &[f32], batch: usize) -> Result<Vec<f32>> {
    check_input(plan, input, batch)?;
    let mut b = F32Backend::new(input, false);
    Ok(walk(plan, &mut b, batch)?.0.data)
}

/// Weights of a plan encoded in the ring, built once per model and shared by the twin and the
/// server (index = layer).
#[derive(Debug, Clone, Default)]
pub struct EncodedPlan {
    /// Conv layers.
    pub conv: HashMap<usize, EncodedConv>,
    /// Linear layers.
    pub linear: HashMap<usize, EncodedLinear>,
    /// Polynomial layers.
    pub poly: HashMap<usize, PolyPlan>,
}

impl EncodedPlan {
    /// Encodes every weight and coefficient of `plan` at its `frac_bits`.
    /// Errors: `RangeExceeded` naming the layer with a value too large for the ring.
    pub fn new(plan: &Plan) -> Result<Self> {
        let f = plan.frac_bits;
        let mut e = EncodedPlan::default();
        for (i, l) in plan.layers.iter().enumerate() {
            match &l.op {
                crate::model::LayerOp::Conv2d(c) => {
                    e.conv.insert(i, encode_conv(c, f, &l.name)?);
                }
                crate::model::LayerOp::Linear(c) => {
                    e.linear.insert(i, encode_linear(c, f, &l.name)?);
                }
                crate::model::LayerOp::Poly(p) => {
                    let mut pp = encode_poly(p, f, &l.name)?;
                    pp.protocol = plan.poly_protocol;
                    e.poly.insert(i, pp);
                }
                _ => {}
            }
        }
        Ok(e)
    }
}

/// The fixed-point twin: computes in Z_2^64 exactly as the parties do, truncating with floor.
pub struct FixedBackend<'a> {
    enc: &'a EncodedPlan,
    input: &'a [u64],
    fp: FixedPoint,
    /// Per-layer outputs when `record` is on.
    pub recorded: Vec<Option<RingTensor>>,
    record: bool,
}

impl<'a> FixedBackend<'a> {
    /// A twin on encoded weights `enc`, fed the encoded input (scale `frac_bits`).
    pub fn new(enc: &'a EncodedPlan, input: &'a [u64], frac_bits: u32, record: bool) -> Self {
        FixedBackend { enc, input, fp: FixedPoint { frac_bits }, recorded: Vec::new(), record }
    }
}

fn missing(layer: &Layer) -> Error {
    Error::graph(&layer.name, "layer has no encoded weights")
}

/// Signed comparison-free ReLU/max of the twin on two's-complement ring values.
fn signed(v: u64) -> i64 {
    v as i64
}

impl Backend for FixedBackend<'_> {
    type Value = RingTensor;
    fn input(&mut self, _idx: usize, layer: &Layer, batch: usize) -> Result<RingTensor> {
        RingTensor::from_vec(&out_shape(layer, batch), self.input.to_vec())
    }
    fn conv2d(
        &mut self,
        idx: usize,
        layer: &Layer,
        _c: &ConvLayer,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        let w = self.enc.conv.get(&idx).ok_or_else(|| missing(layer))?;
        ops::conv_layer(x, w, self.fp.frac_bits, Trunc::Public, &layer.name)
    }
    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        _l: &LinearLayer,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        let w = self.enc.linear.get(&idx).ok_or_else(|| missing(layer))?;
        ops::linear_layer(x, w, self.fp.frac_bits, Trunc::Public, &layer.name)
    }
    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        _p: &PolyLayer,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        let p = self.enc.poly.get(&idx).ok_or_else(|| missing(layer))?;
        let f = self.fp.frac_bits;
        let mut pows = vec![Vec::new(); p.degree + 1];
        for g in &p.groups {
            let mut xg = x.data.clone();
            Trunc::Public.apply(&mut xg, f - g.frac_bits);
            for &k in &g.powers {
                let mut pk: Vec<u64> = xg.iter().map(|v| v.wrapping_pow(k as u32)).collect();
                Trunc::Public.apply(&mut pk, k as u32 * power_frac_bits(k, f) - f);
                pows[k] = pk;
            }
        }
        Ok(ops::poly_combine(x, &pows, p, f, Trunc::Public))
    }
    fn relu(&mut self, _idx: usize, _layer: &Layer, x: &RingTensor) -> Result<RingTensor> {
        let data = x.data.iter().map(|&v| if signed(v) < 0 { 0 } else { v }).collect();
        Ok(RingTensor { shape: x.shape.clone(), data })
    }
    fn maxpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let shape = out_shape(layer, n);
        let (oh, ow) = (shape[2], shape[3]);
        let mut y = RingTensor::zeros(&shape);
        for nc in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = i64::MIN;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * s + ky) as isize - p as isize,
                                (ox * s + kx) as isize - p as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                m = m.max(signed(
                                    x.data[nc * h * w + iy as usize * w + ix as usize],
                                ));
                            }
                        }
                    }
                    y.data[nc * oh * ow + oy * ow + ox] = m as u64;
                }
            }
        }
        Ok(y)
    }
    fn avgpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        ops::avgpool(x, (k, s, p), self.fp.frac_bits, Trunc::Public, &layer.name)
    }
    fn global_avgpool(&mut self, _idx: usize, layer: &Layer, x: &RingTensor) -> Result<RingTensor> {
        ops::global_avgpool(x, self.fp.frac_bits, Trunc::Public, &layer.name)
    }
    fn flatten(&mut self, _idx: usize, _layer: &Layer, x: RingTensor) -> Result<RingTensor> {
        Ok(ops::flatten(x))
    }
    fn add(
        &mut self,
        _idx: usize,
        _layer: &Layer,
        a: &RingTensor,
        b: &RingTensor,
    ) -> Result<RingTensor> {
        a.add(b)
    }
    fn observe(&mut self, idx: usize, value: &RingTensor) {
        if self.record {
            self.recorded.resize(idx + 1, None);
            self.recorded[idx] = Some(value.clone());
        }
    }
}

/// Runs the fixed-point twin on a normalised f32 input `[batch, C, H, W]`; returns decoded
/// logits. Errors: `ShapeMismatch`, `RangeExceeded` (input or weight not encodable).
pub fn run_fixed(plan: &Plan, enc: &EncodedPlan, input: &[f32], batch: usize) -> Result<Vec<f32>> {
    check_input(plan, input, batch)?;
    let fp = FixedPoint { frac_bits: plan.frac_bits };
    let x = fp.encode_slice(input)?;
    let mut b = FixedBackend::new(enc, &x, plan.frac_bits, false);
    let (y, _): (RingTensor, Vec<LayerTrace>) = walk(plan, &mut b, batch)?;
    Ok(fp.decode_slice(&y.data))
}
