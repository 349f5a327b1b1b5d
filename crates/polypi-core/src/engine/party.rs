//! The online backend of the walk (design.md §4): [`Online`], a party's online phase on its
//! shares, consuming the per-layer [`Material`] of the offline phase (whose providers live in
//! [`crate::offline`]: the dealer stream, [`crate::offline::Offline`] and
//! [`crate::offline::Dealer`], or the two-party generator).
//!
//! Protocols:
//! - **Linear / conv with weight masking.** Session setup: the server sends `F = W - B` once, `B`
//!   expanded from the server's seed (the dealer expands it too). Offline, per inference: the
//!   client expands `A` (its input mask) and computes `A*F`; the dealer computes `C = A*B` and
//!   sends the client `c1 = C - c0`, where `c0` is expanded by the server. Online: the client sends
//!   `X1 - A`; the server computes `(X0 + X1 - A)*W + c0 + bias`; the client's share is
//!   `A*F + c1`. One one-way message of |X| ring elements and one GEMM at the server. Then both
//!   truncate locally (SecureML).
//! - **Polynomial, one round for any degree** (HoneyBadger-style dealer powers, cf. Diaa et al.):
//!   for each power group (see [`crate::mpc::encode`]) the dealer provides shares of `r, r^2..r^m`;
//!   both parties open `e = x_g - r` in one simultaneous exchange; `x^k = sum_i C(k,i) e^(k-i) r^i`
//!   locally; coefficients are public.
//! - **Polynomial, ESPN share powers** ([`crate::model::PolyProtocol::SharePowers`], Diaa et al.,
//!   [`crate::mpc::espn`]): per power group with largest power m, each party raises its share to
//!   the powers 1..m locally; the cross products use dealer Beaver triples for private inputs
//!   (server `a_i`, `c0_ij` and client `b_j` from their seeds, the dealer sends the client
//!   `c1_ij = a_i b_j - c0_ij`); one simultaneous exchange of m-1 masked powers per party.
//! - **ReLU / MaxPool** ([`crate::mpc::relu`]): dealer FSS keys (a DCF on the low 35 bits of
//!   the opened `x + r`: the sign on the comparison ring `Z_2^36`, [`relu::RING_BITS`]), 2 online
//!   rounds per ReLU layer (open `x + r`, then the masked DReLU bit), 8 + 1/8 bytes each way per
//!   element; max-pool is a tree of `b + ReLU(a - b)`, 2 rounds per level. The dealer sends the
//!   DCF correction words to both parties (480 bytes per comparison each) and 16 bytes + 1 bit
//!   more per comparison to the client. Exact for ReLU inputs and max-pool differences in
//!   `[-2^35, 2^35)` ring units (`|x| < 2^19` real at 16 frac bits).
//! - Average pooling, residual add, flatten: local. Output: the server sends its share of the
//!   logits; only the client reconstructs.

use super::plain::EncodedPlan;
use super::walk::Backend;
use crate::error::{Error, Result};
use crate::model::{ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use crate::mpc::encode::PolyPlan;
use crate::mpc::espn;
use crate::mpc::ops::{self, Trunc};
use crate::mpc::relu;
use crate::mpc::{CLIENT, SERVER};
use crate::net::{exchange_ring, recv_ring, send_ring, Channel, ChannelStats};
pub use crate::offline::Material;
use crate::ring::RingTensor;

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub(crate) fn with_batch(layer: &Layer, batch: usize) -> Vec<usize> {
    let mut s = vec![batch];
    s.extend_from_slice(&layer.out_shape);
    s
}

/// Checks that every layer of `plan` has a secure protocol. Every op of this build has one
/// (ReLU and MaxPool through [`crate::mpc::relu`]), so this only rejects an empty plan.
/// Errors: `InvalidArgument` for a plan without layers.
pub fn check_supported(plan: &Plan) -> Result<()> {
    if plan.layers.is_empty() {
        return Err(Error::InvalidArgument("the plan has no layers".into()));
    }
    Ok(())
}

/// Comparisons per tree level of a max-pool layer on input shape `x` (`[N, C, H, W]`), checked
/// against the layer's output shape. Errors: `Graph` for a bad geometry.
pub(crate) fn pool_geometry(
    layer: &Layer,
    x: &[usize],
    win: (usize, usize, usize),
) -> Result<Vec<usize>> {
    let (out, levels) =
        relu::pool_sizes(x, win).map_err(|e| Error::graph(&layer.name, e.to_string()))?;
    if out[1..] != layer.out_shape[..] {
        return Err(Error::graph(&layer.name, "max-pool output shape differs from the plan"));
    }
    Ok(levels)
}

/// Sorted indices of the linear (conv + fc) layers of an encoded plan.
pub fn linear_indices(e: &EncodedPlan) -> Vec<usize> {
    let mut v: Vec<usize> = e.conv.keys().chain(e.linear.keys()).copied().collect();
    v.sort_unstable();
    v
}

/// Names the layer in an argument error of a comparison protocol (peer errors pass unchanged).
fn in_layer(e: Error, name: &str) -> Error {
    match e {
        Error::InvalidArgument(r) => Error::graph(name, r),
        e => e,
    }
}

/// A party's online phase: computes on its shares, consuming the offline material.
pub struct Online<'a> {
    party: usize,
    frac_bits: u32,
    /// Server: the encoded weights `W` (with biases). Client: unused for linear layers.
    weights: &'a EncodedPlan,
    material: Vec<Option<Material>>,
    peer: &'a mut dyn Channel,
    /// Client: its encoded input `[N, C, H, W]` at scale f.
    input: Vec<u64>,
    /// Per-layer output shares when recording (for `--check`).
    pub recorded: Vec<Option<RingTensor>>,
    record: bool,
    /// Consumed comparison material (DCF keys, ~0.5 KB per compared element), kept until
    /// [`Online::finish`] so that freeing it (page unmapping: ~30 ms of CPU per party for
    /// NET-R18) happens after the online phase instead of inside a layer.
    spent: Vec<Material>,
}

