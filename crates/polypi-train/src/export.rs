//! Export of a trained [`Net`] to the polypi model file (design.md §5): the graph IR of
//! `polypi_core::model::graph` plus the weights as named f32 tensors in PyTorch layout
//! (conv `[c_out, c_in/groups, kh, kw]`, linear `[out, in]`, per-channel vectors `[C]`).
//!
//! The graph reproduces burn's inference-mode forward exactly: batch norm with running statistics
//! (as a `BatchNorm2d` node, folded later by the compiler), flatten in C, H, W order, linear
//! weights transposed from burn's `[in, out]`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::Tensor;
use polypi_core::model::arch::Unit as AUnit;
use polypi_core::model::file::{ModelFile, TensorF32};
use polypi_core::model::graph::{Graph, ModelCard, Node, Normalize, Op};

use crate::archnet::{Layer, L_AVGPOOL, L_CONV, L_KERV, L_MAXPOOL};
use crate::layers::{ActKind, Activation};
use crate::nets::{Net, Unit, POOL_AVG, POOL_MAX};
use crate::train::{TrainConfig, TrainReport};

fn data<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let shape = t.dims().to_vec();
    (shape, t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default())
}

struct Builder {
    nodes: Vec<Node>,
    tensors: BTreeMap<String, TensorF32>,
    count: BTreeMap<&'static str, usize>,
}

impl Builder {
    fn name(&mut self, kind: &'static str) -> String {
        let c = self.count.entry(kind).or_insert(0);
        *c += 1;
        format!("{kind}{c}")
    }

    fn tensor<const D: usize>(&mut self, name: String, t: Tensor<D>) -> String {
        let (shape, data) = data(t);
        self.tensors.insert(name.clone(), TensorF32 { shape, data });
        name
    }

    fn param1(&mut self, name: String, p: &Param<Tensor<1>>) -> String {
        self.tensor(name, p.val())
    }

    fn push(&mut self, name: String, input: &str, op: Op) -> String {
        self.nodes.push(Node { name: name.clone(), inputs: vec![input.to_string()], op });
        name
    }

    fn conv(&mut self, c: &Conv2d, padding: usize, input: &str) -> String {
        let n = self.name("conv");
        self.conv_named(n, c, padding, input)
    }

    fn conv_named(&mut self, n: String, c: &Conv2d, padding: usize, input: &str) -> String {
        let weight = self.tensor(format!("{n}.weight"), c.weight.val());
        let bias = c.bias.as_ref().map(|b| self.param1(format!("{n}.bias"), b));
        self.push(
            n,
            input,
            Op::Conv2d { weight, bias, stride: c.stride[0], padding, groups: c.groups },
        )
    }

    fn bn(&mut self, b: &BatchNorm, input: &str) -> String {
        let n = self.name("bn");
        self.bn_named(n, b, input)
    }

    fn bn_named(&mut self, n: String, b: &BatchNorm, input: &str) -> String {
        let weight = self.param1(format!("{n}.weight"), &b.gamma);
        let bias = self.param1(format!("{n}.bias"), &b.beta);
        let running_mean = self.tensor(format!("{n}.running_mean"), b.running_mean.value());
        let running_var = self.tensor(format!("{n}.running_var"), b.running_var.value());
        self.push(
            n,
            input,
            Op::BatchNorm2d { weight, bias, running_mean, running_var, eps: b.epsilon as f32 },
        )
    }

    fn linear(&mut self, l: &Linear, input: &str) -> String {
        let n = self.name("fc");
        self.linear_named(n, l, input)
    }

    fn linear_named(&mut self, n: String, l: &Linear, input: &str) -> String {
        // burn stores [in, out]; the file wants PyTorch's [out, in].
        let weight = self.tensor(format!("{n}.weight"), l.weight.val().transpose());
        let bias = l.bias.as_ref().map(|b| self.param1(format!("{n}.bias"), b));
        self.push(n, input, Op::Linear { weight, bias })
    }

    fn act(&mut self, a: &Activation, input: &str) -> String {
        let n = self.name(match a.act_kind() {
            ActKind::Relu => "relu",
            ActKind::X2act | ActKind::ReactPkn => "x2act",
            ActKind::Poly | ActKind::Square => "poly",
            ActKind::Pkn | ActKind::Rpkn => "polykerv",
        });
        self.act_named(n, a, input)
    }

