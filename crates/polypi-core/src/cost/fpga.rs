//! The FPGA scheduler and performance model of the `fpga` profile ([`FpgaProfile`]): for each
//! layer of a plan, the split of the DSP slices between the GEMM, polynomial and comparison
//! engines, the GEMM array shape, the tiling of conv / linear layers against the on-chip buffer
//! and the DRAM traffic it implies, and how the layer's network transfer overlaps compute.
//!
//! PolyMPCNet (Peng et al., arXiv:2209.09424) and PASNet (Peng et al., DAC 2023) describe "a
//! cryptographic hardware scheduler and performance model" for their FPGA, but publish neither the
//! board nor the equations (NOT FOUND, `docs/sources.md` §1-2). This model is ours; its
//! equations are in `docs/fpga-model.md` and summarised here (all times in ms, sizes in bytes,
//! every ring element 8 bytes):
//!
//! **Engines** (per party; each party has its own board). With `D_g`, `D_p`, `D_c` DSPs:
//! - GEMM engine: `U_g = floor(D_g / dsp_per_mac64)` MAC units as a `Pm x Pn` array (Pn terms
//!   of the im2col reduction `Ng x kh x kw` summed by an adder tree, Pm output channels; Pn a
//!   power of two up to `gemm_max_lanes`, chosen per layer). A conv takes `batch x ceil(groups *
//!   Mg / Pm) x ceil(Ng kh kw / Pn) x out_h x out_w` cycles (Mg, Ng output / input channels per
//!   group; groups are packed along the array's rows, which have their own input buffers): the
//!   unrolled-array model of Zhang et al., "Optimizing FPGA-based accelerator design for deep
//!   convolutional neural networks", FPGA 2015, with the kernel window in the reduction. A linear
//!   layer is a 1x1 conv on a 1x1 image per sample.
//! - Polynomial engine: `U_p = floor(D_p / dsp_per_mac64)` 64-bit product units;
//!   [`Work::ring_products`] / `U_p` cycles (X2act / x^2: 4-5 products per element, PILLAR's
//!   degree 4: more, see the counter).
//! - Comparison engine (DCF of ReLU / max-pool DReLU, [`crate::mpc::fss`]): AES-128 cores in LUTs,
//!   `2 x depth` blocks per evaluation at `aes_blocks_per_cycle`; the value path adds one 36-bit
//!   ring value per level on a DSP48E2 used as a 48-bit adder: `depth x evals / D_c` cycles.
//! - LUT fabric, concurrently: elementwise ring ops at `elementwise_per_cycle` (conv / linear:
//!   `in + 3 out` on the server, `in + out` on the client; other layers: the counter's
//!   [`Work::elementwise`]) and ChaCha20 re-expansion of the layer's seed-derived masks (the
//!   counter's PRG bytes of that party) at `prg_bytes_per_cycle`.
//!
//! Within a layer the engines stream through on-chip FIFOs, so `compute = max` of the engine and
//! fabric cycle counts (the max over both parties) / clock.
//!
//! **Tiling** (conv / linear, server): the output is computed in tiles of `Tm` output channels x
//! `Th x Tw` output pixels, accumulating over input-channel tiles of `Tn`; the buffer holds the
//! input tile (with its halo: `((Th-1) s + kh) x ((Tw-1) s + kw)` pixels of the needed input
//! channels), the weight tile `Tm x Tn x kh x kw` and the output tile `Tm x Th x Tw`, the first
//! two double-buffered unless the tile is the whole layer. DRAM traffic: weights once if one
//! weight tile holds them all (resident), else once per spatial tile; the input once per spatial
//! tile if `Tn` covers the input channels (resident across the `Tm` tiles), else once per
//! output-channel tile; the output once. The tile minimising traffic (ties: fewer tiles) among
//! power-of-two sizes and the full extents is chosen; a layer whose weights, input and output fit
//! is one tile and moves exactly weights + input + output. Other layers move `8 (in + out)`
//! bytes (activations pass through DDR between layers: the other party's messages arrive there
//! through the host). Both parties also read the correlated randomness the dealer sent them for
//! the layer (`c1`, powers of `r`, DCF keys). `dram = max over parties of bytes / bandwidth`;
//! the first input + weight tile (`first_load`) is loaded before compute starts, the rest
//! streams under compute (double buffering).
//!
//! **Network and overlap** (what overlaps what):
//! - `wire = max(bytes c->s, bytes s->c) x 8 / bandwidth` (full duplex), `latency = rounds x
//!   RTT/2 + max(messages c->s, messages s->c) x per_message_us`.
//! - With `streaming` (default) a layer's messages go out tile by tile as they are computed and
//!   the receiver computes on the tiles already received (a polynomial's opening, a comparison's
//!   `x + r` and its DReLU bits, a linear layer's `X1 - A`): the layer's body is `max(compute,
//!   dram - first_load, wire)` and its rounds add `latency` (the last tile still crosses the
//!   link). Without streaming the body is `max(compute, dram - first_load) + wire`. The
//!   pipeline fill and drain of one compute tile is neglected.
//! - Across layers, online compute does NOT overlap: the next layer needs this layer's opened
//!   values (a conv's window spans all input channels; we do not model line-buffered layer
//!   fusion). What overlaps: with `prefetch` (default) the next layer's first weight and input
//!   tile load runs while this layer waits on the link (its exposed network time); the next
//!   layer's masks are re-expanded by ChaCha20 concurrently with its own compute.
//! - Layer time `= max(0, first_load - previous exposed network) + body + latency`; exposed
//!   network `= body + latency - max(compute, dram - first_load)`; the total is the sum over
//!   layers.
//!
//! **Split** ([`DspPolicy`]): per network (default) the split minimising the total over a grid
//! (the polynomial engine in whole product units, the comparison engine in 0, 1, 2, 4, ... DSPs,
//! the rest to the GEMM engine); per layer each layer's own best; or fixed.