impl<'a> Online<'a> {
    /// Online backend of `party`, with its offline `material`, the channel to the other party and
    /// (client) the encoded input.
    pub fn new(
        party: usize,
        frac_bits: u32,
        weights: &'a EncodedPlan,
        material: Vec<Option<Material>>,
        peer: &'a mut dyn Channel,
        input: Vec<u64>,
        record: bool,
    ) -> Self {
        Online {
            party,
            frac_bits,
            weights,
            material,
            peer,
            input,
            recorded: Vec::new(),
            record,
            spent: Vec::new(),
        }
    }

    /// Ends the online phase: releases the channel and returns the consumed material (and any
    /// unused one), to be dropped once the result is out of the timed online path.
    pub fn finish(self) -> Vec<Material> {
        let mut spent = self.spent;
        spent.extend(self.material.into_iter().flatten());
        spent
    }

    fn take(&mut self, idx: usize, layer: &Layer) -> Result<Material> {
        self.material
            .get_mut(idx)
            .and_then(|m| m.take())
            .ok_or_else(|| Error::graph(&layer.name, "offline material missing"))
    }

    fn trunc(&self) -> Trunc {
        Trunc::Share(self.party)
    }

    fn linear_online(&mut self, idx: usize, layer: &Layer, x: &RingTensor) -> Result<RingTensor> {
        let Material::Linear { mask, share } = self.take(idx, layer)? else {
            return Err(Error::graph(&layer.name, "wrong offline material"));
        };
        let shape = with_batch(layer, x.shape[0]);
        if share.len() != numel(&shape) {
            return Err(Error::graph(&layer.name, "offline material of the wrong size"));
        }
        if self.party == CLIENT {
            let mut m = mask.ok_or_else(|| Error::graph(&layer.name, "client mask missing"))?;
            if m.len() != x.len() {
                return Err(Error::graph(&layer.name, "client mask of the wrong size"));
            }
            // X1 - A, written over the mask (used once).
            for (r, v) in m.iter_mut().zip(&x.data) {
                *r = v.wrapping_sub(*r);
            }
            send_ring(self.peer, &m)?;
            self.peer.flush()?;
            let mut y = RingTensor::from_vec(&shape, share)?;
            self.trunc().apply(&mut y.data, self.frac_bits);
            return Ok(y);
        }
        let mut m = recv_ring(self.peer, x.len())?;
        // X0 + (X1 - A), written over the received message.
        for (v, a) in m.iter_mut().zip(&x.data) {
            *v = v.wrapping_add(*a);
        }
        let xm = RingTensor { shape: x.shape.clone(), data: m };
        let y = match &layer.op {
            LayerOp::Conv2d(_) => {
                let w = self
                    .weights
                    .conv
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no weights"))?;
                let mut y = ops::conv_ring(&xm, &w.weight, &w.geom, &layer.name)?;
                ops::finish_linear_share(&mut y, &w.bias, &share, self.frac_bits, self.trunc());
                y
            }
            _ => {
                let w = self
                    .weights
                    .linear
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no weights"))?;
                let mut y =
                    ops::linear_ring(&xm, &w.weight_t, w.in_features, w.out_features, &layer.name)?;
                ops::finish_linear_share(&mut y, &w.bias, &share, self.frac_bits, self.trunc());
                y
            }
        };
        Ok(y)
    }
}

