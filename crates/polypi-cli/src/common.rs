//! Helpers shared by the commands: default paths, model and image loading, class names, softmax,
//! TCP options and the "what to do" hints printed after an error.

use anyhow::{bail, Context, Result};
use polypi_core::model::{compile, file::ModelFile, Plan};
use polypi_core::net::TcpOptions;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The model shipped with the repository, used by `polypi infer` without `--model`.
pub const DEFAULT_MODEL: &str = "models/netm-x2act-fmnist.safetensors";
/// The folder of the shipped sample images, used by `polypi infer` without `--input`: one
/// folder per input shape `[C, H, W]` (Fashion-MNIST test images for `[1, 28, 28]`, CIFAR-10
/// test images for `[3, 32, 32]`).
pub const DEFAULT_SAMPLES: &[([usize; 3], &str)] =
    &[([1, 28, 28], "data/samples"), ([3, 32, 32], "data/samples/cifar")];

/// Resolves a repository-relative path: first against the current directory, then against the
/// repository this binary was built from. `None` if neither exists.
pub fn resolve_repo_path(rel: &str) -> Option<PathBuf> {
    let here = PathBuf::from(rel);
    if here.exists() {
        return Some(here);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    repo.exists().then_some(repo)
}

/// The model path given on the command line, or the shipped model.
pub fn model_path(arg: Option<&Path>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => resolve_repo_path(DEFAULT_MODEL).with_context(|| {
            format!(
                "the shipped model {DEFAULT_MODEL} is not there (not trained yet?): pass \
                 --model FILE, e.g. a random-weight one written by `polypi zoo --net NET-M --act x2 \
                 --out netm.safetensors`"
            )
        }),
    }
}

/// A loaded model: the file (graph, tensors, card) and its compiled plan.
pub struct Model {
    /// The file as loaded (validated).
    pub file: ModelFile,
    /// The compiled plan (weights included).
    pub plan: Plan,
}

/// Loads and compiles a model file, with errors naming the file and saying what to do.
pub fn load_model(path: &Path) -> Result<Model> {
    if !path.exists() {
        bail!(
            "model file {} not found: check the path, or write a random-weight model with \
             `polypi zoo --net NET-M --act x2 --out {}`",
            path.display(),
            path.display()
        );
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(stem) = name.strip_suffix(".ckpt.safetensors") {
        bail!(
            "{} is a training checkpoint of polypi-train (burn record: the teacher of \
             `--teacher`), not a model file; the model exported by the same run is {}.safetensors",
            path.display(),
            path.with_file_name(stem).display()
        );
    }
    let file = ModelFile::load(path).with_context(|| {
        format!(
            "cannot load model {} (is it a polypi .safetensors model written by polypi-train or \
             `polypi zoo`?)",
            path.display()
        )
    })?;
    let plan = compile::compile(&file)
        .with_context(|| format!("cannot compile model {}", path.display()))?;
    Ok(Model { file, plan })
}

/// The sample images shipped with the repository for `plan`'s input shape (`*.png` of the
/// [`DEFAULT_SAMPLES`] folder of that shape, sorted by name). Errors, saying to pass `--input`,
/// when no shipped samples fit the shape or the folder is missing.
pub fn default_inputs(plan: &Plan) -> Result<Vec<PathBuf>> {
    let shape = plan.input_shape();
    let Some((_, rel)) = DEFAULT_SAMPLES.iter().find(|(s, _)| s.as_slice() == shape) else {
        let have: Vec<String> =
            DEFAULT_SAMPLES.iter().map(|(s, d)| format!("{s:?} in {d}")).collect();
        bail!(
            "no --input given and no shipped sample images fit the model's input shape {shape:?} \
             (shipped: {}): pass --input IMG",
            have.join(", ")
        );
    };
    let dir = resolve_repo_path(rel).with_context(|| {
        format!("no --input given and the sample folder {rel} is missing: pass --input IMG")
    })?;
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("no PNG images in {}: pass --input IMG", dir.display());
    }
    Ok(v)
}

/// Reads and decodes an image file (PNG, PGM/PPM) without looking at any model: a missing,
/// unreadable or corrupt file fails here (`polypi query` decodes every input before it
/// connects, so a bad file costs the server nothing).
pub fn decode_image(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).with_context(|| {
        format!(
            "cannot read image {} (supported: PNG, PGM/PPM; check the path and that the file is \
             a valid image)",
            path.display()
        )
    })
}

