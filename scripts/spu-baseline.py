#!/usr/bin/env python3
"""SPU 0.9.5 CHEETAH baseline for NET-M / NET-C (issue 18): wall time and bytes.

Runs the two reference networks of `polypi zoo` (random weights; the cost of a
2PC inference does not depend on the weight values) with SPU's CHEETAH
two-party protocol (Huang et al., USENIX Security 2022) over the ring
Z_2^64 (FM64) with 16 fractional bits, batch 1, and reports for each party:

* the wall time of the first inference (link setup + runtime creation + input
  upload + CHEETAH's lazy OT / HE key setup + execution + output download),
  then of further inferences on the same runtime (setup already done);
* the bytes each party sent and received during each inference, as counted by
  SPU's own link statistics (`enable_pphlo_profile`, "Link details: total send
  bytes ..." log line of libspu/device/api.cc).

The two parties are two OS processes talking brpc over 127.0.0.1 (the
`--link mem` alternative runs them as two threads over SPU's in-memory link,
like `spu.utils.simulation.Simulator`). The client's image and the server's
weights are both secret shared (VIS_SECRET): SPU 0.9.5's CHEETAH Io refuses
VIS_PRIVATE ("cheetah/io.cc:78 unsupported vis type V"), so a server-owned
plaintext weight is not expressible and every conv / fc is secret x secret.
`--weights public` makes the weights public to both parties (NOT private
inference: the client learns the model); it is a lower bound in which the
linear layers are local and only x*x / ReLU / truncation cost communication.

This script is a manual benchmark: it is NOT run in CI and nothing imports it.
It needs SPU, which is not a dependency of polypi:

    python3 -m venv /tmp/venv-spu
    /tmp/venv-spu/bin/pip install spu==0.9.5      # pulls jax/jaxlib 0.4.34
    /tmp/venv-spu/bin/python scripts/spu-baseline.py --net NET-M --act square
    /tmp/venv-spu/bin/python scripts/spu-baseline.py --net NET-C --act square
    /tmp/venv-spu/bin/python scripts/spu-baseline.py --net NET-C --act relu --runs 1

Architectures (NCHW, as printed by `polypi zoo --net NET-M --act square --describe`):

* NET-M, input 1x28x28: conv5x5 1->16, act, pool2, conv5x5 16->16, act, pool2,
  flatten (256), fc 256->100, act, fc 100->10.
* NET-C, input 3x32x32: conv3x3 3->64 p1, act, conv3x3 64->64 p1, act, pool2,
  conv3x3 64->64 p1, act, conv3x3 64->64 p1, act, pool2, conv3x3 64->64 p1, act,
  conv1x1 64->64, act, conv1x1 64->16, act, flatten (1024), fc 1024->10.

`act` is x*x (`--act square`) or ReLU (`--act relu`); pool is 2x2/s2 average
(`--pool avg`, polypi's default) or max.
"""

import argparse
import json
import multiprocessing as mp
import os
import re
import socket
import sys
import time

LINK_RE = re.compile(
    r"Link details: total send bytes (\d+), recv bytes (\d+), "
    r"send actions (\d+), recv actions (\d+)"
)


def conv(x, w, b, pad):
    """NCHW conv, OIHW weight, stride 1, symmetric zero padding `pad`."""
    import jax

    y = jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return y + b.reshape(1, -1, 1, 1)


def pool2(x, kind):
    """2x2 stride-2 pooling of an NCHW tensor (avg or max)."""
    import jax.numpy as jnp

    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2)
    if kind == "avg":
        return jnp.sum(x, axis=(3, 5)) * 0.25
    return jnp.max(x, axis=(3, 5))


def act_fn(name):
    import jax

    if name == "square":
        return lambda x: x * x
    if name == "relu":
        return jax.nn.relu
    raise SystemExit(f"unknown --act {name!r} (square or relu)")


