"""Result rows survive concurrent writers (every row lands whole, none is lost) and are strict JSON; broken rows
fail in one line; sweep and seed tables and plots, with diverged runs marked and left out of means and points."""
import json
import math
import multiprocessing as mp
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from attnvision.errors import ConfigError
from attnvision.results import (accuracy_figure, comparison_table, read_rows, read_sweep_rows, save_png,
                                sweep_figure, sweep_table, throughput_figure, write_json_atomic, write_row,
                                write_table)
from attnvision.engine.checkpoint import save_checkpoint, load_checkpoint
from conftest import run_cli

WRITERS, ROWS_EACH, PAYLOAD = 8, 20, "x" * 4096


def _writer(rows_dir, worker: int, start):
    start.wait()
    for i in range(ROWS_EACH):
        write_row(rows_dir, f"w{worker}_{i}", {"worker": worker, "i": i, "payload": PAYLOAD})


def test_concurrent_writers_and_reader_lose_and_tear_no_rows(tmp_path):
    # fork: the writers need no fresh interpreter (spawn would import torch in each of them on a 2-core machine)
    ctx = mp.get_context("fork")
    start = ctx.Barrier(WRITERS + 1)
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    start.wait()
    seen = []
    while any(p.is_alive() for p in procs):  # this process reads while they write: read_rows must never fail
        rows = read_rows(tmp_path)
        assert all(r["payload"] == PAYLOAD for r in rows)
        seen.append(len(rows))
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = read_rows(tmp_path)
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(WRITERS) for i in range(ROWS_EACH)]
    assert all(json.loads(f.read_text())["payload"] == PAYLOAD for f in tmp_path.glob("*.json"))
    assert seen == sorted(seen)  # the reader saw rows arrive, never fewer than before
    assert not list(tmp_path.glob(".*.tmp"))


def test_long_row_names_are_shortened_uniquely(tmp_path):
    names = ["train__multiruns__" + "model.kernel_size=3," * 20 + tail for tail in ("a", "b")]
    paths = [write_row(tmp_path, name, {"name": name}) for name in names]
    assert len({p.name for p in paths}) == 2 and all(len(p.name.encode()) <= 205 for p in paths)
    assert sorted(r["name"] for r in read_rows(tmp_path)) == names


def _strict(constant):
    raise AssertionError(f"{constant} is not JSON")


def test_write_json_atomic_writes_non_finite_floats_as_null(tmp_path):
    nan, inf = float("nan"), float("inf")
    row = {"top1": nan, "val_loss": inf, "history": [{"loss": -inf, "top1": 1.5}, (np.float32(nan), 2)],
           "np": {"nan": np.float64(nan), "inf": np.float32(inf), "ok": np.float32(0.5), "n": np.int64(3)},
           "torch": [torch.tensor(nan), torch.tensor(-inf), torch.tensor(0.25), torch.tensor(7)],
           "run_dir": Path("/runs/a")}
    text = write_json_atomic(tmp_path / "m.json", row).read_text()
    assert json.loads(text, parse_constant=_strict) == {
        "top1": None, "val_loss": None, "history": [{"loss": None, "top1": 1.5}, [None, 2]],
        "np": {"nan": None, "inf": None, "ok": 0.5, "n": 3}, "torch": [None, None, 0.25, 7], "run_dir": "/runs/a"}
    assert read_rows(tmp_path)[0]["top1"] is None


def test_read_sweep_rows_finds_count_and_train_jobs(tmp_path):
    write_row(tmp_path / "rows", "0_model.heads=1", {"job": "count"})
    write_row(tmp_path / "1_model.heads=2", "metrics", {"job": "train"})
    write_row(tmp_path / "1_model.heads=2" / "tensorboard", "metrics", {"job": "not a row"})
    assert sorted(r["job"] for r in read_sweep_rows(tmp_path)) == ["count", "train"]