use super::counter::{LayerCost, Party, Work};
use super::profile::{DspPolicy, FpgaProfile};
use crate::error::{Error, Result};
use crate::model::{Layer, LayerOp, Plan};
use crate::net::LinkModel;
use serde::Serialize;

/// Bytes per ring element (shares, weights, masks: u64).
const ELEM: u64 = 8;

/// DSP slices per engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DspSplit {
    /// DSPs of the GEMM engine (MAC units of `dsp_per_mac64` DSPs).
    pub gemm: u64,
    /// DSPs of the polynomial engine (product units of `dsp_per_mac64` DSPs).
    pub poly: u64,
    /// DSPs of the comparison engine (48-bit adders of the DCF value path).
    pub compare: u64,
}

impl DspSplit {
    /// DSPs used in all.
    pub fn total(&self) -> u64 {
        self.gemm + self.poly + self.compare
    }
}

/// The engine a layer's main work runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Engine {
    /// Conv / linear: the GEMM array.
    Gemm,
    /// Polynomial activation: the product units.
    Poly,
    /// ReLU / max-pool: the DCF comparison engine.
    Compare,
    /// Local elementwise work only (input, add, pooling, flatten, reveal): LUT fabric.
    Fabric,
}

impl Engine {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Gemm => "gemm",
            Engine::Poly => "poly",
            Engine::Compare => "compare",
            Engine::Fabric => "fabric",
        }
    }
}

/// The GEMM view of a conv or linear layer (per-sample geometry and the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GemmShape {
    /// Samples.
    pub batch: usize,
    /// Input channels (features).
    pub c_in: usize,
    /// Output channels (features).
    pub c_out: usize,
    /// Channel groups (1 dense; c_in depthwise).
    pub groups: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride.
    pub stride: usize,
}

impl GemmShape {
    /// The GEMM shape of a conv or linear plan layer at `batch` (None for other ops).
    pub fn of(layer: &Layer, batch: usize) -> Option<GemmShape> {
        match &layer.op {
            LayerOp::Conv2d(c) => {
                let g = c.geom;
                Some(GemmShape {
                    batch,
                    c_in: g.c_in,
                    c_out: g.c_out,
                    groups: g.groups.max(1),
                    h: g.h,
                    w: g.w,
                    out_h: g.out_h(),
                    out_w: g.out_w(),
                    kh: g.kh,
                    kw: g.kw,
                    stride: g.stride.max(1),
                })
            }
            LayerOp::Linear(l) => Some(GemmShape::linear(batch, l.in_features, l.out_features)),
            _ => None,
        }
    }

    /// A linear layer `[batch, c_in] -> [batch, c_out]` as a 1x1 conv on a 1x1 image.
    pub fn linear(batch: usize, c_in: usize, c_out: usize) -> GemmShape {
        GemmShape {
            batch,
            c_in,
            c_out,
            groups: 1,
            h: 1,
            w: 1,
            out_h: 1,
            out_w: 1,
            kh: 1,
            kw: 1,
            stride: 1,
        }
    }

    fn ng(&self) -> usize {
        (self.c_in / self.groups).max(1)
    }
    fn mg(&self) -> usize {
        (self.c_out / self.groups).max(1)
    }
    /// Weights `c_out x c_in/groups x kh x kw`.
    pub fn weights(&self) -> u64 {
        (self.c_out * self.ng() * self.kh * self.kw) as u64
    }
    /// Multiply-accumulates of the batch.
    pub fn macs(&self) -> u64 {
        self.weights() * (self.out_h * self.out_w * self.batch) as u64
    }
}

/// A tile of a conv / linear layer and what it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tile {
    /// Output channels per tile (Tm).
    pub m: usize,
    /// Input channels per group per tile (Tn).
    pub n: usize,
    /// Output rows per tile (Th).
    pub h: usize,
    /// Output columns per tile (Tw).
    pub w: usize,
    /// On-chip bytes the tile occupies (input and weight tiles doubled unless one tile).
    pub buffer_bytes: u64,
    /// DRAM bytes the tiling moves for the whole layer (weights, input, output).
    pub dram_bytes: u64,
    /// Bytes of the first input + weight tile (loaded before compute starts).
    pub first_load_bytes: u64,
    /// Number of tiles (output-channel x input-channel x spatial x batch).
    pub count: u64,
}

