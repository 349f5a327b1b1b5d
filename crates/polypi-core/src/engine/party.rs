//! The secure backends of the walk (design.md §4): [`Offline`] (a party's offline phase: expand
//! its seed, receive the dealer's corrections, precompute everything input-independent),
//! [`Online`] (a party's online phase on shares), and [`Dealer`] (the dealer's offline phase).
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
use crate::model::PolyProtocol;
use crate::model::{ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use crate::mpc::encode::PolyPlan;
use crate::mpc::espn;
use crate::mpc::ops::{self, Trunc};
use crate::mpc::prg::{Purpose, Seed};
use crate::mpc::relu::{self, ReluMaterial};
use crate::mpc::{CLIENT, SERVER};
use crate::net::{exchange_ring, recv_ring, send_ring, Channel, ChannelStats};
use crate::ring::RingTensor;

/// Per-layer correlated randomness a party holds between its offline and online phase.
#[derive(Debug, Clone)]
pub enum Material {
    /// Linear layer: the client's input mask `A` (None at the server) and the party's
    /// precomputed output share (server: `c0`; client: `A*F + c1`).
    Linear {
        /// The client's input mask `A` (ring elements, the layer's input layout); `None` at the
        /// server.
        mask: Option<Vec<u64>>,
        /// This party's precomputed share of the masked product (the layer's output layout).
        share: Vec<u64>,
    },
    /// Polynomial (dealer powers): per power group, this party's shares of `r^1..r^m`.
    Poly {
        /// `r_pows[group][k]`: this party's shares of `r^(k+1)` for the group's elements.
        r_pows: Vec<Vec<Vec<u64>>>,
    },
    /// Polynomial (ESPN share powers): per power group, this party's Beaver masks of its share
    /// powers `1..m-1` and its shares of the cross products ([`espn::cross_pairs`] order).
    SharePowers {
        /// `masks[group][k]`: this party's Beaver masks of its share power `k + 1`.
        masks: Vec<Vec<Vec<u64>>>,
        /// `prods[group][j]`: this party's shares of cross product `j` (`espn::cross_pairs`).
        prods: Vec<Vec<Vec<u64>>>,
    },
    /// Input: this party's share of a dealer-made sharing of zero (server: `R0`, client: `-R0`),
    /// added to the trivial sharing `(0, x)` of the client's input so that both shares are
    /// uniform (SecureML local truncation is only correct on uniformly random shares).
    Input {
        /// This party's share of zero, one ring element per input element (NCHW).
        zero_share: Vec<u64>,
    },
    /// ReLU (one level) or max-pool (one per tree level): this party's comparison material.
    Compare {
        /// One entry per comparison level (ReLU: one; max-pool: one per tree level).
        levels: Vec<ReluMaterial>,
    },
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn with_batch(layer: &Layer, batch: usize) -> Vec<usize> {
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
fn pool_geometry(layer: &Layer, x: &[usize], win: (usize, usize, usize)) -> Result<Vec<usize>> {
    let (out, levels) =
        relu::pool_sizes(x, win).map_err(|e| Error::graph(&layer.name, e.to_string()))?;
    if out[1..] != layer.out_shape[..] {
        return Err(Error::graph(&layer.name, "max-pool output shape differs from the plan"));
    }
    Ok(levels)
}

/// The weight masks `B` of every linear layer, expanded from the server's seed (session stream),
/// in the layout of [`EncodedPlan`] (conv: per-group `[c_out/g, K]`; linear: `[in, out]`).
/// Biases are empty. Used by the server (to form `F = W - B`) and the dealer.
pub fn weight_masks(skeleton: &Plan, server_seed: &Seed) -> Result<EncodedPlan> {
    let mut e = EncodedPlan::new(skeleton)?;
    for (idx, c) in e.conv.iter_mut() {
        let g = c.geom;
        let per_group = (g.c_out / g.groups) * (g.c_in / g.groups) * g.kh * g.kw;
        let all = server_seed.ring(0, *idx, Purpose::WeightMask, per_group * g.groups);
        c.weight = all.chunks(per_group.max(1)).map(|ch| ch.to_vec()).collect();
        c.weight.resize(g.groups, Vec::new());
        c.bias = Vec::new();
    }
    for (idx, l) in e.linear.iter_mut() {
        l.weight_t = server_seed.ring(0, *idx, Purpose::WeightMask, l.in_features * l.out_features);
        l.bias = Vec::new();
    }
    Ok(e)
}

/// Sorted indices of the linear (conv + fc) layers of an encoded plan.
pub fn linear_indices(e: &EncodedPlan) -> Vec<usize> {
    let mut v: Vec<usize> = e.conv.keys().chain(e.linear.keys()).copied().collect();
    v.sort_unstable();
    v
}

/// A party's offline phase for one inference: fills [`Offline::material`].
pub struct Offline<'a> {
    party: usize,
    seed: &'a Seed,
    inference: u64,
    /// Client only: `F = W - B` per linear layer.
    masked_weights: &'a EncodedPlan,
    /// Channel from the dealer (client: always; server: for ReLU / MaxPool layers).
    dealer: Option<&'a mut dyn Channel>,
    /// Material per layer (index = layer).
    pub material: Vec<Option<Material>>,
}

impl<'a> Offline<'a> {
    /// Offline backend of `party` (0 = server, 1 = client) for inference number `inference`
    /// (counting from 1). The client passes its `F` weights and the dealer channel.
    pub fn new(
        party: usize,
        seed: &'a Seed,
        inference: u64,
        masked_weights: &'a EncodedPlan,
        dealer: Option<&'a mut dyn Channel>,
    ) -> Self {
        Offline { party, seed, inference, masked_weights, dealer, material: Vec::new() }
    }

    fn put(&mut self, idx: usize, m: Material) {
        if self.material.len() <= idx {
            self.material.resize(idx + 1, None);
        }
        self.material[idx] = Some(m);
    }

    fn dealer(&mut self) -> Result<&mut (dyn Channel + 'a)> {
        self.dealer.as_deref_mut().ok_or_else(|| {
            Error::InvalidArgument("this offline phase needs the dealer channel".into())
        })
    }

    fn linear_material(
        &mut self,
        idx: usize,
        layer: &Layer,
        x: &[usize],
        out: &[usize],
    ) -> Result<()> {
        if self.party == SERVER {
            let c0 = self.seed.ring(self.inference, idx, Purpose::ProductShare, numel(out));
            self.put(idx, Material::Linear { mask: None, share: c0 });
            return Ok(());
        }
        let a = RingTensor {
            shape: x.to_vec(),
            data: self.seed.ring(self.inference, idx, Purpose::InputMask, numel(x)),
        };
        let af = match &layer.op {
            LayerOp::Conv2d(_) => {
                let f = self
                    .masked_weights
                    .conv
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no masked weights"))?;
                ops::conv_ring(&a, &f.weight, &f.geom, &layer.name)?
            }
            _ => {
                let f = self
                    .masked_weights
                    .linear
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no masked weights"))?;
                ops::linear_ring(&a, &f.weight_t, f.in_features, f.out_features, &layer.name)?
            }
        };
        let c1 = recv_ring(self.dealer()?, numel(out))?;
        let share = af.data.iter().zip(&c1).map(|(u, c)| u.wrapping_add(*c)).collect();
        self.put(idx, Material::Linear { mask: Some(a.data), share });
        Ok(())
    }
}

impl Offline<'_> {
    /// Comparison material of layer `idx`, one batch per level of `sizes` comparisons: expanded
    /// from the seed's `Compare(0)` stream of the layer, plus the dealer's keys.
    fn compare_material(&mut self, idx: usize, sizes: &[usize]) -> Result<()> {
        let mut rng = self.seed.stream(self.inference, idx, Purpose::Compare(0));
        let party = self.party;
        let mut levels = Vec::with_capacity(sizes.len());
        for &n in sizes {
            levels.push(relu::receive(party, &mut rng, n, relu::RING_BITS, self.dealer()?)?);
        }
        self.put(idx, Material::Compare { levels });
        Ok(())
    }
}

impl Offline<'_> {
    /// ESPN material of a polynomial layer of `n` elements: masks (and, at the server, the
    /// product shares `c0`) from the seed; at the client the dealer's `c1`, one message.
    fn share_powers_material(&mut self, idx: usize, plan: &PolyPlan, n: usize) -> Result<()> {
        let c1 = if self.party == CLIENT && !plan.groups.is_empty() {
            let total: usize = plan.groups.iter().map(|g| espn::cross_pairs(&g.powers).len()).sum();
            recv_ring(self.dealer()?, total * n)?
        } else {
            Vec::new()
        };
        let (mut masks, mut prods) = (Vec::new(), Vec::new());
        let mut off = 0;
        for (g, grp) in plan.groups.iter().enumerate() {
            masks.push(share_masks(self.seed, self.inference, idx, g, grp.max_power(), n));
            let np = espn::cross_pairs(&grp.powers).len();
            let p: Vec<u64> = if self.party == SERVER {
                server_products(self.seed, self.inference, idx, g, np * n)
            } else {
                let v = c1[off..off + np * n].to_vec();
                off += np * n;
                v
            };
            prods.push(p.chunks(n.max(1)).map(|c| c.to_vec()).collect());
        }
        self.put(idx, Material::SharePowers { masks, prods });
        Ok(())
    }
}