@pytest.mark.parametrize("source,file,text,problem", [  # a truncated row; a row that is no object
    ("--rows", "rows/x.json", '{\n  "model": "a",\n  "top1": 98.0\n  "to', "Expecting ',' delimiter: line 4 column 3"),
    ("--sweep", "0_model.heads=1/metrics.json", '[{"model": "a"}]', "a JSON list, not an object"),
])
def test_make_tables_names_a_broken_row_in_one_line(tmp_path, source, file, text, problem):
    write_row(tmp_path / "rows", "ok", {"model": "b", "top1": 90.0})
    (tmp_path / file).parent.mkdir(exist_ok=True)
    (tmp_path / file).write_text(text)
    proc = run_cli("scripts/make_tables.py", source, str(tmp_path / ("rows" if source == "--rows" else "")),
                   "--out", str(tmp_path / "t"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {tmp_path / file} is not a valid result row ({problem}); delete it "
                                        f"or rerun its run"]
    assert not (tmp_path / "t.md").exists()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(3)}})

    class Boom(Exception):
        pass

    def fail(*args, **kwargs):
        raise Boom

    monkeypatch.setattr("os.replace", fail)
    try:
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    except Boom:
        pass
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact
    assert not list(tmp_path.glob(".*.tmp"))  # and no temporary file is left behind


def _sweep_rows():
    """heads x kernel size, two seeds of (4, 3), a constant override and a location that differs."""
    rows = []
    for heads, k, seed, top1 in [(1, 3, 0, 90.0), (1, 5, 0, 91.0), (4, 3, 0, 92.0), (4, 3, 1, 94.0), (4, 5, 0, 95.0)]:
        rows.append({"model": "sasa_resnet26", "family": "sasa_resnet", "params": 1_000_000 * heads + k,
                     "macs": 2_000_000_000 * k, "top1": top1, "seed": seed,
                     "overrides": ["model=sasa_resnet", f"model.heads={heads}", f"model.kernel_size={k}",
                                   f"trainer.seed={seed}", f"paths.log_dir=/tmp/run{len(rows)}"]})
    return rows


def test_sweep_table_pivots_metrics_against_the_swept_keys():
    table = sweep_table(_sweep_rows())
    assert list(table.columns) == ["model.heads", "model.kernel_size", "top1", "params_m", "gmacs", "n_diverged"]
    assert table[["model.heads", "model.kernel_size", "top1"]].values.tolist() == \
        [[1, 3, 90.0], [1, 5, 91.0], [4, 3, 93.0], [4, 5, 95.0]]  # the two seeds of (4, 3) averaged
    assert table["gmacs"].tolist() == [6.0, 10.0, 6.0, 10.0] and table["n_diverged"].tolist() == [0, 0, 0, 0]
    table = sweep_table(_sweep_rows(), keys=["model.kernel_size"], metrics=["top1"])
    assert table.values.tolist() == [[3, 92.0, 0], [5, 93.0, 0]]


def test_sweep_table_leaves_diverged_rows_out_of_the_means():
    rows = _sweep_rows()
    rows[3].update(status="diverged", top1=10.0)  # seed 1 of (4, 3)
    rows[4].update(status="diverged", top1=None)  # the only run of (4, 5)
    rows[0]["status"] = "finished"
    table = sweep_table(rows)
    assert table["top1"].tolist()[:3] == [90.0, 91.0, 92.0] and math.isnan(table["top1"].iloc[3])
    assert table["n_diverged"].tolist() == [0, 0, 1, 1]
    assert table["gmacs"].tolist()[:3] == [6.0, 10.0, 6.0]


