//! Hardware profiles that turn counts into milliseconds: a calibrated CPU ([`CpuProfile`],
//! [`calibrate`]), an analytic FPGA accelerator ([`FpgaProfile`]) and PASNet's published per-site
//! latency table ([`Profile::Pasnet`]).

use crate::error::{Error, Result};
use crate::model::PolyLayer;
use crate::mpc::encode::encode_poly;
use crate::mpc::fss;
use crate::mpc::ops::{poly_combine, powers_from_opening, Trunc};
use crate::mpc::prg::{Purpose, Seed};
use crate::net::{exchange_ring, recv_ring, send_ring, tcp_loopback_pair, Channel, TcpOptions};
use crate::ring::gemm::{gemm, gemm_packed_st, PackedB};
use crate::ring::{trunc_local, RingTensor};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Throughputs of one machine running all three roles in one process (as `polypi bench` does),
/// measured by [`calibrate`] or loaded from JSON ([`CpuProfile::load`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuProfile {
    /// What was measured (CPU model name, cores).
    pub description: String,
    /// Threads of rayon's pool (the parallel GEMM's width).
    pub threads: usize,
    /// u64 wrapping GEMM on all threads (products above 2^22 MACs), GMAC/s.
    pub gemm_gmacs: f64,
    /// u64 wrapping GEMM on one thread (small products), GMAC/s.
    pub gemm_gmacs_single: f64,
    /// ChaCha20 expansion ([`Seed::ring`]), GB/s (10^9 bytes).
    pub prg_gbytes_per_s: f64,
    /// Elementwise ring operations (add, shift, copy passes over large vectors), G elements/s.
    pub elementwise_gops: f64,
    /// `poly_power_ns[k]`: ns per element to rebuild a share of `x^k` from an opening
    /// ([`crate::mpc::ops::powers_from_opening`], k = 2..=8; entries 0 and 1 unused).
    pub poly_power_ns: Vec<f64>,
    /// ns per coefficient term of [`crate::mpc::ops::poly_combine`] (per element and power).
    pub poly_combine_ns: f64,
    /// ns per element of one party's DCF evaluation at the ReLU comparison width (35 bits,
    /// [`crate::mpc::relu::RING_BITS`]` - 1`; [`crate::mpc::fss::eval`]).
    pub dcf_eval_ns: f64,
    /// ns per element of the dealer's DCF key generation at the same width
    /// ([`crate::mpc::fss::gen`]).
    pub dcf_gen_ns: f64,
    /// Fixed cost of one message (loopback TCP, framing, writer thread, wake-up), µs, from half a
    /// ping-pong of 8-byte messages.
    pub per_message_us: f64,
    /// Loopback message throughput including ring (de)serialisation, GB/s (10^9 bytes), from a
    /// ping-pong of 4 MB ring messages.
    pub loopback_gbytes_per_s: f64,
    /// Loopback throughput per direction while both parties send at once (a simultaneous
    /// exchange, as in a polynomial layer), GB/s, from exchanges of 4 MB ring messages.
    pub exchange_gbytes_per_s: f64,
    /// The roles share the cores (in-process runs): the offline phase of the client and the
    /// dealer is summed rather than overlapped.
    pub shared_cores: bool,
}

