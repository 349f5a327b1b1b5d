//! Benchmark driver behind `polypi bench` and the criterion benches: runs one session of `runs`
//! private inferences of a plan in this process and summarises online and offline time, bytes,
//! rounds and peak memory.

use super::report::InferenceReport;
use super::session::{run_local_with_link, LocalOpts, Transport};
use crate::error::Result;
use crate::model::{Layer, LayerOp, Plan, PolyLayer, PolyProtocol};
use crate::net::LinkModel;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Median, minimum and maximum of a series, in the series' unit.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    /// Spread of `xs` (all zero when empty).
    pub fn of(xs: &[f64]) -> Spread {
        if xs.is_empty() {
            return Spread::default();
        }
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Spread { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
    }
}

/// What `polypi bench` reports for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSummary {
    /// Samples per inference.
    pub batch: usize,
    /// Inferences measured (one session).
    pub runs: usize,
    /// Link between server and client ("none", "lan", "wan", custom).
    pub link: String,
    /// Online phase, ms (client wall time per inference).
    pub online_ms: Spread,
    /// Offline phase, ms.
    pub offline_ms: Spread,
    /// Online bytes client -> server per inference.
    pub bytes_client_to_server: u64,
    /// Online bytes server -> client per inference.
    pub bytes_server_to_client: u64,
    /// Offline bytes dealer -> client per inference.
    pub dealer_bytes: u64,
    /// Two-party preprocessing bytes between server and client per inference, both ways (0 in
    /// dealer mode).
    pub preprocessing_bytes: u64,
    /// Online rounds per inference.
    pub rounds: u64,
    /// Session setup (masked weights `F = W - B`), ms and bytes.
    pub setup_ms: f64,
    /// Session setup bytes server -> client.
    pub setup_bytes: u64,
    /// Peak resident memory of this process (all three roles), bytes; None off Linux.
    pub peak_rss_bytes: Option<u64>,
    /// The report of the median-online run (per-layer breakdown).
    pub median_report: InferenceReport,
    /// Multiply-accumulates of the server's online GEMMs per inference (conv + linear MACs x
    /// batch).
    pub server_macs: u64,
    /// The GEMM kernel's measured peak on this machine, MAC/s ([`gemm_peak`]).
    pub gemm_peak_macs_per_s: f64,
    /// The GEMM bound: `server_macs / gemm_peak_macs_per_s`, ms — the online time if the server
    /// did nothing but its GEMMs at the kernel's peak.
    pub gemm_bound_ms: f64,
    /// Kernel that ran ("avx512", "avx2", "scalar").
    pub gemm_kernel: String,
    /// Threads of rayon's pool (the server's GEMMs and the peak measurement use them all).
    pub gemm_threads: usize,
}

/// Multiply-accumulates of the server's online GEMMs for one sample of `plan`: the MACs of every
/// conv (`c_out * oh * ow * (c_in/groups) * kh * kw`) and linear layer (`in * out`).
pub fn server_macs(plan: &Plan) -> u64 {
    plan.layers
        .iter()
        .map(|l| match &l.op {
            LayerOp::Conv2d(c) => {
                let g = &c.geom;
                (g.c_out * g.out_h() * g.out_w()) as u64
                    * ((g.c_in / g.groups.max(1)) * g.kh * g.kw) as u64
            }
            LayerOp::Linear(f) => (f.in_features * f.out_features) as u64,
            _ => 0,
        })
        .sum()
}

/// The dispatched GEMM kernel's peak on this machine, MAC/s: the best of 5 runs of a
/// 256 x 2304 x 784 product (a 3x3 conv from 256 to 256 channels on 28 x 28 positions, shaped
/// as the server runs it: weights x unfolded input) with small-weight `A`
/// (`|a| < 2^20`, fixed-point weights) and random-share `B`, on rayon's pool (all cores, as the
/// server's online GEMMs run). Measured once per process (about 0.1-0.5 s).
pub fn gemm_peak() -> f64 {
    static PEAK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *PEAK.get_or_init(|| {
        use crate::ring::gemm::{gemm_packed, PackedB};
        let (m, k, n) = (256usize, 2304usize, 784usize);
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let a: Vec<u64> = (0..m * k).map(|_| ((r.next_u32() as i32) >> 11) as i64 as u64).collect();
        let b: Vec<u64> = (0..k * n).map(|_| r.next_u64()).collect();
        let pb = PackedB::pack(&b, k, n);
        let mut c = vec![0u64; m * n];
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            gemm_packed(&a, &pb, &mut c, m);
            best = best.min(t.elapsed().as_secs_f64());
        }
        (m * k * n) as f64 / best
    })
}

