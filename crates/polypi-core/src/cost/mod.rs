//! The cost model (design.md §1, §3, §6): what a plan costs, per layer and in total, without
//! running it.
//!
//! - [`counter`]: the cost-counting backend of the one walk ([`CostCounter`]): bytes each way,
//!   dealer bytes, rounds, MACs, PRG bytes and activation elements, exactly as the engine's
//!   protocols send and compute them (tested equal to the engine's reports in
//!   `tests/cost_vs_engine.rs`).
//! - [`profile`]: hardware profiles turning counts into milliseconds: a calibrated CPU
//!   ([`calibrate`]), an analytic FPGA accelerator, and PASNet's published per-site table.
//! - [`predict`]: per-layer and total predicted online (and offline) time, bytes and rounds on a
//!   profile and a link ([`crate::net::LinkModel`]); [`site_latency`]: the cost of one
//!   activation or pooling site, for the architecture search.
//!
//! Units (design.md §6): times in ms, sizes in bytes, GEMM throughput in GMAC/s, bandwidth in
//! bit/s inside [`LinkModel`], RTT in ms.
//!
//! **CPU timing model.** The online phase is simulated as the engine runs it: two timelines
//! (server, client) walk the layers' schedules ([`counter::Step`]); local work costs `MACs / GEMM
//! rate + elementwise ops / elementwise rate` + calibrated per-element costs of the polynomial
//! kernels and of the DCF (ReLU / MaxPool); a message sent at time t by one party is delivered at
//! `max(t, link free) + bytes*8/bandwidth + RTT/2 + per-message cost + bytes / loopback rate` (the
//! exchange rate when both send at once), with one serialisation queue per direction (the same rule
//! as [`crate::net::EmulatedChannel`]); a receiver waits for the delivery. So only the messages on
//! the critical path cost latency: the client's `X1 - A` of a linear layer (the server waits for it
//! before its GEMM), the server's half of each polynomial exchange (the client waits for it), and
//! the output reveal; a linear layer whose input the client already holds (a residual shortcut
//! right after another linear layer) overlaps the previous one's GEMM. The online time is the
//! client's, from its online-start message to the decoded logits (as `InferenceReport::online_ms`).
//! Offline: per layer the work of server, client and dealer (PRG, `A*F`, `A*B`), summed when the
//! roles share the cores (in-process runs).

pub mod counter;
pub mod fpga;
pub mod profile;

pub use counter::{count, session_cost, CostCounter, LayerCost, Party, SessionCost, Step, Work};
pub use fpga::{DspSplit, Engine, FpgaSchedule, LayerSchedule};
pub use profile::{calibrate, machine_description, CpuProfile, DspPolicy, FpgaProfile, Profile};

use crate::error::{Error, Result};
use crate::model::{Layer, LayerOp, Plan, PolyLayer};
use crate::net::LinkModel;
use serde::Serialize;

/// One row of a [`CostReport`]: the counts of a layer and its predicted times.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    /// Counts (bytes, rounds, MACs, PRG bytes, ...).
    #[serde(flatten)]
    pub cost: LayerCost,
    /// Predicted online time of this layer (its share of the critical path), in
    /// [`CostReport::time_unit`].
    pub online_ms: f64,
    /// Predicted offline time of this layer (CPU and FPGA; 0 for PASNet).
    pub offline_ms: f64,
    /// The FPGA scheduler's entry for this layer (engine split, tile, compute / DRAM / network /
    /// exposed ms; [`fpga`]); absent for other profiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fpga: Option<LayerSchedule>,
}