def net_spec(net):
    """Layer list: ("conv", cin, cout, k, pad, act?), ("pool",), ("flatten",), ("fc", in, out, act?)."""
    if net == "NET-M":
        return (1, 28, 28), [
            ("conv", 1, 16, 5, 0, True),
            ("pool",),
            ("conv", 16, 16, 5, 0, True),
            ("pool",),
            ("flatten",),
            ("fc", 256, 100, True),
            ("fc", 100, 10, False),
        ]
    if net == "NET-C":
        return (3, 32, 32), [
            ("conv", 3, 64, 3, 1, True),
            ("conv", 64, 64, 3, 1, True),
            ("pool",),
            ("conv", 64, 64, 3, 1, True),
            ("conv", 64, 64, 3, 1, True),
            ("pool",),
            ("conv", 64, 64, 3, 1, True),
            ("conv", 64, 64, 1, 0, True),
            ("conv", 64, 16, 1, 0, True),
            ("flatten",),
            ("fc", 1024, 10, False),
        ]
    raise SystemExit(f"unknown --net {net!r} (NET-M or NET-C)")


def make_params(spec, seed):
    """Random weights with 1/sqrt(fan_in) scale (keeps x^2 activations in fixed-point range)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params = []
    for layer in spec:
        if layer[0] == "conv":
            _, cin, cout, k, _, _ = layer
            s = 1.0 / np.sqrt(cin * k * k)
            params.append(rng.normal(0, s, (cout, cin, k, k)).astype(np.float32))
            params.append(rng.normal(0, 0.01, (cout,)).astype(np.float32))
        elif layer[0] == "fc":
            _, fin, fout, _ = layer
            s = 1.0 / np.sqrt(fin)
            params.append(rng.normal(0, s, (fin, fout)).astype(np.float32))
            params.append(rng.normal(0, 0.01, (fout,)).astype(np.float32))
    return params


def make_forward(spec, act, pool):
    f_act = act_fn(act)

    def forward(x, *params):
        it = iter(params)
        for layer in spec:
            if layer[0] == "conv":
                w, b = next(it), next(it)
                x = conv(x, w, b, layer[4])
                if layer[5]:
                    x = f_act(x)
            elif layer[0] == "pool":
                x = pool2(x, pool)
            elif layer[0] == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif layer[0] == "fc":
                w, b = next(it), next(it)
                x = x @ w + b
                if layer[3]:
                    x = f_act(x)
        return x

    return forward


def runtime_config(args):
    import spu.libspu as libspu

    cfg = libspu.RuntimeConfig(
        protocol=libspu.ProtocolKind.CHEETAH,
        field=libspu.FieldType.FM64,
        fxp_fraction_bits=args.frac_bits,
    )
    cfg.enable_pphlo_profile = True  # prints per-run link statistics
    return cfg


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def party(rank, args, cfg_bytes, exe_bytes, shares, ports, log_path, queue):
    """One party (rank 0 = server, rank 1 = client): link, runtime, `args.runs` inferences."""
    # SPU logs (including the link statistics) go to stdout/stderr of the C++ side:
    # send them to a per-party file that is parsed afterwards.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import spu.api as spu_api
    import spu.libspu as libspu

    t_start = time.perf_counter()
    cfg = libspu.RuntimeConfig()
    cfg.ParseFromString(cfg_bytes)
    exe = libspu.Executable()
    exe.ParseFromString(exe_bytes)
    desc = libspu.link.Desc()
    desc.recv_timeout_ms = 4 * 3600 * 1000
    desc.http_timeout_ms = 4 * 3600 * 1000
    for r, p in enumerate(ports):
        desc.add_party(f"party{r}", f"127.0.0.1:{p}")
    lctx = libspu.link.create_brpc(desc, rank)
    rt = spu_api.Runtime(lctx, cfg)
    t_setup = time.perf_counter() - t_start
    times = []
    outs = None
    for i in range(args.runs):
        t0 = time.perf_counter()
        for name, per_rank in zip(exe.input_names, shares):
            meta, chunks = per_rank[rank]
            s = libspu.Share()
            s.meta = meta
            s.share_chunks = chunks
            rt.set_var(name, s)
        rt.run(exe)
        outs = [rt.get_var(n) for n in exe.output_names]
        times.append(time.perf_counter() - t0)
        lctx.barrier()
    queue.put(
        (
            rank,
            t_setup,
            times,
            [(o.meta, list(o.share_chunks)) for o in outs],
        )
    )
    lctx.stop_link()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", default="NET-M", help="NET-M or NET-C")
    ap.add_argument("--act", default="square", help="square (x*x) or relu")
    ap.add_argument("--pool", default="avg", help="avg or max (2x2, stride 2)")
    ap.add_argument("--frac-bits", type=int, default=16, help="fixed-point fractional bits")
    ap.add_argument("--runs", type=int, default=2, help="inferences on one runtime (first includes setup)")
    ap.add_argument(
        "--weights",
        default="secret",
        help="secret (shared) or public (insecure lower bound: the client sees the weights)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-dir", default="/tmp", help="where the per-party SPU logs go")
    ap.add_argument("--json", help="also write the result as JSON to this file")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import spu
    import spu.api as spu_api
    import spu.libspu as libspu
    import spu.utils.frontend as spu_fe

    in_shape, spec = net_spec(args.net)
    params = make_params(spec, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    x = rng.uniform(0, 1, (1,) + in_shape).astype(np.float32)
    forward = make_forward(spec, args.act, args.pool)
    plain = np.asarray(jax.jit(forward)(x, *params))

    cfg = runtime_config(args)
    if args.weights == "secret":
        w_vis = libspu.Visibility.VIS_SECRET
    elif args.weights == "public":
        w_vis = libspu.Visibility.VIS_PUBLIC
    else:
        raise SystemExit("--weights must be secret or public")
    vis = [libspu.Visibility.VIS_SECRET] + [w_vis] * len(params)
    names = [f"in{i}" for i in range(1 + len(params))]

    t0 = time.perf_counter()
    exe, _ = spu_fe.compile(
        spu_fe.Kind.JAX,
        forward,
        (x, *params),
        {},
        names,
        vis,
        lambda outs: [f"out{i}" for i in range(len(outs))],
    )
    t_compile = time.perf_counter() - t0

    io = spu_api.Io(2, cfg)
    shares = []
    for arr, v in zip([x, *params], vis):
        sh = io.make_shares(arr, v)
        shares.append([(s.meta, list(s.share_chunks)) for s in sh])

    ports = [free_port(), free_port()]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    tag = f"{args.net}-{args.act}-{args.pool}-{args.weights}"
    logs = [os.path.join(args.log_dir, f"spu-baseline-{tag}-party{r}.log") for r in range(2)]
    t0 = time.perf_counter()
    procs = [
        ctx.Process(
            target=party,
            args=(r, args, cfg.SerializeToString(), exe.SerializeToString(), shares, ports, logs[r], queue),
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, t_setup, times, outs = queue.get()
        results[rank] = (t_setup, times, outs)
    for p in procs:
        p.join()
    t_total = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a party failed; see {logs}")

    out_shares = []
    for i in range(len(results[0][2])):
        per_rank = []
        for r in range(2):
            meta, chunks = results[r][2][i]
            s = libspu.Share()
            s.meta = meta
            s.share_chunks = chunks
            per_rank.append(s)
        out_shares.append(io.reconstruct(per_rank))
    err = float(np.max(np.abs(np.asarray(out_shares[0]) - plain)))

    stats = []
    for r in range(2):
        with open(logs[r]) as f:
            stats.append([tuple(int(v) for v in m.groups()) for m in LINK_RE.finditer(f.read())])
    runs = []
    for i in range(args.runs):
        sent = [stats[r][i][0] for r in range(2)]
        runs.append(
            {
                "run": i + 1,
                "wall_s": max(results[r][1][i] for r in range(2)),
                "sent_bytes_server": sent[0],
                "sent_bytes_client": sent[1],
                "total_mb": sum(sent) / 1e6,
                "send_actions_server": stats[0][i][2],
                "send_actions_client": stats[1][i][2],
            }
        )
    setup_s = max(results[r][0] for r in range(2))
    result = {
        "spu": spu.__version__ if hasattr(spu, "__version__") else "?",
        "net": args.net,
        "act": args.act,
        "pool": args.pool,
        "protocol": "CHEETAH",
        "field": "FM64",
        "frac_bits": args.frac_bits,
        "weights": args.weights,
        "compile_s": t_compile,
        "link_and_runtime_setup_s": setup_s,
        "parties_wall_s": t_total,
        "max_abs_err_vs_plain": err,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    for r in runs:
        if r["run"] == 1:
            what = f"{r['wall_s'] + setup_s:.2f} s incl. {setup_s:.2f} s link + runtime setup (first, with OT/HE setup)"
        else:
            what = f"{r['wall_s']:.2f} s (warm)"
        print(f"{args.net} {args.act}: run {r['run']}: {what}, {r['total_mb']:.1f} MB sent by both parties", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
