//! The dealer-mode provider of [`super::Preprocessing`] (design.md §4): the party's side,
//! [`Offline`] (expand its seed, receive the dealer's corrections, precompute everything
//! input-independent) wrapped as [`DealerStream`], and the dealer's own side, [`Dealer`] (run
//! for a session by [`super::deal_session`]), with the weight masks `B` of the session setup
//! ([`weight_masks`]). The protocols these serve are described in [`crate::engine::party`].

use super::{Material, Preprocessing};
use crate::engine::party::{numel, pool_geometry, with_batch};
use crate::engine::plain::EncodedPlan;
use crate::engine::walk::{walk, Backend, LayerTrace};
use crate::error::{Error, Result};
use crate::model::PolyProtocol;
use crate::model::{ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use crate::mpc::encode::PolyPlan;
use crate::mpc::espn;
use crate::mpc::ops;
use crate::mpc::prg::{Purpose, Seed};
use crate::mpc::relu;
use crate::mpc::{CLIENT, SERVER};
use crate::net::{recv_ring, send_ring, Channel, ChannelStats};
use crate::ring::RingTensor;

/// A party's dealer-mode preprocessing: its seed from the dealer and (client) `F = W - B`.
pub struct DealerStream<'a> {
    party: usize,
    seed: &'a Seed,
    masked_weights: &'a EncodedPlan,
}

impl<'a> DealerStream<'a> {
    /// The provider of `party` (0 = server, 1 = client) with its dealer seed and (client) the
    /// masked weights `F` it received at setup (the server passes its encoded plan; unused).
    pub fn new(party: usize, seed: &'a Seed, masked_weights: &'a EncodedPlan) -> Self {
        DealerStream { party, seed, masked_weights }
    }
}

impl Preprocessing for DealerStream<'_> {
    fn prepare(
        &mut self,
        plan: &Plan,
        inference: u64,
        batch: usize,
        link: &mut dyn Channel,
    ) -> Result<(Vec<Option<Material>>, Vec<LayerTrace>)> {
        let mut off =
            Offline::new(self.party, self.seed, inference, self.masked_weights, Some(link));
        let (_, traces) = walk(plan, &mut off, batch)?;
        Ok((std::mem::take(&mut off.material), traces))
    }
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
    crate::engine::walk::local_shape_layers!();
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
    crate::engine::walk::local_shape_layers!();
    /// Both of the dealer's channels, summed (client + server).
    fn counters(&self) -> ChannelStats {
        let mut c = self.client.stats();
        if let Some(s) = &self.server {
            c.add(&s.stats());
        }
        c
    }
}
