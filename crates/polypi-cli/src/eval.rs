//! `polypi eval`: plaintext f32 accuracy of a model on a test split, and private inference of its
//! first N images (in-process, TCP on loopback) with the agreement rate against the plaintext
//! predictions, mean online latency and bytes per image, and the range guard's counts: results
//! it refused (input, garbage logits), results it delivered flagged as plausible (logits outside
//! the calibrated range but below the garbage threshold, see `polypi_core::engine::guard`), and "undetected garbage" (a result the guard did not refuse whose logits are off
//! the plaintext f32 logits by more than `--garbage-tol`; should be 0). Each private result is also
//! compared with the plaintext fixed-point twin (same ring, same frac bits, exact truncation), which
//! separates precision effects (a near-tie that fixed point flips, twin included) from protocol
//! failures.
//!
//! The dataset readers here are minimal IDX / CIFAR-10 binary readers (no normalisation, no
//! augmentation) kept on purpose: `polypi_train::data` would pull burn into the `polypi` binary's
//! build, which must stay light for servers and clients that never train.

use crate::common;
use crate::range::{self, CheckArgs, GuardArgs, MarginArgs, ModeArg, RetryArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use polypi_core::engine::guard::{GuardCheck, GuardMode, GuardPolicy, ViolationKind};
use polypi_core::engine::session::{run_local_guarded, LocalOpts, Transport};
use polypi_core::engine::{run_f32, run_fixed, EncodedPlan};
use polypi_core::net::LinkModel;
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Test sets `polypi eval` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// Fashion-MNIST (IDX files `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`).
    FashionMnist,
    /// MNIST (IDX files as Fashion-MNIST).
    Mnist,
    /// CIFAR-10 binary (`test_batch.bin`, or the subset `test_batch_first932.bin`).
    Cifar10,
    /// NumPy arrays in the --data folder: `inputs.npy` (float32 `[N, C, H, W]`, already
    /// normalised) and `labels.npy` (integers `[N]`, 0..=255) for the test split;
    /// `train_inputs.npy` / `train_labels.npy` for the training split.
    Npy,
}

/// Arguments of `polypi eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model file (.safetensors). Default: the shipped models/netm-x2act-fmnist.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Data folder: the fetch folder `data/fetched` (holding `fashion-mnist/`, `mnist/`,
    /// `cifar10-subset/`; `scripts/fetch-data.sh` fills it), or the folder of the IDX files, or
    /// for CIFAR-10 the folder of the binary batches (plain or `.gz`: `data/cifar10-subset` works
    /// as committed).
    #[arg(long)]
    pub data: PathBuf,
    /// Which test set.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetArg,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run private inference on the first N test images (0 = none).
    #[arg(long, default_value_t = 0)]
    pub private: usize,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Largest max-norm |private logits - plaintext f32 logits| (real units) still counted as a
    /// fixed-point precision effect rather than garbage. A wrap or a truncation failure moves a
    /// logit by ~2^(63 - 2f) real units or more (4e9 at f = 16), fixed-point error by ~1e-3.
    #[arg(long, default_value_t = 1.0)]
    pub garbage_tol: f64,
    #[command(flatten)]
    pub check_args: CheckArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub margin: MarginArgs,
    #[command(flatten)]
    pub poly: crate::common::PolyProtocolArg,
}

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// The training split (`train-*-ubyte[.gz]`; CIFAR-10 `data_batch_{1..5}.bin` or
    /// `train_subset_4660.bin`).
    Train,
    /// The test split (`t10k-*-ubyte[.gz]`; CIFAR-10 `test_batch.bin` or
    /// `test_batch_first932.bin`).
    Test,
}

/// A dataset split: `u8` pixels NCHW (image-major) or float32 inputs, and labels.
pub struct TestSet {
    /// Pixels, image after image, each `[C, H, W]` (empty for `.npy` sets).
    pub images: Vec<u8>,
    /// Already normalised float32 inputs, image after image (`.npy` sets; else empty).
    pub floats: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Per-image shape `[C, H, W]`.
    pub shape: [usize; 3],
}

impl TestSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Pixels of image `i` (`[C, H, W]`).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.iter().product::<usize>();
        &self.images[i * n..(i + 1) * n]
    }
    /// Input `i` as one NCHW sample for `plan`: the `.npy` values as given, or the pixels
    /// normalised as the plan says ([`common::pixels_to_input`]).
    pub fn input(&self, i: usize, plan: &polypi_core::model::Plan) -> Vec<f32> {
        let n = self.shape.iter().product::<usize>();
        if self.images.is_empty() {
            return self.floats[i * n..(i + 1) * n].to_vec();
        }
        let [c, h, w] = self.shape;
        common::pixels_to_input(self.image(i), c, h, w, false, plan)
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(stem), dir.join(format!("{stem}.gz"))].into_iter().find(|p| p.exists())
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn load_test(kind: DatasetArg, dir: &Path) -> Result<TestSet> {
    load_split(kind, dir, SplitArg::Test)
}

