"""Benchmark the local-aggregation core against a 3×3 convolution of the same width.

    python scripts/bench_ops.py                 # k = 3, 5, 7, 9, 11 on CPU -> results/bench_ops.{csv,md,png}
    python scripts/bench_ops.py --k 7           # one kernel size          -> results/bench_ops_k7.*
    python scripts/bench_ops.py --device cuda   # on a GPU                 -> results/bench_ops_cuda.*

Condition: B=8, C=64, 56×56, float32, 8 heads. Each family's spatial layer, projections included, in its reference
(pad + unfold) and fast (custom kernels) versions: the SASA and SAN layers are attnvision.layers' (sasa: q·k + q·r,
mask; SAN pairwise: subtraction + position, γ MLP, softmax, reflect; patchwise: concatenation, γ MLP, no softmax,
reflect), the others are composed here from attnvision.ops as the papers build them: lr (-(q-k)² + geometry-prior MLP,
masked, contiguous groups) and axial (height then width, global span whatever k is, q·k + q·r + k·r, values + r;
measured once, repeated per k).
Forward is timed under no_grad, forward+backward with a scalar loss, with torch.utils.benchmark (warm-up, then
blocked autorange). Peak memory is the extra memory of one forward+backward over the inputs:
torch.cuda.max_memory_allocated on CUDA; on CPU, in a child process, the peak resident set (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold at 64 KiB, so every tensor's pages come and go with it (that
setting slows allocation, so the timings run without it).
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from attnvision.layers import SANPairwise, SANPatchwise, SASAttention
from attnvision.ops import Footprint, axial_footprint, local_attention
from attnvision.results.tables import machine, write_table

B, C, H, W, HEADS = 8, 64, 56, 56, 8
LAYERS = ("conv3x3", "sasa", "san_pairwise", "san_patchwise", "lr", "axial")


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
            q, k, v = qkv(x).split(self.split, 1)
            x = local_attention(q, k, v, fp, HEADS, rel_q=rel[0], rel_k=rel[1], rel_v=rel_v, impl=self.impl)
        return x


FAMILIES = {"sasa": lambda k, impl: SASAttention(C, C, kernel_size=k, num_heads=HEADS, impl=impl),
            "san_pairwise": lambda k, impl: SANPairwise(C, C, kernel_size=k, impl=impl),
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


def measure(layer: str, k: int, impl: str, device, min_run_time: float) -> dict:
    # FLOPs as the fast kernels' formulas count them, so both implementations of a layer report one figure (the
    # reference's local_attention adds its bias outside any counted op)
    with FlopCounterMode(display=False) as counter:
        setup(layer, k, "fast" if layer != "conv3x3" else impl, device)[0]()
    forward, forward_backward = setup(layer, k, impl, device)
    times = {}
    for name, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
        fn()  # warm-up: kernel builds, allocator, autotuning
        timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        times[name] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    peak = peak_extra_mb(layer, k, impl, device) if device.type == "cuda" else peak_extra_mb_cpu(layer, k, impl)
    return {"layer": layer, "impl": impl, "k": k, "fwd_ms": times["fwd"], "fwdbwd_ms": times["fwdbwd"],
            "peak_mb": peak, "gflops": counter.get_total_flops() / 1e9}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="*", default=[3, 5, 7, 9, 11], help="kernel sizes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", nargs="*", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--impls", nargs="*", default=["reference", "fast"], choices=["reference", "fast"])
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--out", default=None, help="output stem (default results/bench_ops[_k<k>][_cuda])")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    stem = args.out or "results/bench_ops" + (f"_k{args.k[0]}" if len(args.k) == 1 else "") + \
        ("_cuda" if device.type == "cuda" else "")
    env = machine(device)
    print(f"B={B} C={C} {H}x{W} fp32 heads={HEADS} | {env}", flush=True)

    rows = []
    if "conv3x3" in args.layers:
        conv = measure("conv3x3", 3, "reference", device, args.min_run_time)
        print(conv, flush=True)
    for k in args.k:
        if "conv3x3" in args.layers:
            rows.append(dict(conv, k=k, impl="-"))
        for layer in args.layers:
            if layer == "conv3x3":
                continue
            for impl in args.impls:
                done = [r for r in rows if r["layer"] == layer == "axial" and r["impl"] == impl]
                rows.append(dict(done[0], k=k) if done else measure(layer, k, impl, device, args.min_run_time))
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    conv_fwd = df.loc[df.layer == "conv3x3", "fwd_ms"].iloc[0] if "conv3x3" in args.layers else float("nan")
    conv_fwdbwd = df.loc[df.layer == "conv3x3", "fwdbwd_ms"].iloc[0] if "conv3x3" in args.layers else float("nan")
    df["fwd_ratio_conv"] = df.fwd_ms / conv_fwd
    df["fwdbwd_ratio_conv"] = df.fwdbwd_ms / conv_fwdbwd
    df["in_out_mb"] = 2 * B * C * H * W * 4 / 2 ** 20
    df["gflop_per_s_fwd"] = df.gflops / (df.fwd_ms / 1e3)
    df = df.round(3)
    command = "python scripts/bench_ops.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_table(df, stem, f"{command.strip()} ({env})"):
        print(f"wrote {path}")
    plot(df, Path(stem).with_suffix(".png"), f"{command.strip()} ({env})")
    print(df.to_markdown(index=False))
    return 0


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
