//! Dealer-free preprocessing between server and client alone (docs/two-party.md): the second
//! provider of [`super::Preprocessing`], producing the same [`Material`] as the dealer stream so
//! that the online phase is unchanged.
//!
//! Session setup: the client draws an RLWE secret key and sends its public key
//! ([`TwoPartyClient::setup`], [`TwoPartyServer::setup`]). Per inference, layer by layer:
//!
//! - **Input**: the server draws `R0` from its own seed and sends `-R0` (the client's share of
//!   zero, as the dealer would; the client knows its own input, so learning the server's input
//!   share reveals nothing).
//! - **Conv / linear** (Delphi's offline phase with Cheetah's packing): the client expands its
//!   mask `A` from its seed and sends `Enc(A)` packed by [`super::hom`]; the server computes
//!   `Enc(A*W - c0)` homomorphically for its fresh share `c0` (from its seed), re-randomises,
//!   floods the noise and switches the modulus ([`super::he`]); the client decrypts its share
//!   `A*W - c0`. This is the correlation of the dealer's linear layers with `F = 0`: the online
//!   server still computes `(X - A)*W + c0 + bias` and the client's share is `A*W - c0`.
//! - **Polynomial (dealer powers)**: per power group the server draws `r0`, the client `r1`
//!   (each from its own seed; `r = r0 + r1` is known to neither), and the shares of
//!   `r^k = r0^k + r1^k + sum_i C(k,i) r0^i r1^(k-i)` come from one batched oblivious linear
//!   evaluation ([`super::ole`]): the client sends `Enc(r1^j)`, `j < m`, the server answers the
//!   cross terms masked with its statistical masks. One exchange per polynomial layer.
//! - **ESPN share powers, ReLU, max-pool**: no generator yet (triples for private inputs, FSS
//!   key generation); a plan with them is refused before anything is sent
//!   ([`check_two_party_supported`]).