fn pow2_upto(x: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut t = 1usize;
    while t < x {
        v.push(t);
        t *= 2;
    }
    v.push(x.max(1));
    v
}

/// Chooses the tile of `g` that minimises DRAM traffic while fitting `onchip_bytes` (module
/// docs). Errors: `InvalidArgument` if not even a 1 x 1 x 1 x 1 tile fits.
pub fn choose_tile(g: &GemmShape, onchip_bytes: u64) -> Result<Tile> {
    let (mm, ng, mg) = (g.c_out.max(1), g.ng(), g.mg());
    let (r, c) = (g.out_h.max(1), g.out_w.max(1));
    let weights = g.weights();
    let mut best: Option<Tile> = None;
    for &tm in &pow2_upto(mm) {
        for &tn in &pow2_upto(ng) {
            for &th in &pow2_upto(r) {
                for &tw in &pow2_upto(c) {
                    let ih = ((th - 1) * g.stride + g.kh).min(g.h.max(1));
                    let iw = ((tw - 1) * g.stride + g.kw).min(g.w.max(1));
                    let in_ch = (tn * tm.div_ceil(mg)).min(g.c_in.max(1));
                    let in_tile = (in_ch * ih * iw) as u64;
                    let w_tile = (tm * tn * g.kh * g.kw) as u64;
                    let out_tile = (tm * th * tw) as u64;
                    let (n_m, n_n) = (mm.div_ceil(tm) as u64, ng.div_ceil(tn) as u64);
                    let n_sp = (r.div_ceil(th) * c.div_ceil(tw) * g.batch) as u64;
                    let single = n_m == 1 && n_n == 1 && n_sp == 1;
                    let buf = ELEM
                        * if single {
                            in_tile + w_tile + out_tile
                        } else {
                            2 * in_tile + 2 * w_tile + out_tile
                        };
                    if buf > onchip_bytes {
                        continue;
                    }
                    let w_traffic = if n_m == 1 && n_n == 1 { weights } else { weights * n_sp };
                    // Input rows / columns actually read over the spatial tiles (halos re-read).
                    let rows = r.div_ceil(th) * ih;
                    let cols = c.div_ceil(tw) * iw;
                    let x_once = (g.c_in * rows * cols * g.batch) as u64;
                    let x_traffic = if n_n == 1 { x_once } else { x_once * n_m };
                    let y_traffic = (mm * r * c * g.batch) as u64;
                    let t = Tile {
                        m: tm,
                        n: tn,
                        h: th,
                        w: tw,
                        buffer_bytes: buf,
                        dram_bytes: ELEM * (w_traffic + x_traffic + y_traffic),
                        first_load_bytes: ELEM * (in_tile + w_tile),
                        count: n_m * n_n * n_sp,
                    };
                    let better = match &best {
                        None => true,
                        Some(b) => (t.dram_bytes, t.count) < (b.dram_bytes, b.count),
                    };
                    if better {
                        best = Some(t);
                    }
                }
            }
        }
    }
    best.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "fpga profile: the on-chip buffer ({onchip_bytes} bytes) cannot hold one 1x1 tile of \
             a {}x{}x{}x{} conv",
            g.c_out,
            g.ng(),
            g.kh,
            g.kw
        ))
    })
}

/// Cycles of `g` on a GEMM engine of `units` MAC units and the array `(Pm, Pn)` achieving them
/// (Pn a power of two up to `max_lanes`). None when `units` is 0.
pub fn gemm_cycles(g: &GemmShape, units: u64, max_lanes: u64) -> Option<(u64, [u64; 2])> {
    if units == 0 {
        return None;
    }
    let rows = (g.groups * g.mg()) as u64;
    let ng = (g.ng() * g.kh * g.kw) as u64;
    let per = (g.batch * g.out_h * g.out_w) as u64;
    let mut best: Option<(u64, [u64; 2])> = None;
    let mut pn = 1u64;
    while pn <= units.min(max_lanes) {
        let pm = units / pn;
        let cyc = rows.div_ceil(pm) * ng.div_ceil(pn) * per;
        if best.is_none_or(|(b, _)| cyc < b) {
            best = Some((cyc, [pm, pn]));
        }
        pn *= 2;
    }
    best
}

/// One layer's place in the schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSchedule {
    /// Main engine.
    pub engine: Engine,
    /// DSPs per engine while this layer runs.
    pub split: DspSplit,
    /// GEMM array `[Pm, Pn]` (conv / linear only).
    pub array: Option<[u64; 2]>,
    /// Tile (conv / linear only).
    pub tile: Option<Tile>,
    /// Engine time: max over engines and parties, ms.
    pub compute_ms: f64,
    /// DRAM bytes of the busier party (tiling traffic or activations, + its dealer material).
    pub dram_bytes: u64,
    /// DRAM time, `dram_bytes / bandwidth`, ms.
    pub dram_ms: f64,
    /// First-tile load not hidden behind the previous layer's wait on the link, ms.
    pub load_ms: f64,
    /// Network time: wire + rounds x RTT/2 + per-message costs, ms.
    pub network_ms: f64,
    /// Network time not hidden behind this layer's compute or DRAM, ms.
    pub exposed_ms: f64,
    /// The layer's online time, ms.
    pub time_ms: f64,
}

