//! The cost-counting backend of the one walk (design.md §3): [`CostCounter`] visits a plan like
//! the secure backends do, with `Value = Vec<usize>` (shapes, batch first), and records for every
//! layer exactly what the engine's protocols ([`crate::engine::party`],
//! [`crate::engine::session`]) send, expand and compute — without running them.
//!
//! Per layer (n = elements of the layer's input, batch included; |X|, |Y| input/output elements):
//!
//! | layer | client -> server | server -> client | dealer -> client | rounds |
//! |---|---|---|---|---|
//! | Input | 0 | 0 | 8n (zero-sharing `-R0`) | 0 |
//! | Conv2d / Linear | 8\|X\| (`X1 - A`) | 0 | 8\|Y\| (`c1`) | 1 |
//! | Poly, dealer powers, G power groups | 8nG | 8nG (one exchange) | 8n·Σ_g (m_g - 1) | 1 if G > 0 |
//! | Poly, ESPN share powers | 8n·Σ_g (m_g - 1) | 8n·Σ_g (m_g - 1) (one exchange) | 8n·Σ_g Σ_{k∈P_g} (k - 1) | 1 if G > 0 |
//! | AvgPool / GAP / Add / Flatten | 0 | 0 | 0 | 0 |
//! | output reveal | 0 | 8\|logits\| | 0 | 1 |
//!
//! G, the powers P_g and m_g = max P_g come from [`crate::mpc::encode::encode_poly`] (powers
//! sharing a pre-truncation scale share one mask; powers with zero coefficients are skipped); the
//! protocol is the plan's [`PolyProtocol`] ([`crate::mpc::espn`] for share powers). Not in any layer row, as in the engine's reports: per inference the client
//! sends the batch size (8 bytes) to the server and to the dealer and an empty "online-start"
//! message to the server; per session the seeds (32 bytes from the dealer to each party), the
//! plan skeleton (JSON, server -> client and server -> dealer) and `F = W - B` (8 bytes per
//! weight, server -> client). See [`SessionCost`].
//!
//! ReLU and MaxPool ([`crate::mpc::relu`], FSS comparison): per comparison level of `m`
//! elements (ReLU: one level of n; max-pool: one per tree level, [`relu::pool_sizes`]) 8m +
//! 8*ceil(m/64) bytes each way in two exchanges (2 rounds), and from the dealer
//! 8*[`relu::client_words`]`(m)` bytes to the client and 8*[`relu::server_words`]`(m)` to the
//! server (DCF keys on the comparison ring `Z_2^`[`relu::RING_BITS`], 480 bytes per comparison
//! each, see [`LayerCost::dealer_bytes`]).

use crate::engine::walk::{walk, Backend};
use crate::error::{Error, Result};
use crate::model::{ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer, PolyProtocol};
use crate::mpc::encode::{encode_poly, PolyPlan};
use crate::mpc::espn::cross_pairs;
use crate::mpc::relu;
use crate::ring::gemm::PAR_THRESHOLD_MACS;
use serde::{Deserialize, Serialize};

/// Who does a piece of online work or sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    /// Party 0, the model owner.
    Server,
    /// Party 1, the input owner.
    Client,
}