/// Loads an image file (PNG, PGM/PPM) as one normalised NCHW sample of `plan`'s input shape:
/// [`decode_image`], then [`image_to_input`].
pub fn load_image(path: &Path, plan: &Plan) -> Result<Vec<f32>> {
    image_to_input(&decode_image(path)?, path, plan)
}

/// Converts a decoded image (read from `path`, named in messages) to one normalised NCHW sample
/// of `plan`'s input shape: grayscale or RGB by the input's channel count, `x/255`, then the
/// plan's per-channel `(x - mean) / std`. Errors when the size differs from the model's input
/// (no resizing). A colour image given to a grayscale model (or the reverse) is converted (luma,
/// or the gray value in all three channels) with a warning on stderr: the conversion is well
/// defined and often what the user wants, but a model sees a different kind of image than it was
/// trained on, which the user should know.
pub fn image_to_input(img: &image::DynamicImage, path: &Path, plan: &Plan) -> Result<Vec<f32>> {
    let shape = plan.input_shape();
    let (c, h, w) = match shape {
        [c, h, w] => (*c, *h, *w),
        _ => bail!("the model's input shape {shape:?} is not an image [C, H, W]"),
    };
    if img.width() as usize != w || img.height() as usize != h {
        bail!(
            "image {} is {}x{} pixels but the model expects {w}x{h} (width x height): resize it \
             to {w}x{h} first (polypi does not resize)",
            path.display(),
            img.width(),
            img.height()
        );
    }
    let colour = img.color().has_color();
    let pixels: Vec<u8> = match c {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        _ => bail!("the model expects {c} input channels; only 1 (grayscale) and 3 (RGB) images are supported"),
    };
    if colour && c == 1 {
        eprintln!(
            "warning: {} is a colour image but the model expects grayscale: converted to \
             grayscale (luma)",
            path.display()
        );
    } else if !colour && c == 3 {
        eprintln!(
            "warning: {} is a grayscale image but the model expects RGB: its gray value is used \
             in all three channels",
            path.display()
        );
    }
    Ok(pixels_to_input(&pixels, c, h, w, true, plan))
}

/// True when `path` names a NumPy `.npy` file (by extension).
pub fn is_npy(path: &Path) -> bool {
    path.extension().is_some_and(|x| x.eq_ignore_ascii_case("npy"))
}

/// Reads a NumPy `.npy` file of float32 values in C order: returns its shape and values.
/// Errors (naming the file): unreadable, not a `.npy` file, another dtype (e.g. float64: save
/// with `x.astype(np.float32)`), Fortran order.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let arr = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not a valid .npy file", path.display()))?;
    let descr = arr.dtype().descr();
    if !descr.contains("f4") {
        bail!(
            "{} holds {descr} values; polypi reads float32 .npy inputs (save them with \
             x.astype(numpy.float32))",
            path.display()
        );
    }
    if arr.order() != npyz::Order::C {
        bail!("{} is in Fortran order; save it in C order (numpy's default)", path.display());
    }
    let shape: Vec<usize> = arr.shape().iter().map(|&d| d as usize).collect();
    let data = arr
        .into_vec::<f32>()
        .with_context(|| format!("cannot read the values of {}", path.display()))?;
    Ok((shape, data))
}

/// Checks a `.npy` array (from `path`, named in messages) against `plan`'s input: its shape
/// must be exactly the input shape `[C, H, W]` (or `[F]`), with or without a leading batch
/// dimension of 1. The values are used as given (already normalised: the model's image
/// normalisation is not applied). Returns one NCHW sample.
pub fn npy_to_input(shape: &[usize], data: Vec<f32>, path: &Path, plan: &Plan) -> Result<Vec<f32>> {
    let want = plan.input_shape();
    let ok =
        shape == want || (shape.len() == want.len() + 1 && shape[0] == 1 && &shape[1..] == want);
    if !ok {
        bail!(
            "{} has shape {shape:?} but the model takes {want:?} (or [1, ...] with the batch \
             dimension): one float32 sample, NCHW, already normalised",
            path.display()
        );
    }
    if let Some(v) = data.iter().find(|v| !v.is_finite()) {
        bail!("{} holds a non-finite value {v}", path.display());
    }
    Ok(data)
}