/// The schedule of a network on an [`FpgaProfile`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FpgaSchedule {
    /// The policy used.
    pub policy: DspPolicy,
    /// The network's split (per-network and fixed policies; None per layer).
    pub split: Option<DspSplit>,
    /// One entry per input row, same order.
    pub layers: Vec<LayerSchedule>,
    /// Sum of the layers' times, ms.
    pub total_ms: f64,
}

/// A layer to schedule: its counted cost and, for conv / linear, its GEMM shape.
#[derive(Debug, Clone, Copy)]
pub struct FpgaItem<'a> {
    /// Counted cost ([`super::count`]).
    pub cost: &'a LayerCost,
    /// GEMM shape of a conv / linear layer.
    pub gemm: Option<GemmShape>,
}

/// Split-independent facts of a layer.
struct Pre {
    engine: Engine,
    gemm: Option<GemmShape>,
    tile: Option<Tile>,
    works: [Work; 2],
    elem: [u64; 2],
    prg: [u64; 2],
    dram_bytes: u64,
    first_load_bytes: u64,
    wire_ms: f64,
    latency_ms: f64,
}

fn prepare(it: &FpgaItem, p: &FpgaProfile, link: &LinkModel) -> Result<Pre> {
    let l = it.cost;
    let works = [l.online_work(Party::Server), l.online_work(Party::Client)];
    let acts = ELEM * (l.in_elements + l.out_elements);
    let (tile, elem, server_dram) = match &it.gemm {
        Some(g) => {
            let t = choose_tile(g, p.onchip_bytes())?;
            let e = [l.in_elements + 3 * l.out_elements, l.in_elements + l.out_elements];
            (Some(t), e, t.dram_bytes)
        }
        None => (None, [works[0].elementwise, works[1].elementwise], acts),
    };
    let engine = if it.gemm.is_some() {
        Engine::Gemm
    } else if works.iter().any(|w| w.dcf_evals > 0) {
        Engine::Compare
    } else if works.iter().any(|w| w.ring_products > 0) {
        Engine::Poly
    } else {
        Engine::Fabric
    };
    let dram_bytes = (server_dram + l.bytes_dealer_to_server).max(acts + l.bytes_dealer_to_client);
    let wire_ms = if link.bandwidth_bits_per_s.is_finite() {
        l.bytes_client_to_server.max(l.bytes_server_to_client) as f64 * 8.0
            / link.bandwidth_bits_per_s
            * 1e3
    } else {
        0.0
    };
    let msgs = l.messages_client_to_server.max(l.messages_server_to_client) as f64;
    Ok(Pre {
        engine,
        gemm: it.gemm,
        tile,
        works,
        elem,
        prg: [l.prg_bytes_server, l.prg_bytes_client],
        dram_bytes,
        first_load_bytes: tile.map(|t| t.first_load_bytes).unwrap_or(0),
        wire_ms,
        latency_ms: l.rounds as f64 * link.rtt_ms / 2.0 + msgs * p.per_message_us / 1e3,
    })
}

/// Engine cycles of a layer under `split` (max over engines and parties) and the GEMM array;
/// infinite when an engine the layer needs has no DSPs.
fn cycles(pre: &Pre, split: DspSplit, p: &FpgaProfile) -> (f64, Option<[u64; 2]>) {
    let depth = crate::mpc::fss::depth(crate::mpc::relu::RING_BITS - 1) as f64;
    let ug = (split.gemm as f64 / p.dsp_per_mac64).floor() as u64;
    let up = (split.poly as f64 / p.dsp_per_mac64).floor();
    let gemm = match &pre.gemm {
        Some(g) if pre.works.iter().any(|w| w.macs() > 0) => gemm_cycles(g, ug, p.gemm_max_lanes),
        _ => None,
    };
    let need = |work: u64, rate: f64| -> f64 {
        if work == 0 {
            0.0
        } else if rate > 0.0 {
            work as f64 / rate
        } else {
            f64::INFINITY
        }
    };
    let mut worst = 0.0f64;
    for (i, w) in pre.works.iter().enumerate() {
        let g = if w.macs() == 0 {
            0.0
        } else {
            match (&pre.gemm, gemm) {
                (Some(_), Some((c, _))) => c as f64,
                (None, _) => need(w.macs(), ug as f64),
                (Some(_), None) => f64::INFINITY,
            }
        };
        let c = g
            .max(need(w.ring_products, up))
            .max(need(w.dcf_evals * 2 * depth as u64, p.aes_blocks_per_cycle))
            .max(need(w.dcf_evals * depth as u64, split.compare as f64))
            .max(need(pre.elem[i], p.elementwise_per_cycle))
            .max(need(pre.prg[i], p.prg_bytes_per_cycle));
        worst = worst.max(c);
    }
    (worst, gemm.map(|(_, a)| a))
}