/// Local work of one party, in the units the profiles price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Multiply-accumulates of u64 GEMM calls large enough to run on all cores
    /// (`m*k*n > 2^22`, [`PAR_THRESHOLD_MACS`]).
    pub gemm_macs_parallel: u64,
    /// Multiply-accumulates of GEMM calls that run on one thread.
    pub gemm_macs_single: u64,
    /// Elementwise ring operations (one pass of one element: add, shift, copy, one term of a
    /// binomial sum).
    pub elementwise: u64,
    /// Bytes expanded from a ChaCha20 seed.
    pub prg_bytes: u64,
    /// `binomial[k]`: elements whose k-th power is rebuilt from an opening
    /// (`x^k = sum_i C(k,i) e^(k-i) r^i`, [`crate::mpc::ops::powers_from_opening`]), k <= 8.
    pub binomial: [u64; 9],
    /// Coefficient terms of the final per-channel polynomial sums (elements x (degree + 1),
    /// [`crate::mpc::ops::poly_combine`]).
    pub combine_terms: u64,
    /// DCF evaluations on `RING_BITS - 1 = 35`-bit inputs ([`crate::mpc::fss::eval`], one per
    /// compared element; [`crate::mpc::relu::RING_BITS`]).
    pub dcf_evals: u64,
    /// DCF key generations on 35-bit inputs ([`crate::mpc::fss::gen`], dealer, one per
    /// comparison; both parties' keys).
    pub dcf_gens: u64,
    /// 64-bit ring products of a polynomial layer (the work of an FPGA's polynomial engine,
    /// [`super::fpga`]): per element, dealer powers: the public powers `e^2..e^m` (m - 1 per
    /// group), the cross terms `e^(k-i) r^i` (k - 1 per power k) and one coefficient product per
    /// degree; ESPN share powers: the own powers (m - 1 per group), one product per cross pair
    /// and one per degree. Also counted (as single passes) in `elementwise`; the CPU profile does
    /// not price this field separately.
    #[serde(default)]
    pub ring_products: u64,
}

impl Work {
    fn add(&mut self, o: &Work) {
        self.gemm_macs_parallel += o.gemm_macs_parallel;
        self.gemm_macs_single += o.gemm_macs_single;
        self.elementwise += o.elementwise;
        self.prg_bytes += o.prg_bytes;
        for (a, b) in self.binomial.iter_mut().zip(&o.binomial) {
            *a += b;
        }
        self.combine_terms += o.combine_terms;
        self.dcf_evals += o.dcf_evals;
        self.dcf_gens += o.dcf_gens;
        self.ring_products += o.ring_products;
    }
    fn elem(n: usize) -> Work {
        Work { elementwise: n as u64, ..Default::default() }
    }
    /// Total multiply-accumulates.
    pub fn macs(&self) -> u64 {
        self.gemm_macs_parallel + self.gemm_macs_single
    }
}

/// One step of a layer's online schedule, in protocol order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// Local work of one party.
    Compute {
        /// Who computes.
        party: Party,
        /// What.
        work: Work,
    },
    /// A one-way message of `bytes` payload bytes from `from` to the other party.
    Send {
        /// Sender.
        from: Party,
        /// Payload bytes.
        bytes: u64,
    },
    /// A simultaneous exchange: each party sends `bytes` payload bytes, then receives the other's.
    Exchange {
        /// Payload bytes each way.
        bytes: u64,
    },
}

/// What one layer costs for one inference of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    /// Layer name (from the graph; "output" for the reveal).
    pub name: String,
    /// Op kind as in the engine's reports ("Conv2d", "Poly", ..., "Reveal").
    pub kind: String,
    /// Per-sample output shape.
    pub out_shape: Vec<usize>,
    /// Elements of the layer's (first) input, batch included.
    pub in_elements: u64,
    /// Elements of the output, batch included.
    pub out_elements: u64,
    /// Online multiply-accumulates (server GEMMs; equals the engine's `LayerReport::macs`).
    pub macs: u64,
    /// Online payload bytes client -> server.
    pub bytes_client_to_server: u64,
    /// Online payload bytes server -> client.
    pub bytes_server_to_client: u64,
    /// Offline payload bytes dealer -> client.
    pub bytes_dealer_to_client: u64,
    /// Offline payload bytes dealer -> server (DCF correction words of ReLU / MaxPool).
    pub bytes_dealer_to_server: u64,
    /// Online messages client -> server.
    pub messages_client_to_server: u64,
    /// Online messages server -> client.
    pub messages_server_to_client: u64,
    /// Offline messages dealer -> client.
    pub messages_dealer_to_client: u64,
    /// Offline messages dealer -> server.
    pub messages_dealer_to_server: u64,
    /// Online rounds, as the engine's reports count them.
    pub rounds: u64,
    /// Bytes the server expands from its seed for this layer (offline).
    pub prg_bytes_server: u64,
    /// Bytes the client expands from its seed (offline).
    pub prg_bytes_client: u64,
    /// Bytes the dealer expands from both seeds (offline).
    pub prg_bytes_dealer: u64,
    /// Elements that go through a non-linear activation protocol (Poly; ReLU when modelled).
    pub activation_elements: u64,
    /// Weights of a conv or linear layer (0 otherwise).
    pub weights: u64,
    /// Online schedule (input to the timing models; not serialised).
    #[serde(skip)]
    pub online: Vec<Step>,
    /// Offline work of the server (not serialised).
    #[serde(skip)]
    pub offline_server: Work,
    /// Offline work of the client: mask expansion, `A*F` (not serialised).
    #[serde(skip)]
    pub offline_client: Work,
    /// Offline work of the dealer: `A*B`, powers of `r` (not serialised).
    #[serde(skip)]
    pub offline_dealer: Work,
}