@pytest.mark.parametrize("kwargs,message", [
    ({"keys": ["model.nope"]}, "sweep key 'model.nope' is in no row; choose from"),
    ({"metrics": ["model"]}, "metric 'model' is no numeric column of these rows; choose from"),
])
def test_sweep_table_bad_keys_and_metrics_name_them(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sweep_table(_sweep_rows(), **kwargs)


def test_sweep_table_without_swept_overrides_says_so():
    rows = [{"model": "a", "top1": 1.0}, {"model": "b", "top1": 2.0}]
    with pytest.raises(ConfigError, match=r"no override differs across these 2 rows \(they record none\)"):
        sweep_table(rows)
    assert sweep_table(rows, keys=["model"]).values.tolist() == [["a", 1.0, 0], ["b", 2.0, 0]]


def _seed_rows():
    """Three seeds of each of two models, a third configuration (another kernel size) with one seed."""
    rows = []
    for model, top1s in (("san10_patchwise", [98.0, 98.5, 97.6]), ("av_resnet26", [94.0, 95.0, 96.0])):
        for seed, top1 in enumerate(top1s):
            rows.append({"model": model, "family": model[:3], "data": "digits", "params": 9_000_000,
                         "macs": 500_000_000, "top1": top1, "train_img_per_s": 20.0 + seed, "seed": seed,
                         "git_commit": f"c{seed}", "run_dir": f"/runs/{model}/{seed}",
                         "overrides": [f"trainer.seed={seed}", f"paths.log_dir=/logs/{seed}"]})
    rows.append({**rows[0], "top1": 50.0, "overrides": ["model.kernel_size=3", "trainer.seed=0"]})
    return rows


def test_comparison_table_aggregates_seeds(tmp_path):
    table = comparison_table(_seed_rows(), aggregate_seeds=True)
    assert list(table.columns) == ["model", "config", "family", "data", "params_m", "gmacs", "top1_mean", "top1_std",
                                   "train_img_per_s_mean", "train_img_per_s_std", "n_seeds", "n_diverged"]
    assert table["model"].tolist() == ["san10_patchwise", "av_resnet26", "san10_patchwise"]
    assert table["config"].tolist() == ["", "", "model.kernel_size=3"]  # what tells san10's two lines apart
    labels = [c.get_label() for c in accuracy_figure(table).axes[0].containers]
    assert labels == ["san10_patchwise", "av_resnet26", "san10_patchwise (model.kernel_size=3)"]
    assert table["n_seeds"].tolist() == [3, 3, 1] and table["n_diverged"].tolist() == [0, 0, 0]
    assert table["top1_mean"].tolist() == pytest.approx([(98.0 + 98.5 + 97.6) / 3, 95.0, 50.0])
    assert table["top1_std"].iloc[:2].tolist() == pytest.approx(
        [statistics.stdev([98.0, 98.5, 97.6]), 1.0])  # sample standard deviation
    assert table["train_img_per_s_mean"].iloc[0] == pytest.approx(21.0)
    write_table(table, tmp_path / "seeds", "cmd")
    md = (tmp_path / "seeds.md").read_text()
    assert "| top1 " in md and "98.03 ± 0.45" in md and "95.00 ± 1.00" in md and "| 50.00 " in md
    assert (tmp_path / "seeds.csv").read_text().splitlines()[1].split(",")[6:8] == ["top1_mean", "top1_std"]
    assert "config" not in comparison_table(_seed_rows()[:6], aggregate_seeds=True)  # one configuration per model


def test_comparison_table_marks_diverged_runs_and_leaves_them_out_of_seed_means(tmp_path):
    rows = _seed_rows()
    rows[1].update(status="diverged", top1=10.0, train_img_per_s=99.0)  # seed 1 of san10_patchwise
    rows[3]["status"] = "finished"
    rows[6].update(status="diverged", top1=None)  # the kernel_size=3 configuration's only seed
    runs = comparison_table(rows)
    assert list(runs.columns) == ["model", "config", "family", "data", "params_m", "gmacs", "top1", "status",
                                  "train_img_per_s", "seed", "git_commit", "run_dir"]
    assert runs["config"].tolist() == [""] * 6 + ["model.kernel_size=3"]
    assert runs["status"].tolist() == ["finished", "diverged", "finished", "finished", "finished", "finished",
                                       "diverged"]  # rows without a status finished
    seeds = comparison_table(rows, aggregate_seeds=True)
    assert seeds["n_seeds"].tolist() == [2, 3, 0] and seeds["n_diverged"].tolist() == [1, 0, 1]
    assert seeds["top1_mean"].iloc[:2].tolist() == pytest.approx([(98.0 + 97.6) / 2, 95.0])
    assert seeds["top1_std"].iloc[0] == pytest.approx(statistics.stdev([98.0, 97.6]))
    assert seeds["train_img_per_s_mean"].iloc[0] == pytest.approx(21.0)  # seeds 0 and 2: 20 and 22
    assert seeds[["top1_mean", "top1_std"]].iloc[2].isna().all()
    write_table(seeds, tmp_path / "seeds", "cmd")
    assert "97.80 ± 0.28" in (tmp_path / "seeds.md").read_text()


def _digits_table():
    return comparison_table([
        {"model": "san10_patchwise", "family": "san_patchwise", "data": "digits", "image_size": 32,
         "params": 9_813_000, "macs": 551_000_000, "top1": 98.9, "train_img_per_s": 20.0},
        {"model": "av_resnet26", "family": "resnet", "data": "digits", "image_size": 32, "params": 11_660_000,
         "macs": 727_000_000, "top1": 94.7, "train_img_per_s": 76.0}])


PAPER = [{"family": "san_patchwise", "label": "SAN10 patchwise", "params": 11.8, "macs": 1.9, "top1": 77.1},
         {"family": "resnet", "label": "ResNet-26", "params": 13.7, "macs": 2.35, "top1": 74.5},
         {"family": "sasa_resnet", "label": "SASA-ResNet-26", "params": 10.3, "macs": 3.6, "top1": 74.8}]


def _assert_png(path):
    from matplotlib.image import imread
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"made by: make it" in data
    height, width = imread(path).shape[:2]
    assert height > 100 and width > 100


def test_accuracy_figure_draws_ours_and_the_papers_points(tmp_path):
    fig = accuracy_figure(_digits_table(), PAPER)
    left, right = fig.axes
    for ax in (left, right):
        assert len(ax.containers) == 2  # our two models
        assert [c.get_label() for c in ax.collections] == [p["label"] for p in PAPER]  # hollow paper points
    assert left.collections[1].get_offsets().tolist() == [[2.35, 74.5]]  # GMACs, top-1 (%)
    assert right.collections[1].get_offsets().tolist() == [[13.7, 74.5]]  # params (M)
    assert left.get_xlabel() == "GMACs" and right.get_xlabel() == "params (M)" and left.get_ylabel() == "top-1 (%)"
    assert [legend.get_title().get_text() for legend in fig.legends] == ["ours (digits at 32 px)", "paper"]
    _assert_png(save_png(fig, tmp_path / "digits_accuracy.png", "make it"))
    assert len(accuracy_figure(_digits_table()).legends) == 1  # no paper points, no paper legend


def test_figures_draw_no_diverged_runs():
    rows = [{"model": "san10_patchwise", "family": "san_patchwise", "data": "digits", "image_size": 32,
             "params": 9_813_000, "macs": 551_000_000, "top1": top1, "train_img_per_s": speed, **status}
            for top1, speed, status in [(98.9, 20.0, {}), (10.0, 99.0, {"status": "diverged"}),
                                        (98.1, 22.0, {"status": "finished"})]]
    table = comparison_table(rows)
    for fig, ys in ((accuracy_figure(table), [98.9, 98.1]), (throughput_figure(table), [20.0, 22.0])):
        (points,) = fig.axes[0].containers  # the one model's errorbar: its data line holds the points
        assert points.lines[0].get_xydata()[:, 1].tolist() == ys
    table = comparison_table(rows[1:2])  # every run diverged: no points, no legend of ours
    assert [legend.get_title().get_text() for legend in accuracy_figure(table, PAPER).legends] == ["paper"]
    assert not throughput_figure(table).axes[0].containers


def test_bad_paper_point_names_what_it_lacks():
    with pytest.raises(ConfigError, match=r"paper point 0 \(ResNet-26\) lacks macs, top1; each needs family, label"):
        accuracy_figure(_digits_table(), [{"family": "resnet", "label": "ResNet-26", "params": 1}])


def test_throughput_and_sweep_figures(tmp_path):
    fig = throughput_figure(_digits_table())
    assert len(fig.axes[0].containers) == 2 and fig.axes[0].get_ylabel() == "train throughput (img/s)"
    _assert_png(save_png(fig, tmp_path / "t.png", "make it"))
    keys = ["model.heads", "model.kernel_size"]
    fig = sweep_figure(sweep_table(_sweep_rows(), keys=keys), keys)
    assert [ax.get_ylabel() for ax in fig.axes] == ["top-1 (%)", "params (M)", "GMACs"]  # no n_diverged panel
    assert [line.get_label() for line in fig.axes[0].lines] == ["model.kernel_size=3", "model.kernel_size=5"]
    assert fig.axes[0].lines[0].get_xydata().tolist() == [[1, 90.0], [4, 93.0]]
    _assert_png(save_png(fig, tmp_path / "sweep.png", "make it"))
    with pytest.raises(ConfigError, match="the sweep plot needs the columns model.nope"):
        sweep_figure(sweep_table(_sweep_rows()), ["model.nope"])