/// Prediction for one inference of a batch on a profile and a link.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    /// Profile name ("cpu", "fpga", "pasnet").
    pub profile: String,
    /// What the profile describes (CPU model, FPGA device, or the PASNet table).
    pub profile_description: String,
    /// Unit of every time field: "ms", or "PASNet units" (as published, unstated).
    pub time_unit: String,
    /// Link between server and client (parseable form, e.g. `none`, `400mbit:40ms`).
    pub link: String,
    /// Samples per inference.
    pub batch: usize,
    /// Per-layer rows, the last one the output reveal (same rows as the engine's report).
    pub layers: Vec<CostRow>,
    /// Predicted online time (client wall time, online-start to decoded logits).
    pub online_ms: f64,
    /// Predicted offline time (dealer + both parties), 0 for PASNet.
    pub offline_ms: f64,
    /// Online payload bytes client -> server (layer rows).
    pub bytes_client_to_server: u64,
    /// Online payload bytes server -> client (layer rows).
    pub bytes_server_to_client: u64,
    /// Offline payload bytes dealer -> client.
    pub bytes_dealer_to_client: u64,
    /// Offline payload bytes dealer -> server (ReLU / MaxPool keys).
    pub bytes_dealer_to_server: u64,
    /// Online rounds (as the engine counts them: one per communicating layer, + the reveal).
    pub rounds: u64,
    /// Online multiply-accumulates.
    pub macs: u64,
    /// Bytes expanded from seeds by the server, client and dealer (offline, per inference).
    pub prg_bytes: [u64; 3],
    /// Session setup and control messages (absent for PASNet).
    pub session: Option<SessionCost>,
    /// The FPGA scheduler's DSP split for the whole network (fpga profile with the per-network
    /// or fixed policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fpga_split: Option<DspSplit>,
    /// Caveats of this prediction.
    pub notes: Vec<String>,
}

impl CostReport {
    /// Online bytes both ways.
    pub fn online_bytes(&self) -> u64 {
        self.bytes_client_to_server + self.bytes_server_to_client
    }

    /// A fixed-width text table of the layers and the totals.
    pub fn table(&self) -> String {
        let u = if self.time_unit == "ms" { "ms" } else { "units" };
        let mut s = format!(
            "profile {} ({}), link {}, batch {}\n",
            self.profile, self.profile_description, self.link, self.batch
        );
        s += &format!(
            "{:<18} {:<13} {:>10} {:>10} {:>11} {:>11} {:>11} {:>6} {:>12}\n",
            "layer",
            "op",
            format!("online {u}"),
            format!("offl. {u}"),
            "bytes c->s",
            "bytes s->c",
            "dealer",
            "rounds",
            "MACs"
        );
        for r in &self.layers {
            let c = &r.cost;
            s += &format!(
                "{:<18} {:<13} {:>10.3} {:>10.3} {:>11} {:>11} {:>11} {:>6} {:>12}\n",
                truncate(&c.name, 18),
                c.kind,
                r.online_ms,
                r.offline_ms,
                c.bytes_client_to_server,
                c.bytes_server_to_client,
                c.dealer_bytes(),
                c.rounds,
                c.macs
            );
        }
        s += &format!(
            "total: online {:.2} {}, offline {:.2} {}, online {:.3} MB, offline (dealer) {:.3} MB, \
             {} rounds, {:.3} GMAC\n",
            self.online_ms,
            self.time_unit,
            self.offline_ms,
            self.time_unit,
            self.online_bytes() as f64 / 1e6,
            (self.bytes_dealer_to_client + self.bytes_dealer_to_server) as f64 / 1e6,
            self.rounds,
            self.macs as f64 / 1e9
        );
        if let Some(se) = &self.session {
            s += &format!(
                "setup (once per session): {:.3} MB server -> client (skeleton {} B + F = W - B)\n",
                se.setup_bytes_server_to_client as f64 / 1e6,
                se.skeleton_bytes
            );
        }
        s += &self.fpga_table();
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s
    }