impl LayerCost {
    fn new(layer: &Layer, in_elements: usize, out_elements: usize) -> Self {
        LayerCost {
            name: layer.name.clone(),
            kind: layer.op.kind().to_string(),
            out_shape: layer.out_shape.clone(),
            in_elements: in_elements as u64,
            out_elements: out_elements as u64,
            ..Default::default()
        }
    }
    fn compute(&mut self, party: Party, work: Work) {
        if work != Work::default() {
            self.online.push(Step::Compute { party, work });
        }
    }
    /// Online schedule of a layer with one simultaneous exchange: both parties compute `pre`,
    /// exchange `bytes` each way (no step when 0), then both compute `post`.
    fn one_exchange(&mut self, pre: Work, bytes: u64, post: Work) {
        for party in [Party::Server, Party::Client] {
            self.compute(party, pre);
        }
        if bytes > 0 {
            self.online.push(Step::Exchange { bytes });
        }
        for party in [Party::Server, Party::Client] {
            self.compute(party, post);
        }
    }
    /// Offline bytes the dealer sends (to the client and the server). The engine's
    /// `LayerReport::bytes_from_dealer` counts exactly this sum.
    pub fn dealer_bytes(&self) -> u64 {
        self.bytes_dealer_to_client + self.bytes_dealer_to_server
    }

    /// Online work of `party` summed over the schedule.
    pub fn online_work(&self, party: Party) -> Work {
        let mut w = Work::default();
        for s in &self.online {
            if let Step::Compute { party: p, work } = s {
                if *p == party {
                    w.add(work);
                }
            }
        }
        w
    }
}

/// Per-session and per-inference messages outside the layer rows (the engine's reports leave
/// them out too; its channel counters include them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionCost {
    /// Bytes of the public plan skeleton (JSON), sent server -> client and server -> dealer.
    pub skeleton_bytes: u64,
    /// Bytes of `F = W - B` (8 per weight of every conv and linear layer), server -> client.
    pub masked_weight_bytes: u64,
    /// Messages of `F` (one per linear layer).
    pub masked_weight_messages: u64,
    /// Seed bytes, dealer -> each party (32).
    pub seed_bytes: u64,
    /// Server-side and dealer-side expansion of the weight masks `B`, bytes (each).
    pub weight_mask_prg_bytes: u64,
    /// What the client's setup report counts: skeleton + `F`, bytes server -> client.
    pub setup_bytes_server_to_client: u64,
    /// Per inference, client -> server: batch size (8 bytes) + empty online-start (0 bytes).
    pub control_bytes_client_to_server: u64,
    /// Per inference, client -> server control messages (2).
    pub control_messages_client_to_server: u64,
    /// Per inference, client -> dealer: batch size (8 bytes, 1 message).
    pub control_bytes_client_to_dealer: u64,
    /// Once per session, to end it: batch size 0 to server and dealer (8 bytes each).
    pub close_bytes: u64,
}

