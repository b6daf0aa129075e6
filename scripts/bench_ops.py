"""Benchmark the local-aggregation core against a 3×3 convolution of the same width.

    python scripts/bench_ops.py                 # k = 3, 5, 7, 9, 11 on CPU -> results/bench_ops.{csv,md,png}
    python scripts/bench_ops.py --k 7           # one kernel size          -> results/bench_ops_k7.*
    python scripts/bench_ops.py --device cuda   # on a GPU                 -> results/bench_ops_cuda.*

Condition: B=8, C=64, 56×56, float32, 8 heads. Each family's spatial layer, projections included, in its reference
(pad + unfold) and fast (custom kernels) versions: the SASA, PS and SAN layers are attnvision.layers' (sasa: q·k +
q·r, mask; ps: Axial-DeepLab's k×k position-sensitive layer with its BatchNorms; SAN pairwise: subtraction +
position, γ MLP, softmax, reflect; san_pairwise_fused: the same with fused_gamma; patchwise: concatenation, γ MLP,
no softmax, reflect), the others are composed here from attnvision.ops as the papers build them: lr (-(q-k)² +
geometry-prior MLP, masked, contiguous groups, the input as values) and axial (height then width, global span
whatever k is, q·k + q·r + k·r, values + r, no BatchNorms; measured once, repeated per k).
Forward is timed under no_grad, forward+backward with a scalar loss, with torch.utils.benchmark (warm-up, then
blocked autorange), in ``--rounds`` rounds that each time the conv and then every layer (a slow spell of a shared
machine hits them alike); the table gives medians over rounds of the times and of the per-round ratios to the conv.
Roofline columns: the layer's multiply-adds (FLOP counter, forward) and its minimal bytes (input read, output
written, parameters read once), and the forward times those imply at the conv's measured FLOP rate and at the
machine's copy bandwidth (measured here: a 256 MiB tensor copy). Peak memory is the extra memory of one
forward+backward over the inputs:
torch.cuda.max_memory_allocated on CUDA; on CPU, in a child process, the peak resident set (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold at 64 KiB, so every tensor's pages come and go with it (that
setting slows allocation, so the timings run without it).
"""
import argparse
import os
from statistics import median
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from attnvision.layers import PSAttention, SANPairwise, SANPatchwise, SASAttention
from attnvision.layers.conv import split_projection
from attnvision.ops import Footprint, axial_footprint, local_attention
from attnvision.results.tables import machine, write_table

B, C, H, W, HEADS = 8, 64, 56, 56, 8
LAYERS = ("conv3x3", "sasa", "ps", "san_pairwise", "san_pairwise_fused", "san_patchwise", "lr", "axial")