/// Peak resident set size of this process (`VmHWM`), bytes. None where /proc is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory the dealer's correlated randomness of one inference takes while it is held, as a
/// multiple of its size: the dealer's copy, the parties' received copies and their expanded
/// forms (measured: peak RSS / dealer bytes was 1.8-2.3 on NET-C and NET-R18 with ReLU).
const DEALER_MEMORY_FACTOR: f64 = 2.5;

/// Memory this machine has available now (`MemAvailable` of /proc/meminfo), bytes; None where
/// /proc is unavailable.
pub fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses, before anything runs, an inference of `batch` samples whose correlated randomness
/// (mostly the FSS comparison keys of ReLU / MaxPool layers, exact size from
/// [`crate::cost::count`]) would not fit in the memory available now: the estimate is
/// `2.5 x dealer bytes + 64 MiB`, compared with `MemAvailable`. Without the check such a run is
/// killed by the OS (NET-C ReLU at batch 32 needed over 17 GB).
/// Errors: `InvalidArgument` naming both sizes (in GB, 10^9 bytes) and what to change; the
/// errors of [`crate::cost::count`]. Off Linux (no /proc/meminfo) the check passes.
pub fn check_memory_budget(plan: &Plan, batch: usize) -> Result<()> {
    let Some(avail) = available_memory_bytes() else { return Ok(()) };
    let dealer: u64 = crate::cost::count(plan, batch)?
        .iter()
        .map(|l| l.bytes_dealer_to_client + l.bytes_dealer_to_server)
        .sum();
    let need = dealer as f64 * DEALER_MEMORY_FACTOR + 64.0 * 1048576.0;
    if need > avail as f64 {
        return Err(crate::Error::InvalidArgument(format!(
            "an inference of batch {batch} needs about {:.1} GB of memory for the dealer's \
             correlated randomness ({:.1} GB of keys and masks), but only {:.1} GB is available; \
             use a smaller batch (ReLU and max-pool layers dominate)",
            need / 1e9,
            dealer as f64 / 1e9,
            avail as f64 / 1e9
        )));
    }
    Ok(())
}

/// Runs `runs` private inferences of `batch` random inputs (uniform in [-1, 1], seeded) in one
/// session over `transport`, with the server-client link emulated by `link`.
/// Errors: those of [`run_local_with_link`].
pub fn bench_local(
    plan: &Plan,
    batch: usize,
    runs: usize,
    transport: Transport,
    link: LinkModel,
    seed: u64,
) -> Result<BenchSummary> {
    bench_local_mode(plan, batch, runs, transport, link, seed, false)
}