/// An analytic FPGA accelerator (one per party: the server's and the client's boards are alike)
/// for the same operators, with the host's network link. The per-layer schedule is computed by
/// [`super::fpga`] (engine split, tiling, DRAM traffic, overlap of communication); see
/// `docs/fpga-model.md` for the equations.
///
/// Assumptions (no public source gives PolyMPCNet's or PASNet's FPGA design: board, DSP count,
/// clock, bandwidth and performance-model equations are NOT FOUND, see `docs/sources.md` §1-2;
/// these defaults are ours):
/// - default device: a Zynq UltraScale+ ZCU104-class part (XCZU7EV: 1728 DSP48E2, 300 MHz,
///   ~4.75 MiB BRAM+URAM (11 Mbit BRAM + 27 Mbit URAM), one DDR4-2400 x64 channel ~19.2 GB/s);
/// - one 64-bit wrapping multiplier (a MAC unit of the GEMM engine or a product unit of the
///   polynomial engine) takes `dsp_per_mac64` DSPs: with 17-bit limbs the low 64 bits of a
///   64x64 product need the 10 limb products (i, j) with i + j <= 3; fully pipelined, one result
///   per unit per cycle;
/// - the DSPs are split between three engines ([`DspPolicy`]): the GEMM engine (a Pm x Pn array
///   of MAC units), the polynomial engine (product units) and the comparison engine, whose
///   per-level DCF value path (a 36-bit add of a converted AES output and a correction word)
///   runs on DSP48E2 ALUs used as 48-bit adders (one add per DSP per cycle);
/// - LUT fabric: elementwise ring ops (adds, shifts, truncations) at `elementwise_per_cycle`,
///   ChaCha20 (mask re-expansion from seeds) at `prg_bytes_per_cycle`, and the comparison
///   engine's AES-128 cores at `aes_blocks_per_cycle` (a DCF evaluation = 2 x
///   [`crate::mpc::fss::depth`] blocks, 29 levels on the 35-bit comparison input);
/// - on-chip buffer `onchip_mib` holds the GEMM tiles (double-buffered input and weight tiles
///   plus the output tile); off-chip DDR at `offchip_gbytes_per_s`;
/// - network: bytes at the link's bandwidth (full duplex) + rounds x RTT/2 + `per_message_us`
///   per message (the host's NIC/driver); with `streaming` a message is sent tile by tile as it
///   is computed and the receiver computes on the tiles already received.
///
/// JSON: every field added with the scheduler model has a serde default, so profile files
/// written before it still load (their removed `poly_terms_per_cycle` is ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FpgaProfile {
    /// Name of the modelled device.
    pub name: String,
    /// DSP slices of the device (shared by the three engines).
    pub dsp_count: u64,
    /// Clock, MHz.
    pub clock_mhz: f64,
    /// DSP slices per pipelined 64-bit wrapping multiplier (MAC or product unit).
    pub dsp_per_mac64: f64,
    /// Elementwise ring operations per cycle (LUT adders/shifters).
    pub elementwise_per_cycle: f64,
    /// ChaCha20 output bytes per cycle (LUT fabric).
    pub prg_bytes_per_cycle: f64,
    /// AES-128 blocks per cycle of the comparison engine's pipelined (LUT) AES cores; a DCF
    /// evaluation is priced at 2 x [`crate::mpc::fss::depth`] blocks (29 levels for the 35-bit DCF
    /// of [`crate::mpc::relu::RING_BITS`] = 36), a key generation at 4 x depth (both parties'
    /// trees).
    pub aes_blocks_per_cycle: f64,
    /// On-chip memory (BRAM + URAM), MiB (2^20 bytes).
    pub onchip_mib: f64,
    /// Off-chip memory bandwidth, GB/s (10^9 bytes).
    pub offchip_gbytes_per_s: f64,
    /// Host network stack cost per message, µs.
    pub per_message_us: f64,
    /// How the scheduler splits the DSPs between the engines (default: one split per network,
    /// as a bitstream is synthesised once).
    #[serde(default)]
    pub dsp_policy: DspPolicy,
    /// Widest input-channel unroll Pn of the GEMM array (adder-tree width), a power of two.
    #[serde(default = "default_max_lanes")]
    pub gemm_max_lanes: u64,
    /// Messages stream tile by tile: a layer's sends overlap its compute and the receiver starts
    /// on the part already received (default true).
    #[serde(default = "default_true")]
    pub streaming: bool,
    /// The next layer's first weight and input tile are loaded from DDR while this layer waits
    /// on the link (default true).
    #[serde(default = "default_true")]
    pub prefetch: bool,
}

fn default_max_lanes() -> u64 {
    64
}

fn default_true() -> bool {
    true
}

