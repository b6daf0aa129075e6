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
