"""The command line: one-line errors for bad values, JSON output of count_flops, tables from rows."""
import json
import os

import pytest

from conftest import ROOT, run_cli


@pytest.mark.parametrize("args,must_name", [
    (["model=nope"], ["model=nope", "resnet"]),
    (["data=nope"], ["data=nope", "digits", "cifar10", "cifar100", "imagenet", "synthetic"]),
    (["data.batch_size=-1"], ["data.batch_size=-1", "positive"]),
    (["data=cifar10", "data.root=/nonexistent/cifar"], ["data.root=/nonexistent/cifar", "data.download=true"]),
    (["data=imagenet", "data.root=null"], ["data.root is not set"]),
    (["model=resnet", "model.depth=27"], ["model.depth=27", "26, 38, 50"]),
    (["model.depth=27"], ["model.depth=27", "san_patchwise", "10, 15, 19, test"]),
    (["model.relation=cosine"], ["relation='cosine'", "concatenation, star, clique"]),
    (["model=sasa_resnet", "model.stem=foo"], ["model.stem='foo'", "conv, attention"]),
    (["model=sasa_resnet", "model.heads=3"], ["heads=3"]),
    (["model=hybrid", "model.weights=se", "model.footprint=axial"], ["weights=se", "footprint=axial"]),
    (["model=hybrid", "model.footprint=ring"], ["footprint='ring'", "square, dilated, axial, global"]),
    (["-m", "hydra/launcher=slrum"], ["hydra/launcher=slrum", "basic, slurm, submitit_local, submitit_slurm"]),
])
def test_bad_values_give_one_line(tmp_path, args, must_name):
    proc = run_cli("train.py", *args, f"paths.log_dir={tmp_path}", "trainer.epochs=1")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in must_name:
        assert text in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_count_flops_json_last_line():
    proc = run_cli("count_flops.py", "model=resnet", "model.depth=50", "data.image_size=224", "format=json")
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert totals == {"model": "av_resnet50", "image_size": 224, "num_classes": 1000, "params": 25_557_032,
                      "macs": 4_089_184_256, "flops": 8_178_368_512}


def test_count_flops_san_convention_and_bad_convention():
    args = ["count_flops.py", "model=san_patchwise", "model.depth=10", "format=json"]
    proc = run_cli(*args, "convention=san")
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (totals["params"], totals["macs"], totals["convention"]) == (11_841_124, 1_865_421_568, "san")
    proc = run_cli(*args, "convention=ptflops")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines == ["error: convention='ptflops' is unknown; choose one of macs, san"]


@pytest.mark.slow
def test_train_cli_then_tables(tmp_path):
    args = ["model=resnet", "model.depth=test", "data=synthetic", "trainer.epochs=1", "trainer.limit_train_batches=2",
            f"paths.log_dir={tmp_path}"]
    proc = run_cli("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "train" / "runs" / "test_av_resnet_synthetic").iterdir()
    assert {"last.pt", "best.pt", "metrics.json", "config.yaml", ".hydra", "tensorboard"} <= \
        {p.name for p in run_dir.iterdir()}
    assert "train_loss" in proc.stdout and "test_av_resnet on synthetic: top-1" in proc.stdout  # summary table
    proc = run_cli("scripts/make_tables.py", "--rows", str(tmp_path / "rows"), "--out", str(tmp_path / "t" / "runs"))
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "t" / "runs.md").read_text()
    assert md.startswith("<!-- made by: python scripts/make_tables.py --rows") and "test_av_resnet" in md
    csv = (tmp_path / "t" / "runs.csv").read_text().splitlines()
    assert csv[0].startswith("# made by:") and len(csv) == 3  # comment, header, one run


@pytest.mark.slow
def test_count_flops_multirun_writes_one_row_per_job_then_sweep_table(tmp_path):
    proc = run_cli("count_flops.py", "-m", "model=resnet", "model.depth=test", "data=synthetic",
                   "data.image_size=32,64", "format=json", f"paths.log_dir={tmp_path / 'logs'}")
    assert proc.returncode == 0, proc.stderr
    (sweep_dir,) = (tmp_path / "logs" / "count_flops" / "multiruns").iterdir()  # both jobs share one sweep folder
    rows = sorted((json.loads(p.read_text()) for p in (sweep_dir / "rows").glob("*.json")),
                  key=lambda r: r["image_size"])
    assert [r["image_size"] for r in rows] == [32, 64] and rows[1]["macs"] > 3 * rows[0]["macs"]
    assert rows[0]["overrides"] == ["model=resnet", "model.depth=test", "data=synthetic", "data.image_size=32",
                                    "format=json", f"paths.log_dir={tmp_path / 'logs'}"]
    assert {"model", "family", "params", "macs", "flops", "image_size", "num_classes", "git_commit"} <= set(rows[0])
    proc = run_cli("scripts/make_tables.py", "--sweep", str(sweep_dir), "--plots")
    assert proc.returncode == 0, proc.stderr
    md = (sweep_dir / "sweep.md").read_text().splitlines()
    assert md[0] == f"<!-- made by: python scripts/make_tables.py --sweep {sweep_dir} --plots -->"
    assert [c.strip() for c in md[2].split("|")[1:4]] == ["data.image_size", "params_m", "gmacs"] and len(md) == 6
    assert (sweep_dir / "sweep.csv").is_file() and (sweep_dir / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_single_count_flops_writes_nothing(tmp_path):
    proc = run_cli("count_flops.py", "model=resnet", "model.depth=test", "data=synthetic", "format=json",
                   f"paths.log_dir={tmp_path / 'logs'}", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_make_tables_seeds_plots_and_paper_points(tmp_path):
    from attnvision.results import write_row
    for seed, top1 in enumerate([98.0, 98.5, 97.6]):
        write_row(tmp_path / "rows", f"run{seed}", {"model": "sasa_resnet26", "family": "sasa_resnet",
                                                    "data": "digits", "params": 8_295_000, "macs": 695_000_000,
                                                    "top1": top1, "train_img_per_s": 25.0, "seed": seed})
    args = ["--rows", str(tmp_path / "rows"), "--aggregate-seeds", "--plots", "--paper", "sasa_table1",
            "--out", str(tmp_path / "t" / "seeds")]
    proc = run_cli("scripts/make_tables.py", *args)
    assert proc.returncode == 0, proc.stderr
    assert "98.03 ± 0.45" in (tmp_path / "t" / "seeds.md").read_text()
    command = f"made by: python scripts/make_tables.py {' '.join(args)}".encode()
    for name in ("seeds_accuracy.png", "seeds_throughput.png"):
        assert command in (tmp_path / "t" / name).read_bytes()  # in the PNG's metadata
    proc = run_cli("scripts/make_tables.py", "--rows", str(tmp_path / "rows"), "--plots", "--paper", "nope")
    assert proc.returncode == 2 and "invalid choice: 'nope' (choose from 'axial_table1'" in proc.stderr
