#!/usr/bin/env python3
"""Exports the ONNX fixtures of `polypi import` from PyTorch, with both of torch's exporters.

For each network below (random weights, eval mode, fixed seeds) it writes into --out:

- `NAME.ts17.onnx`      torch.onnx.export(dynamo=False, opset_version=17) (TorchScript exporter)
- `NAME.dynamo18.onnx`  torch.onnx.export(dynamo=True, opset_version=18) (the default exporter;
                        weights in `NAME.dynamo18.onnx.data` beside it when torch writes them
                        there)
- `NAME.input.npy`      the input, float32 NCHW [1, C, H, W]
- `NAME.logits.npy`     torch's output for that input, float32 [1, classes] (for a network that
                        ends in softmax: the logits before it)

Networks (docs/import.md):
- `pasnet_resnet`  PASNet-style small ResNet, X2act `s*w0*x^2 + w1*x + b` at every site (scalar
                   or per-channel nn.Parameters; spelled x*x, x.pow(2), torch.square; one site with
                   w1 = 1, b = 0), strided block with a 1x1 projection, global average pooling.
- `pillar_vgg`     PILLAR-style VGG-BN-avg with the degree-4 q(x) by power caching
                   (x2 = x*x; x4 = x2*x2; the x^3 term missing).
- `pkn`            PolyKervNets: conv -> (+ c_p) -> ^2 -> BatchNorm, average pooling; one R-PKN site
                   `a_p * (conv(x) + c_p)^2`.
- `mobilenet`      MobileNetV2-style inverted residual: 1x1 expand, depthwise 3x3 (groups = C),
                   torch.square activations, 1x1 project, residual add; ReduceMean pooling.
- `relu_mix`       ReLU, max-pool with padding, dropout, flatten by view, and a final softmax
                   (which the importer drops: argmax unchanged).
- `refuse_sigmoid` Sigmoid and Tanh mid-network and a Softmax that is not the output: refused.

Usage: python3 scripts/export_onnx.py [--out DIR] [--venv DIR] [--resnet18 DIR]

The script needs torch, onnx, onnxscript and numpy; run with a Python that lacks them it creates a
virtual environment (--venv, default .venv-export in the repository, git-ignored), installs them
from PyPI with pip, and re-runs itself there. --resnet18 DIR also exports an ImageNet-size
torchvision-shaped ResNet-18 with X2act (random weights, 3x224x224; not committed).
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "crates", "polypi-import", "tests", "fixtures")


def ensure_venv(venv):
    """Re-runs this script in `venv` (created and filled on first use) unless torch is here."""
    try:
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    py = os.path.join(venv, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit("the venv %s lacks torch/onnx/onnxscript/numpy and installing them failed" % venv)
    if not os.path.exists(py):
        print("creating %s and installing torch onnx onnxscript numpy (large download)" % venv)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "torch", "onnx", "onnxscript",
                               "numpy"])
    os.execv(py, [py] + sys.argv)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture folder (default: %(default)s)")
    ap.add_argument("--venv", default=os.environ.get("POLYPI_EXPORT_VENV",
                                                     os.path.join(ROOT, ".venv-export")))
    ap.add_argument("--resnet18", metavar="DIR", help="also export the ImageNet-size ResNet-18")
    ap.add_argument("--only", help="comma-separated network names")
    args = ap.parse_args()
    ensure_venv(args.venv)
    export_all(args)


def export_all(args):
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)

    def randomize_bn(m, gen):
        """Random running statistics and affine parameters, so that BatchNorm is not identity."""
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                with torch.no_grad():
                    mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                    mod.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                    mod.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                    mod.bias.copy_(torch.randn(c, generator=gen) * 0.1)

    class X2Act(nn.Module):
        """PASNet / PolyMPCNet X2act: s*w0*x^2 + w1*x + b (scalar per site, or per channel)."""

        def __init__(self, channels=None, s=1.0, spelling="mul", w0=None, w1=None, b=None):
            super().__init__()
            shape = (1, channels, 1, 1) if channels else ()
            self.s = s
            self.spelling = spelling

            def p(v, default):
                if v is not None:
                    return nn.Parameter(torch.full(shape, float(v)))
                return nn.Parameter(default + 0.1 * torch.randn(shape))

            self.w0 = p(w0, 0.5)
            self.w1 = p(w1, 1.0)
            self.b = p(b, 0.0)

        def forward(self, x):
            if self.spelling == "mul":
                sq = x * x
            elif self.spelling == "pow":
                sq = x.pow(2)
            else:
                sq = torch.square(x)
            return self.s * self.w0 * sq + self.w1 * x + self.b

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, acts):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.act1 = acts[0]
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.act2 = acts[1]
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.act1(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x if self.short is None else self.short(x)
            return self.act2(y + s)

    class PasnetResNet(nn.Module):
        def __init__(self, w=8, classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, w, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(w)
            self.act = X2Act(spelling="mul", s=0.1)
            self.b1 = Block(w, w, 1, [X2Act(w, spelling="pow"), X2Act(w1=1.0, b=0.0, spelling="mul")])
            self.b2 = Block(w, 2 * w, 2, [X2Act(2 * w, spelling="square"), X2Act(spelling="pow")])
            self.fc = nn.Linear(2 * w, classes)

        def forward(self, x):
            x = self.act(self.bn(self.stem(x)))
            x = self.b2(self.b1(x))
            x = F.adaptive_avg_pool2d(x, 1)
            return self.fc(torch.flatten(x, 1))

    class Quartic(nn.Module):
        """PILLAR's degree-4 q(x), power caching: x2 = x*x; x4 = x2*x2 (no x^3 term)."""

        def __init__(self, c=(0.2, 0.5, 0.25, 0.0, -0.01)):
            super().__init__()
            self.c = c

        def forward(self, x):
            x2 = x * x
            x4 = x2 * x2
            return self.c[0] + self.c[1] * x + self.c[2] * x2 + self.c[4] * x4

    class PillarVgg(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            layers = []
            cin = 3
            for cout, pool in [(8, False), (8, True), (16, True)]:
                layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), Quartic()]
                if pool:
                    layers.append(nn.AvgPool2d(2))
                cin = cout
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(16 * 4 * 4, classes)

        def forward(self, x):
            x = self.features(x)
            return self.fc(x.flatten(1))

    class Kerv(nn.Module):
        """PolyKervNets: a_p * (conv(x) + c_p)^2 then BatchNorm."""

        def __init__(self, cin, cout, a_p=None):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
            self.c_p = nn.Parameter(torch.tensor(0.5))
            self.a_p = None if a_p is None else nn.Parameter(torch.tensor(a_p))
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            y = (self.conv(x) + self.c_p) ** 2
            if self.a_p is not None:
                y = self.a_p * y
            return self.bn(y)

    class Pkn(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.k1 = Kerv(3, 8)
            self.pool1 = nn.AvgPool2d(2)
            self.k2 = Kerv(8, 16, a_p=0.3)
            self.pool2 = nn.AvgPool2d(2)
            self.fc = nn.Linear(16 * 4 * 4, classes)

        def forward(self, x):
            x = self.pool1(self.k1(x))
            x = self.pool2(self.k2(x))
            return self.fc(torch.flatten(x, 1))

    class InvertedResidual(nn.Module):
        def __init__(self, c, expand, stride):
            super().__init__()
            h = c * expand
            self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h))
            self.dw = nn.Sequential(nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False),
                                    nn.BatchNorm2d(h))
            self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
            self.residual = stride == 1

        def forward(self, x):
            y = torch.square(self.expand(x))
            y = torch.square(self.dw(y))
            y = self.project(y)
            return x + y if self.residual else y

    class MobileNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8))
            self.block1 = InvertedResidual(8, 4, 1)
            self.block2 = InvertedResidual(8, 2, 2)
            self.fc = nn.Linear(8, classes)

        def forward(self, x):
            x = torch.square(self.stem(x))
            x = self.block2(self.block1(x))
            x = x.mean(dim=(2, 3))
            return self.fc(x)

    class ReluMix(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
            self.bn1 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.conv2 = nn.Conv2d(8, 8, 3, 1, 1)
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(8 * 8 * 8, classes)

        def logits(self, x):
            x = self.pool(F.relu(self.bn1(self.conv1(x))))
            x = self.conv2(x)
            x = x * x
            x = x.view(x.size(0), -1)
            return self.fc(self.drop(x))

        def forward(self, x):
            return F.softmax(self.logits(x), dim=1)

    class RefuseSigmoid(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, 1, 1)
            self.conv2 = nn.Conv2d(4, 4, 3, 1, 1)
            self.fc = nn.Linear(4 * 16 * 16, classes)

        def forward(self, x):
            x = torch.sigmoid(self.conv1(x))
            x = torch.tanh(self.conv2(x))
            x = torch.softmax(x, dim=1)
            return self.fc(x.flatten(1))

    nets = {
        "pasnet_resnet": (PasnetResNet, (3, 16, 16)),
        "pillar_vgg": (PillarVgg, (3, 16, 16)),
        "pkn": (Pkn, (3, 16, 16)),
        "mobilenet": (MobileNet, (3, 16, 16)),
        "relu_mix": (ReluMix, (3, 16, 16)),
        "refuse_sigmoid": (RefuseSigmoid, (3, 16, 16)),
    }
    only = set(args.only.split(",")) if args.only else None
    os.makedirs(args.out, exist_ok=True)
    for i, (name, (cls, shape)) in enumerate(nets.items()):
        if only and name not in only:
            continue
        torch.manual_seed(100 + i)
        gen = torch.Generator().manual_seed(200 + i)
        model = cls()
        randomize_bn(model, gen)
        model.eval()
        x = torch.randn((1,) + shape, generator=gen)
        export(model, x, os.path.join(args.out, name), np, torch)

    if not only or "hand_mlp" in only:
        hand_built(args.out, np)
    if not only or "mobilenet" in only:
        # One network also through the TorchScript exporter at opset 13 (ReduceMean with its
        # axes as an attribute, Unsqueeze with axes as an input).
        torch.manual_seed(103)
        gen = torch.Generator().manual_seed(203)
        model = MobileNet()
        randomize_bn(model, gen)
        model.eval()
        x = torch.from_numpy(np.load(os.path.join(args.out, "mobilenet.input.npy")))
        torch.onnx.export(model, (x,), os.path.join(args.out, "mobilenet.ts13.onnx"), dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["logits"])

    if args.resnet18:
        os.makedirs(args.resnet18, exist_ok=True)
        torch.manual_seed(18)
        model = resnet18_x2act(nn, X2Act)
        randomize_bn(model, torch.Generator().manual_seed(18))
        model.eval()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(19))
        export(model, x, os.path.join(args.resnet18, "resnet18_x2act"), np, torch, both=False)


