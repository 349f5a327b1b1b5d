//! The one network walk (design.md §3): every backend — plaintext f32, fixed-point twin, server,
//! client, dealer, cost counter — is driven by [`walk`], which visits the layers of a
//! [`Plan`] in order and calls one [`Backend`] method per layer. Adding a layer type means one
//! `LayerOp` plus one method per backend; the walk never forks.

use crate::error::{Error, Result};
use crate::model::{ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use crate::net::ChannelStats;
use std::time::Instant;

/// The layers no party computes anything for in an offline phase (average pooling, global
/// average pooling, flatten, residual add): output shape only. Expands, inside `impl Backend for
/// X` with `type Value = Vec<usize>` (a shape, NCHW), to the four methods; used by the
/// preprocessing backends (dealer mode and two-party).
macro_rules! local_shape_layers {
    () => {
        fn avgpool(
            &mut self,
            _idx: usize,
            layer: &$crate::model::Layer,
            _k: usize,
            _s: usize,
            _p: usize,
            x: &Vec<usize>,
        ) -> $crate::error::Result<Vec<usize>> {
            Ok($crate::engine::party::with_batch(layer, x[0]))
        }
        fn global_avgpool(
            &mut self,
            _idx: usize,
            layer: &$crate::model::Layer,
            x: &Vec<usize>,
        ) -> $crate::error::Result<Vec<usize>> {
            Ok($crate::engine::party::with_batch(layer, x[0]))
        }
        fn flatten(
            &mut self,
            _idx: usize,
            layer: &$crate::model::Layer,
            x: Vec<usize>,
        ) -> $crate::error::Result<Vec<usize>> {
            Ok($crate::engine::party::with_batch(layer, x[0]))
        }
        fn add(
            &mut self,
            _idx: usize,
            _layer: &$crate::model::Layer,
            a: &Vec<usize>,
            _b: &Vec<usize>,
        ) -> $crate::error::Result<Vec<usize>> {
            Ok(a.clone())
        }
    };
}
pub(crate) use local_shape_layers;

/// The operator interface every backend implements. `Value` is the backend's tensor: an f32
/// tensor, a ring tensor (plaintext or a party's share), or just a shape.
///
/// Every method receives the layer index `idx` (stable across backends, used to derive per-layer
/// randomness), the layer, and its input value(s). Shapes are NCHW (batch first).
pub trait Backend {
    /// The backend's tensor representation.
    type Value;
    /// The network input for a batch of `batch` samples.
    fn input(&mut self, idx: usize, layer: &Layer, batch: usize) -> Result<Self::Value>;
    /// Convolution (+ bias, + truncation in the ring).
    fn conv2d(
        &mut self,
        idx: usize,
        layer: &Layer,
        conv: &ConvLayer,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Fully connected layer.
    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        lin: &LinearLayer,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Polynomial activation.
    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        poly: &PolyLayer,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// ReLU.
    fn relu(&mut self, idx: usize, layer: &Layer, x: &Self::Value) -> Result<Self::Value>;
    /// Max pooling.
    fn maxpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        kernel: usize,
        stride: usize,
        padding: usize,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Average pooling; `padding` zeros on each side count in the divisor `kernel^2`.
    #[allow(clippy::too_many_arguments)]
    fn avgpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        kernel: usize,
        stride: usize,
        padding: usize,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Global average pooling.
    fn global_avgpool(&mut self, idx: usize, layer: &Layer, x: &Self::Value)
        -> Result<Self::Value>;
    /// Flatten to `[N, F]`.
    fn flatten(&mut self, idx: usize, layer: &Layer, x: Self::Value) -> Result<Self::Value>;
    /// Elementwise sum.
    fn add(
        &mut self,
        idx: usize,
        layer: &Layer,
        a: &Self::Value,
        b: &Self::Value,
    ) -> Result<Self::Value>;
    /// Communication counters of this backend so far (zero for local backends).
    fn counters(&self) -> ChannelStats {
        ChannelStats::default()
    }
    /// Called after each layer with its output (backends that record layer values use it).
    fn observe(&mut self, _idx: usize, _value: &Self::Value) {}
}

/// What the walk measured for one layer in one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerTrace {
    /// Wall time spent in the backend's method, ms.
    pub ms: f64,
    /// Counter increments during the layer.
    pub stats: ChannelStats,
}

fn delta(a: ChannelStats, b: ChannelStats) -> ChannelStats {
    ChannelStats {
        bytes_sent: b.bytes_sent - a.bytes_sent,
        bytes_received: b.bytes_received - a.bytes_received,
        messages_sent: b.messages_sent - a.messages_sent,
        messages_received: b.messages_received - a.messages_received,
        send_phases: b.send_phases - a.send_phases,
    }
}

/// Runs `plan` on `backend` for a batch of `batch` samples; returns the output value and one
/// trace per layer. Values are dropped as soon as their last consumer ran.
///
/// Errors: whatever the backend returns (shape, range, peer errors), or `Graph` for a plan whose
/// inputs are out of order.
pub fn walk<B: Backend>(
    plan: &Plan,
    backend: &mut B,
    batch: usize,
) -> Result<(B::Value, Vec<LayerTrace>)> {
    let n = plan.layers.len();
    if n == 0 {
        return Err(Error::graph("plan", "empty plan"));
    }
    let mut last_use = vec![0usize; n];
    for (i, l) in plan.layers.iter().enumerate() {
        for &j in &l.inputs {
            if j >= i {
                return Err(Error::graph(&l.name, "input refers to a later layer"));
            }
            last_use[j] = i;
        }
    }
    last_use[n - 1] = n;
    let mut values: Vec<Option<B::Value>> = (0..n).map(|_| None).collect();
    let mut traces = Vec::with_capacity(n);
    for (i, layer) in plan.layers.iter().enumerate() {
        let before = backend.counters();
        let t0 = Instant::now();
        let get = |values: &Vec<Option<B::Value>>, k: usize| -> Result<usize> {
            let j =
                *layer.inputs.get(k).ok_or_else(|| Error::graph(&layer.name, "missing input"))?;
            if values[j].is_none() {
                return Err(Error::graph(&layer.name, "input value not available"));
            }
            Ok(j)
        };
        let out = match &layer.op {
            LayerOp::Input => backend.input(i, layer, batch)?,
            LayerOp::Conv2d(c) => {
                let j = get(&values, 0)?;
                backend.conv2d(i, layer, c, values[j].as_ref().unwrap())?
            }
            LayerOp::Linear(l) => {
                let j = get(&values, 0)?;
                backend.linear(i, layer, l, values[j].as_ref().unwrap())?
            }
            LayerOp::Poly(p) => {
                let j = get(&values, 0)?;
                backend.poly(i, layer, p, values[j].as_ref().unwrap())?
            }
            LayerOp::Relu => {
                let j = get(&values, 0)?;
                backend.relu(i, layer, values[j].as_ref().unwrap())?
            }
            LayerOp::MaxPool2d { kernel, stride, padding } => {
                let j = get(&values, 0)?;
                backend.maxpool(
                    i,
                    layer,
                    *kernel,
                    *stride,
                    *padding,
                    values[j].as_ref().unwrap(),
                )?
            }
            LayerOp::AvgPool2d { kernel, stride, padding } => {
                let j = get(&values, 0)?;
                backend.avgpool(
                    i,
                    layer,
                    *kernel,
                    *stride,
                    *padding,
                    values[j].as_ref().unwrap(),
                )?
            }
            LayerOp::GlobalAvgPool => {
                let j = get(&values, 0)?;
                backend.global_avgpool(i, layer, values[j].as_ref().unwrap())?
            }
            LayerOp::Flatten => {
                let j = get(&values, 0)?;
                // Move the value when this is its last use, else the backend gets a copy-free move
                // of a clone it would have made anyway.
                if last_use[j] == i {
                    let v = values[j].take().unwrap();
                    backend.flatten(i, layer, v)?
                } else {
                    return Err(Error::graph(
                        &layer.name,
                        "flatten input is used by another layer too",
                    ));
                }
            }
            LayerOp::Add => {
                let a = get(&values, 0)?;
                let b = get(&values, 1)?;
                backend.add(i, layer, values[a].as_ref().unwrap(), values[b].as_ref().unwrap())?
            }
        };
        backend.observe(i, &out);
        traces.push(LayerTrace {
            ms: t0.elapsed().as_secs_f64() * 1e3,
            stats: delta(before, backend.counters()),
        });
        values[i] = Some(out);
        for &j in &layer.inputs {
            if last_use[j] == i {
                values[j] = None;
            }
        }
    }
    let out = values[n - 1].take().ok_or_else(|| Error::graph("plan", "no output"))?;
    Ok((out, traces))
}