    /// The FPGA schedule per layer (empty unless the fpga profile was used): main engine, DSPs
    /// of the GEMM / polynomial / comparison engines, GEMM array Pm x Pn, tile (output channels
    /// x input channels x output rows x output columns), DRAM MB, and compute, DRAM, exposed
    /// first-tile load, network, exposed network and layer time in ms.
    pub fn fpga_table(&self) -> String {
        if self.layers.iter().all(|r| r.fpga.is_none()) {
            return String::new();
        }
        let mut s = match &self.fpga_split {
            Some(d) => format!(
                "FPGA schedule: one DSP split for the network: GEMM {} / poly {} / compare {} DSPs\n",
                d.gemm, d.poly, d.compare
            ),
            None => "FPGA schedule: DSP split chosen per layer\n".to_string(),
        };
        s += &format!(
            "{:<18} {:<7} {:>14} {:>8} {:>17} {:>8} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9}\n",
            "layer",
            "engine",
            "DSP g/p/c",
            "array",
            "tile m.n.h.w",
            "DRAM MB",
            "compute",
            "DRAM",
            "load",
            "network",
            "exposed",
            "time ms"
        );
        for r in &self.layers {
            let Some(f) = &r.fpga else { continue };
            let array = f.array.map(|a| format!("{}x{}", a[0], a[1])).unwrap_or_else(|| "-".into());
            let tile = f
                .tile
                .map(|t| format!("{}.{}.{}.{}", t.m, t.n, t.h, t.w))
                .unwrap_or_else(|| "-".into());
            s += &format!(
                "{:<18} {:<7} {:>14} {:>8} {:>17} {:>8.3} {:>9.4} {:>8.4} {:>7.4} {:>9.4} {:>9.4} {:>9.4}\n",
                truncate(&r.cost.name, 18),
                f.engine.name(),
                format!("{}/{}/{}", f.split.gemm, f.split.poly, f.split.compare),
                array,
                tile,
                f.dram_bytes as f64 / 1e6,
                f.compute_ms,
                f.dram_ms,
                f.load_ms,
                f.network_ms,
                f.exposed_ms,
                f.time_ms
            );
        }
        let sum = |g: fn(&LayerSchedule) -> f64| -> f64 {
            self.layers.iter().filter_map(|r| r.fpga.as_ref()).map(g).sum()
        };
        s += &format!(
            "FPGA totals: compute {:.3} ms, DRAM {:.3} ms, exposed load {:.3} ms, exposed network \
             {:.3} ms, online {:.3} ms\n",
            sum(|f| f.compute_ms),
            sum(|f| f.dram_ms),
            sum(|f| f.load_ms),
            sum(|f| f.exposed_ms),
            self.online_ms
        );
        s
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "~"
    }
}

/// Milliseconds of local work on a CPU profile.
///
/// DCF evaluations run on rayon's pool and both parties evaluate at the same time (they are
/// symmetric steps of a comparison), so with `shared_cores` each party is priced at half the pool:
/// `dcf_eval_ns x min(2, threads)` per element.
pub fn cpu_work_ms(w: &Work, p: &CpuProfile) -> f64 {
    let dcf_share = if p.shared_cores { p.threads.clamp(1, 2) as f64 } else { 1.0 };
    let s = w.gemm_macs_parallel as f64 / (p.gemm_gmacs * 1e9)
        + w.gemm_macs_single as f64 / (p.gemm_gmacs_single * 1e9)
        + w.elementwise as f64 / (p.elementwise_gops * 1e9)
        + w.prg_bytes as f64 / (p.prg_gbytes_per_s * 1e9);
    let poly_ns: f64 = w
        .binomial
        .iter()
        .enumerate()
        .map(|(k, &cnt)| cnt as f64 * p.poly_power_ns.get(k).copied().unwrap_or(0.0))
        .sum::<f64>()
        + w.combine_terms as f64 * p.poly_combine_ns
        + w.dcf_evals as f64 * p.dcf_eval_ns * dcf_share
        + w.dcf_gens as f64 * p.dcf_gen_ns;
    s * 1e3 + poly_ns / 1e6
}