/// A party's ESPN Beaver masks of its share powers `1..m-1` (group g), from its own seed.
fn share_masks(
    seed: &Seed,
    inference: u64,
    idx: usize,
    g: usize,
    m: usize,
    n: usize,
) -> Vec<Vec<u64>> {
    let all = seed.ring(inference, idx, Purpose::ShareMask(g as u8), n * (m - 1));
    all.chunks(n.max(1)).map(|c| c.to_vec()).collect()
}

/// The server's ESPN product shares `c0` of group g (`len` elements, pair-major).
fn server_products(seed: &Seed, inference: u64, idx: usize, g: usize, len: usize) -> Vec<u64> {
    seed.ring(inference, idx, Purpose::ShareProduct(g as u8), len)
}

/// Expands a party's shares of the polynomial masks `r` (group g) from its seed.
fn poly_mask(seed: &Seed, inference: u64, idx: usize, g: usize, n: usize) -> Vec<u64> {
    seed.ring(inference, idx, Purpose::PolyMask(g as u8), n)
}

impl Backend for Offline<'_> {
    type Value = Vec<usize>;
    fn input(&mut self, idx: usize, layer: &Layer, batch: usize) -> Result<Vec<usize>> {
        let shape = with_batch(layer, batch);
        let zero_share = if self.party == SERVER {
            self.seed.ring(self.inference, idx, Purpose::InputMask, numel(&shape))
        } else {
            recv_ring(self.dealer()?, numel(&shape))?
        };
        self.put(idx, Material::Input { zero_share });
        Ok(shape)
    }
    fn conv2d(
        &mut self,
        idx: usize,
        layer: &Layer,
        _c: &ConvLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        self.linear_material(idx, layer, x, &out)?;
        Ok(out)
    }
    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        _l: &LinearLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        self.linear_material(idx, layer, x, &out)?;
        Ok(out)
    }
    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        _p: &PolyLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let plan = self
            .masked_weights
            .poly
            .get(&idx)
            .ok_or_else(|| Error::graph(&layer.name, "no polynomial plan"))?
            .clone();
        let n = numel(x);
        if plan.protocol == PolyProtocol::SharePowers {
            return self.share_powers_material(idx, &plan, n).map(|_| x.clone());
        }
        let mut r_pows = Vec::with_capacity(plan.groups.len());
        let corrections = if self.party == CLIENT && !plan.groups.is_empty() {
            let total: usize = plan.groups.iter().map(|g| (g.max_power() - 1) * n).sum();
            recv_ring(self.dealer()?, total)?
        } else {
            Vec::new()
        };
        let mut off = 0;
        for (g, grp) in plan.groups.iter().enumerate() {
            let m = grp.max_power();
            let mut pows = vec![poly_mask(self.seed, self.inference, idx, g, n)];
            if self.party == SERVER {
                let all =
                    self.seed.ring(self.inference, idx, Purpose::PolyPowers(g as u8), n * (m - 1));
                pows.extend(all.chunks(n).map(|c| c.to_vec()));
            } else {
                for _ in 2..=m {
                    pows.push(corrections[off..off + n].to_vec());
                    off += n;
                }
            }
            r_pows.push(pows);
        }
        self.put(idx, Material::Poly { r_pows });
        Ok(x.clone())
    }
    fn relu(&mut self, idx: usize, _layer: &Layer, x: &Vec<usize>) -> Result<Vec<usize>> {
        self.compare_material(idx, &[numel(x)])?;
        Ok(x.clone())
    }
    fn maxpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let levels = pool_geometry(layer, x, (k, s, p))?;
        self.compare_material(idx, &levels)?;
        Ok(with_batch(layer, x[0]))
    }
    fn avgpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        _k: usize,
        _s: usize,
        _p: usize,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        Ok(with_batch(layer, x[0]))
    }
    fn global_avgpool(&mut self, _idx: usize, layer: &Layer, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(with_batch(layer, x[0]))
    }
    fn flatten(&mut self, _idx: usize, layer: &Layer, x: Vec<usize>) -> Result<Vec<usize>> {
        Ok(with_batch(layer, x[0]))
    }
    fn add(
        &mut self,
        _idx: usize,
        _layer: &Layer,
        a: &Vec<usize>,
        _b: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        Ok(a.clone())
    }
    fn counters(&self) -> ChannelStats {
        self.dealer.as_ref().map(|d| d.stats()).unwrap_or_default()
    }
}