    fn act_named(&mut self, n: String, a: &Activation, input: &str) -> String {
        match a.act_kind() {
            ActKind::Relu => self.push(n, input, Op::Relu),
            ActKind::X2act | ActKind::ReactPkn => match &a.x2 {
                Some(x2) => {
                    let w0 = self.param1(format!("{n}.w0"), &x2.w0);
                    let w1 = self.param1(format!("{n}.w1"), &x2.w1);
                    let b = self.param1(format!("{n}.b"), &x2.b);
                    self.push(n, input, Op::X2Act { s: x2.s, w0, w1, b })
                }
                None => self.push(n, input, Op::Identity),
            },
            ActKind::Poly | ActKind::Square => self.push(
                n,
                input,
                Op::Poly { coefficients: a.poly_coefficients(), coefficients_tensor: None },
            ),
            ActKind::Pkn | ActKind::Rpkn => match &a.kerv {
                Some(k) => {
                    let c_p = data(k.c_p.val()).1.first().copied().unwrap_or(0.0);
                    let a_p = data(k.a_p.val()).1.first().copied().unwrap_or(1.0);
                    self.push(n, input, Op::PolyKerv { c_p, d_p: k.d_p, a_p })
                }
                None => self.push(n, input, Op::Identity),
            },
        }
    }

    fn unit(&mut self, u: &Unit, mut cur: String) -> String {
        if let Some(c) = &u.conv {
            cur = self.conv(c, u.padding, &cur);
        }
        if let Some(l) = &u.linear {
            cur = self.linear(l, &cur);
        }
        if u.act_first {
            if let Some(a) = &u.act {
                cur = self.act(a, &cur);
            }
        }
        if let Some(b) = &u.bn {
            cur = self.bn(b, &cur);
        }
        if !u.act_first {
            if let Some(a) = &u.act {
                cur = self.act(a, &cur);
            }
        }
        if u.pool == POOL_AVG {
            let n = self.name("avgpool");
            cur = self.push(n, &cur, Op::AvgPool2d { kernel: 2, stride: 2, padding: 0 });
        } else if u.pool == POOL_MAX {
            let n = self.name("maxpool");
            cur = self.push(n, &cur, Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 });
        }
        if u.gap {
            let n = self.name("gap");
            cur = self.push(n, &cur, Op::GlobalAvgPool);
        }
        if u.flatten {
            let n = self.name("flatten");
            cur = self.push(n, &cur, Op::Flatten);
        }
        cur
    }
}

impl Builder {
    /// The nodes of description `units` built as `layers` (one layer per unit, in order) on
    /// `cur`, named as the description names them (as `polypi zoo` does).
    fn described(&mut self, units: &[AUnit], layers: &[Layer], mut cur: String) -> Result<String> {
        if units.len() != layers.len() {
            bail!(
                "the network has {} layers where its description has {} units (built from \
                 another description?)",
                layers.len(),
                units.len()
            );
        }
        for (u, l) in units.iter().zip(layers) {
            cur = self.described_unit(u, l, cur)?;
        }
        Ok(cur)
    }

    fn described_unit(&mut self, u: &AUnit, l: &Layer, cur: String) -> Result<String> {
        let mismatch = |what: &str| anyhow::anyhow!("{what}: layer does not match its description");
        Ok(match u {
            AUnit::Conv(c) | AUnit::Kerv(c) => {
                let conv = l.conv.as_ref().ok_or_else(|| mismatch(&c.name))?;
                let mut y = self.conv_named(c.name.clone(), conv, l.padding, &cur);
                let act = match (&c.act, &l.act) {
                    (Some(n), Some(a)) => Some((n.clone(), a)),
                    (None, None) => None,
                    _ => return Err(mismatch(&c.name)),
                };
                if l.kind == L_KERV {
                    if let Some((n, a)) = &act {
                        y = self.act_named(n.clone(), a, &y);
                    }
                }
                match (&c.bn, &l.bn) {
                    (Some(n), Some(b)) => y = self.bn_named(n.clone(), b, &y),
                    (None, None) => {}
                    _ => return Err(mismatch(&c.name)),
                }
                if l.kind == L_CONV {
                    if let Some((n, a)) = &act {
                        y = self.act_named(n.clone(), a, &y);
                    }
                }
                y
            }
            AUnit::Pool { name, .. } | AUnit::AvgPool { name, .. } => {
                let (kernel, stride, padding) = (l.kernel, l.stride, l.padding);
                let op = match l.kind {
                    L_MAXPOOL => Op::MaxPool2d { kernel, stride, padding },
                    L_AVGPOOL => Op::AvgPool2d { kernel, stride, padding },
                    _ => return Err(mismatch(name)),
                };
                self.push(name.clone(), &cur, op)
            }
            AUnit::GlobalAvgPool { name } => self.push(name.clone(), &cur, Op::GlobalAvgPool),
            AUnit::Flatten { name } => self.push(name.clone(), &cur, Op::Flatten),
            AUnit::Linear { name, act, .. } => {
                let lin = l.linear.as_ref().ok_or_else(|| mismatch(name))?;
                let y = self.linear_named(name.clone(), lin, &cur);
                match (act, &l.act) {
                    (Some(n), Some(a)) => self.act_named(n.clone(), a, &y),
                    (None, None) => y,
                    _ => return Err(mismatch(name)),
                }
            }
            AUnit::Residual { add, body, shortcut, act } => {
                let y = self.described(body, &l.body, cur.clone())?;
                let s = self.described(shortcut, &l.shortcut, cur)?;
                self.nodes.push(Node { name: add.clone(), inputs: vec![y, s], op: Op::Add });
                match (act, &l.act) {
                    (Some(n), Some(a)) => self.act_named(n.clone(), a, add),
                    (None, None) => add.clone(),
                    _ => return Err(mismatch(add)),
                }
            }
        })
    }
}