/// The counting backend. Build with [`CostCounter::new`], run [`walk`] (or use [`count`]).
#[derive(Debug, Clone)]
pub struct CostCounter {
    frac_bits: u32,
    protocol: PolyProtocol,
    /// One entry per layer visited (index = layer).
    pub layers: Vec<LayerCost>,
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

fn with_batch(layer: &Layer, batch: usize) -> Vec<usize> {
    let mut s = vec![batch];
    s.extend_from_slice(&layer.out_shape);
    s
}

impl CostCounter {
    /// A counter for a plan at `frac_bits` fractional bits (`plan.frac_bits`) whose polynomial
    /// layers use the default [`PolyProtocol`] (see [`CostCounter::with_protocol`]).
    pub fn new(frac_bits: u32) -> Self {
        CostCounter { frac_bits, protocol: PolyProtocol::default(), layers: Vec::new() }
    }

    /// The same counter for polynomial layers evaluated with `protocol` (`plan.poly_protocol`).
    pub fn with_protocol(mut self, protocol: PolyProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    fn put(&mut self, idx: usize, c: LayerCost) {
        if self.layers.len() <= idx {
            self.layers.resize(idx + 1, LayerCost::default());
        }
        self.layers[idx] = c;
    }

    /// Conv or linear: weight-masked protocol (module docs). `gemms` = (calls, m, k, n) of the
    /// server's GEMMs; `copies` = elements the server copies around them (im2col, packing,
    /// col2out).
    #[allow(clippy::too_many_arguments)]
    fn linear_cost(
        &mut self,
        idx: usize,
        layer: &Layer,
        x: &[usize],
        out: &[usize],
        macs: u64,
        gemm: (usize, usize, usize, usize),
        copies: usize,
        weights: usize,
    ) {
        let (nx, ny) = (numel(x), numel(out));
        let mut c = LayerCost::new(layer, nx, ny);
        c.macs = macs;
        c.weights = weights as u64;
        c.bytes_client_to_server = 8 * nx as u64;
        c.messages_client_to_server = 1;
        c.bytes_dealer_to_client = 8 * ny as u64;
        c.messages_dealer_to_client = 1;
        c.rounds = 1;
        c.prg_bytes_server = 8 * ny as u64; // c0
        c.prg_bytes_client = 8 * nx as u64; // A
        c.prg_bytes_dealer = 8 * (nx + ny) as u64; // A, c0
        let (calls, m, k, n) = gemm;
        let g = if m * k * n > PAR_THRESHOLD_MACS {
            Work { gemm_macs_parallel: macs, ..Default::default() }
        } else {
            Work { gemm_macs_single: macs, ..Default::default() }
        };
        let _ = calls;
        // Offline: client A (PRG), A*F (GEMM + copies), + c1; dealer A, c0 (PRG), A*B, - c0.
        c.offline_server = Work { prg_bytes: c.prg_bytes_server, ..Default::default() };
        let mut cl = g;
        cl.elementwise = (copies + ny) as u64;
        cl.prg_bytes = c.prg_bytes_client;
        c.offline_client = cl;
        let mut de = g;
        de.elementwise = (copies + ny) as u64;
        de.prg_bytes = c.prg_bytes_dealer;
        c.offline_dealer = de;
        // Online: client X1 - A, send, truncate its share; server adds, GEMM, bias, c0, truncates.
        c.compute(Party::Client, Work::elem(nx));
        c.online.push(Step::Send { from: Party::Client, bytes: c.bytes_client_to_server });
        c.compute(Party::Client, Work::elem(ny));
        let mut sw = g;
        sw.elementwise = (nx + copies + 3 * ny) as u64;
        c.compute(Party::Server, sw);
        self.put(idx, c);
    }
}

impl Backend for CostCounter {
    type Value = Vec<usize>;

    fn input(&mut self, idx: usize, layer: &Layer, batch: usize) -> Result<Vec<usize>> {
        let shape = with_batch(layer, batch);
        let n = numel(&shape);
        let mut c = LayerCost::new(layer, n, n);
        c.bytes_dealer_to_client = 8 * n as u64;
        c.messages_dealer_to_client = 1;
        c.prg_bytes_server = 8 * n as u64;
        c.prg_bytes_dealer = 8 * n as u64;
        c.offline_server = Work { prg_bytes: 8 * n as u64, ..Default::default() };
        c.offline_dealer =
            Work { prg_bytes: 8 * n as u64, elementwise: n as u64, ..Default::default() };
        c.compute(Party::Server, Work::elem(n));
        c.compute(Party::Client, Work::elem(2 * n));
        self.put(idx, c);
        Ok(shape)
    }