/// The dealer's offline phase for one inference: computes and streams the client's corrections
/// (and, for ReLU / MaxPool layers, the server's DCF keys: see [`Dealer::with_server`]).
pub struct Dealer<'a> {
    server_seed: &'a Seed,
    client_seed: &'a Seed,
    inference: u64,
    masks: &'a EncodedPlan,
    client: &'a mut dyn Channel,
    server: Option<&'a mut dyn Channel>,
}

impl<'a> Dealer<'a> {
    /// Dealer for inference number `inference` with both seeds, the weight masks `B`
    /// ([`weight_masks`]) and the channel to the client.
    pub fn new(
        server_seed: &'a Seed,
        client_seed: &'a Seed,
        inference: u64,
        masks: &'a EncodedPlan,
        client: &'a mut dyn Channel,
    ) -> Self {
        Dealer { server_seed, client_seed, inference, masks, client, server: None }
    }

    /// Adds the channel to the server, needed by plans with ReLU / MaxPool layers (the server
    /// receives its DCF correction words on it). Its bytes count in [`Backend::counters`].
    pub fn with_server(mut self, server: &'a mut dyn Channel) -> Self {
        self.server = Some(server);
        self
    }

    fn compare_keys(&mut self, idx: usize, layer: &Layer, sizes: &[usize]) -> Result<()> {
        let server = self.server.as_deref_mut().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "layer '{}': the dealer needs the server channel for comparisons",
                layer.name
            ))
        })?;
        let mut r0 = self.server_seed.stream(self.inference, idx, Purpose::Compare(0));
        let mut r1 = self.client_seed.stream(self.inference, idx, Purpose::Compare(0));
        relu::deal_and_send(&mut r0, &mut r1, sizes, relu::RING_BITS, server, self.client)
    }

    fn linear_correction(
        &mut self,
        idx: usize,
        layer: &Layer,
        x: &[usize],
        out: &[usize],
    ) -> Result<()> {
        let a = RingTensor {
            shape: x.to_vec(),
            data: self.client_seed.ring(self.inference, idx, Purpose::InputMask, numel(x)),
        };
        let ab = match &layer.op {
            LayerOp::Conv2d(_) => {
                let b = self
                    .masks
                    .conv
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no weight mask"))?;
                ops::conv_ring(&a, &b.weight, &b.geom, &layer.name)?
            }
            _ => {
                let b = self
                    .masks
                    .linear
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no weight mask"))?;
                ops::linear_ring(&a, &b.weight_t, b.in_features, b.out_features, &layer.name)?
            }
        };
        let c0 = self.server_seed.ring(self.inference, idx, Purpose::ProductShare, numel(out));
        let c1: Vec<u64> = ab.data.iter().zip(&c0).map(|(c, s)| c.wrapping_sub(*s)).collect();
        send_ring(self.client, &c1)?;
        self.client.flush()
    }
}