/// Converts `model` (put in inference mode) to a polypi [`ModelFile`] for inputs of `cfg.data`.
/// A network built from its architecture description ([`crate::archnet`]) gets the
/// description's node and tensor names (those of `polypi zoo`); NET-M, NET-C and NET-R18 get
/// numbered names (`conv1`, `bn1`, ...), as before.
///
/// # Errors
/// For a network built from its description: the description cannot be made again from `cfg`
/// (stem, classes), or `model`'s layers do not match it.
pub fn to_model_file(model: &Net, cfg: &TrainConfig, card: Option<ModelCard>) -> Result<ModelFile> {
    let model = model.valid();
    let mut b = Builder { nodes: vec![], tensors: BTreeMap::new(), count: BTreeMap::new() };
    b.nodes.push(Node { name: "input".into(), inputs: vec![], op: Op::Input });
    let mut cur = "input".to_string();
    if cfg.net.from_description() {
        let arch = crate::archnet::describe(&cfg.spec())?;
        cur = b.described(&arch.units, &model.arch, cur)?;
    }
    for u in &model.pre {
        cur = b.unit(u, cur);
    }
    for blk in &model.blocks {
        let x = cur.clone();
        let mut y = b.conv(&blk.conv1, 1, &x);
        if blk.kerv {
            y = b.act(&blk.act1, &y);
            y = b.bn(&blk.bn1, &y);
        } else {
            y = b.bn(&blk.bn1, &y);
            y = b.act(&blk.act1, &y);
        }
        y = b.conv(&blk.conv2, 1, &y);
        y = b.bn(&blk.bn2, &y);
        let mut s = x;
        if let Some(c) = &blk.short_conv {
            s = b.conv(c, 0, &s);
        }
        if let Some(a) = &blk.short_act {
            s = b.act(a, &s);
        }
        if let Some(bn) = &blk.short_bn {
            s = b.bn(bn, &s);
        }
        let n = b.name("add");
        b.nodes.push(Node { name: n.clone(), inputs: vec![y, s], op: Op::Add });
        cur = match &blk.act2 {
            Some(a) => b.act(a, &n),
            None => n,
        };
    }
    for u in &model.post {
        cur = b.unit(u, cur);
    }
    let _ = cur;
    let (mean, std) = cfg.data.normalization();
    // `--classes` beyond the dataset's: the extra outputs are named by their index.
    let mut labels = cfg.labels();
    let classes = cfg.spec().classes;
    if !labels.is_empty() && labels.len() < classes {
        labels.extend((labels.len()..classes).map(|i| format!("class{i}")));
    }
    let graph = Graph {
        input_shape: cfg.input_shape().to_vec(),
        frac_bits: 16,
        normalize: Some(Normalize { mean, std }),
        nodes: b.nodes,
        labels,
    };
    Ok(ModelFile { graph, card, ranges: None, tensors: b.tensors })
}

/// The model card of a finished run.
pub fn card_for(cfg: &TrainConfig, report: &TrainReport) -> ModelCard {
    let split = if cfg.data == crate::data::DatasetKind::Cifar10 && report.train_size == 4660 {
        "4660/932 (real CIFAR-10 subset: first 932 images of each official batch)".to_string()
    } else {
        format!("{}/{}", report.train_size, report.test_size)
    };
    ModelCard {
        name: match &cfg.arch {
            Some(a) => format!("{} searched [{}]", cfg.net.display_name(), a.summary()),
            None => format!("{} {}", cfg.net.display_name(), cfg.act.name()),
        },
        dataset: cfg.data.display_name().to_string(),
        split,
        test_accuracy: Some(report.test_accuracy as f32),
        recipe: format!(
            "{}{}",
            cfg.recipe(),
            if cfg.command.is_empty() {
                String::new()
            } else {
                format!("; command: {}", cfg.command)
            }
        ),
    }
}

/// Writes `model` as a polypi model file at `path`.
///
/// # Errors
/// Whatever `ModelFile::save` reports (I/O, validation).
pub fn export(model: &Net, cfg: &TrainConfig, card: Option<ModelCard>, path: &Path) -> Result<()> {
    let mf = to_model_file(model, cfg, card)?;
    mf.save(path).with_context(|| format!("writing model file {}", path.display()))?;
    Ok(())
}