/// How the FPGA scheduler ([`super::fpga`]) splits the DSP slices between the GEMM, polynomial
/// and comparison engines. JSON: `{"policy": "per_network"}`, `{"policy": "per_layer"}` or
/// `{"policy": "fixed", "gemm": 1600, "poly": 120, "compare": 8}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum DspPolicy {
    /// One split for the whole network, chosen to minimise its total online latency (a
    /// bitstream synthesised for the network). [`super::site_latency`] treats the site alone as
    /// the network.
    #[default]
    PerNetwork,
    /// Each layer gets the split that minimises its own latency (a reconfigurable pool of
    /// DSP units, e.g. runtime-composable MAC units; optimistic).
    PerLayer,
    /// A given split (DSP slices per engine); errors if it exceeds the device or leaves an
    /// engine the network needs without DSPs.
    Fixed {
        /// DSPs of the GEMM engine.
        gemm: u64,
        /// DSPs of the polynomial engine.
        poly: u64,
        /// DSPs of the comparison engine (48-bit adders of the DCF value path).
        compare: u64,
    },
}

impl Default for FpgaProfile {
    fn default() -> Self {
        FpgaProfile {
            name: "ZCU104-class (XCZU7EV), assumed".into(),
            dsp_count: 1728,
            clock_mhz: 300.0,
            dsp_per_mac64: 10.0,
            elementwise_per_cycle: 64.0,
            prg_bytes_per_cycle: 64.0,
            aes_blocks_per_cycle: 8.0,
            onchip_mib: 4.75,
            offchip_gbytes_per_s: 19.2,
            per_message_us: 10.0,
            dsp_policy: DspPolicy::PerNetwork,
            gemm_max_lanes: 64,
            streaming: true,
            prefetch: true,
        }
    }
}

impl FpgaProfile {
    /// Peak multiply-accumulates per second with every DSP in the GEMM engine.
    pub fn macs_per_s(&self) -> f64 {
        (self.dsp_count as f64 / self.dsp_per_mac64).floor() * self.clock_mhz * 1e6
    }

    /// On-chip buffer, bytes.
    pub fn onchip_bytes(&self) -> u64 {
        (self.onchip_mib * (1u64 << 20) as f64) as u64
    }

    /// Checks that every rate is positive and finite where it must be, that one 64-bit multiplier
    /// fits the device, and that a fixed split fits it. Errors: `InvalidArgument` naming the field.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, what: &str| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "fpga profile: {what} must be positive and finite, got {v}"
                )))
            }
        };
        pos(self.clock_mhz, "clock_mhz")?;
        pos(self.dsp_per_mac64, "dsp_per_mac64")?;
        pos(self.elementwise_per_cycle, "elementwise_per_cycle")?;
        pos(self.prg_bytes_per_cycle, "prg_bytes_per_cycle")?;
        pos(self.aes_blocks_per_cycle, "aes_blocks_per_cycle")?;
        pos(self.onchip_mib, "onchip_mib")?;
        pos(self.offchip_gbytes_per_s, "offchip_gbytes_per_s")?;
        if !(self.per_message_us.is_finite() && self.per_message_us >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "fpga profile: per_message_us must be >= 0, got {}",
                self.per_message_us
            )));
        }
        if (self.dsp_count as f64) < self.dsp_per_mac64 {
            return Err(Error::InvalidArgument(format!(
                "fpga profile: {} DSPs cannot hold one 64-bit multiplier ({} DSPs)",
                self.dsp_count, self.dsp_per_mac64
            )));
        }
        if self.gemm_max_lanes == 0 || !self.gemm_max_lanes.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "fpga profile: gemm_max_lanes must be a power of two, got {}",
                self.gemm_max_lanes
            )));
        }
        if let DspPolicy::Fixed { gemm, poly, compare } = self.dsp_policy {
            let total = gemm.saturating_add(poly).saturating_add(compare);
            if total > self.dsp_count {
                return Err(Error::InvalidArgument(format!(
                    "fpga profile: fixed split {gemm} + {poly} + {compare} = {total} DSPs exceeds \
                     the device's {}",
                    self.dsp_count
                )));
            }
        }
        Ok(())
    }
}