class LocalRelation(nn.Module):
    """-(q-k)² differs from 2q·k - k² by q², constant over the window, so the softmax is a dot-product attention
    on per-group queries [2q, -1] and keys [k, k²] (the form the fused kernel runs)."""

    def __init__(self, k, impl, m=8):
        super().__init__()
        self.fp, self.impl, self.groups = Footprint(k, padding="mask"), impl, C // m
        self.key, self.query = nn.Conv2d(C, self.groups, 1, bias=False), nn.Conv2d(C, self.groups, 1, bias=False)
        self.geometry = nn.Sequential(nn.Conv2d(2, self.groups // 2, 1), nn.ReLU(),
                                      nn.Conv2d(self.groups // 2, self.groups, 1))

    def forward(self, x):
        offsets = self.fp.offsets(x.device).float().t().reshape(1, 2, -1, 1)  # 1, 2, K, 1
        prior = self.geometry(offsets).view(1, self.groups, -1, 1, 1)  # 1, G, K, 1, 1
        q, k = self.query(x), self.key(x)
        q = torch.stack([2 * q, -torch.ones_like(q)], 2).flatten(1, 2)  # B, 2G, H, W
        k = torch.stack([k, k.square()], 2).flatten(1, 2)  # B, 2G, H, W
        return local_attention(q, k, x, self.fp, self.groups, bias=prior, impl=self.impl)


class Axial(nn.Module):
    def __init__(self, k, impl, dq=8):
        super().__init__()
        self.impl = impl
        self.fps = [axial_footprint(H, None, "height"), axial_footprint(W, None, "width")]
        self.qkv = nn.ModuleList(nn.Conv2d(C, 2 * dq * HEADS // 2 + C, 1, bias=False) for _ in self.fps)
        self.split = (dq * HEADS // 2, dq * HEADS // 2, C)
        self.rel = nn.ParameterList(nn.Parameter(torch.randn(3, 1, dq // 2, fp.num_offsets) * 0.1)
                                    for fp in self.fps)
        self.rel_v = nn.ParameterList(nn.Parameter(torch.randn(1, C // HEADS, fp.num_offsets) * 0.1)
                                      for fp in self.fps)

    def forward(self, x):
        for fp, qkv, rel, rel_v in zip(self.fps, self.qkv, self.rel, self.rel_v):
            q, k, v = split_projection(qkv, x)[0].split(self.split, 1)
            x = local_attention(q, k, v, fp, HEADS, rel_q=rel[0], rel_k=rel[1], rel_v=rel_v, impl=self.impl)
        return x


FAMILIES = {"sasa": lambda k, impl: SASAttention(C, C, kernel_size=k, num_heads=HEADS, impl=impl),
            "ps": lambda k, impl: PSAttention(C, C, kernel_size=k, num_heads=HEADS, impl=impl),
            "san_pairwise": lambda k, impl: SANPairwise(C, C, kernel_size=k, impl=impl),
            "san_pairwise_fused": lambda k, impl: SANPairwise(C, C, kernel_size=k, impl=impl, fused_gamma=True),
            "san_patchwise": lambda k, impl: SANPatchwise(C, C, kernel_size=k, impl=impl), "lr": LocalRelation,
            "axial": Axial}


def build(layer: str, k: int, impl: str) -> nn.Module:
    if layer == "conv3x3":
        return nn.Conv2d(C, C, 3, padding=1, bias=False)
    return FAMILIES[layer](k, impl)


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def setup(layer: str, k: int, impl: str, device):
    """The layer, its input and closures for one forward (no grad) and one forward+backward."""
    torch.manual_seed(0)
    model = build(layer, k, impl).to(device)
    x = torch.randn(B, C, H, W, device=device, requires_grad=True)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        model(x).sum().backward()
        x.grad = None
        model.zero_grad(set_to_none=True)

    return forward, forward_backward


def peak_extra_mb(layer: str, k: int, impl: str, device) -> float:
    """Extra memory of one forward+backward after a warm-up one (see the module docstring for the method)."""
    _, forward_backward = setup(layer, k, impl, device)
    forward_backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_mb("VmRSS")
    forward_backward()
    return _rss_mb("VmHWM") - base


def peak_extra_mb_cpu(layer: str, k: int, impl: str) -> float:
    """``peak_extra_mb`` in a child process whose allocator returns every large block to the system at once."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = f"import sys; sys.path.insert(0, 'scripts'); import bench_ops as b; import torch; " \
           f"print(b.peak_extra_mb({layer!r}, {k}, {impl!r}, torch.device('cpu')))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    return float(proc.stdout.strip().splitlines()[-1])


def count(layer: str, k: int, device) -> dict:
    """Forward FLOPs as the fast kernels' formulas count them (so both implementations of a layer report one figure;
    the reference's local_attention adds its bias outside any counted op), and the minimal bytes."""
    forward, _ = setup(layer, k, "fast" if layer != "conv3x3" else "reference", device)
    with FlopCounterMode(display=False) as counter:
        forward()
    params = sum(p.numel() for p in build(layer, k, "reference").parameters())
    return {"gflops": counter.get_total_flops() / 1e9, "macs_g": counter.get_total_flops() / 2e9,
            "min_mb": (2 * B * C * H * W + params) * 4 / 2 ** 20}


def time_round(fns: dict, min_run_time: float) -> dict:
    """{row: (fwd ms, fwd+bwd ms)} for one round over every row's closures."""
    times = {}
    for row, (forward, forward_backward) in fns.items():
        times[row] = tuple(benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
                           .blocked_autorange(min_run_time=min_run_time).median * 1e3
                           for fn in (forward, forward_backward))
    return times


def copy_bandwidth_gb_s() -> float:
    """Read + write bandwidth of a 256 MiB tensor copy on this machine (best of 5)."""
    src = torch.randn(64 * 2 ** 20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(benchmark.Timer("dst.copy_(src)", globals={"dst": dst, "src": src},
                               num_threads=torch.get_num_threads()).timeit(3).median for _ in range(5))
    return 2 * src.numel() * 4 / best / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="*", default=[3, 5, 7, 9, 11], help="kernel sizes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", nargs="*", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--impls", nargs="*", default=["reference", "fast"], choices=["reference", "fast"])
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements of every row")
    parser.add_argument("--out", default=None, help="output stem (default results/bench_ops[_k<k>][_cuda])")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    stem = args.out or "results/bench_ops" + (f"_k{args.k[0]}" if len(args.k) == 1 else "") + \
        ("_cuda" if device.type == "cuda" else "")
    env = machine(device)
    print(f"B={B} C={C} {H}x{W} fp32 heads={HEADS} | {env}", flush=True)

    # one row per (layer, impl, k); the conv once; axial's global span is the same layer for every k: once per impl
    rows = [("conv3x3", "-", 3)] + [(layer, impl, k) for k in args.k for layer in args.layers if layer != "conv3x3"
                                    for impl in args.impls if layer != "axial" or k == args.k[0]]
    rows = [r for r in rows if r[0] != "conv3x3" or "conv3x3" in args.layers]
    fns = {row: setup(row[0], row[2], "reference" if row[1] == "-" else row[1], device) for row in rows}
    for fn_pair in fns.values():
        for fn in fn_pair:
            fn()  # warm-up: kernel builds, allocator, autotuning
    rounds = []
    for r in range(args.rounds):
        rounds.append(time_round(fns, args.min_run_time))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{'/'.join(map(str, row))} {t[0]:.1f}/{t[1]:.1f} ms"
                                                           for row, t in rounds[-1].items()), flush=True)
    conv = ("conv3x3", "-", 3)
    out = []
    for row in rows:
        layer, impl, k = row
        fwd, fwdbwd = ([t[row][i] for t in rounds] for i in (0, 1))
        entry = {"layer": layer, "impl": impl, "k": k, "fwd_ms": median(fwd), "fwdbwd_ms": median(fwdbwd)}
        if conv in fns:
            entry["fwd_ratio_conv"] = median([t[row][0] / t[conv][0] for t in rounds])
            entry["fwdbwd_ratio_conv"] = median([t[row][1] / t[conv][1] for t in rounds])
        peak = peak_extra_mb(layer, k, impl if impl != "-" else "reference", device) if device.type == "cuda" \
            else peak_extra_mb_cpu(layer, k, impl if impl != "-" else "reference")
        out.append({**entry, "peak_mb": peak, **count(layer, k, device)})
    for layer, impl, k in [r for r in rows if r[0] == "axial"]:  # the same global layer, repeated per k
        out += [dict(e, k=k2) for e in out if e["layer"] == "axial" and e["impl"] == impl for k2 in args.k[1:]]
    df = pd.DataFrame(out)
    bandwidth = copy_bandwidth_gb_s() if device.type == "cpu" else float("nan")
    df["gflop_per_s_fwd"] = df.gflops / (df.fwd_ms / 1e3)
    if conv in fns:
        conv_rate = df.loc[df.layer == "conv3x3", "gflop_per_s_fwd"].iloc[0]
        df["t_conv_rate_ms"] = df.gflops / conv_rate * 1e3
        df["kernel_rate_vs_conv"] = df.gflop_per_s_fwd / conv_rate
    df["t_copy_bw_ms"] = df.min_mb * 2 ** 20 / (bandwidth * 1e9) * 1e3
    df = df.sort_values(["k", "layer", "impl"], key=lambda c: c.map(_order) if c.name == "layer" else c,
                        kind="stable").round(3)
    command = "python scripts/bench_ops.py " + " ".join(argv if argv is not None else sys.argv[1:])
    made_by = f"{command.strip()} ({env}; copy bandwidth {bandwidth:.1f} GB/s; median of {args.rounds} rounds)"
    for path in write_table(df, stem, made_by):
        print(f"wrote {path}")
    plot(df, Path(stem).with_suffix(".png"), made_by)
    print(df.to_markdown(index=False))
    return 0


def _order(layer: str) -> int:
    return LAYERS.index(layer)


def plot(df: pd.DataFrame, path: Path, made_by: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, column, title in ((axes[0], "fwd_ratio_conv", "forward"), (axes[1], "fwdbwd_ratio_conv",
                                                                       "forward + backward")):
        for (layer, impl), g in df[df.layer != "conv3x3"].groupby(["layer", "impl"]):
            ax.plot(g.k, g[column], marker="o", linestyle="-" if impl == "fast" else ":", label=f"{layer} ({impl})")
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set(xlabel="kernel size k", ylabel="time / conv3x3 time", title=title, yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Local attention layers vs conv3x3, B={B} C={C} {H}x{W} fp32\nmade by: {made_by}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Description": f"made by: {made_by}"})


if __name__ == "__main__":
    sys.exit(main())