def hand_built(out, np):
    """Graphs built node by node with onnx.helper (no torch), for what torch does not emit here:
    - `hand_mlp.onnx` (opset 13): input [N, 16] -> MatMul + Add (bias) -> (x - 0.5) / 2 -> Neg ->
      x*x + x -> Dropout (inference: identity) -> MatMul + Add -> logits [N, 4]; reference
      computed with numpy;
    - `refuse_misc.onnx`: a Conv with asymmetric pads, Pow(x, 0.5) and the product of two
      different tensors, each on its own branch, and a Sigmoid after them: all four must be
      listed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((16, 8)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, 4)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"),
              (np.array(0.5, np.float32), "half"), (np.array(2.0, np.float32), "two")]]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Sub", ["hb", "half"], ["s"], name="sub"),
        helper.make_node("Div", ["s", "two"], ["d"], name="div"),
        helper.make_node("Neg", ["d"], ["n"], name="neg"),
        helper.make_node("Mul", ["n", "n"], ["sq"], name="square"),
        helper.make_node("Add", ["sq", "n"], ["act"], name="act"),
        helper.make_node("Dropout", ["act"], ["dropped"], name="dropout"),
        helper.make_node("MatMul", ["dropped", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["logits"], name="fc2_bias"),
    ]
    g = helper.make_graph(nodes, "hand_mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnx.helper")
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out, "hand_mlp.onnx"))
    x = rng.standard_normal((1, 16)).astype(np.float32)
    n = -(((x @ w1 + b1) - 0.5) / 2.0)
    y = (n * n + n) @ w2 + b2
    np.save(os.path.join(out, "hand_mlp.input.npy"), x)
    np.save(os.path.join(out, "hand_mlp.logits.npy"), y.astype(np.float32))

    wa = (rng.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wa, "wb"),
             numpy_helper.from_array(np.array(0.5, np.float32), "p")]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_asym", pads=[0, 0, 1, 1]),
        helper.make_node("Pow", ["x", "p"], ["r"], name="sqrt_by_pow"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_ok", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["b", "x"], ["g"], name="gate"),
        helper.make_node("Add", ["r", "g"], ["rg"], name="sum1"),
        helper.make_node("Add", ["rg", "a"], ["s2"], name="sum2"),
        helper.make_node("Sigmoid", ["s2"], ["y"], name="after_refused"),
    ]
    g = helper.make_graph(nodes, "refuse_misc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx.helper")
    onnx.save(m, os.path.join(out, "refuse_misc.onnx"))
    print("hand_mlp refuse_misc written")


def resnet18_x2act(nn, X2Act):
    """torchvision-shaped ResNet-18 (BasicBlock [2, 2, 2, 2], 7x7 stem, max-pool) with every ReLU
    replaced by a per-channel X2act, 1000 classes."""
    import torch

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.act1 = X2Act(cout, w0=0.05)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.act2 = X2Act(cout, w0=0.05)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.act1(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.act2(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.act = X2Act(64, w0=0.05)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers = []
            cin = 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(self.act(self.bn1(self.conv1(x))))
            x = self.avgpool(self.layers(x))
            return self.fc(torch.flatten(x, 1))

    m = ResNet18()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            with torch.no_grad():
                mod.weight.mul_(0.5)
    return m


def export(model, x, stem, np, torch, both=True):
    """Writes STEM.ts17.onnx, STEM.dynamo18.onnx (+ .data), STEM.input.npy, STEM.logits.npy."""
    with torch.no_grad():
        out = model.logits(x) if hasattr(model, "logits") else model(x)
    np.save(stem + ".input.npy", x.numpy().astype(np.float32))
    np.save(stem + ".logits.npy", out.numpy().astype(np.float32))
    if both:
        torch.onnx.export(model, (x,), stem + ".ts17.onnx", dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=18)
    prog.save(stem + ".dynamo18.onnx", external_data=True)
    sizes = [(p, os.path.getsize(p)) for p in
             [stem + ".ts17.onnx", stem + ".dynamo18.onnx", stem + ".dynamo18.onnx.data"]
             if os.path.exists(p)]
    print(os.path.basename(stem), " ".join("%s=%dB" % (os.path.basename(p), s) for p, s in sizes))


if __name__ == "__main__":
    main()
