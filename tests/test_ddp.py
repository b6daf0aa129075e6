"""Two processes under torchrun (gloo, CPU): one shared run dir, rank 0 writes, parameters stay in sync."""
import json

import pytest
import torch

from conftest import ROOT, run_cli


@pytest.mark.slow
def test_two_process_ddp_stays_in_sync(tmp_path):
    proc = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/ddp_worker.py",
                   "model=resnet", "model.depth=test", "data=synthetic", "data.num_train=64", "data.batch_size=16",
                   "trainer.epochs=2", "trainer.device=cpu", "trainer.progress=false", f"paths.log_dir={tmp_path}",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dumps = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert dumps[0]["run_dir"] == dumps[1]["run_dir"]  # one run directory for all ranks
    (run_dir,) = (tmp_path / "train" / "runs" / "test_av_resnet_synthetic").iterdir()
    for name, p0 in dumps[0]["params"].items():
        assert torch.equal(p0, dumps[1]["params"][name]), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["num_updates"] == 2 * 64 // 16  # the global batch of 16 is split 8 + 8 over the two ranks
    for name, p0 in dumps[0]["params"].items():
        assert torch.equal(last["model"][name], p0), name
    assert len(list((tmp_path / "rows").glob("*.json"))) == 1  # rank 0 alone wrote the row
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".hydra")) == [".hydra"]