/// [`bench_local`] with the dealer-free preprocessing when `two_party` (no dealer thread;
/// `preprocessing_bytes` and the offline time are the two-party generator's, see
/// docs/two-party.md). Errors: those of [`bench_local`]; without the `two-party` feature,
/// `InvalidArgument` when `two_party` is set.
pub fn bench_local_mode(
    plan: &Plan,
    batch: usize,
    runs: usize,
    transport: Transport,
    link: LinkModel,
    seed: u64,
    two_party: bool,
) -> Result<BenchSummary> {
    let per: usize = plan.input_shape().iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let inputs: Vec<(Vec<f32>, usize)> = (0..runs.max(1))
        .map(|_| {
            (
                (0..batch * per)
                    .map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0)
                    .collect(),
                batch,
            )
        })
        .collect();
    let opts = LocalOpts { transport, check: false };
    let (setup, results) = if two_party {
        #[cfg(feature = "two-party")]
        {
            super::session::run_local_two_party(
                plan,
                None,
                Default::default(),
                &inputs,
                opts,
                link,
            )?
        }
        #[cfg(not(feature = "two-party"))]
        return Err(crate::Error::InvalidArgument(
            "this build has no two-party preprocessing (feature `two-party`)".into(),
        ));
    } else {
        run_local_with_link(plan, &inputs, opts, link)?
    };
    let online: Vec<f64> = results.iter().map(|r| r.report.online_ms).collect();
    let offline: Vec<f64> = results.iter().map(|r| r.report.offline_ms).collect();
    let med = Spread::of(&online).median;
    let median_report = results
        .iter()
        .find(|r| r.report.online_ms == med)
        .map(|r| r.report.clone())
        .unwrap_or_default();
    let r0 = &results[0].report;
    let macs = server_macs(plan) * batch as u64;
    let peak = gemm_peak();
    Ok(BenchSummary {
        server_macs: macs,
        gemm_peak_macs_per_s: peak,
        gemm_bound_ms: macs as f64 / peak * 1e3,
        gemm_kernel: crate::ring::gemm::gemm_kernel_name().to_string(),
        gemm_threads: rayon::current_num_threads(),
        batch,
        runs: results.len(),
        link: link.to_string(),
        online_ms: Spread::of(&online),
        offline_ms: Spread::of(&offline),
        bytes_client_to_server: r0.layers.iter().map(|l| l.bytes_client_to_server).sum(),
        bytes_server_to_client: r0.layers.iter().map(|l| l.bytes_server_to_client).sum(),
        dealer_bytes: r0.offline_bytes,
        preprocessing_bytes: r0.preprocessing_bytes,
        rounds: r0.rounds,
        setup_ms: setup.ms,
        setup_bytes: setup.bytes,
        peak_rss_bytes: peak_rss_bytes(),
        median_report,
    })
}

/// A one-layer plan for polynomial microbenchmarks: input `[elements]` -> a shared polynomial of
/// degree `degree` with every coefficient non-zero (`c_k = 1/(k+1)`, so every power 2..d is
/// computed), evaluated with `protocol`; frac bits 16.
/// Errors: `InvalidArgument` for 0 elements or a degree outside 1..=8.
pub fn poly_plan(elements: usize, degree: usize, protocol: PolyProtocol) -> Result<Plan> {
    if elements == 0 || !(1..=8).contains(&degree) {
        return Err(crate::Error::InvalidArgument(format!(
            "polynomial microbenchmark: {elements} elements, degree {degree} (need >= 1, 1..=8)"
        )));
    }
    let coeffs = vec![(0..=degree).map(|k| 1.0 / (k + 1) as f32).collect()];
    let shape = vec![elements];
    Ok(Plan {
        layers: vec![
            Layer {
                name: "input".into(),
                op: LayerOp::Input,
                inputs: vec![],
                out_shape: shape.clone(),
            },
            Layer {
                name: format!("poly{degree}"),
                op: LayerOp::Poly(PolyLayer { degree, coeffs }),
                inputs: vec![0],
                out_shape: shape,
            },
        ],
        frac_bits: 16,
        labels: Vec::new(),
        normalize: None,
        poly_protocol: protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile::compile;
    use crate::model::zoo::{build, Act, Pool, RefNet};

    #[test]
    fn memory_budget_refuses_what_cannot_fit_and_passes_small_runs() {
        let plan = compile(&build(RefNet::NetC, Act::Relu, Pool::Max, 1.0, 1).unwrap()).unwrap();
        // 100,000 images of NET-C with ReLU + max-pool need terabytes of comparison keys.
        if available_memory_bytes().is_some() {
            let err = check_memory_budget(&plan, 100_000).unwrap_err().to_string();
            assert!(err.contains("use a smaller batch"), "{err}");
        }
        let plan = compile(&build(RefNet::NetM, Act::Square, Pool::Avg, 1.0, 1).unwrap()).unwrap();
        check_memory_budget(&plan, 1).unwrap();
    }
}