use super::he::{self, HeParams, PlainModulus, PublicKey, SecretKey};
use super::hom::Packing;
use super::ole::Ole;
use super::{Material, Preprocessing};
use crate::engine::party::{numel, with_batch};
use crate::engine::plain::EncodedPlan;
use crate::engine::walk::{walk, Backend, LayerTrace};
use crate::error::{Error, Result};
use crate::model::PolyProtocol;
use crate::model::{ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use crate::mpc::encode::PolyPlan;
use crate::mpc::prg::{Purpose, Seed};
use crate::net::{recv_ring, send_ring, Channel, ChannelStats};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use std::collections::HashMap;

/// Checks that every layer of `plan` has a two-party generator and fits the HE parameters.
/// Errors: `Graph` naming the first ReLU or max-pool layer, or polynomial layer under the ESPN
/// share-powers protocol ("dealer-only"), a conv whose padded plane does not fit one polynomial,
/// or a layer whose fan-in is too large.
pub fn check_two_party_supported(plan: &Plan) -> Result<()> {
    check_with(plan, &HeParams::new()?, &Ole::new()?)
}

/// [`check_two_party_supported`] with parameters the caller already built.
fn check_with(plan: &Plan, params: &HeParams, ole: &Ole) -> Result<()> {
    for l in &plan.layers {
        let refuse = |what: &str| {
            Err(Error::graph(
                &l.name,
                format!(
                    "{what} layers have no two-party preprocessing yet (their correlated \
                     randomness needs the dealer); run with --preprocessing dealer"
                ),
            ))
        };
        match &l.op {
            LayerOp::Poly(p) if plan.poly_protocol == PolyProtocol::SharePowers => {
                let _ = p;
                return refuse("polynomial (ESPN share-powers protocol)");
            }
            LayerOp::Poly(p) => {
                // The largest output sums degree - 1 cross terms.
                let terms = p.degree.saturating_sub(1).max(1);
                ole.mask_bits(terms).map_err(|e| Error::graph(&l.name, e.to_string()))?;
                for t in ole.moduli() {
                    he::flood_bits(params, t, he::DEGREE * terms)
                        .map_err(|e| Error::graph(&l.name, e.to_string()))?;
                }
            }
            LayerOp::Relu => return refuse("ReLU"),
            LayerOp::MaxPool2d { .. } => return refuse("max-pool"),
            LayerOp::Conv2d(c) => {
                let p = Packing::conv(c.geom, &l.name)?;
                he::flood_bits(params, PlainModulus::Pow64, p.noise_fan_in())
                    .map_err(|e| Error::graph(&l.name, e.to_string()))?;
            }
            LayerOp::Linear(c) => {
                let p = Packing::fc(c.in_features, c.out_features);
                he::flood_bits(params, PlainModulus::Pow64, p.noise_fan_in())
                    .map_err(|e| Error::graph(&l.name, e.to_string()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Wire bytes of the two-party preprocessing of one inference of `batch` samples, per layer in
/// plan order (`(layer name, bytes)`, both directions together, payload without framing),
/// computed from the packings without running anything: the input's zero share (`8` bytes per
/// element), per conv / linear layer the client's ciphertexts and the server's responses
/// ([`Packing`], [`HeParams`]), and the one batched OLE of all polynomial layers ([`Ole`]),
/// reported on the first polynomial layer as the measured reports do. Session setup (the
/// public keys, [`setup_bytes`]) is not included.
/// Errors: those of [`check_two_party_supported`], [`EncodedPlan::new`] and
/// [`crate::cost::count`].
pub fn preprocessing_bytes(plan: &Plan, batch: usize) -> Result<Vec<(String, u64)>> {
    let params = HeParams::new()?;
    let ole = Ole::new()?;
    check_with(plan, &params, &ole)?;
    let enc = EncodedPlan::new(plan)?;
    let costs = crate::cost::count(plan, batch)?;
    let mut out: Vec<(String, u64)> = Vec::with_capacity(plan.layers.len());
    let (mut slots, mut big_m, mut first_poly) = (0usize, 1usize, None);
    for (idx, (layer, cost)) in plan.layers.iter().zip(&costs).enumerate() {
        let bytes = match &layer.op {
            LayerOp::Input => 8 * cost.out_elements,
            LayerOp::Conv2d(_) | LayerOp::Linear(_) => {
                let p = packing(layer)?;
                let up = p.inputs() * params.fresh_ct_bytes();
                let down: usize =
                    (0..p.outputs()).map(|o| params.response_bytes(p.useful(o).len())).sum();
                (batch * (up + down)) as u64
            }
            LayerOp::Poly(_) => {
                first_poly.get_or_insert(idx);
                if let Some(pp) = enc.poly.get(&idx) {
                    for g in pp.groups.iter().filter(|g| g.max_power() >= 2) {
                        slots += cost.in_elements as usize;
                        big_m = big_m.max(g.max_power());
                    }
                }
                0
            }
            _ => 0,
        };
        out.push((layer.name.clone(), bytes));
    }
    if let Some(i) = first_poly {
        if slots > 0 {
            let v = big_m - 1;
            out[i].1 += (ole.upload_bytes(&params, v, slots)
                + ole.response_bytes(&params, v, slots)) as u64;
        }
    }
    Ok(out)
}

/// Wire bytes of the two-party session setup: the client's public key, plus one per OLE
/// prime when the plan has polynomial layers. Errors: `InvalidArgument` if the HE parameters
/// cannot be built.
pub fn setup_bytes(plan: &Plan) -> Result<u64> {
    let params = HeParams::new()?;
    let polys = plan.layers.iter().any(|l| matches!(l.op, LayerOp::Poly(_)));
    let keys = 1 + if polys { super::ole::OLE_PRIMES } else { 0 };
    Ok((keys * params.fresh_ct_bytes()) as u64)
}

fn packing(layer: &Layer) -> Result<Packing> {
    match &layer.op {
        LayerOp::Conv2d(c) => Packing::conv(c.geom, &layer.name),
        LayerOp::Linear(l) => Ok(Packing::fc(l.in_features, l.out_features)),
        _ => Err(Error::graph(&layer.name, "not a linear layer")),
    }
}

/// The server's side of the two-party preprocessing: the client's public key, its own seed and
/// the encoded weights.
pub struct TwoPartyServer<'a> {
    params: HeParams,
    pk: PublicKey,
    /// Public keys for the OLE plaintext primes (plans with polynomial layers).
    ole_pks: Vec<PublicKey>,
    ole: Ole,
    seed: Seed,
    weights: &'a EncodedPlan,
    rng: ChaCha20Rng,
}

impl<'a> TwoPartyServer<'a> {
    /// Receives the client's public key on `link` (session setup). `seed` is the server's own
    /// seed (fresh from the OS per session), `weights` its encoded plan.
    /// Errors: peer errors; `Protocol` for a malformed key; `Io` if the OS generator fails.
    /// Plans with polynomial layers also receive one public key per OLE prime.
    pub fn setup(seed: Seed, weights: &'a EncodedPlan, link: &mut dyn Channel) -> Result<Self> {
        let params = HeParams::new()?;
        let ole = Ole::new()?;
        let msg = link.recv_expect(params.fresh_ct_bytes())?;
        let pk = he::parse_public_key(&params, &msg)?;
        let mut ole_pks = Vec::new();
        if !weights.poly.is_empty() {
            let msg = link.recv_expect(ole.moduli().len() * params.fresh_ct_bytes())?;
            for m in msg.chunks(params.fresh_ct_bytes()) {
                ole_pks.push(he::parse_public_key(&params, m)?);
            }
        }
        Ok(TwoPartyServer { params, pk, ole_pks, ole, seed, weights, rng: he::he_rng()? })
    }
}

/// The client's side of the two-party preprocessing: its RLWE secret key and its own seed.
pub struct TwoPartyClient {
    params: HeParams,
    sk: SecretKey,
    ole: Ole,
    /// The polynomial layers' power groups (from the skeleton).
    polys: HashMap<usize, PolyPlan>,
    seed: Seed,
    rng: ChaCha20Rng,
}

impl TwoPartyClient {
    /// Draws a fresh RLWE key pair and sends the public key on `link` (session setup), plus one
    /// per OLE prime when `skeleton` has polynomial layers. `seed` is the client's own seed
    /// (fresh from the OS per session).
    /// Errors: peer errors; `Io` if the OS generator fails; `RangeExceeded` for polynomial
    /// coefficients that do not fit the ring.
    pub fn setup(seed: Seed, skeleton: &Plan, link: &mut dyn Channel) -> Result<Self> {
        let params = HeParams::new()?;
        let ole = Ole::new()?;
        let polys = EncodedPlan::new(skeleton)?.poly;
        let mut rng = he::he_rng()?;
        let sk = SecretKey::generate(&params, &mut rng)?;
        let pk = sk.public_key(&params, PlainModulus::Pow64, &mut rng)?;
        link.send(&he::public_key_bytes(&params, &pk))?;
        if !polys.is_empty() {
            let mut msg = Vec::new();
            for t in ole.moduli() {
                msg.extend(he::public_key_bytes(&params, &sk.public_key(&params, t, &mut rng)?));
            }
            link.send(&msg)?;
        }
        link.flush()?;
        Ok(TwoPartyClient { params, sk, ole, polys, seed, rng })
    }
}

enum Role<'p, 'a> {
    Server(&'p mut TwoPartyServer<'a>),
    Client(&'p mut TwoPartyClient),
}

/// The walk backend of one inference's two-party preprocessing (both roles).
struct TwoPartyWalk<'p, 'a, 'l> {
    role: Role<'p, 'a>,
    inference: u64,
    link: &'l mut dyn Channel,
    material: Vec<Option<Material>>,
    /// Polynomial layers waiting for the batched OLE: (layer, this party's powers per group).
    pending: Vec<(usize, Vec<Vec<Vec<u64>>>)>,
}

fn refuse(layer: &Layer) -> Error {
    Error::graph(&layer.name, "this layer has no two-party preprocessing; run with the dealer")
}

impl TwoPartyWalk<'_, '_, '_> {
    fn put(&mut self, idx: usize, m: Material) {
        if self.material.len() <= idx {
            self.material.resize(idx + 1, None);
        }
        self.material[idx] = Some(m);
    }

    fn linear_material(&mut self, idx: usize, layer: &Layer, x: &[usize]) -> Result<()> {
        let p = packing(layer)?;
        let batch = x[0];
        if numel(x) != batch * p.in_len() {
            return Err(Error::graph(&layer.name, "input shape differs from the packing"));
        }
        let inference = self.inference;
        match &mut self.role {
            Role::Client(c) => {
                let a = c.seed.ring(inference, idx, Purpose::InputMask, numel(x));
                let jobs: Vec<(usize, usize)> =
                    (0..batch).flat_map(|n| (0..p.inputs()).map(move |j| (n, j))).collect();
                let seeds = he::task_seeds(&mut c.rng, jobs.len());
                let (params, sk) = (&c.params, &c.sk);
                let cts: Vec<Vec<u8>> = jobs
                    .par_iter()
                    .zip(&seeds)
                    .map(|(&(n, j), s)| {
                        let m = p.input_poly(&a[n * p.in_len()..(n + 1) * p.in_len()], j);
                        sk.encrypt(params, PlainModulus::Pow64, &m, &mut ChaCha20Rng::from_seed(*s))
                    })
                    .collect::<Result<_>>()?;
                self.link.send(&cts.concat())?;
                self.link.flush()?;
                let useful: Vec<Vec<(u32, usize)>> =
                    (0..p.outputs()).map(|o| p.useful(o)).collect();
                let sizes: Vec<usize> =
                    useful.iter().map(|u| params.response_bytes(u.len())).collect();
                let total: usize = sizes.iter().sum::<usize>() * batch;
                let msg = self.link.recv_expect(total)?;
                let mut share = vec![0u64; batch * p.out_len()];
                let mut offs = Vec::with_capacity(batch * useful.len());
                let mut off = 0;
                for _ in 0..batch {
                    for s in &sizes {
                        offs.push(off);
                        off += s;
                    }
                }
                let outs: Vec<Vec<u64>> = (0..batch * useful.len())
                    .into_par_iter()
                    .map(|k| {
                        let o = k % useful.len();
                        let pos: Vec<u32> = useful[o].iter().map(|u| u.0).collect();
                        sk.decrypt_response(
                            params,
                            PlainModulus::Pow64,
                            &msg[offs[k]..offs[k] + sizes[o]],
                            &pos,
                        )
                    })
                    .collect::<Result<_>>()?;
                for (k, vals) in outs.into_iter().enumerate() {
                    let (n, o) = (k / useful.len(), k % useful.len());
                    for (v, &(_, e)) in vals.into_iter().zip(&useful[o]) {
                        share[n * p.out_len() + e] = v;
                    }
                }
                self.put(idx, Material::Linear { mask: Some(a), share });
            }
            Role::Server(s) => {
                let ct_bytes = s.params.fresh_ct_bytes();
                let msg = self.link.recv_expect(batch * p.inputs() * ct_bytes)?;
                let params = &s.params;
                let cts: Vec<he::Ciphertext> = msg
                    .par_chunks(ct_bytes)
                    .map(|m| he::parse_ciphertext(params, m))
                    .collect::<Result<_>>()?;
                let c0 = s.seed.ring(inference, idx, Purpose::ProductShare, batch * p.out_len());
                let flood = he::flood_bits(params, PlainModulus::Pow64, p.noise_fan_in())
                    .map_err(|e| Error::graph(&layer.name, e.to_string()))?;
                let weight: &[Vec<u64>] = match &layer.op {
                    LayerOp::Conv2d(_) => {
                        &s.weights
                            .conv
                            .get(&idx)
                            .ok_or_else(|| Error::graph(&layer.name, "no weights"))?
                            .weight
                    }
                    _ => std::slice::from_ref(
                        &s.weights
                            .linear
                            .get(&idx)
                            .ok_or_else(|| Error::graph(&layer.name, "no weights"))?
                            .weight_t,
                    ),
                };
                let seeds = he::task_seeds(&mut s.rng, p.outputs());
                let pk = &s.pk;
                let inputs = p.inputs();
                // Per response o: the kernels once, then every sample.
                let per_o: Vec<Vec<Vec<u8>>> = (0..p.outputs())
                    .into_par_iter()
                    .map(|o| {
                        let mut rng = ChaCha20Rng::from_seed(seeds[o]);
                        let kernels: Vec<(usize, fhe_math::rq::Poly)> = p
                            .terms(o)
                            .map(|j| {
                                Ok((
                                    j,
                                    he::plaintext_ntt(
                                        params,
                                        PlainModulus::Pow64,
                                        &p.kernel(weight, o, j),
                                    )?,
                                ))
                            })
                            .collect::<Result<_>>()?;
                        let useful = p.useful(o);
                        let pos: Vec<u32> = useful.iter().map(|u| u.0).collect();
                        (0..batch)
                            .map(|n| {
                                let mut acc = he::Accumulator::new(params);
                                for (j, k) in &kernels {
                                    acc.add_product(&cts[n * inputs + j], k);
                                }
                                let minus_c0: Vec<i64> = useful
                                    .iter()
                                    .map(|u| c0[n * p.out_len() + u.1].wrapping_neg() as i64)
                                    .collect();
                                acc.finish(
                                    params,
                                    PlainModulus::Pow64,
                                    pk,
                                    &pos,
                                    &minus_c0,
                                    flood,
                                    &mut rng,
                                )
                            })
                            .collect()
                    })
                    .collect::<Result<_>>()?;
                let mut out = Vec::new();
                for n in 0..batch {
                    for resp in &per_o {
                        out.extend_from_slice(&resp[n]);
                    }
                }
                self.link.send(&out)?;
                self.link.flush()?;
                self.put(idx, Material::Linear { mask: None, share: c0 });
            }
        }
        Ok(())
    }
}

/// Picks a segment's slots from one party's powers of `r` (`None`: zeros).
type Pick<'a> = &'a dyn Fn(&[Vec<u64>]) -> Option<Vec<u64>>;

/// `C(k, i) mod 2^64` (k <= 64).
fn binomial(k: usize, i: usize) -> u64 {
    let mut c = 1u128;
    for j in 0..i {
        c = c * (k - j) as u128 / (j + 1) as u128;
    }
    c as u64
}

/// `x^1..x^m` elementwise (mod 2^64).
fn powers(x: &[u64], m: usize) -> Vec<Vec<u64>> {
    let mut out = vec![x.to_vec()];
    for _ in 2..=m {
        let p: Vec<u64> =
            out.last().unwrap().iter().zip(x).map(|(a, b)| a.wrapping_mul(*b)).collect();
        out.push(p);
    }
    out
}

impl TwoPartyWalk<'_, '_, '_> {
    /// Dealer-powers material of a polynomial layer of `n` elements (see the module docs): this
    /// party's `r` and its powers; the cross terms come from [`Self::finish_polys`] after the
    /// walk.
    fn poly_material(&mut self, idx: usize, layer: &Layer, n: usize) -> Result<()> {
        let inference = self.inference;
        let plan = match &self.role {
            Role::Server(s) => s.weights.poly.get(&idx),
            Role::Client(c) => c.polys.get(&idx),
        }
        .ok_or_else(|| Error::graph(&layer.name, "no polynomial plan"))?
        .clone();
        if plan.protocol == PolyProtocol::SharePowers {
            return Err(refuse(layer));
        }
        let seed = match &self.role {
            Role::Server(s) => &s.seed,
            Role::Client(c) => &c.seed,
        };
        // This party's r and its powers, per group.
        let own: Vec<Vec<Vec<u64>>> = plan
            .groups
            .iter()
            .enumerate()
            .map(|(g, grp)| {
                powers(&seed.ring(inference, idx, Purpose::PolyMask(g as u8), n), grp.max_power())
            })
            .collect();
        self.pending.push((idx, own));
        Ok(())
    }

    /// One batched OLE for the cross terms of every polynomial layer of the inference (they are
    /// independent of each other and of the input): every (layer, group) is a segment of `n`
    /// slots in each of the `M - 1` client vectors `r1^j` (`M` the largest power); output `k`
    /// sums `C(k,i) r0^i r1^(k-i)` over `i`, zero where a segment's largest power is below `k`.
    /// Packing all layers together fills the ciphertexts' slots (small layers would otherwise
    /// each pay for whole ciphertexts). Then the material of each pending layer is stored.
    fn finish_polys(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        // Segments: (pending index, group, offset); M = the largest power.
        let mut segs = Vec::new();
        let (mut total, mut big_m) = (0usize, 1usize);
        for (p, (_, own)) in pending.iter().enumerate() {
            for (g, pows) in own.iter().enumerate() {
                if pows.len() >= 2 {
                    segs.push((p, g, total));
                    total += pows[0].len();
                    big_m = big_m.max(pows.len());
                }
            }
        }
        let vectors = big_m - 1;
        let mut cross: Vec<Vec<u64>> = Vec::new();
        if vectors > 0 && total > 0 {
            // Segment s's slots of vector v: `f(pows)` or zeros.
            let gather = |f: Pick<'_>| -> Vec<u64> {
                let mut v = vec![0u64; total];
                for &(p, g, off) in &segs {
                    let pows = &pending[p].1[g];
                    if let Some(x) = f(pows) {
                        v[off..off + x.len()].copy_from_slice(&x);
                    }
                }
                v
            };
            match &mut self.role {
                Role::Client(c) => {
                    let vecs: Vec<Vec<u64>> = (1..=vectors)
                        .map(|j| gather(&|pows| (j < pows.len()).then(|| pows[j - 1].clone())))
                        .collect();
                    let up = c.ole.client_upload(&c.params, &c.sk, &vecs, &mut c.rng)?;
                    self.link.send(&up)?;
                    self.link.flush()?;
                    let resp =
                        self.link.recv_expect(c.ole.response_bytes(&c.params, vectors, total))?;
                    cross = c.ole.client_finish(&c.params, &c.sk, &resp, vectors, total)?;
                }
                Role::Server(s) => {
                    if s.ole_pks.is_empty() {
                        return Err(Error::Protocol("no OLE public keys at setup".into()));
                    }
                    let up =
                        self.link.recv_expect(s.ole.upload_bytes(&s.params, vectors, total))?;
                    let terms: Vec<Vec<(usize, Vec<u64>)>> = (2..=big_m)
                        .map(|k| {
                            (1..k)
                                .map(|i| {
                                    let c = binomial(k, i);
                                    let v = gather(&|pows| {
                                        (k <= pows.len()).then(|| {
                                            pows[i - 1].iter().map(|x| x.wrapping_mul(c)).collect()
                                        })
                                    });
                                    (k - i - 1, v)
                                })
                                .collect()
                        })
                        .collect();
                    let (resp, shares) = s.ole.server_respond(
                        &s.params, &s.ole_pks, &up, vectors, total, &terms, &mut s.rng,
                    )?;
                    self.link.send(&resp)?;
                    self.link.flush()?;
                    cross = shares;
                }
            }
        }
        let mut layers: Vec<(usize, Vec<Vec<Vec<u64>>>)> = pending;
        for &(p, g, off) in &segs {
            let pows = &mut layers[p].1[g];
            for (k, pk) in pows.iter_mut().enumerate().skip(1) {
                // pk is power k + 1, output index (k + 1) - 2.
                for (a, b) in pk.iter_mut().zip(&cross[k - 1][off..]) {
                    *a = a.wrapping_add(*b);
                }
            }
        }
        for (idx, r_pows) in layers {
            self.put(idx, Material::Poly { r_pows });
        }
        Ok(())
    }
}

impl Backend for TwoPartyWalk<'_, '_, '_> {
    type Value = Vec<usize>;
    fn input(&mut self, idx: usize, layer: &Layer, batch: usize) -> Result<Vec<usize>> {
        let shape = with_batch(layer, batch);
        let n = numel(&shape);
        let zero_share = match &self.role {
            Role::Server(s) => {
                let r0 = s.seed.ring(self.inference, idx, Purpose::InputMask, n);
                let neg: Vec<u64> = r0.iter().map(|v| v.wrapping_neg()).collect();
                send_ring(self.link, &neg)?;
                self.link.flush()?;
                r0
            }
            Role::Client(_) => recv_ring(self.link, n)?,
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
        self.linear_material(idx, layer, x)?;
        Ok(with_batch(layer, x[0]))
    }
    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        _l: &LinearLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        self.linear_material(idx, layer, x)?;
        Ok(with_batch(layer, x[0]))
    }
    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        _p: &PolyLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        self.poly_material(idx, layer, numel(x))?;
        Ok(x.clone())
    }
    fn relu(&mut self, _idx: usize, layer: &Layer, _x: &Vec<usize>) -> Result<Vec<usize>> {
        Err(refuse(layer))
    }
    fn maxpool(
        &mut self,
        _idx: usize,
        layer: &Layer,
        _k: usize,
        _s: usize,
        _p: usize,
        _x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        Err(refuse(layer))
    }
    crate::engine::walk::local_shape_layers!();
    fn counters(&self) -> ChannelStats {
        self.link.stats()
    }
}

fn run(
    role: Role<'_, '_>,
    plan: &Plan,
    inference: u64,
    batch: usize,
    link: &mut dyn Channel,
) -> Result<(Vec<Option<Material>>, Vec<LayerTrace>)> {
    let mut w = TwoPartyWalk { role, inference, link, material: Vec::new(), pending: Vec::new() };
    let (_, mut traces) = walk(plan, &mut w, batch)?;
    // The batched OLE of all polynomial layers, reported on the first of them.
    let first = w.pending.first().map(|p| p.0);
    let (before, t0) = (w.link.stats(), std::time::Instant::now());
    w.finish_polys()?;
    if let Some(t) = first.and_then(|i| traces.get_mut(i)) {
        t.ms += t0.elapsed().as_secs_f64() * 1e3;
        t.stats.add(&w.link.stats().since(&before));
    }
    Ok((w.material, traces))
}

impl Preprocessing for TwoPartyServer<'_> {
    fn prepare(
        &mut self,
        plan: &Plan,
        inference: u64,
        batch: usize,
        link: &mut dyn Channel,
    ) -> Result<(Vec<Option<Material>>, Vec<LayerTrace>)> {
        run(Role::Server(self), plan, inference, batch, link)
    }
}