/// Reads one split of a dataset from `dir` (see [`EvalArgs::data`] for the layout).
pub fn load_split(kind: DatasetArg, dir: &Path, split: SplitArg) -> Result<TestSet> {
    let prefix = if split == SplitArg::Train { "train" } else { "t10k" };
    match kind {
        DatasetArg::Npy => {
            let pre = if split == SplitArg::Train { "train_" } else { "" };
            let (ip, lp) =
                (dir.join(format!("{pre}inputs.npy")), dir.join(format!("{pre}labels.npy")));
            let (shape, floats) = common::read_npy(&ip)?;
            let [n, c, h, w] = shape[..] else {
                bail!("{} has shape {shape:?}; --dataset npy needs [N, C, H, W]", ip.display());
            };
            let bytes =
                std::fs::read(&lp).with_context(|| format!("cannot read {}", lp.display()))?;
            let arr = npyz::NpyFile::new(&bytes[..])
                .with_context(|| format!("{} is not a valid .npy file", lp.display()))?;
            let labels: Vec<i64> = match arr.dtype().descr() {
                d if d.contains("i8") => arr.into_vec::<i64>()?,
                d if d.contains("i4") => {
                    arr.into_vec::<i32>()?.into_iter().map(i64::from).collect()
                }
                d => bail!("{} holds {d}; labels must be int64 or int32", lp.display()),
            };
            if labels.len() != n {
                bail!(
                    "{} has {} labels for {n} inputs in {}",
                    lp.display(),
                    labels.len(),
                    ip.display()
                );
            }
            let labels = labels
                .iter()
                .map(|&l| {
                    u8::try_from(l).map_err(|_| {
                        anyhow::anyhow!("label {l} in {} is outside 0..=255", lp.display())
                    })
                })
                .collect::<Result<Vec<u8>>>()?;
            Ok(TestSet { images: Vec::new(), floats, labels, shape: [c, h, w] })
        }
        DatasetArg::Mnist | DatasetArg::FashionMnist => {
            let sub = if kind == DatasetArg::Mnist { "mnist" } else { "fashion-mnist" };
            let d = if dir.join(sub).is_dir() { dir.join(sub) } else { dir.to_path_buf() };
            let missing = || {
                format!(
                    "no {sub} {prefix} split ({prefix}-images-idx3-ubyte[.gz], \
                     {prefix}-labels-idx1-ubyte[.gz]) in {}: run scripts/fetch-data.sh and pass \
                     --data data/fetched",
                    d.display()
                )
            };
            let ip = find(&d, &format!("{prefix}-images-idx3-ubyte")).with_context(missing)?;
            let lp = find(&d, &format!("{prefix}-labels-idx1-ubyte")).with_context(missing)?;
            let img = read_maybe_gz(&ip)?;
            let lab = read_maybe_gz(&lp)?;
            if img.len() < 16 || be32(&img, 0) != 0x803 {
                bail!("{} is not an IDX image file: re-run scripts/fetch-data.sh", ip.display());
            }
            if lab.len() < 8 || be32(&lab, 0) != 0x801 {
                bail!("{} is not an IDX label file: re-run scripts/fetch-data.sh", lp.display());
            }
            let (n, h, w) = (be32(&img, 4), be32(&img, 8), be32(&img, 12));
            if img.len() != 16 + n * h * w || be32(&lab, 4) != n || lab.len() != 8 + n {
                bail!(
                    "{} / {} are truncated or do not match: re-run scripts/fetch-data.sh",
                    ip.display(),
                    lp.display()
                );
            }
            Ok(TestSet {
                images: img[16..].to_vec(),
                floats: Vec::new(),
                labels: lab[8..].to_vec(),
                shape: [1, h, w],
            })
        }
        DatasetArg::Cifar10 => {
            const REC: usize = 1 + 3 * 32 * 32;
            // The fetch folder (`data/fetched`) holds the subset in `cifar10-subset/`; each file
            // plain or gzipped (`.bin.gz`, as the repository's subset ships).
            let sub = dir.join("cifar10-subset");
            let has = |d: &Path, stems: &[&str]| stems.iter().any(|s| find(d, s).is_some());
            let own = [
                "data_batch_1.bin",
                "test_batch.bin",
                "train_subset_4660.bin",
                "test_batch_first932.bin",
            ];
            let dir = if !has(dir, &own) && sub.is_dir() { sub.as_path() } else { dir };
            let full: Vec<PathBuf> =
                (1..=5).filter_map(|i| find(dir, &format!("data_batch_{i}.bin"))).collect();
            let files: Vec<PathBuf> = if split == SplitArg::Test {
                ["test_batch.bin", "test_batch_first932.bin"]
                    .iter()
                    .find_map(|f| find(dir, f))
                    .into_iter()
                    .collect()
            } else if !full.is_empty() {
                full
            } else {
                find(dir, "train_subset_4660.bin").into_iter().collect()
            };
            if files.is_empty() {
                bail!(
                    "no CIFAR-10 {} batch ({}, plain or .gz) in {}: run scripts/fetch-data.sh cifar10 and pass \
                     --data data/fetched, or pass --data with the folder of the CIFAR-10 binary files",
                    prefix,
                    if split == SplitArg::Test {
                        "test_batch.bin or test_batch_first932.bin"
                    } else {
                        "data_batch_1..5.bin or train_subset_4660.bin"
                    },
                    dir.display()
                );
            }
            let mut raw = Vec::new();
            for p in &files {
                let r = read_maybe_gz(p)?;
                if r.is_empty() || r.len() % REC != 0 {
                    bail!("{} is not a CIFAR-10 binary batch ({REC}-byte records)", p.display());
                }
                raw.extend_from_slice(&r);
            }
            let mut images = Vec::with_capacity(raw.len());
            let mut labels = Vec::new();
            for r in raw.chunks_exact(REC) {
                labels.push(r[0]);
                images.extend_from_slice(&r[1..]);
            }
            Ok(TestSet { images, floats: Vec::new(), labels, shape: [3, 32, 32] })
        }
    }
}