/// Milliseconds of local work on an FPGA profile with every DSP on the work at hand (MACs and
/// ring products on 64-bit multipliers, elementwise, PRG and AES in fabric, not overlapped with
/// each other). Used for the offline phase; the online phase is scheduled by [`fpga`].
pub fn fpga_work_ms(w: &Work, p: &FpgaProfile) -> f64 {
    let clk = p.clock_mhz * 1e6;
    let s = (w.macs() + w.ring_products) as f64 / p.macs_per_s()
        + w.elementwise as f64 / (p.elementwise_per_cycle * clk)
        + w.prg_bytes as f64 / (p.prg_bytes_per_cycle * clk);
    let levels = crate::mpc::fss::depth(crate::mpc::relu::RING_BITS - 1) as u64;
    let aes = (w.dcf_evals * 2 * levels + w.dcf_gens * 4 * levels) as f64;
    (s + aes / (p.aes_blocks_per_cycle * clk)) * 1e3
}

/// The two-timeline simulation of the online phase (see the module docs).
struct Sim<'a> {
    p: &'a CpuProfile,
    link: &'a LinkModel,
    ts: f64,
    tc: f64,
    /// When each direction's wire is free: [client->server, server->client].
    free: [f64; 2],
}

impl Sim<'_> {
    fn deliver(&mut self, dir: usize, t: f64, bytes: u64) -> f64 {
        self.deliver_at(dir, t, bytes, self.p.loopback_gbytes_per_s)
    }

    fn deliver_at(&mut self, dir: usize, t: f64, bytes: u64, local_gbytes_per_s: f64) -> f64 {
        let wire = if self.link.bandwidth_bits_per_s.is_finite() {
            bytes as f64 * 8.0 / self.link.bandwidth_bits_per_s * 1e3
        } else {
            0.0
        };
        let start = t.max(self.free[dir]);
        self.free[dir] = start + wire;
        start
            + wire
            + self.link.rtt_ms / 2.0
            + self.p.per_message_us / 1e3
            + bytes as f64 / (local_gbytes_per_s * 1e9) * 1e3
    }

    fn step(&mut self, s: &Step) {
        match s {
            Step::Compute { party: Party::Server, work } => self.ts += cpu_work_ms(work, self.p),
            Step::Compute { party: Party::Client, work } => self.tc += cpu_work_ms(work, self.p),
            Step::Send { from: Party::Client, bytes } => {
                let d = self.deliver(0, self.tc, *bytes);
                self.ts = self.ts.max(d);
            }
            Step::Send { from: Party::Server, bytes } => {
                let d = self.deliver(1, self.ts, *bytes);
                self.tc = self.tc.max(d);
            }
            Step::Exchange { bytes } => {
                let r = self.p.exchange_gbytes_per_s;
                let dc = self.deliver_at(0, self.tc, *bytes, r);
                let ds = self.deliver_at(1, self.ts, *bytes, r);
                self.ts = self.ts.max(dc);
                self.tc = self.tc.max(ds);
            }
        }
    }
}

fn cpu_times(
    layers: &[LayerCost],
    p: &CpuProfile,
    link: &LinkModel,
    start: bool,
) -> Vec<(f64, f64)> {
    let mut sim = Sim { p, link, ts: 0.0, tc: 0.0, free: [0.0; 2] };
    if start {
        // The client's empty online-start message: the server starts when it arrives.
        sim.ts = sim.deliver(0, 0.0, 0);
    }
    let mut prev = 0.0;
    layers
        .iter()
        .map(|l| {
            for s in &l.online {
                sim.step(s);
            }
            let end = sim.ts.max(sim.tc);
            let on = end - prev;
            prev = end;
            // The dealer's messages (to the client, and to the server for comparisons).
            let dealer_msg = (l.messages_dealer_to_client + l.messages_dealer_to_server) as f64
                * p.per_message_us
                / 1e3
                + l.dealer_bytes() as f64 / (p.loopback_gbytes_per_s * 1e9) * 1e3;
            let (s, c, d) = (
                cpu_work_ms(&l.offline_server, p),
                cpu_work_ms(&l.offline_client, p) + dealer_msg,
                cpu_work_ms(&l.offline_dealer, p),
            );
            let off = if p.shared_cores { s + c + d } else { s.max(c).max(d) };
            (on, off)
        })
        .collect()
}