/// A hardware profile for [`super::predict`] and [`super::site_latency`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Profile {
    /// A CPU running the engine as implemented (calibrated).
    Cpu(CpuProfile),
    /// An analytic FPGA accelerator.
    Fpga(FpgaProfile),
    /// PASNet's per-site latency table (Peng et al., DAC 2023, code `models/gate_tmp.py`; see
    /// docs/sources.md §2), `n` = elements per sample of the site's input: ReLU `13.6n + 0.4`,
    /// X2act `0.03n + 0.2` (degree d: `0.03n(d - 1) + 0.2`; degree 1 is local, no site), MaxPool
    /// `0.75 x ReLU`, AvgPool `0.01n`. Units are not
    /// stated in the source: reported as published (not ms). Linear layers are not in the table
    /// (cost 0), nor are bytes or rounds.
    Pasnet,
}

impl Profile {
    /// Parses `cpu` (calibrate now, a few hundred ms), `cpu:FILE` (a [`CpuProfile`] JSON file),
    /// `fpga` (the default [`FpgaProfile`]), `fpga:FILE` (an [`FpgaProfile`] JSON file) or
    /// `pasnet`. Errors: `InvalidArgument` for anything else; `Io`/`InvalidArgument` for an
    /// unreadable or malformed file.
    pub fn parse(text: &str) -> Result<Profile> {
        let t = text.trim();
        let (kind, file) = match t.split_once(':') {
            Some((k, f)) => (k.trim().to_ascii_lowercase(), Some(f.trim())),
            None => (t.to_ascii_lowercase(), None),
        };
        match (kind.as_str(), file) {
            ("cpu", None) => Ok(Profile::Cpu(calibrate())),
            ("cpu", Some(f)) => Ok(Profile::Cpu(CpuProfile::load(f)?)),
            ("fpga", None) => Ok(Profile::Fpga(FpgaProfile::default())),
            ("fpga", Some(f)) => Ok(Profile::Fpga(load_json(f)?)),
            ("pasnet", None) => Ok(Profile::Pasnet),
            _ => Err(Error::InvalidArgument(format!(
                "unknown profile '{text}': expected cpu, cpu:FILE, fpga, fpga:FILE or pasnet"
            ))),
        }
    }

    /// Short name: "cpu", "fpga" or "pasnet".
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Cpu(_) => "cpu",
            Profile::Fpga(_) => "fpga",
            Profile::Pasnet => "pasnet",
        }
    }

    /// Unit of the predicted times: "ms", or "PASNet units" for [`Profile::Pasnet`].
    pub fn time_unit(&self) -> &'static str {
        match self {
            Profile::Pasnet => "PASNet units",
            _ => "ms",
        }
    }
}

fn load_json<T: for<'de> Deserialize<'de>>(path: impl AsRef<Path>) -> Result<T> {
    let p = path.as_ref();
    let s = std::fs::read_to_string(p)?;
    serde_json::from_str(&s)
        .map_err(|e| Error::InvalidArgument(format!("profile file {}: {e}", p.display())))
}

impl CpuProfile {
    /// Loads a profile saved by [`CpuProfile::save`]. Errors: `Io` (unreadable),
    /// `InvalidArgument` (not a CPU profile).
    pub fn load(path: impl AsRef<Path>) -> Result<CpuProfile> {
        load_json(path)
    }

    /// Saves the profile as pretty JSON. Errors: `Io`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let s = serde_json::to_string_pretty(self)
            .map_err(|e| Error::InvalidArgument(format!("profile: {e}")))?;
        std::fs::write(path, s + "\n")?;
        Ok(())
    }
}

/// CPU model name (`/proc/cpuinfo`, else "unknown CPU") and logical cores.
pub fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{model}, {cores} logical cores")
}

/// Best (smallest) time of `reps` runs of `f`, seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best.max(1e-9)
}

/// Median of `reps` runs of `f`, seconds.
fn median_of(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2].max(1e-9)
}