/// Loads one input for `plan`: a `.npy` file ([`read_npy`], [`npy_to_input`]) or an image
/// ([`load_image`]).
pub fn load_input(path: &Path, plan: &Plan) -> Result<Vec<f32>> {
    if is_npy(path) {
        let (shape, data) = read_npy(path)?;
        npy_to_input(&shape, data, path, plan)
    } else {
        load_image(path, plan)
    }
}

/// Converts `u8` pixels to a normalised NCHW sample: `x/255`, then the plan's normalisation.
/// `interleaved`: pixels are HWC (as from an image file); otherwise CHW (as in datasets).
pub fn pixels_to_input(
    px: &[u8],
    c: usize,
    h: usize,
    w: usize,
    interleaved: bool,
    plan: &Plan,
) -> Vec<f32> {
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        let (mean, std) = match &plan.normalize {
            Some(n) => (
                n.mean.get(ch).copied().unwrap_or(0.0),
                n.std.get(ch).copied().filter(|s| *s != 0.0).unwrap_or(1.0),
            ),
            None => (0.0, 1.0),
        };
        for i in 0..h * w {
            let p = if interleaved { px[i * c + ch] } else { px[ch * h * w + i] };
            out[ch * h * w + i] = (p as f32 / 255.0 - mean) / std;
        }
    }
    out
}

/// Name of class `i`: the plan's label, or the index.
pub fn class_name(plan: &Plan, i: usize) -> String {
    plan.labels.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// Index of the largest value (first on ties).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// Numerically stable softmax.
pub fn softmax(xs: &[f32]) -> Vec<f32> {
    let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = xs.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// One class with its probability.
#[derive(Debug, Clone, Serialize)]
pub struct ClassProb {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// The `k` most probable classes of `logits`.
pub fn top_k(plan: &Plan, logits: &[f32], k: usize) -> Vec<ClassProb> {
    let p = softmax(logits);
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|a, b| p[*b].total_cmp(&p[*a]).then(a.cmp(b)));
    idx.into_iter()
        .take(k)
        .map(|i| ClassProb { class: i, label: class_name(plan, i), prob: p[i] })
        .collect()
}

/// Formats the top classes as `name 97.1%, name 2.0%, ...`.
pub fn fmt_top(top: &[ClassProb]) -> String {
    top.iter().map(|c| format!("{} {:.1}%", c.label, c.prob * 100.0)).collect::<Vec<_>>().join(", ")
}

/// TCP options with the given read/write timeout in seconds (0 = wait forever).
pub fn tcp_options(timeout_s: f64) -> Result<TcpOptions> {
    if !(timeout_s.is_finite() && timeout_s >= 0.0) {
        bail!("--timeout-s must be a number >= 0 (0 = wait forever), got {timeout_s}");
    }
    let t = (timeout_s > 0.0).then(|| Duration::from_secs_f64(timeout_s));
    Ok(TcpOptions { read_timeout: t, write_timeout: t, ..Default::default() })
}

/// Exit code of a range error ([`polypi_core::Error::RangeGuard`] or
/// [`polypi_core::Error::RangeExceeded`] anywhere in the chain): 3.
pub const EXIT_RANGE: u8 = 3;

/// The exit code of a failed command: [`EXIT_RANGE`] for range errors, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let range = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<polypi_core::Error>(),
            Some(polypi_core::Error::RangeGuard { .. } | polypi_core::Error::RangeExceeded { .. })
        )
    });
    if range {
        EXIT_RANGE
    } else {
        1
    }
}