fn eval(pre: &Pre, split: DspSplit, hide_ms: f64, p: &FpgaProfile) -> LayerSchedule {
    let (cyc, array) = cycles(pre, split, p);
    let compute_ms = cyc / (p.clock_mhz * 1e6) * 1e3;
    let bw = p.offchip_gbytes_per_s * 1e9;
    let dram_ms = pre.dram_bytes as f64 / bw * 1e3;
    let first = pre.first_load_bytes as f64 / bw * 1e3;
    let load_ms = if p.prefetch { (first - hide_ms).max(0.0) } else { first };
    // The first tile's load precedes compute; the rest of the traffic streams under it.
    let local = compute_ms.max(dram_ms - first);
    let body = if p.streaming { local.max(pre.wire_ms) } else { local + pre.wire_ms };
    let time_ms = load_ms + body + pre.latency_ms;
    LayerSchedule {
        engine: pre.engine,
        split,
        array,
        tile: pre.tile,
        compute_ms,
        dram_bytes: pre.dram_bytes,
        dram_ms,
        load_ms,
        network_ms: pre.wire_ms + pre.latency_ms,
        exposed_ms: body - local + pre.latency_ms,
        time_ms,
    }
}

/// The grid of splits the scheduler tries for a network needing the given engines: the
/// polynomial engine in whole product units, the comparison engine in 0, 1, 2, 4, ... DSPs, the
/// rest to the GEMM engine (or, without GEMM layers, to the first engine that is needed).
fn candidates(p: &FpgaProfile, gemm: bool, poly: bool, compare: bool) -> Vec<DspSplit> {
    let d = p.dsp_count;
    let unit = p.dsp_per_mac64.ceil().max(1.0) as u64;
    let polys: Vec<u64> = if poly { (0..=d / unit).map(|k| k * unit).collect() } else { vec![0] };
    let mut cmps = vec![0u64];
    if compare {
        let mut c = 1u64;
        while c <= d {
            cmps.push(c);
            c *= 2;
        }
    }
    let mut out = Vec::new();
    for &pp in &polys {
        for &cc in &cmps {
            if pp + cc > d {
                continue;
            }
            let rest = d - pp - cc;
            let s = if gemm || !(poly || compare) {
                DspSplit { gemm: rest, poly: pp, compare: cc }
            } else if poly {
                DspSplit { gemm: 0, poly: pp + rest, compare: cc }
            } else {
                DspSplit { gemm: 0, poly: pp, compare: cc + rest }
            };
            out.push(s);
        }
    }
    out
}

fn chain(pres: &[Pre], split: DspSplit, p: &FpgaProfile) -> (Vec<LayerSchedule>, f64) {
    let mut hide = 0.0;
    let mut total = 0.0;
    let v = pres
        .iter()
        .map(|pre| {
            let s = eval(pre, split, hide, p);
            hide = s.exposed_ms;
            total += s.time_ms;
            s
        })
        .collect();
    (v, total)
}

/// Schedules `items` (in execution order) on `p` over `link` (module docs).
///
/// Errors: `InvalidArgument` for an invalid profile ([`FpgaProfile::validate`]), a buffer that
/// cannot hold one tile, or a fixed split that leaves a needed engine without DSPs.
pub fn schedule(items: &[FpgaItem], p: &FpgaProfile, link: &LinkModel) -> Result<FpgaSchedule> {
    p.validate()?;
    let pres = items.iter().map(|it| prepare(it, p, link)).collect::<Result<Vec<_>>>()?;
    let needs = |e: Engine| pres.iter().any(|x| x.engine == e);
    let (gemm, poly, compare) = (needs(Engine::Gemm), needs(Engine::Poly), needs(Engine::Compare));
    let infeasible = || {
        Error::InvalidArgument(
            "fpga profile: no DSP split gives every engine the network needs a unit (too few \
             DSPs, or a fixed split with an empty engine)"
                .into(),
        )
    };
    let (layers, total, split) = match p.dsp_policy {
        DspPolicy::Fixed { gemm, poly, compare } => {
            let s = DspSplit { gemm, poly, compare };
            let (l, t) = chain(&pres, s, p);
            (l, t, Some(s))
        }
        DspPolicy::PerNetwork => {
            let mut best: Option<(Vec<LayerSchedule>, f64, DspSplit)> = None;
            for s in candidates(p, gemm, poly, compare) {
                let (l, t) = chain(&pres, s, p);
                if t.is_finite() && best.as_ref().is_none_or(|b| t < b.1) {
                    best = Some((l, t, s));
                }
            }
            let (l, t, s) = best.ok_or_else(infeasible)?;
            (l, t, Some(s))
        }
        DspPolicy::PerLayer => {
            let mut hide = 0.0;
            let mut total = 0.0;
            let mut out = Vec::with_capacity(pres.len());
            for pre in &pres {
                let e = pre.engine;
                let cands =
                    candidates(p, e == Engine::Gemm, e == Engine::Poly, e == Engine::Compare);
                let s = cands
                    .into_iter()
                    .map(|s| eval(pre, s, hide, p))
                    .min_by(|a, b| a.time_ms.total_cmp(&b.time_ms))
                    .ok_or_else(infeasible)?;
                hide = s.exposed_ms;
                total += s.time_ms;
                out.push(s);
            }
            (out, total, None)
        }
    };
    if !total.is_finite() {
        return Err(infeasible());
    }
    Ok(FpgaSchedule { policy: p.dsp_policy, split, layers, total_ms: total })
}