fn fpga_offline(layers: &[LayerCost], p: &FpgaProfile) -> Vec<f64> {
    layers
        .iter()
        .map(|l| {
            fpga_work_ms(&l.offline_client, p)
                .max(fpga_work_ms(&l.offline_dealer, p))
                .max(fpga_work_ms(&l.offline_server, p))
        })
        .collect()
}

/// PASNet's per-site latency (units as published) of a site with `n` input elements per sample.
fn pasnet_site(kind: SiteKind, n: f64) -> f64 {
    let relu = 1360.0 * 0.01 * n + 0.4;
    match kind {
        SiteKind::Relu => relu,
        // PASNet's table prices X2act (degree 2); a degree-d polynomial shares its one opening
        // (the 0.2 round term) and evaluates d - 1 powers, each priced as X2act's element work.
        SiteKind::Poly { degree } => 3.0 * 0.01 * n * degree.saturating_sub(1) as f64 + 0.2,
        SiteKind::MaxPool => 0.75 * relu,
        SiteKind::AvgPool => 0.01 * n,
    }
}

/// The site kind of a plan layer for the PASNet table (None: not in the table).
fn site_of(l: &Layer) -> Option<SiteKind> {
    match &l.op {
        LayerOp::Relu => Some(SiteKind::Relu),
        // Degree <= 1 (an affine map, e.g. a BatchNorm kept as a layer) is local: no site.
        LayerOp::Poly(p) if p.degree <= 1 => None,
        LayerOp::Poly(p) => Some(SiteKind::Poly { degree: p.degree }),
        LayerOp::MaxPool2d { .. } => Some(SiteKind::MaxPool),
        LayerOp::AvgPool2d { .. } | LayerOp::GlobalAvgPool => Some(SiteKind::AvgPool),
        _ => None,
    }
}

fn pasnet_report(plan: &Plan, batch: usize, link: &LinkModel) -> Result<CostReport> {
    let mut rows = Vec::new();
    let mut total = 0.0;
    let numel = |s: &[usize]| s.iter().product::<usize>();
    for l in plan.layers.iter() {
        let n_in = l.inputs.first().map(|&j| numel(&plan.layers[j].out_shape)).unwrap_or(0);
        let t = site_of(l).map(|k| batch as f64 * pasnet_site(k, n_in as f64)).unwrap_or(0.0);
        total += t;
        rows.push(CostRow {
            cost: LayerCost {
                name: l.name.clone(),
                kind: l.op.kind().to_string(),
                out_shape: l.out_shape.clone(),
                in_elements: (n_in * batch) as u64,
                out_elements: (numel(&l.out_shape) * batch) as u64,
                ..Default::default()
            },
            online_ms: t,
            offline_ms: 0.0,
            fpga: None,
        });
    }
    Ok(CostReport {
        profile: "pasnet".into(),
        profile_description: "PASNet per-site latency table (Peng et al., DAC 2023)".into(),
        time_unit: Profile::Pasnet.time_unit().into(),
        link: link.to_string(),
        batch,
        layers: rows,
        online_ms: total,
        offline_ms: 0.0,
        bytes_client_to_server: 0,
        bytes_server_to_client: 0,
        bytes_dealer_to_client: 0,
        bytes_dealer_to_server: 0,
        rounds: 0,
        macs: 0,
        prg_bytes: [0; 3],
        session: None,
        fpga_split: None,
        notes: vec![
            "PASNet's table: units as published (not stated in the source; not ms)".into(),
            "linear layers, bytes, rounds and the link are not modelled by the table".into(),
            format!("per-sample site costs x batch ({batch}); GlobalAvgPool counted as AvgPool"),
        ],
    })
}