/// Measures this machine (a few hundred ms): the ring GEMM 128x576x1024 via [`gemm`] (all
/// threads) and one-thread [`gemm_packed_st`], [`Seed::ring`] expansion of 8 MB, elementwise
/// passes (subtract into a fresh vector, local truncation) over 1M elements, and a TCP loopback
/// ping-pong ([`tcp_loopback_pair`]) of 8-byte and 4 MB ring messages.
///
/// Timings take the median of a few repetitions (robust to other load on the machine); if the
/// loopback pair cannot be set up, the message costs fall back to 30 µs and 2 GB/s.
pub fn calibrate() -> CpuProfile {
    let (m, k, n) = (128usize, 576usize, 1024usize);
    let seed = Seed([3u8; 32]);
    let a = seed.ring(0, 0, Purpose::InputMask, m * k);
    let b = seed.ring(0, 1, Purpose::InputMask, k * n);
    let mut c = vec![0u64; m * n];
    let macs = (m * k * n) as f64;
    gemm(&a, &b, &mut c, m, k, n); // warm-up (thread pool, pages)
    let t_mt = median_of(5, || gemm(&a, &b, &mut c, m, k, n));
    let pb = PackedB::pack(&b, k, n);
    let t_st = best_of(2, || gemm_packed_st(&a, &pb, &mut c, m));
    // Packing is part of every engine GEMM call: price it in the single-thread rate.
    let t_pack = best_of(2, || {
        std::hint::black_box(PackedB::pack(&b, k, n));
    });

    let prg_n = 1 << 20;
    let t_prg = median_of(3, || {
        std::hint::black_box(seed.ring(1, 2, Purpose::PolyMask(0), prg_n));
    });

    let en = 1 << 20;
    let x = seed.ring(1, 3, Purpose::InputMask, en);
    let r = seed.ring(1, 4, Purpose::InputMask, en);
    let t_el = median_of(5, || {
        let mut y: Vec<u64> = x.iter().zip(&r).map(|(p, q)| p.wrapping_sub(*q)).collect();
        trunc_local(&mut y, 16, 1);
        std::hint::black_box(&y);
    });

    let (poly_power_ns, poly_combine_ns) = calibrate_poly(&seed);
    let (dcf_eval_ns, dcf_gen_ns) = calibrate_dcf(&seed).unwrap_or((2000.0, 4000.0));
    let (per_message_us, loopback, exchange) = loopback().unwrap_or((30.0, 2.0, 1.0));
    CpuProfile {
        description: machine_description(),
        threads: rayon::current_num_threads(),
        gemm_gmacs: macs / t_mt / 1e9,
        gemm_gmacs_single: macs / (t_st + t_pack) / 1e9,
        prg_gbytes_per_s: (8 * prg_n) as f64 / t_prg / 1e9,
        elementwise_gops: (2 * en) as f64 / t_el / 1e9,
        poly_power_ns,
        poly_combine_ns,
        dcf_eval_ns,
        dcf_gen_ns,
        per_message_us,
        loopback_gbytes_per_s: loopback,
        exchange_gbytes_per_s: exchange,
        shared_cores: true,
    }
}

/// ns per element of a DCF evaluation (one party) and key generation at the ReLU comparison width
/// (`RING_BITS - 1` bits), on 2048 elements.
fn calibrate_dcf(seed: &Seed) -> Result<(f64, f64)> {
    let n = 2048usize;
    let bits = crate::mpc::relu::RING_BITS - 1;
    let bytes = |i: usize| -> Vec<u8> {
        bytemuck::cast_slice(&seed.ring(3, i, Purpose::Compare(0), 2 * n)).to_vec()
    };
    let (r0, r1) = (fss::roots_from_bytes(&bytes(0)), fss::roots_from_bytes(&bytes(1)));
    let alphas: Vec<u64> = seed.ring(3, 2, Purpose::Compare(1), n).iter().map(|v| v >> 1).collect();
    let xs: Vec<u64> = seed.ring(3, 3, Purpose::Compare(1), n).iter().map(|v| v >> 1).collect();
    let mut cws = fss::gen(bits, &alphas, &r0, &r1)?;
    let t_gen = median_of(3, || {
        if let Ok(c) = fss::gen(bits, &alphas, &r0, &r1) {
            cws = c;
        }
    });
    let mut ok = true;
    let t_eval = median_of(3, || {
        ok &= std::hint::black_box(fss::eval(0, bits, &r0, &cws, &xs)).is_ok();
    });
    if !ok {
        return Err(Error::InvalidArgument("DCF calibration failed".into()));
    }
    Ok((t_eval / n as f64 * 1e9, t_gen / n as f64 * 1e9))
}