impl Backend for Dealer<'_> {
    type Value = Vec<usize>;
    fn input(&mut self, idx: usize, layer: &Layer, batch: usize) -> Result<Vec<usize>> {
        let shape = with_batch(layer, batch);
        let r0 = self.server_seed.ring(self.inference, idx, Purpose::InputMask, numel(&shape));
        let neg: Vec<u64> = r0.iter().map(|v| v.wrapping_neg()).collect();
        send_ring(self.client, &neg)?;
        self.client.flush()?;
        Ok(shape)
    }
    fn conv2d(
        &mut self,
        idx: usize,
        layer: &Layer,
        _c: &ConvLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        self.linear_correction(idx, layer, x, &out)?;
        Ok(out)
    }
    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        _l: &LinearLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        self.linear_correction(idx, layer, x, &out)?;
        Ok(out)
    }
    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        _p: &PolyLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let plan: &PolyPlan = self
            .masks
            .poly
            .get(&idx)
            .ok_or_else(|| Error::graph(&layer.name, "no polynomial plan"))?;
        let n = numel(x);
        let mut msg = Vec::new();
        for (g, grp) in plan.groups.iter().enumerate() {
            let m = grp.max_power();
            if plan.protocol == PolyProtocol::SharePowers {
                let a = share_masks(self.server_seed, self.inference, idx, g, m, n);
                let b = share_masks(self.client_seed, self.inference, idx, g, m, n);
                let np = espn::cross_pairs(&grp.powers).len();
                let c0 = server_products(self.server_seed, self.inference, idx, g, np * n);
                msg.extend(espn::client_products(&a, &b, &c0, &grp.powers));
                continue;
            }
            let r0 = poly_mask(self.server_seed, self.inference, idx, g, n);
            let r1 = poly_mask(self.client_seed, self.inference, idx, g, n);
            let srv = self.server_seed.ring(
                self.inference,
                idx,
                Purpose::PolyPowers(g as u8),
                n * (m - 1),
            );
            let r: Vec<u64> = r0.iter().zip(&r1).map(|(a, b)| a.wrapping_add(*b)).collect();
            let mut rp = r.clone();
            for i in 2..=m {
                for (p, rv) in rp.iter_mut().zip(&r) {
                    *p = p.wrapping_mul(*rv);
                }
                let s = &srv[(i - 2) * n..(i - 1) * n];
                msg.extend(rp.iter().zip(s).map(|(p, sv)| p.wrapping_sub(*sv)));
            }
        }
        if !msg.is_empty() {
            send_ring(self.client, &msg)?;
            self.client.flush()?;
        }
        Ok(x.clone())
    }
    fn relu(&mut self, idx: usize, layer: &Layer, x: &Vec<usize>) -> Result<Vec<usize>> {
        self.compare_keys(idx, layer, &[numel(x)])?;
        Ok(x.clone())
    }
    fn maxpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        k: usize,
        s: usize,
        p: usize,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let levels = pool_geometry(layer, x, (k, s, p))?;
        self.compare_keys(idx, layer, &levels)?;
        Ok(with_batch(layer, x[0]))
    }
    fn avgpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        _k: usize,
        _s: usize,
        _p: usize,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        Ok(with_batch(layer, x[0]))
    }
    fn global_avgpool(&mut self, _idx: usize, layer: &Layer, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(with_batch(layer, x[0]))
    }
    fn flatten(&mut self, _idx: usize, layer: &Layer, x: Vec<usize>) -> Result<Vec<usize>> {
        Ok(with_batch(layer, x[0]))
    }
    fn add(
        &mut self,
        _idx: usize,
        _layer: &Layer,
        a: &Vec<usize>,
        _b: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        Ok(a.clone())
    }
    /// Both of the dealer's channels, summed (client + server).
    fn counters(&self) -> ChannelStats {
        let mut c = self.client.stats();
        if let Some(s) = &self.server {
            c.add(&s.stats());
        }
        c
    }
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
        if self.party == CLIENT {
            let a = mask.ok_or_else(|| Error::graph(&layer.name, "client mask missing"))?;
            let m: Vec<u64> = x.data.iter().zip(&a).map(|(v, r)| v.wrapping_sub(*r)).collect();
            send_ring(self.peer, &m)?;
            self.peer.flush()?;
            let mut y = RingTensor::from_vec(&shape, share)?;
            self.trunc().apply(&mut y.data, self.frac_bits);
            return Ok(y);
        }
        let m = recv_ring(self.peer, x.len())?;
        let xm = RingTensor {
            shape: x.shape.clone(),
            data: x.data.iter().zip(&m).map(|(a, b)| a.wrapping_add(*b)).collect(),
        };
        let mut y = match &layer.op {
            LayerOp::Conv2d(_) => {
                let w = self
                    .weights
                    .conv
                    .get(&idx)
                    .ok_or_else(|| Error::graph(&layer.name, "no weights"))?;
                let mut y = ops::conv_ring(&xm, &w.weight, &w.geom, &layer.name)?;
                ops::add_channel_bias(&mut y, &w.bias);
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
                ops::add_channel_bias(&mut y, &w.bias);
                y
            }
        };
        for (v, c) in y.data.iter_mut().zip(&share) {
            *v = v.wrapping_add(*c);
        }
        self.trunc().apply(&mut y.data, self.frac_bits);
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
        let mut x = if self.party == SERVER {
            RingTensor::zeros(&shape)
        } else {
            RingTensor::from_vec(&shape, std::mem::take(&mut self.input))?
        };
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
        let f = self.frac_bits;
        let t = self.trunc();
        let n = x.len();
        // This party's shares of e_g = x_g - r_g for every group, sent in one message.
        let mut xs = Vec::with_capacity(plan.groups.len());
        let mut mine = Vec::with_capacity(n * plan.groups.len());
        for (g, grp) in plan.groups.iter().enumerate() {
            let mut xg = x.data.clone();
            t.apply(&mut xg, f - grp.frac_bits);
            mine.extend(xg.iter().zip(&r_pows[g][0]).map(|(a, r)| a.wrapping_sub(*r)));
            xs.push(xg);
        }
        let mut pows = vec![Vec::new(); plan.degree + 1];
        if !plan.groups.is_empty() {
            let theirs = exchange_ring(self.peer, &mine)?;
            for (g, grp) in plan.groups.iter().enumerate() {
                let e: Vec<u64> = mine[g * n..(g + 1) * n]
                    .iter()
                    .zip(&theirs[g * n..(g + 1) * n])
                    .map(|(a, b)| a.wrapping_add(*b))
                    .collect();
                let pk = ops::powers_from_opening(&e, &r_pows[g], &grp.powers, t);
                for (mut v, &k) in pk.into_iter().zip(&grp.powers) {
                    t.apply(&mut v, k as u32 * grp.frac_bits - f);
                    pows[k] = v;
                }
            }
        }
        Ok(ops::poly_combine(x, &pows, plan, f, t))
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