    fn conv2d(
        &mut self,
        idx: usize,
        layer: &Layer,
        conv: &ConvLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        let g = conv.geom;
        let batch = x[0];
        let cols = batch * g.out_h() * g.out_w();
        let k = (g.c_in / g.groups) * g.kh * g.kw;
        let cog = g.c_out / g.groups;
        // im2col writes k*cols, packing copies k*cols, col2out copies cog*cols, per group.
        let copies = g.groups * (2 * k * cols + cog * cols);
        self.linear_cost(
            idx,
            layer,
            x,
            &out,
            g.macs() * batch as u64,
            (g.groups, cog, k, cols),
            copies,
            g.c_out * k,
        );
        Ok(out)
    }

    fn linear(
        &mut self,
        idx: usize,
        layer: &Layer,
        l: &LinearLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        let batch = x[0];
        let macs = (l.in_features * l.out_features * batch) as u64;
        self.linear_cost(
            idx,
            layer,
            x,
            &out,
            macs,
            (1, batch, l.in_features, l.out_features),
            l.in_features * l.out_features,
            l.in_features * l.out_features,
        );
        Ok(out)
    }

    fn poly(
        &mut self,
        idx: usize,
        layer: &Layer,
        p: &PolyLayer,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let plan = encode_poly(p, self.frac_bits, &layer.name)?;
        let n = numel(x);
        if self.protocol == PolyProtocol::SharePowers {
            self.put(idx, share_powers_cost(LayerCost::new(layer, n, n), &plan, n));
            return Ok(x.clone());
        }
        let groups = plan.groups.len();
        let mut c = LayerCost::new(layer, n, n);
        c.activation_elements = n as u64;
        let extra: usize = plan.groups.iter().map(|g| g.max_power() - 1).sum();
        if groups > 0 {
            let b = 8 * (n * groups) as u64;
            c.bytes_client_to_server = b;
            c.bytes_server_to_client = b;
            c.messages_client_to_server = 1;
            c.messages_server_to_client = 1;
            c.rounds = 1;
        }
        if extra > 0 {
            c.bytes_dealer_to_client = 8 * (n * extra) as u64;
            c.messages_dealer_to_client = 1;
        }
        // Server: r (per group) and its shares of r^2..r^m; client: r; dealer: both r, server's
        // powers.
        c.prg_bytes_server = 8 * (n * (groups + extra)) as u64;
        c.prg_bytes_client = 8 * (n * groups) as u64;
        c.prg_bytes_dealer = 8 * (n * (2 * groups + extra)) as u64;
        c.offline_server = Work { prg_bytes: c.prg_bytes_server, ..Default::default() };
        c.offline_client = Work {
            prg_bytes: c.prg_bytes_client,
            elementwise: (n * extra) as u64,
            ..Default::default()
        };
        c.offline_dealer = Work {
            prg_bytes: c.prg_bytes_dealer,
            elementwise: (n * (groups + 2 * extra)) as u64,
            ..Default::default()
        };
        // Online, both parties alike: per group clone + truncate + subtract the mask; exchange;
        // per group the opening (one add), per power k a binomial sum and a truncation; then the
        // per-channel combination (degree + 1 terms) and a truncation.
        let pre = 3 * n * groups;
        let powers: usize = plan.groups.iter().map(|g| g.powers.len()).sum();
        let mut post = Work::elem(n * (groups + powers + 1));
        for g in &plan.groups {
            for &k in &g.powers {
                post.binomial[k.min(8)] += n as u64;
            }
        }
        post.combine_terms = (n * (plan.degree + 1)) as u64;
        let cross: usize =
            plan.groups.iter().flat_map(|g| g.powers.iter()).map(|&k| k.saturating_sub(1)).sum();
        post.ring_products = (n * (extra + cross + plan.degree)) as u64;
        c.one_exchange(Work::elem(pre), 8 * (n * groups) as u64, post);
        self.put(idx, c);
        Ok(x.clone())
    }