/// Predicts one inference of `batch` samples of `plan` on `profile` over `link`: per-layer and
/// total online time (and offline time for CPU/FPGA), bytes each way, dealer bytes, rounds, MACs.
///
/// Errors: `InvalidArgument` for batch 0 or a polynomial degree outside 1..=8; `Graph` for a
/// malformed plan.
pub fn predict(
    plan: &Plan,
    batch: usize,
    profile: &Profile,
    link: &LinkModel,
) -> Result<CostReport> {
    if batch == 0 {
        return Err(Error::InvalidArgument("batch must be at least 1".into()));
    }
    if let Profile::Pasnet = profile {
        return pasnet_report(plan, batch, link);
    }
    let layers = count(plan, batch)?;
    let session = session_cost(plan)?;
    let mut sched: Option<fpga::FpgaSchedule> = None;
    let (times, desc, notes) = match profile {
        Profile::Cpu(p) => (
            cpu_times(&layers, p, link, true),
            p.description.clone(),
            vec![format!(
                "cpu: GEMM {:.2} GMAC/s ({} threads), {:.2} GMAC/s single, elementwise {:.2} G/s, \
                 PRG {:.2} GB/s, {:.1} us/message, loopback {:.2} GB/s ({:.2} GB/s each way in \
                 exchanges)",
                p.gemm_gmacs,
                p.threads,
                p.gemm_gmacs_single,
                p.elementwise_gops,
                p.prg_gbytes_per_s,
                p.per_message_us,
                p.loopback_gbytes_per_s,
                p.exchange_gbytes_per_s
            )],
        ),
        Profile::Fpga(p) => {
            let s = fpga::schedule_plan(plan, batch, &layers, p, link)?;
            let times = s.layers.iter().map(|l| l.time_ms).zip(fpga_offline(&layers, p)).collect();
            sched = Some(s);
            (
                times,
                p.name.clone(),
                vec![format!(
                    "fpga: scheduler model with ASSUMED board parameters (PolyMPCNet/PASNet publish \
                     neither board nor equations, sources.md §1-2; docs/fpga-model.md): {} DSPs \
                     ({} per 64-bit multiplier) at {} MHz, {} MiB on chip, {} GB/s DDR, AES {} \
                     blocks/cycle; DSP policy {:?}; streaming {}, prefetch {}",
                    p.dsp_count,
                    p.dsp_per_mac64,
                    p.clock_mhz,
                    p.onchip_mib,
                    p.offchip_gbytes_per_s,
                    p.aes_blocks_per_cycle,
                    p.dsp_policy,
                    p.streaming,
                    p.prefetch
                )],
            )
        }
        Profile::Pasnet => unreachable!("handled above"),
    };
    let mut rep = CostReport {
        profile: profile.name().into(),
        profile_description: desc,
        time_unit: profile.time_unit().into(),
        link: link.to_string(),
        batch,
        layers: Vec::with_capacity(layers.len()),
        online_ms: 0.0,
        offline_ms: 0.0,
        bytes_client_to_server: 0,
        bytes_server_to_client: 0,
        bytes_dealer_to_client: 0,
        bytes_dealer_to_server: 0,
        rounds: 0,
        macs: 0,
        prg_bytes: [0; 3],
        session: Some(session),
        fpga_split: sched.as_ref().and_then(|s| s.split),
        notes,
    };
    let mut fl = sched.map(|s| s.layers.into_iter());
    for (c, (on, off)) in layers.into_iter().zip(times) {
        rep.online_ms += on;
        rep.offline_ms += off;
        rep.bytes_client_to_server += c.bytes_client_to_server;
        rep.bytes_server_to_client += c.bytes_server_to_client;
        rep.bytes_dealer_to_client += c.bytes_dealer_to_client;
        rep.bytes_dealer_to_server += c.bytes_dealer_to_server;
        rep.rounds += c.rounds;
        rep.macs += c.macs;
        rep.prg_bytes[0] += c.prg_bytes_server;
        rep.prg_bytes[1] += c.prg_bytes_client;
        rep.prg_bytes[2] += c.prg_bytes_dealer;
        let fpga = fl.as_mut().and_then(|it| it.next());
        rep.layers.push(CostRow { cost: c, online_ms: on, offline_ms: off, fpga });
    }
    Ok(rep)
}