/// Schedules a counted plan: `costs` = [`super::count`]`(plan, batch)` (one row per plan layer,
/// then the output reveal). Errors: as [`schedule`]; `Graph` if `costs` does not match `plan`.
pub fn schedule_plan(
    plan: &Plan,
    batch: usize,
    costs: &[LayerCost],
    p: &FpgaProfile,
    link: &LinkModel,
) -> Result<FpgaSchedule> {
    if costs.len() != plan.layers.len() + 1 {
        return Err(Error::graph(
            "fpga schedule",
            format!("{} cost rows for {} plan layers + reveal", costs.len(), plan.layers.len()),
        ));
    }
    let items: Vec<FpgaItem> = costs
        .iter()
        .enumerate()
        .map(|(i, c)| FpgaItem {
            cost: c,
            gemm: plan.layers.get(i).and_then(|l| GemmShape::of(l, batch)),
        })
        .collect();
    schedule(&items, p, link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::profile::Profile;
    use crate::cost::{count, predict, site_latency, SiteKind};
    use crate::model::compile::compile;
    use crate::model::zoo::{build, Act, Pool, RefNet};
    use crate::model::{LinearLayer, PolyProtocol};

    fn plan(net: RefNet, act: Act, pool: Pool) -> Plan {
        compile(&build(net, act, pool, 1.0, 1).unwrap()).unwrap()
    }

    fn sched(plan: &Plan, p: &FpgaProfile, link: &LinkModel) -> FpgaSchedule {
        schedule_plan(plan, 1, &count(plan, 1).unwrap(), p, link).unwrap()
    }

    fn nets() -> Vec<Plan> {
        vec![
            plan(RefNet::NetM, Act::Relu, Pool::Max),
            plan(RefNet::NetC, Act::Square, Pool::Avg),
            plan(RefNet::NetR18, Act::Pillar, Pool::Avg),
        ]
    }

    fn small_board() -> FpgaProfile {
        FpgaProfile {
            dsp_count: 300,
            onchip_mib: 0.25,
            offchip_gbytes_per_s: 4.0,
            ..FpgaProfile::default()
        }
    }

    #[test]
    fn split_fits_the_chip_and_tiles_fit_the_buffer() {
        let links = [LinkModel::none(), LinkModel::wan()];
        for pl in nets() {
            for base in [FpgaProfile::default(), small_board()] {
                for policy in [DspPolicy::PerNetwork, DspPolicy::PerLayer] {
                    let p = FpgaProfile { dsp_policy: policy, ..base.clone() };
                    for link in &links {
                        let s = sched(&pl, &p, link);
                        for l in &s.layers {
                            assert!(l.split.total() <= p.dsp_count, "{:?}", l.split);
                            if let Some([pm, pn]) = l.array {
                                assert!(pm * pn * 10 <= l.split.gemm, "{pm}x{pn} {:?}", l.split);
                            }
                            if let Some(t) = l.tile {
                                assert!(t.buffer_bytes <= p.onchip_bytes(), "{t:?}");
                            }
                            assert!(l.time_ms.is_finite() && l.time_ms >= 0.0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_gemm_array_never_beats_its_mac_bound_and_fits_its_units() {
        for (c_in, c_out, k, hw, groups) in
            [(3, 64, 7, 224, 1), (64, 64, 3, 56, 1), (512, 512, 3, 7, 1), (32, 32, 3, 112, 32)]
        {
            let g = GemmShape {
                batch: 2,
                c_in,
                c_out,
                groups,
                h: hw,
                w: hw,
                out_h: hw,
                out_w: hw,
                kh: k,
                kw: k,
                stride: 1,
            };
            for units in [1u64, 7, 64, 161, 172] {
                let (cyc, [pm, pn]) = gemm_cycles(&g, units, 64).unwrap();
                assert!(pm * pn <= units && pn <= 64, "{pm}x{pn} > {units}");
                assert!(cyc * pm * pn >= g.macs(), "{cyc} cycles x {pm}x{pn} < {}", g.macs());
            }
            assert!(gemm_cycles(&g, 0, 64).is_none());
        }
    }

    #[test]
    fn halving_dram_bandwidth_never_makes_a_layer_faster() {
        for pl in nets() {
            for base in [FpgaProfile::default(), small_board()] {
                let fixed = FpgaProfile {
                    dsp_policy: DspPolicy::Fixed {
                        gemm: base.dsp_count - 40,
                        poly: 30,
                        compare: 10,
                    },
                    ..base.clone()
                };
                for p in [fixed, base] {
                    let half = FpgaProfile {
                        offchip_gbytes_per_s: p.offchip_gbytes_per_s / 2.0,
                        ..p.clone()
                    };
                    let (a, b) =
                        (sched(&pl, &p, &LinkModel::lan()), sched(&pl, &half, &LinkModel::lan()));
                    assert!(b.total_ms >= a.total_ms - 1e-12, "{} < {}", b.total_ms, a.total_ms);
                    if matches!(p.dsp_policy, DspPolicy::Fixed { .. }) {
                        for (x, y) in a.layers.iter().zip(&b.layers) {
                            assert!(y.time_ms >= x.time_ms - 1e-12, "{x:?} {y:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_layer_that_fits_on_chip_moves_its_data_once_and_one_that_does_not_rereads() {
        // NET-C-like 3x3/s1/p1 conv, 64 -> 64 channels on 32x32: 1.3 MB, fits 4.75 MiB.
        let g = GemmShape {
            batch: 1,
            c_in: 64,
            c_out: 64,
            groups: 1,
            h: 32,
            w: 32,
            out_h: 32,
            out_w: 32,
            kh: 3,
            kw: 3,
            stride: 1,
        };
        let once = ELEM * (g.weights() + 2 * 64 * 32 * 32);
        let t = choose_tile(&g, FpgaProfile::default().onchip_bytes()).unwrap();
        assert_eq!(t.count, 1);
        assert_eq!(t.dram_bytes, once);
        // A 64 KiB buffer cannot hold it: some data is read more than once.
        let t = choose_tile(&g, 64 << 10).unwrap();
        assert!(t.buffer_bytes <= 64 << 10);
        assert!(t.dram_bytes > once, "{t:?}");
        // Nothing fits a 16-byte buffer: a clear error.
        assert!(choose_tile(&g, 16).is_err());
        // In a whole network: every NET-C conv fits the default board and moves data once.
        let pl = plan(RefNet::NetC, Act::Square, Pool::Avg);
        let costs = count(&pl, 1).unwrap();
        let s = sched(&pl, &FpgaProfile::default(), &LinkModel::none());
        for ((l, c), f) in pl.layers.iter().zip(&costs).zip(&s.layers) {
            if let LayerOp::Conv2d(conv) = &l.op {
                let geo = conv.geom;
                let w = (geo.c_out * geo.c_in / geo.groups * geo.kh * geo.kw) as u64;
                assert_eq!(
                    f.tile.unwrap().dram_bytes,
                    ELEM * (w + c.in_elements + c.out_elements),
                    "{}",
                    l.name
                );
            }
        }
    }

    #[test]
    fn total_bounds_exposed_network_and_every_compute() {
        for pl in nets() {
            for link in [LinkModel::none(), LinkModel::lan(), LinkModel::wan()] {
                let p = FpgaProfile::default();
                let s = sched(&pl, &p, &link);
                let exposed: f64 = s.layers.iter().map(|l| l.exposed_ms).sum();
                let max_compute = s.layers.iter().map(|l| l.compute_ms).fold(0.0, f64::max);
                assert!(s.total_ms >= exposed - 1e-9, "{} < {exposed}", s.total_ms);
                assert!(s.total_ms >= max_compute);
                let sum: f64 = s.layers.iter().map(|l| l.time_ms).sum();
                assert!((sum - s.total_ms).abs() < 1e-9);
                // Streaming and prefetch only ever hide time.
                let plain = FpgaProfile { streaming: false, prefetch: false, ..p };
                assert!(sched(&pl, &plain, &link).total_ms >= s.total_ms - 1e-12);
            }
        }
    }

    #[test]
    fn an_all_linear_network_on_a_free_network_runs_at_the_gemm_bound() {
        let lin = |name: &str, i: usize, o: usize, input: usize| Layer {
            name: name.into(),
            op: LayerOp::Linear(LinearLayer {
                in_features: i,
                out_features: o,
                weight: vec![0.0; i * o],
                bias: vec![0.0; o],
            }),
            inputs: vec![input],
            out_shape: vec![o],
        };
        let pl = Plan {
            layers: vec![
                Layer {
                    name: "in".into(),
                    op: LayerOp::Input,
                    inputs: vec![],
                    out_shape: vec![64],
                },
                lin("fc1", 64, 128, 0),
                lin("fc2", 128, 64, 1),
            ],
            frac_bits: 16,
            labels: vec![],
            normalize: None,
            poly_protocol: PolyProtocol::default(),
        };
        let p = FpgaProfile {
            dsp_count: 640, // 64 MAC units
            elementwise_per_cycle: 1e15,
            prg_bytes_per_cycle: 1e15,
            offchip_gbytes_per_s: 1e15,
            per_message_us: 0.0,
            ..FpgaProfile::default()
        };
        let s = sched(&pl, &p, &LinkModel::none());
        let bound = (2 * 64 * 128) as f64 / (64.0 * p.clock_mhz * 1e6) * 1e3;
        assert!((s.total_ms - bound).abs() < 1e-6 * bound, "{} vs {bound}", s.total_ms);
        assert_eq!(s.split.unwrap().gemm, 640);
        // The same network on predict's path.
        let r = predict(&pl, 1, &Profile::Fpga(p), &LinkModel::none()).unwrap();
        assert!((r.online_ms - bound).abs() < 1e-6 * bound);
    }

    #[test]
    fn default_board_prices_relu_over_x2act_and_maxpool_over_avgpool() {
        let p = Profile::Fpga(FpgaProfile::default());
        for link in [LinkModel::none(), LinkModel::lan(), LinkModel::wan()] {
            for n in [1000usize, 65536, 802816] {
                let relu = site_latency(SiteKind::Relu, n, &p, &link);
                let x2 = site_latency(SiteKind::Poly { degree: 2 }, n, &p, &link);
                let maxp = site_latency(SiteKind::MaxPool, n, &p, &link);
                let avgp = site_latency(SiteKind::AvgPool, n, &p, &link);
                assert!(x2.is_finite() && avgp.is_finite());
                assert!(relu > x2, "n {n}: relu {relu} x2 {x2}");
                assert!(maxp > avgp, "n {n}: max {maxp} avg {avgp}");
            }
        }
    }

    #[test]
    fn the_report_prints_the_schedule_only_for_the_fpga_profile() {
        let pl = plan(RefNet::NetM, Act::Relu, Pool::Max);
        let r = predict(&pl, 1, &Profile::Fpga(FpgaProfile::default()), &LinkModel::lan()).unwrap();
        let t = r.table();
        assert!(t.contains("FPGA schedule: one DSP split"), "{t}");
        assert!(t.contains("FPGA totals"));
        // One schedule row per layer, with the comparison engine for ReLU / max-pool.
        assert!(r.layers.iter().all(|l| l.fpga.is_some()));
        let kinds: Vec<_> = r.layers.iter().map(|l| l.fpga.as_ref().unwrap().engine).collect();
        assert_eq!(kinds.iter().filter(|&&e| e == Engine::Compare).count(), 5, "{kinds:?}");
        let split = r.fpga_split.unwrap();
        assert!(split.compare > 0 && split.poly == 0, "{split:?}");
        let sum: f64 = r.layers.iter().map(|l| l.online_ms).sum();
        assert!((sum - r.online_ms).abs() < 1e-9);
        assert!(r.to_json().contains("\"fpga_split\""));
        let pas = predict(&pl, 1, &Profile::Pasnet, &LinkModel::none()).unwrap();
        assert!(!pas.table().contains("FPGA schedule"));
        assert!(!pas.to_json().contains("\"fpga\""));
    }

    #[test]
    fn bad_profiles_are_refused_and_old_json_loads() {
        let pl = plan(RefNet::NetM, Act::Square, Pool::Avg);
        let over = FpgaProfile {
            dsp_policy: DspPolicy::Fixed { gemm: 1728, poly: 10, compare: 0 },
            ..FpgaProfile::default()
        };
        assert!(predict(&pl, 1, &Profile::Fpga(over), &LinkModel::none()).is_err());
        // A polynomial network with no polynomial engine.
        let empty = FpgaProfile {
            dsp_policy: DspPolicy::Fixed { gemm: 1700, poly: 0, compare: 28 },
            ..FpgaProfile::default()
        };
        assert!(predict(&pl, 1, &Profile::Fpga(empty), &LinkModel::none()).is_err());
        let zero_clock = FpgaProfile { clock_mhz: 0.0, ..FpgaProfile::default() };
        assert!(predict(&pl, 1, &Profile::Fpga(zero_clock), &LinkModel::none()).is_err());
        // A profile file written before the scheduler model (with its poly_terms_per_cycle).
        let old = r#"{"name": "ZCU104-class (XCZU7EV), assumed", "dsp_count": 1728,
            "clock_mhz": 300.0, "dsp_per_mac64": 10.0, "elementwise_per_cycle": 64.0,
            "prg_bytes_per_cycle": 64.0, "poly_terms_per_cycle": 172.0,
            "aes_blocks_per_cycle": 8.0, "onchip_mib": 4.75, "offchip_gbytes_per_s": 19.2,
            "per_message_us": 10.0}"#;
        let back: FpgaProfile = serde_json::from_str(old).unwrap();
        assert_eq!(back, FpgaProfile::default());
        let fixed = r#"{"name": "x", "dsp_count": 100, "clock_mhz": 200.0, "dsp_per_mac64": 10.0,
            "elementwise_per_cycle": 8.0, "prg_bytes_per_cycle": 8.0, "aes_blocks_per_cycle": 1.0,
            "onchip_mib": 1.0, "offchip_gbytes_per_s": 1.0, "per_message_us": 0.0,
            "dsp_policy": {"policy": "fixed", "gemm": 80, "poly": 20, "compare": 0}}"#;
        let f: FpgaProfile = serde_json::from_str(fixed).unwrap();
        assert_eq!(f.dsp_policy, DspPolicy::Fixed { gemm: 80, poly: 20, compare: 0 });
        let s = sched(&pl, &f, &LinkModel::none());
        assert_eq!(s.split, Some(DspSplit { gemm: 80, poly: 20, compare: 0 }));
    }
}