    fn relu(&mut self, idx: usize, layer: &Layer, x: &Vec<usize>) -> Result<Vec<usize>> {
        let n = numel(x);
        let c = compare_cost(LayerCost::new(layer, n, n), &[n], 0);
        self.put(idx, c);
        Ok(x.clone())
    }

    fn maxpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        kernel: usize,
        stride: usize,
        padding: usize,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let (out, levels) = relu::pool_sizes(x, (kernel, stride, padding))
            .map_err(|e| Error::graph(&layer.name, e.to_string()))?;
        if out[1..] != layer.out_shape[..] {
            return Err(Error::graph(&layer.name, "max-pool output shape differs from the plan"));
        }
        let c = compare_cost(LayerCost::new(layer, numel(x), numel(&out)), &levels, numel(x));
        self.put(idx, c);
        Ok(out)
    }

    fn avgpool(
        &mut self,
        idx: usize,
        layer: &Layer,
        _kernel: usize,
        _stride: usize,
        _padding: usize,
        x: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        let (n, m) = (numel(x), numel(&out));
        let mut c = LayerCost::new(layer, n, m);
        for party in [Party::Server, Party::Client] {
            c.compute(party, Work::elem(n + 2 * m));
        }
        self.put(idx, c);
        Ok(out)
    }

    fn global_avgpool(&mut self, idx: usize, layer: &Layer, x: &Vec<usize>) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        let (n, m) = (numel(x), numel(&out));
        let mut c = LayerCost::new(layer, n, m);
        for party in [Party::Server, Party::Client] {
            c.compute(party, Work::elem(n + 2 * m));
        }
        self.put(idx, c);
        Ok(out)
    }

    fn flatten(&mut self, idx: usize, layer: &Layer, x: Vec<usize>) -> Result<Vec<usize>> {
        let out = with_batch(layer, x[0]);
        let n = numel(&x);
        self.put(idx, LayerCost::new(layer, n, n));
        Ok(out)
    }

    fn add(
        &mut self,
        idx: usize,
        layer: &Layer,
        a: &Vec<usize>,
        _b: &Vec<usize>,
    ) -> Result<Vec<usize>> {
        let n = numel(a);
        let mut c = LayerCost::new(layer, n, n);
        for party in [Party::Server, Party::Client] {
            c.compute(party, Work::elem(n));
        }
        self.put(idx, c);
        Ok(a.clone())
    }
}

/// A polynomial layer of `n` elements with ESPN share powers ([`crate::mpc::espn`]): per group g
/// with powers P_g and largest power m_g, `m_g - 1` masked share powers each way (one exchange
/// for all groups), `sum_{k in P_g} (k - 1)` cross products whose client shares the dealer sends.
fn share_powers_cost(mut c: LayerCost, plan: &PolyPlan, n: usize) -> LayerCost {
    c.activation_elements = n as u64;
    let sent: usize = plan.groups.iter().map(|g| g.max_power() - 1).sum();
    let pairs: usize = plan.groups.iter().map(|g| cross_pairs(&g.powers).len()).sum();
    if sent > 0 {
        let b = 8 * (n * sent) as u64;
        c.bytes_client_to_server = b;
        c.bytes_server_to_client = b;
        c.messages_client_to_server = 1;
        c.messages_server_to_client = 1;
        c.rounds = 1;
        c.bytes_dealer_to_client = 8 * (n * pairs) as u64;
        c.messages_dealer_to_client = 1;
    }
    // Masks (both, m-1 vectors per group), server's c0 (one per pair); dealer expands all three.
    c.prg_bytes_server = 8 * (n * (sent + pairs)) as u64;
    c.prg_bytes_client = 8 * (n * sent) as u64;
    c.prg_bytes_dealer = 8 * (n * (2 * sent + pairs)) as u64;
    c.offline_server = Work { prg_bytes: c.prg_bytes_server, ..Default::default() };
    c.offline_client = Work { prg_bytes: c.prg_bytes_client, ..Default::default() };
    c.offline_dealer = Work {
        prg_bytes: c.prg_bytes_dealer,
        elementwise: (2 * n * pairs) as u64,
        ..Default::default()
    };
    // Online, both parties alike: per group clone + truncate, m-1 multiplications for the own
    // powers, m-1 mask subtractions; exchange; per power a copy, 4 operations per cross product
    // (multiply, add the product share, scale by C(k,i), accumulate) and a truncation; then the
    // per-channel combination and its truncation.
    let groups = plan.groups.len();
    let powers: usize = plan.groups.iter().map(|g| g.powers.len()).sum();
    let pre = n * (2 * groups + 2 * sent);
    let mut post = Work::elem(n * (2 * powers + 4 * pairs + 1));
    post.combine_terms = (n * (plan.degree + 1)) as u64;
    post.ring_products = (n * (sent + pairs + plan.degree)) as u64;
    c.one_exchange(Work::elem(pre), 8 * (n * sent) as u64, post);
    c
}