#[derive(Serialize, Default)]
struct PrivateStats {
    images: usize,
    agree: usize,
    agreement: f64,
    accuracy: f64,
    mean_online_ms: f64,
    mean_online_bytes: f64,
    mean_offline_bytes: f64,
    rounds: u64,
    mean_setup_ms: f64,
    /// Whether the model has calibrated ranges and the range guard was on.
    range_guard: bool,
    /// Results the range guard refused because the input left the calibrated range.
    guard_refused_input: usize,
    /// Results the range guard refused because the revealed logits were garbage (above the
    /// garbage threshold, or NaN), after the retries, if any.
    guard_refused_logits: usize,
    /// Results delivered with a plausible logit violation (outside the calibrated range x
    /// margin, below the garbage threshold): not refused, not retried, compared with plaintext
    /// like any delivered result.
    guard_plausible_logits: usize,
    /// Reruns of refused (garbage) results (`--guard-retries`), all images together.
    guard_retries: usize,
    /// Images whose result was refused at first and accepted after a rerun.
    recovered_by_retry: usize,
    /// Results the guard did not refuse whose logits differ from the plaintext f32 logits by more
    /// than `--garbage-tol` (a protocol failure the guard did not detect; should be 0).
    undetected_garbage: usize,
    /// Results not refused, within `--garbage-tol` of plaintext, whose prediction still differs
    /// from the f32 one: near-ties flipped by fixed-point error.
    near_tie_flips: usize,
    /// Private predictions equal to the plaintext fixed-point twin's prediction.
    agree_fixed_twin: usize,
    /// Images whose fixed-point twin prediction differs from the f32 one (precision alone).
    twin_vs_f32_disagree: usize,
    /// Largest |private logit - plaintext f32 logit| over the results that were not refused.
    max_abs_logit_error: f64,
    /// Largest |private logit - fixed-point twin logit| over the results that were not refused.
    max_abs_logit_error_vs_twin: f64,
}

#[derive(Serialize)]
struct EvalOutput {
    model: String,
    dataset: String,
    images: usize,
    plaintext_accuracy: f64,
    private: Option<PrivateStats>,
}

