"""Training- or eval-step time of whole models, side by side, relative to the first one (the baseline).

    python scripts/bench_models.py                  # ResNet-26 vs every family's 26-layer net: 32 px/64, 224 px/8
    python scripts/bench_models.py --mode eval      # inference steps (no_grad, eval mode)
    python scripts/bench_models.py --models av_resnet26 san10_patchwise --image-size 224 --batch 8 --device cuda
    python scripts/bench_models.py --compile        # each model eager and under torch.compile (Inductor)

A training step = forward, label-smoothed cross-entropy, backward and an SGD update, as the trainer runs it (bf16
autocast where the machine has native bfloat16, else fp32, and channels-last, by default); an eval step = a forward
under no_grad in eval mode, as evaluation runs it.
Inputs of 64 px or less use each model's small-image variant (``small_stem=True``), as the trainer does for digits
and CIFAR. Steps are timed with torch.utils.benchmark after warm-up steps, in ``--rounds`` rounds that each time
every model in turn (so a slow spell of a shared machine hits all of them); the table gives the median over rounds,
the spread (max/min) and the ratio of medians to the first model at the same size (eager). ``--compile`` times
every model twice, eager and wrapped in ``torch.compile`` (default Inductor backend; compilation happens in the
warm-up steps and is not timed), and adds the compiled/eager ratio of each. Writes
results/bench_models[_eval][_compile][_cuda].{csv,md} (or ``--out``), each naming the command that made it.
"""
import argparse
import sys
from pathlib import Path

import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch.utils import benchmark

import attnvision.models  # noqa: F401  (registers the models with timm)
from attnvision.engine.runtime import precision_note, resolve_precision
from attnvision.results.tables import machine, write_table


def step_timer(name: str, image_size: int, batch: int, device: torch.device, precision: str, mode: str = "train",
               compiled: bool = False):
    """A ``benchmark.Timer`` of one training (or eval) step of timm model ``name`` (through ``torch.compile`` when
    ``compiled``), after two warm-up steps."""
    torch.manual_seed(0)
    small = {"small_stem": True} if image_size <= 64 else {}  # timm's own models have no small_stem
    model = timm.create_model(name, num_classes=10, **small).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (batch,), device=device)
    forward = torch.compile(model) if compiled else model

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(forward(x), target, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def eval_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            forward(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step = eval_step if mode == "eval" else train_step
    model.train(mode == "train")

    for _ in range(2):
        step()
    return benchmark.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["av_resnet26", "sasa_resnet26", "lrnet26", "ps_resnet26", "axial26s",
                                 "san10_patchwise", "san10_pairwise"],
                        help="timm names; the first is the baseline")
    parser.add_argument("--image-size", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 8], help="one per image size, or one for all")
    parser.add_argument("--mode", default="train", choices=["train", "eval"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="as trainer.precision: auto is bf16 where the device has it natively, else fp32")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timing per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per model, interleaved")
    parser.add_argument("--compile", action="store_true", help="also time each model under torch.compile")
    parser.add_argument("--out", default=None, help="output stem (default results/bench_models[_cuda])")
    args = parser.parse_args(argv)
    if len(args.batch) not in (1, len(args.image_size)):
        parser.error(f"--batch takes one value or one per image size ({len(args.image_size)}), not {args.batch}")
    batches = args.batch * len(args.image_size) if len(args.batch) == 1 else args.batch
    device = torch.device(args.device)
    args.precision = resolve_precision(args.precision, device.type)
    print(f"precision: {precision_note(args.precision, device.type)}")
    env = machine(device)
    rows = []
    for size, batch in zip(args.image_size, batches):
        timers = {(name, compiled): step_timer(name, size, batch, device, args.precision, args.mode, compiled)
                  for name in args.models for compiled in ((False, True) if args.compile else (False,))}
        times = {key: [] for key in timers}
        for _ in range(args.rounds):
            for key, timer in timers.items():
                times[key].append(timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3)
        for (name, compiled), ms in times.items():
            median = sorted(ms)[len(ms) // 2]
            rows.append({"model": name, "compiled": compiled, "mode": args.mode, "image_size": size, "batch": batch,
                         "precision": args.precision, "step_ms": round(median, 1),
                         "spread": round(max(ms) / min(ms), 2),
                         "img_per_s": round(batch / median * 1e3, 1)})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    eager = df[~df.compiled].set_index(["model", "image_size"]).step_ms
    baseline = eager.xs(args.models[0], level="model")
    df["ratio_to_" + args.models[0]] = (df.step_ms / df.image_size.map(baseline)).round(2)
    if args.compile:
        df["compiled_over_eager"] = (df.step_ms / eager.loc[list(zip(df.model, df.image_size))].values).round(2)
    else:
        df = df.drop(columns="compiled")
    stem = args.out or "results/bench_models" + ("_eval" if args.mode == "eval" else "") + \
        ("_compile" if args.compile else "") + ("_cuda" if device.type == "cuda" else "")
    command = "python scripts/bench_models.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_table(df, stem, f"{command.strip()} ({env})"):
        print(f"wrote {path}")
    print(df.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