/// ReLU (one level) or max-pool (one level per tree level) with the FSS comparison of
/// [`crate::mpc::relu`]: per level of `n` comparisons, two simultaneous exchanges (the opened
/// `x + r`: 8n bytes each way; the masked DReLU bits: 8*ceil(n/64) bytes each way), 2 rounds;
/// the dealer sends [`relu::server_words`] words to the server and [`relu::client_words`] to the
/// client. `gather` = elements copied into the max-pool windows first (0 for ReLU).
fn compare_cost(mut c: LayerCost, levels: &[usize], gather: usize) -> LayerCost {
    let words = |n: usize| n.div_ceil(64);
    for &n in levels {
        let (b1, b2) = (8 * n as u64, 8 * words(n) as u64);
        c.bytes_client_to_server += b1 + b2;
        c.bytes_server_to_client += b1 + b2;
        c.messages_client_to_server += 2;
        c.messages_server_to_client += 2;
        c.rounds += 2;
        c.bytes_dealer_to_client += 8 * relu::client_words(n, relu::RING_BITS) as u64;
        c.bytes_dealer_to_server += 8 * relu::server_words(n, relu::RING_BITS) as u64;
        c.messages_dealer_to_client += 1;
        c.messages_dealer_to_server += 1;
        c.activation_elements += n as u64;
        // Each party draws r (n), root seeds (16n bytes), rd (packed); the server also c
        // (packed), a (n), p (n).
        let srv = 8 * (3 * n + 2 * words(n)) as u64 + 16 * n as u64;
        let cli = 8 * (n + words(n)) as u64 + 16 * n as u64;
        c.prg_bytes_server += srv;
        c.prg_bytes_client += cli;
        c.prg_bytes_dealer += srv + cli;
        c.offline_server.prg_bytes += srv;
        c.offline_client.prg_bytes += cli;
        c.offline_client.elementwise += 3 * n as u64;
        c.offline_dealer.prg_bytes += srv + cli;
        c.offline_dealer.dcf_gens += n as u64;
        c.offline_dealer.elementwise += 6 * n as u64;
        // Online: pairs (max-pool), x + r; exchange; DCF eval + MSB fix-up; exchange of bits;
        // select; (max-pool) next level.
        let pre = Work::elem(if gather > 0 { 2 * n } else { n });
        let mid = Work { dcf_evals: n as u64, elementwise: 3 * n as u64, ..Default::default() };
        let post = Work::elem(if gather > 0 { 6 * n } else { 4 * n });
        for party in [Party::Server, Party::Client] {
            c.compute(party, pre);
        }
        c.online.push(Step::Exchange { bytes: b1 });
        for party in [Party::Server, Party::Client] {
            c.compute(party, mid);
        }
        c.online.push(Step::Exchange { bytes: b2 });
        for party in [Party::Server, Party::Client] {
            c.compute(party, post);
        }
    }
    if gather > 0 {
        let g = Work::elem(2 * gather);
        c.online.insert(0, Step::Compute { party: Party::Client, work: g });
        c.online.insert(0, Step::Compute { party: Party::Server, work: g });
    }
    c
}