/// What to do about an error, when its cause is a known polypi-core error.
pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    use polypi_core::Error as E;
    if e.chain().any(|c| c.downcast_ref::<polypi_import::ImportError>().is_some()) {
        return Some(
            "see docs/import.md for the ops polypi imports and how to export from PyTorch \
             (torch.onnx.export, batch 1 or a dynamic batch axis)",
        );
    }
    for cause in e.chain() {
        if let Some(pe) = cause.downcast_ref::<E>() {
            return Some(match pe {
                E::ModelFile { .. } => {
                    "pass --model FILE with a polypi model (.safetensors written by polypi-train \
                     or `polypi zoo`); `polypi inspect --model FILE` shows what is wrong"
                }
                E::Graph { .. } => {
                    "the model's graph is invalid at the named node: re-export the model with \
                     polypi-train, or check it with `polypi inspect`"
                }
                E::ShapeMismatch { .. } => {
                    "the input or a tensor has the wrong shape: `polypi inspect --model FILE` \
                     shows the expected input shape"
                }
                E::TooLarge { .. } => {
                    "the model exceeds polypi's size limits at the named node (an absurd \
                     padding, kernel, stride or channel count, or a network too large for one \
                     inference): fix that node's attributes and re-export the model"
                }
                E::RangeExceeded { .. } => {
                    "values left the fixed-point range: normalise the input as the model expects \
                     or use a model with smaller activations / fewer frac bits"
                }
                E::RangeGuard { check, .. } if check.starts_with("plan") => {
                    "the model's calibrated value ranges leave too little headroom in the ring at \
                     its frac bits (see `polypi inspect --model FILE`): use fewer frac bits, \
                     raise --max-fail-prob, or --range-check warn|off (the runtime range guard \
                     still refuses garbage results)"
                }
                E::RangeGuard { .. } => {
                    "the range guard refused a value outside the model's calibrated range (see \
                     README, threat model): check that the input is a normal image for this \
                     model; `polypi inspect --model FILE` shows the range check; --range-guard \
                     warn|off and --range-check warn|off relax it (results may then be garbage)"
                }
                E::PeerDisconnected { .. } => {
                    "the peer stopped or the link failed: check that `polypi serve` and `polypi \
                     dealer` are running and reachable, then retry (raise --timeout-s on slow links)"
                }
                E::VersionMismatch { .. } => {
                    "run the same polypi version for server, client and dealer, and check that the \
                     addresses point at polypi processes"
                }
                E::Tls { .. } => {
                    "TLS failed: give every role --tls-dir with certificates from the same \
                     `polypi certs` run (or the same CA), and dial the names the certificates \
                     carry (--host when generating them, or --server-name / --dealer-name)"
                }
                E::Refused { .. } => {
                    "the server or the dealer named above is at its session or memory limit: \
                     retry later, or ask its operator to raise --max-concurrent / \
                     --memory-budget-mb or add server replicas"
                }
                E::Protocol(_) => {
                    "the peer sent something unexpected: check that --connect and --dealer point \
                     at a polypi server and a polypi dealer of the same version"
                }
                E::InvalidArgument(_) => {
                    "see the message above; `polypi help <command>` lists the options"
                }
                E::Io(io) => match io.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "choose another port for --listen, or stop the program listening there"
                    }
                    std::io::ErrorKind::NotFound => "check the path",
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut => {
                        "start the peer first (polypi serve / polypi dealer) and check the address"
                    }
                    _ => "check the path, address or permissions named above",
                },
            });
        }
    }
    None
}

/// Where the correlated randomness comes from (`--preprocessing`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preprocessing {
    /// A dealer (a third party trusted not to collude; a thread of this process).
    #[default]
    Dealer,
    /// Server and client alone (HE for linear layers, HE-based OLE for polynomial powers; no
    /// third party); ReLU / max-pool / ESPN are refused. See docs/two-party.md.
    TwoParty,
}

/// `--preprocessing`, shared by infer and bench.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PreprocessingArg {
    /// Source of the correlated randomness: dealer (a third party, default) or two-party
    /// (server and client alone, no dealer; docs/two-party.md).
    #[arg(long = "preprocessing", value_enum, default_value = "dealer")]
    pub preprocessing: Preprocessing,
}

/// `--poly-protocol`, shared by every command that runs or prices polynomial layers (infer, serve,
/// eval, bench, cost).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PolyProtocolArg {
    /// Protocol of the polynomial layers: dealer-powers (HoneyBadger-style, the default: equal
    /// cost at degree 2, fewer online bytes from degree 3 on) or share-powers (ESPN, Diaa et al.,
    /// USENIX Security '24 §4); see docs/polynomials.md. A server sends its choice to client and
    /// dealer in the plan skeleton.
    #[arg(long = "poly-protocol", default_value = "dealer-powers")]
    pub poly_protocol: polypi_core::model::PolyProtocol,
}