impl Online<'_> {
    /// ESPN online phase of a polynomial layer ([`espn`]): per group pre-truncate, raise the own
    /// share to the powers, send the masked powers (one exchange for all groups), combine.
    fn share_powers_online(
        &mut self,
        plan: &PolyPlan,
        x: &RingTensor,
        masks: &[Vec<Vec<u64>>],
        prods: &[Vec<Vec<u64>>],
    ) -> Result<RingTensor> {
        let (f, t) = (self.frac_bits, self.trunc());
        let mut own = Vec::with_capacity(plan.groups.len());
        let mut mine = Vec::new();
        for (g, grp) in plan.groups.iter().enumerate() {
            let mut xg = x.data.clone();
            t.apply(&mut xg, f - grp.frac_bits);
            let pows = espn::local_powers(&xg, grp.max_power());
            mine.extend(espn::masked_powers(&pows, &masks[g]));
            own.push(pows);
        }
        let mut pows = vec![Vec::new(); plan.degree + 1];
        if !plan.groups.is_empty() {
            let theirs = exchange_ring(self.peer, &mine)?;
            let mut off = 0;
            for (g, grp) in plan.groups.iter().enumerate() {
                let len = (grp.max_power() - 1) * x.len();
                let shares = espn::powers_from_cross(
                    self.party,
                    &own[g],
                    &masks[g],
                    &theirs[off..off + len],
                    &prods[g],
                    &grp.powers,
                );
                off += len;
                for (mut v, &k) in shares.into_iter().zip(&grp.powers) {
                    t.apply(&mut v, k as u32 * grp.frac_bits - f);
                    pows[k] = v;
                }
            }
        }
        Ok(ops::poly_combine(x, &pows, plan, f, t))
    }
}

impl Backend for Online<'_> {
    type Value = RingTensor;
    fn input(&mut self, idx: usize, layer: &Layer, batch: usize) -> Result<RingTensor> {
        let shape = with_batch(layer, batch);
        let Material::Input { zero_share } = self.take(idx, layer)? else {
            return Err(Error::graph(&layer.name, "wrong offline material"));
        };
        // The server's input share is its share of zero itself; the client adds its share of
        // zero to its input.
        if self.party == SERVER {
            return RingTensor::from_vec(&shape, zero_share);
        }
        let mut x = RingTensor::from_vec(&shape, std::mem::take(&mut self.input))?;
        if zero_share.len() != x.len() {
            return Err(Error::graph(&layer.name, "offline material of the wrong size"));
        }
        for (v, z) in x.data.iter_mut().zip(&zero_share) {
            *v = v.wrapping_add(*z);
        }
        Ok(x)
    }
    fn conv2d(
        &mut self,
        idx: usize,
        layer: &Layer,
        _c: &ConvLayer,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        self.linear_online(idx, layer, x)
    }
    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        _l: &LinearLayer,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        self.linear_online(idx, layer, x)
    }
    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        _p: &PolyLayer,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        let plan = self
            .weights
            .poly
            .get(&idx)
            .ok_or_else(|| Error::graph(&layer.name, "no polynomial plan"))?;
        let material = self.take(idx, layer)?;
        if let Material::SharePowers { masks, prods } = material {
            return self.share_powers_online(plan, x, &masks, &prods);
        }
        let Material::Poly { r_pows } = material else {
            return Err(Error::graph(&layer.name, "wrong offline material"));
        };
        let (f, t) = (self.frac_bits, self.trunc());
        // This party's shares of e_g = x_g - r_g for every group, sent in one message.
        let r1: Vec<&[u64]> = r_pows.iter().map(|r| r[0].as_slice()).collect();
        let mine = ops::poly_opening_shares(&x.data, &r1, plan, f, t);
        let theirs =
            if plan.groups.is_empty() { Vec::new() } else { exchange_ring(self.peer, &mine)? };
        Ok(ops::poly_from_opening(x, &mine, &theirs, &r_pows, plan, f, t))
    }
    fn relu(&mut self, idx: usize, layer: &Layer, x: &RingTensor) -> Result<RingTensor> {
        let Material::Compare { levels } = self.take(idx, layer)? else {
            return Err(Error::graph(&layer.name, "wrong offline material"));
        };
        let [m] = levels.as_slice() else {
            return Err(Error::graph(&layer.name, "wrong offline material"));
        };
        let data =
            relu::relu(self.party, m, &x.data, self.peer).map_err(|e| in_layer(e, &layer.name))?;
        self.spent.push(Material::Compare { levels });
        Ok(RingTensor { shape: x.shape.clone(), data })
    }
    fn maxpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &RingTensor,
    ) -> Result<RingTensor> {
        let Material::Compare { levels } = self.take(idx, layer)? else {
            return Err(Error::graph(&layer.name, "wrong offline material"));
        };
        pool_geometry(layer, &x.shape, (k, s, p))?;
        let (shape, data) =
            relu::maxpool(self.party, &levels, &x.data, &x.shape, (k, s, p), self.peer)
                .map_err(|e| in_layer(e, &layer.name))?;
        self.spent.push(Material::Compare { levels });
        Ok(RingTensor { shape, data })
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
        ops::avgpool(x, (k, s, p), self.frac_bits, self.trunc(), &layer.name)
    }
    fn global_avgpool(&mut self, _idx: usize, layer: &Layer, x: &RingTensor) -> Result<RingTensor> {
        ops::global_avgpool(x, self.frac_bits, self.trunc(), &layer.name)
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
    fn counters(&self) -> ChannelStats {
        self.peer.stats()
    }
    fn observe(&mut self, idx: usize, value: &RingTensor) {
        if self.record {
            self.recorded.resize(idx + 1, None);
            self.recorded[idx] = Some(value.clone());
        }
    }
}