/// An activation or pooling site, for [`site_latency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SiteKind {
    /// ReLU.
    Relu,
    /// Polynomial activation of this degree (X2act, x^2: 2; PILLAR: 4).
    Poly {
        /// Degree, 1..=8.
        degree: usize,
    },
    /// 2x2 max pooling, stride 2.
    MaxPool,
    /// 2x2 average pooling, stride 2.
    AvgPool,
}

/// Online latency of one site whose input has `n_elements` elements (per sample, batch 1) on
/// `profile` over `link`, in ms (PASNet: in PASNet's units). For the architecture search.
///
/// CPU and FPGA: the engine's protocol for the site alone (a polynomial: one exchange of 8 bytes
/// per element and power group at the default 16 fractional bits, one round; ReLU: FSS
/// comparison, two exchanges, 2 rounds; MaxPool 2x2/2: a two-level tree of n/2 then n/4 ReLUs,
/// 4 rounds; average pooling: local). CPU: the calibrated two-timeline simulation. FPGA: the
/// scheduler model ([`fpga::schedule`]) on the site as a one-layer network: the site's engine
/// (polynomial product units, the comparison engine's AES cores and adders, or the LUT fabric),
/// its DRAM traffic (activations and the dealer's material, e.g. DCF keys) and its link time
/// under the profile's DSP policy, so the search's per-site costs come from the same model as
/// `polypi cost --profile fpga`.
/// A degree outside 1..=8, or an invalid FPGA profile, gives `f64::NAN`.
pub fn site_latency(kind: SiteKind, n_elements: usize, profile: &Profile, link: &LinkModel) -> f64 {
    if let Profile::Pasnet = profile {
        return pasnet_site(kind, n_elements as f64);
    }
    let n = n_elements.max(1);
    let layer = |op: LayerOp, shape: Vec<usize>| Layer {
        name: "site".into(),
        op,
        inputs: vec![0],
        out_shape: shape,
    };
    let cost = match kind {
        SiteKind::Relu | SiteKind::MaxPool => {
            use crate::engine::walk::Backend;
            let x = vec![1, 1, 2, n.div_ceil(2)];
            let mut cc = CostCounter::new(16);
            let r = if kind == SiteKind::Relu {
                cc.relu(0, &layer(LayerOp::Relu, x[1..].to_vec()), &x)
            } else {
                let (k, s) = (2, 2);
                let x = vec![1, 1, 2, 2 * n.div_ceil(4)];
                let out = vec![1, 1, x[3] / 2];
                cc.maxpool(
                    0,
                    &layer(LayerOp::MaxPool2d { kernel: k, stride: s, padding: 0 }, out),
                    k,
                    s,
                    0,
                    &x,
                )
            };
            if r.is_err() {
                return f64::NAN;
            }
            cc.layers.pop().unwrap_or_default()
        }
        SiteKind::Poly { degree } => {
            use crate::engine::walk::Backend;
            let p = PolyLayer { degree, coeffs: vec![vec![0.5; degree + 1]] };
            let l = layer(LayerOp::Poly(p.clone()), vec![n]);
            let mut cc = CostCounter::new(16);
            if cc.poly(0, &l, &p, &vec![1, n]).is_err() {
                return f64::NAN;
            }
            cc.layers.pop().unwrap_or_default()
        }
        SiteKind::AvgPool => {
            let mut c = LayerCost { in_elements: n as u64, ..Default::default() };
            let w = Work { elementwise: (n + n / 2) as u64, ..Default::default() };
            c.online.push(Step::Compute { party: Party::Server, work: w });
            c.online.push(Step::Compute { party: Party::Client, work: w });
            c
        }
    };
    let layers = [cost];
    match profile {
        Profile::Cpu(p) => cpu_times(&layers, p, link, false)[0].0,
        Profile::Fpga(p) => {
            let item = fpga::FpgaItem { cost: &layers[0], gemm: None };
            fpga::schedule(&[item], p, link).map(|s| s.total_ms).unwrap_or(f64::NAN)
        }
        Profile::Pasnet => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_cpu() -> CpuProfile {
        CpuProfile {
            description: "toy".into(),
            threads: 1,
            gemm_gmacs: 1.0,
            gemm_gmacs_single: 1.0,
            prg_gbytes_per_s: 1.0,
            elementwise_gops: 1.0,
            per_message_us: 0.0,
            loopback_gbytes_per_s: 1e12,
            exchange_gbytes_per_s: 1e12,
            poly_power_ns: vec![0.0; 9],
            poly_combine_ns: 0.0,
            dcf_eval_ns: 0.0,
            dcf_gen_ns: 0.0,
            shared_cores: true,
        }
    }

    #[test]
    fn pasnet_table_values() {
        let l = LinkModel::none();
        assert!((site_latency(SiteKind::Relu, 100, &Profile::Pasnet, &l) - 1360.4).abs() < 1e-9);
        assert!(
            (site_latency(SiteKind::Poly { degree: 2 }, 100, &Profile::Pasnet, &l) - 3.2).abs()
                < 1e-9
        );
        assert!(
            (site_latency(SiteKind::MaxPool, 100, &Profile::Pasnet, &l) - 0.75 * 1360.4).abs()
                < 1e-9
        );
        assert!((site_latency(SiteKind::AvgPool, 100, &Profile::Pasnet, &l) - 1.0).abs() < 1e-9);
        // Degree 4 (PILLAR): one opening, three powers of X2act's element work.
        assert!(
            (site_latency(SiteKind::Poly { degree: 4 }, 100, &Profile::Pasnet, &l) - 9.2).abs()
                < 1e-9
        );
        // A degree-1 polynomial (affine, e.g. a BatchNorm kept as a layer) is local: no site.
        let poly = |degree: usize| Layer {
            name: "p".into(),
            op: LayerOp::Poly(PolyLayer { degree, coeffs: vec![vec![0.5; degree + 1]] }),
            inputs: vec![0],
            out_shape: vec![1, 100],
        };
        assert_eq!(site_of(&poly(1)), None);
        assert_eq!(site_of(&poly(2)), Some(SiteKind::Poly { degree: 2 }));
    }

    #[test]
    fn poly_site_on_wan_costs_one_half_rtt_plus_transfer() {
        let p = Profile::Cpu(toy_cpu());
        let wan = LinkModel::wan();
        let n = 1000;
        let t = site_latency(SiteKind::Poly { degree: 2 }, n, &p, &wan);
        let none = site_latency(SiteKind::Poly { degree: 2 }, n, &p, &LinkModel::none());
        let wire = 8.0 * n as f64 * 8.0 / 400e6 * 1e3;
        assert!((t - none - 20.0 - wire).abs() < 1e-9, "{t} {none}");
        // ReLU: two exchanges, 2 x RTT/2 at least.
        assert!(site_latency(SiteKind::Relu, n, &p, &wan) >= 40.0);
        assert!(site_latency(SiteKind::MaxPool, n, &p, &wan) >= 80.0);
    }

    #[test]
    fn profile_parse_and_json_roundtrip() {
        assert_eq!(Profile::parse("pasnet").unwrap(), Profile::Pasnet);
        assert!(matches!(Profile::parse("FPGA").unwrap(), Profile::Fpga(_)));
        assert!(Profile::parse("gpu").is_err());
        let dir = std::env::temp_dir().join(format!("polypi-cost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cpu.json");
        toy_cpu().save(&f).unwrap();
        let back = Profile::parse(&format!("cpu:{}", f.display())).unwrap();
        assert_eq!(back, Profile::Cpu(toy_cpu()));
        std::fs::remove_dir_all(&dir).ok();
    }
}
