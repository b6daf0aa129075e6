import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_cfg(tmp_path):
    """Compose configs/<name>.yaml with test-sized defaults, writing under tmp_path."""
    from attnvision.config import compose

    def _make(*overrides, config_name="train", run="run"):
        base = [f"paths.log_dir={tmp_path / 'logs'}", f"paths.output_dir={tmp_path / run}"]
        if config_name != "count_flops":
            base += ["trainer.progress=false", "trainer.device=cpu"]
        cfg = compose(config_name, base + list(overrides))
        (tmp_path / run).mkdir(parents=True, exist_ok=True)
        return cfg

    return _make


def run_cli(*args, cwd=ROOT, timeout=300, env=None):
    """Run a command with this interpreter from the repository root; returns CompletedProcess."""
    import subprocess
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def reference_and_fast_grads(layer, x, fast_layer=None):
    """[output, input grad, every parameter grad] of ``layer(x)`` with the reference ops, then with the fast ops
    (of ``fast_layer`` when given: a copy whose buffers evolve apart), under a fixed non-uniform loss; x must
    require grad."""
    import torch
    from attnvision.ops import set_default_impl
    outs = []
    for impl, module in (("reference", layer), ("fast", fast_layer or layer)):
        set_default_impl(impl)
        try:
            module.zero_grad()
            x.grad = None
            y = module(x)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            outs.append([y.detach(), x.grad.clone(), *[p.grad.clone() for p in module.parameters()]])
        finally:
            set_default_impl("auto")
    return outs


def train_interrupted(make_cfg, monkeypatch, *overrides, run="interrupted"):
    """Train ``make_cfg(*overrides)`` into ``run`` and crash right after the first ``last.pt`` is written, as a
    killed run; returns the path of that checkpoint."""
    from pathlib import Path

    import attnvision.engine.trainer as trainer_module
    from attnvision.engine import train

    class Crash(Exception):
        pass

    real_save = trainer_module.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        if Path(path).name == "last.pt":
            raise Crash

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_crash)
    cfg = make_cfg(*overrides, run=run)
    try:
        train(cfg)
    except Crash:
        return Path(cfg.paths.output_dir) / "last.pt"
    finally:
        monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    raise AssertionError("the run finished without writing last.pt")