/// The output reveal: the server sends its share of the logits (8 bytes each), the client adds
/// and decodes. One round.
pub fn reveal_cost(plan: &Plan, batch: usize) -> LayerCost {
    let k = plan.num_classes();
    let n = batch * k;
    let mut c = LayerCost {
        name: "output".into(),
        kind: "Reveal".into(),
        out_shape: vec![k],
        in_elements: n as u64,
        out_elements: n as u64,
        bytes_server_to_client: 8 * n as u64,
        messages_server_to_client: 1,
        rounds: 1,
        ..Default::default()
    };
    c.online.push(Step::Send { from: Party::Server, bytes: 8 * n as u64 });
    c.compute(Party::Client, Work::elem(2 * n));
    c
}

/// Session and per-inference messages outside the layer rows (see [`SessionCost`]).
/// Errors: `Protocol` if the skeleton cannot be serialised (never for a valid plan).
pub fn session_cost(plan: &Plan) -> Result<SessionCost> {
    let skel = serde_json::to_vec(&plan.public_skeleton())
        .map_err(|e| Error::Protocol(format!("plan skeleton: {e}")))?;
    let mut weights = 0u64;
    let mut msgs = 0u64;
    for l in &plan.layers {
        match &l.op {
            LayerOp::Conv2d(c) => {
                let g = c.geom;
                weights += (g.c_out * (g.c_in / g.groups) * g.kh * g.kw) as u64;
                msgs += 1;
            }
            LayerOp::Linear(c) => {
                weights += (c.in_features * c.out_features) as u64;
                msgs += 1;
            }
            _ => {}
        }
    }
    Ok(SessionCost {
        skeleton_bytes: skel.len() as u64,
        masked_weight_bytes: 8 * weights,
        masked_weight_messages: msgs,
        seed_bytes: 32,
        weight_mask_prg_bytes: 8 * weights,
        setup_bytes_server_to_client: skel.len() as u64 + 8 * weights,
        control_bytes_client_to_server: 8,
        control_messages_client_to_server: 2,
        control_bytes_client_to_dealer: 8,
        close_bytes: 8,
    })
}

/// Counts one inference of `batch` samples: one [`LayerCost`] per plan layer, plus the output
/// reveal as the last row (the same rows, in the same order, as the engine's
/// `InferenceReport::layers`).
///
/// Errors: `InvalidArgument` for batch 0 or a polynomial degree outside 1..=8; `Graph` for a
/// malformed plan (bad max-pool geometry, inputs out of order).
pub fn count(plan: &Plan, batch: usize) -> Result<Vec<LayerCost>> {
    if batch == 0 {
        return Err(Error::InvalidArgument("batch must be at least 1".into()));
    }
    let mut cc = CostCounter::new(plan.frac_bits).with_protocol(plan.poly_protocol);
    walk(plan, &mut cc, batch)?;
    let mut layers = cc.layers;
    layers.push(reveal_cost(plan, batch));
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile::compile;
    use crate::model::zoo::{build, Act, Pool, RefNet};

    /// Counting holds no per-sample (or per-window) state: a batch of 2^24 NET-C images with ReLU
    /// and max-pool (2^40 activation elements) is counted at once, and every count is exactly
    /// the batch-1 count times the batch. (Per-window state once made the memory-budget test
    /// allocate gigabytes at batch 100,000.)
    #[test]
    fn counting_a_huge_batch_allocates_nothing_per_sample() {
        let plan = compile(&build(RefNet::NetC, Act::Relu, Pool::Max, 1.0, 1).unwrap()).unwrap();
        let big = 1usize << 24;
        let one = count(&plan, 1).unwrap();
        let many = count(&plan, big).unwrap();
        assert_eq!(one.len(), many.len());
        let b = big as u64;
        for (a, m) in one.iter().zip(&many) {
            assert_eq!(m.in_elements, a.in_elements * b, "{}", a.name);
            assert_eq!(m.macs, a.macs * b, "{}", a.name);
            assert_eq!(m.activation_elements, a.activation_elements * b, "{}", a.name);
            assert_eq!(m.rounds, a.rounds, "{}", a.name);
        }
    }
}