/// ns per element of each power k = 2..=8 of the binomial opening, and ns per coefficient term
/// of the final combination (degree 4, per-channel coefficients), on 8192 elements.
fn calibrate_poly(seed: &Seed) -> (Vec<f64>, f64) {
    let n = 8192usize;
    let e = seed.ring(2, 0, Purpose::InputMask, n);
    let r_pows: Vec<Vec<u64>> =
        (0..8).map(|i| seed.ring(2, 1 + i, Purpose::InputMask, n)).collect();
    let mut ns = vec![0.0; 9];
    for (k, v) in ns.iter_mut().enumerate().skip(2) {
        let t = median_of(3, || {
            std::hint::black_box(powers_from_opening(&e, &r_pows[..k], &[k], Trunc::Share(1)));
        });
        *v = t / n as f64 * 1e9;
    }
    let ch = 16;
    let layer = PolyLayer { degree: 4, coeffs: vec![vec![0.25, 0.5, 0.125, 0.0, 0.01]; ch] };
    let combine = encode_poly(&layer, 16, "calibration").map(|plan| {
        let x = RingTensor { shape: vec![1, ch, n / ch], data: e.clone() };
        let pows =
            vec![Vec::new(), Vec::new(), r_pows[1].clone(), r_pows[2].clone(), r_pows[3].clone()];
        median_of(3, || {
            std::hint::black_box(poly_combine(&x, &pows, &plan, 16, Trunc::Share(1)));
        }) / (5 * n) as f64
            * 1e9
    });
    (ns, combine.unwrap_or(1.0))
}

/// Ping-pong over TCP loopback: (µs per small message one way, GB/s for large ring messages one
/// way, GB/s per direction in simultaneous exchanges).
fn loopback() -> Result<(f64, f64, f64)> {
    let (mut a, mut b) = tcp_loopback_pair("server", "client", &TcpOptions::default())?;
    let small = 200usize;
    let big_n = 1usize << 19; // 4 MiB of ring elements
    let big_reps = 4usize;
    let echo = std::thread::spawn(move || -> Result<()> {
        for _ in 0..small + 10 {
            let m = b.recv()?;
            b.send(&m)?;
            b.flush()?;
        }
        for _ in 0..big_reps + 1 {
            let m = recv_ring(&mut b, big_n)?;
            send_ring(&mut b, &m)?;
            b.flush()?;
        }
        let mine = vec![9u64; big_n];
        for _ in 0..big_reps + 1 {
            exchange_ring(&mut b, &mine)?;
        }
        Ok(())
    });
    let msg = [0u8; 8];
    for _ in 0..10 {
        a.send(&msg)?;
        a.flush()?;
        a.recv()?;
    }
    let t = Instant::now();
    for _ in 0..small {
        a.send(&msg)?;
        a.flush()?;
        a.recv()?;
    }
    let per_msg = t.elapsed().as_secs_f64() / (2 * small) as f64;
    let data = vec![7u64; big_n];
    let mut times = Vec::new();
    for i in 0..big_reps + 1 {
        let t = Instant::now();
        send_ring(&mut a, &data)?;
        a.flush()?;
        recv_ring(&mut a, big_n)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() / 2.0);
        }
    }
    let mut ex = Vec::new();
    for i in 0..big_reps + 1 {
        let t = Instant::now();
        exchange_ring(&mut a, &data)?;
        if i > 0 {
            ex.push(t.elapsed().as_secs_f64());
        }
    }
    echo.join().map_err(|_| Error::Protocol("calibration echo thread panicked".into()))??;
    times.sort_by(|x, y| x.total_cmp(y));
    ex.sort_by(|x, y| x.total_cmp(y));
    let one_way = (times[times.len() / 2] - per_msg).max(1e-9);
    let both = (ex[ex.len() / 2] - per_msg).max(1e-9);
    let gb = |t: f64| (8 * big_n) as f64 / t / 1e9;
    Ok((per_msg * 1e6, gb(one_way), gb(both)))
}
