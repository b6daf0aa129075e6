"""Sweeps through Hydra's submitit launcher (the ``cluster`` extra): ``submitit_local`` runs each job in its own
process, as ``hydra/launcher=slurm`` runs each as a SLURM job; every job writes its row into the one sweep folder."""
import json

import pytest

from conftest import run_cli

TINY = ["model=resnet", "model.depth=test", "data=synthetic", "data.num_train=64", "data.num_val=32",
        "data.batch_size=16", "trainer.epochs=1", "trainer.progress=false"]


@pytest.mark.slow
def test_sweep_through_submitit_local_writes_a_row_per_job(tmp_path):
    proc = run_cli("train.py", "-m", "hydra/launcher=submitit_local", *TINY, "model.kernel_size=1,3",
                   f"paths.log_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()  # the jobs' own processes resolved the same folder
    assert (sweep / ".submitit").is_dir()  # they ran as submitit jobs
    rows = sorted((json.loads(p.read_text()) for p in (tmp_path / "rows").glob("*.json")),
                  key=lambda row: row["overrides"])
    assert [r["overrides"][-2] for r in rows] == ["model.kernel_size=1", "model.kernel_size=3"]
    assert all(r["run_dir"].startswith(str(sweep)) and r["status"] == "finished" and r["epochs"] == 1 for r in rows)
    assert rows[0]["params"] < rows[1]["params"]  # 1×1 against 3×3 spatial convs
    proc = run_cli("scripts/make_tables.py", "--sweep", str(sweep))
    assert proc.returncode == 0, proc.stderr
    md = (sweep / "sweep.md").read_text().splitlines()
    assert md[2].split("|")[1].strip() == "model.kernel_size" and len(md) == 6  # comment, blank, header, rule, 2 rows


def test_slurm_launcher_config():
    proc = run_cli("train.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra",
                   "--package", "hydra.launcher")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for line in ("_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                 "partition: gpu", "max_num_timeout: 10", "gpus_per_node: 1", "tasks_per_node: 1"):
        assert line in text, text