impl Preprocessing for TwoPartyClient {
    fn prepare(
        &mut self,
        plan: &Plan,
        inference: u64,
        batch: usize,
        link: &mut dyn Channel,
    ) -> Result<(Vec<Option<Material>>, Vec<LayerTrace>)> {
        run(Role::Client(self), plan, inference, batch, link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile::compile;
    use crate::model::zoo::{build, Act, Pool, RefNet};
    use crate::mpc::ops;
    use crate::net::mem_pair;
    use crate::ring::RingTensor;

    fn sum(a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
    }

    /// The two-party generator's material satisfies what the dealer's does, exactly: input
    /// shares of zero, linear shares summing to `A*W` for the client's mask `A`, polynomial
    /// shares summing to `r^k` for `r` the sum of the two `r` shares (NET-M PILLAR: degree 4,
    /// two power groups, and a batch of 2).
    #[test]
    fn material_satisfies_the_dealer_relations() {
        let plan = compile(&build(RefNet::NetM, Act::Pillar, Pool::Avg, 1.0, 3).unwrap()).unwrap();
        let enc = EncodedPlan::new(&plan).unwrap();
        let skeleton = plan.public_skeleton();
        let batch = 2;
        let (mut sc, mut cs) = mem_pair();
        let (srv, cli) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut p = TwoPartyServer::setup(Seed::from_os()?, &enc, &mut sc)?;
                p.prepare(&plan, 1, batch, &mut sc)
            });
            let mut c =
                TwoPartyClient::setup(Seed::from_os().unwrap(), &skeleton, &mut cs).unwrap();
            let cli = c.prepare(&skeleton, 1, batch, &mut cs).unwrap();
            (h.join().unwrap().unwrap(), cli)
        });
        let (mut linear, mut poly) = (0, 0);
        for (idx, layer) in plan.layers.iter().enumerate() {
            match (&srv.0[idx], &cli.0[idx]) {
                (
                    Some(Material::Input { zero_share: a }),
                    Some(Material::Input { zero_share: b }),
                ) => {
                    assert!(sum(a, b).iter().all(|&v| v == 0));
                }
                (
                    Some(Material::Linear { mask: None, share: s0 }),
                    Some(Material::Linear { mask: Some(a), share: s1 }),
                ) => {
                    let want = match &layer.op {
                        LayerOp::Conv2d(c) => {
                            let x = RingTensor {
                                shape: vec![batch, c.geom.c_in, c.geom.h, c.geom.w],
                                data: a.clone(),
                            };
                            ops::conv_ring(&x, &enc.conv[&idx].weight, &c.geom, "t").unwrap()
                        }
                        LayerOp::Linear(l) => {
                            let x =
                                RingTensor { shape: vec![batch, l.in_features], data: a.clone() };
                            let w = &enc.linear[&idx].weight_t;
                            ops::linear_ring(&x, w, l.in_features, l.out_features, "t").unwrap()
                        }
                        _ => unreachable!(),
                    };
                    assert_eq!(sum(s0, s1), want.data, "layer {}", layer.name);
                    linear += 1;
                }
                (Some(Material::Poly { r_pows: p0 }), Some(Material::Poly { r_pows: p1 })) => {
                    assert_eq!(p0.len(), p1.len());
                    for (g0, g1) in p0.iter().zip(p1) {
                        let r = sum(&g0[0], &g1[0]);
                        let mut rk = r.clone();
                        for k in 1..g0.len() {
                            rk = rk.iter().zip(&r).map(|(a, b)| a.wrapping_mul(*b)).collect();
                            assert_eq!(sum(&g0[k], &g1[k]), rk, "{} power {}", layer.name, k + 1);
                        }
                    }
                    poly += 1;
                }
                (None, None) => {}
                _ => panic!("layer {}: mismatched material", layer.name),
            }
        }
        assert!(linear >= 3 && poly >= 2, "{linear} linear, {poly} polynomial layers checked");
    }

    #[test]
    fn binomials() {
        assert_eq!((0..=4).map(|i| binomial(4, i)).collect::<Vec<_>>(), vec![1, 4, 6, 4, 1]);
        assert_eq!(binomial(8, 3), 56);
    }
}