fn bar(n: usize, msg: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    if let Ok(s) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})") {
        pb.set_style(s.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// Runs `polypi eval`.
pub fn run(a: EvalArgs) -> Result<ExitCode> {
    let path = common::model_path(a.model.as_deref())?;
    let mut m = common::load_model(&path)?;
    m.plan.poly_protocol = a.poly.poly_protocol;
    let plan = &m.plan;
    let ds = load_test(a.dataset, &a.data)?;
    let np_check = a.private.min(a.limit.unwrap_or(usize::MAX));
    if np_check > 0 {
        range::gate(&m, &a.check_args, &a.margin)?;
    }
    let guard = range::guard_bounds(&m);
    let mut policy: GuardPolicy = range::policy(&a.guard, &a.margin)?;
    // Count violations per image instead of stopping at the first one.
    if policy.mode == GuardMode::Refuse {
        policy.mode = GuardMode::Warn;
    }
    if plan.input_shape() != ds.shape {
        bail!(
            "the model expects inputs {:?} but the {:?} test set has {:?}: pass the --dataset the \
             model was trained on",
            plan.input_shape(),
            a.dataset,
            ds.shape
        );
    }
    if !(a.garbage_tol >= 0.0 && a.garbage_tol.is_finite()) {
        bail!("--garbage-tol must be a finite number >= 0, got {}", a.garbage_tol);
    }
    let n = a.limit.map_or(ds.len(), |l| l.min(ds.len()));
    if n == 0 {
        bail!("no test images to evaluate (--limit 0 or an empty test set)");
    }
    let input = |i: usize| ds.input(i, plan);

    // Plaintext, batched.
    const BATCH: usize = 100;
    let pb = bar(n, "plaintext", a.json);
    let mut plain_pred = Vec::with_capacity(n);
    let mut plain_logits: Vec<f32> = Vec::new();
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let x: Vec<f32> = (start..end).flat_map(input).collect();
        let logits = run_f32(plan, &x, end - start).context("plaintext inference failed")?;
        let k = plan.num_classes();
        plain_pred.extend(logits.chunks(k).map(common::argmax));
        if start < a.private {
            plain_logits.extend_from_slice(&logits);
        }
        pb.set_position(end as u64);
    }
    pb.finish_and_clear();
    let correct = (0..n).filter(|&i| plain_pred[i] == ds.labels[i] as usize).count();
    let plaintext_accuracy = correct as f64 / n as f64;

    // Plaintext fixed-point twin of the images that also run privately, batched.
    let np = a.private.min(n);
    let mut twin_logits: Vec<f32> = Vec::new();
    if np > 0 {
        let enc = EncodedPlan::new(plan).context("cannot encode the model in fixed point")?;
        for start in (0..np).step_by(BATCH) {
            let end = (start + BATCH).min(np);
            let x: Vec<f32> = (start..end).flat_map(input).collect();
            let logits = run_fixed(plan, &enc, &x, end - start)
                .context("plaintext fixed-point inference failed")?;
            twin_logits.extend_from_slice(&logits);
        }
    }

    // Private, batch 1 per image, sessions of CHUNK inferences.
    let max_err = |x: &[f32], y: &[f32]| {
        x.iter().zip(y).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max)
    };
    let private = if np > 0 {
        const CHUNK: usize = 16;
        let pb = bar(np, "private", a.json);
        let mut st = PrivateStats {
            images: np,
            range_guard: guard.is_some() && a.guard.range_guard != ModeArg::Off,
            ..Default::default()
        };
        let classes = plan.num_classes();
        let (mut right, mut sessions) = (0usize, 0usize);
        for start in (0..np).step_by(CHUNK) {
            let end = (start + CHUNK).min(np);
            let inputs: Vec<(Vec<f32>, usize)> = (start..end).map(|i| (input(i), 1)).collect();
            let opts = LocalOpts { transport: Transport::Tcp, check: false };
            let (setup, mut res) =
                run_local_guarded(plan, guard, policy, &inputs, opts, LinkModel::none())
                    .context("private inference failed")?;
            sessions += 1;
            st.mean_setup_ms += setup.ms;
            // The violations classified at the plan's frac bits.
            let classify = |rs: &mut [polypi_core::engine::session::LocalInference]| {
                for r in rs {
                    r.range_violation = r.range_violation.map(|v| v.reclassify(plan.frac_bits));
                }
            };
            classify(&mut res);
            // --guard-retries: rerun the results refused by the logit check as garbage (fresh
            // session, so fresh correlated randomness); a plausible result is delivered, never
            // rerun.
            let refused = |r: &polypi_core::engine::session::LocalInference| {
                matches!(
                    r.range_violation.map(|v| (v.check, v.kind)),
                    Some((GuardCheck::Logits, ViolationKind::Garbage))
                )
            };
            for _ in 0..a.retry.guard_retries {
                let redo: Vec<usize> = (0..res.len()).filter(|&k| refused(&res[k])).collect();
                if redo.is_empty() {
                    break;
                }
                let again: Vec<(Vec<f32>, usize)> =
                    redo.iter().map(|&k| inputs[k].clone()).collect();
                let (_, mut res2) =
                    run_local_guarded(plan, guard, policy, &again, opts, LinkModel::none())
                        .context("private inference failed (guard retry)")?;
                classify(&mut res2);
                st.guard_retries += redo.len();
                for (&k, r) in redo.iter().zip(res2) {
                    st.recovered_by_retry += usize::from(!refused(&r));
                    res[k] = r;
                }
            }
            for (k, r) in res.iter().enumerate() {
                let i = start + k;
                let p = common::argmax(&r.logits);
                let want = &plain_logits[i * classes..(i + 1) * classes];
                let twin = &twin_logits[i * classes..(i + 1) * classes];
                st.agree += usize::from(p == plain_pred[i]);
                st.agree_fixed_twin += usize::from(p == common::argmax(twin));
                st.twin_vs_f32_disagree += usize::from(common::argmax(twin) != plain_pred[i]);
                match r.range_violation.map(|v| (v.check, v.kind)) {
                    Some((GuardCheck::Input, _)) => st.guard_refused_input += 1,
                    Some((GuardCheck::Logits, ViolationKind::Garbage)) => {
                        st.guard_refused_logits += 1
                    }
                    plausible_or_none => {
                        st.guard_plausible_logits += usize::from(plausible_or_none.is_some());
                        let err = max_err(&r.logits, want);
                        if err > a.garbage_tol {
                            st.undetected_garbage += 1;
                        } else if p != plain_pred[i] {
                            st.near_tie_flips += 1;
                        }
                        st.max_abs_logit_error = st.max_abs_logit_error.max(err);
                        st.max_abs_logit_error_vs_twin =
                            st.max_abs_logit_error_vs_twin.max(max_err(&r.logits, twin));
                    }
                }
                right += usize::from(p == ds.labels[i] as usize);
                st.mean_online_ms += r.report.online_ms;
                st.mean_online_bytes += r.report.online_bytes as f64;
                st.mean_offline_bytes += r.report.offline_bytes as f64;
                st.rounds = r.report.rounds;
            }
            pb.set_position(end as u64);
        }
        pb.finish_and_clear();
        st.agreement = st.agree as f64 / np as f64;
        st.accuracy = right as f64 / np as f64;
        st.mean_online_ms /= np as f64;
        st.mean_online_bytes /= np as f64;
        st.mean_offline_bytes /= np as f64;
        st.mean_setup_ms /= sessions as f64;
        Some(st)
    } else {
        None
    };
    let doc = EvalOutput {
        model: path.display().to_string(),
        dataset: match a.dataset {
            DatasetArg::FashionMnist => "Fashion-MNIST",
            DatasetArg::Mnist => "MNIST",
            DatasetArg::Cifar10 => "CIFAR-10",
            DatasetArg::Npy => "npy",
        }
        .to_string(),
        images: n,
        plaintext_accuracy,
        private,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("model {} on {} ({} test images)", doc.model, doc.dataset, n);
        println!("plaintext f32 accuracy: {:.2}% ({correct}/{n})", plaintext_accuracy * 100.0);
        if let Some(p) = &doc.private {
            println!(
                "private (first {}): agreement with plaintext {:.2}% ({}/{}), accuracy {:.2}%",
                p.images,
                p.agreement * 100.0,
                p.agree,
                p.images,
                p.accuracy * 100.0
            );
            println!(
                "  mean online latency {:.2} ms, online {:.3} MB/image, offline (dealer) {:.3} MB/image, {} rounds, setup {:.2} ms/session",
                p.mean_online_ms,
                p.mean_online_bytes / 1e6,
                p.mean_offline_bytes / 1e6,
                p.rounds,
                p.mean_setup_ms
            );
            println!(
                "  range guard {}: refused {} (input) + {} (garbage logits); delivered {} \
                 plausible (logits outside the calibrated range); undetected garbage {} (logit \
                 error > {}); near-tie flips {}; max |private - plaintext| logit {:.4}",
                if p.range_guard {
                    "on"
                } else {
                    "off (no calibrated ranges or --range-guard off)"
                },
                p.guard_refused_input,
                p.guard_refused_logits,
                p.guard_plausible_logits,
                p.undetected_garbage,
                a.garbage_tol,
                p.near_tie_flips,
                p.max_abs_logit_error
            );
            if a.retry.guard_retries > 0 {
                println!(
                    "  guard retries: {} rerun(s), {} result(s) recovered",
                    p.guard_retries, p.recovered_by_retry
                );
            }
            println!(
                "  fixed-point twin: private == twin {}/{}, twin != f32 on {}, max |private - \
                 twin| logit {:.4}",
                p.agree_fixed_twin, p.images, p.twin_vs_f32_disagree, p.max_abs_logit_error_vs_twin
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
