"""Trustworthy rows: run identity on resume, own run directories, the non-finite guard, per-job sweep errors,
preemption-safe checkpoints and one line for every bad value, each tried the way a user would hit it."""
import io
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

import pytest
import torch

import attnvision.engine.trainer as trainer_module
from attnvision.cli import hydra_entry
from attnvision.engine import train
from attnvision.engine.count import count_flops
from attnvision.engine.evaluate import evaluate
from attnvision.engine.checkpoint import load_checkpoint
from attnvision.engine.guards import Diverged
from attnvision.errors import ConfigError
from attnvision.results import read_rows
from conftest import ROOT, run_cli, train_interrupted

TINY = ["data=synthetic", "model=resnet", "model.depth=test", "data.num_train=64", "data.num_val=32",
        "data.batch_size=16"]
CLI_TINY = ["model=resnet", "model.depth=test", "data=synthetic", "trainer.epochs=1", "trainer.limit_train_batches=2",
            "trainer.progress=false", "trainer.device=cpu"]


def _lines(text: str) -> list:
    return [line for line in text.splitlines() if line.strip()]


def _weights_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(value, b[key]) for key, value in a.items())


# --- run identity ------------------------------------------------------------------------------------------------

def test_resume_auto_never_continues_another_seed(make_cfg, tmp_path, capsys):
    common = [*TINY, "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.resume=auto"]
    models = [train(make_cfg(*common, f"trainer.seed={seed}", run=f"seed{seed}")).model for seed in range(3)]
    rows = read_rows(tmp_path / "logs" / "rows")
    assert sorted(row["seed"] for row in rows) == [0, 1, 2] and all(row["resumed_from"] is None for row in rows)
    assert not _weights_equal(models[0].state_dict(), models[1].state_dict())
    assert capsys.readouterr().out.count("no earlier run of this identity; starting fresh") == 3

    again = train(make_cfg(*common, "trainer.seed=1", run="again"))  # the same run: reported, nothing re-done
    assert again.model is None and again.metrics["run_dir"] == str(tmp_path / "seed1")
    assert "this run already finished in" in capsys.readouterr().out
    assert len(read_rows(tmp_path / "logs" / "rows")) == 3 and not (tmp_path / "again").exists()


def test_other_epochs_and_lr_are_another_run(make_cfg, tmp_path, capsys):
    first = [*TINY, "trainer.limit_train_batches=2", "trainer.epochs=1"]
    train(make_cfg(*first, run="first"))
    longer = [*TINY, "trainer.limit_train_batches=2", "trainer.epochs=3", "optim.lr=0.01"]
    result = train(make_cfg(*longer, "trainer.resume=auto", run="second"))
    assert "starting fresh" in capsys.readouterr().out and result.metrics["resumed_from"] is None
    assert load_checkpoint(tmp_path / "second" / "last.pt")["num_updates"] == 6  # all three epochs trained

    ckpt = tmp_path / "first" / "last.pt"
    with pytest.raises(ConfigError, match=rf"trainer.resume={ckpt} is another run: optim.lr=0.001 -> 0.01, "
                                          rf"trainer.epochs=1 -> 3; .* trainer.resume_force=true"):
        train(make_cfg(*longer, f"trainer.resume={ckpt}", run="refused"))
    forced = train(make_cfg(*longer, f"trainer.resume={ckpt}", "trainer.resume_force=true", run="forced"))
    state = load_checkpoint(tmp_path / "forced" / "last.pt")
    assert state["num_updates"] == 6 and len(state["history"]) == 3 and forced.metrics["resumed_from"] == str(ckpt)
    assert state["scheduler"]["t_initial"] == 6  # this config's schedule, not the 2-update one of the checkpoint


def test_resume_auto_falls_back_from_a_corrupt_checkpoint_and_cleans_temporaries(make_cfg, tmp_path, monkeypatch,
                                                                                   capsys):
    common = [*TINY, "trainer.epochs=2", "trainer.limit_train_batches=2", "trainer.resume=auto"]
    last = train_interrupted(make_cfg, monkeypatch, *common)
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk
    stale = last.parent / ".last.pt.k3j2h1.tmp"
    stale.write_bytes(b"half a checkpoint")  # what a kill during a save leaves
    result = train(make_cfg(*common, run="again"))
    captured = capsys.readouterr()
    assert f"warning: skipping {last}" in captured.err and f"removed {stale}" in captured.out
    assert result.metrics["resumed_from"] == str(last.parent / "best.pt")
    assert result.metrics["run_dir"] == str(last.parent) and not list(last.parent.glob(".*.tmp"))
    assert load_checkpoint(last)["num_updates"] == 4


# --- non-finite guard --------------------------------------------------------------------------------------------

def test_divergence_keeps_the_last_good_checkpoint(make_cfg, tmp_path, monkeypatch):
    real = trainer_module.build_criterion
    calls = []

    def nan_from_fourth_batch(cfg, loader):
        mixup, loss_fn = real(cfg, loader)

        def loss(logits, targets):
            calls.append(1)
            value = loss_fn(logits, targets)
            return value * float("nan") if len(calls) >= 4 else value
        return mixup, loss

    monkeypatch.setattr(trainer_module, "build_criterion", nan_from_fourth_batch)
    with pytest.raises(Diverged) as err:
        train(make_cfg(*TINY, "trainer.epochs=2", "trainer.limit_train_batches=2"))
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 3
    assert message.startswith("error: diverged in epoch 2/2: the training loss was nan at step 2 (last finite loss ")
    assert f"kept {tmp_path / 'run' / 'last.pt'} (epoch 1, update 2)" in message and "optim.lr" in message
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["top1"] is None
    (row,) = read_rows(tmp_path / "logs" / "rows")
    assert row["status"] == "diverged"


@pytest.mark.slow
def test_huge_lr_exits_non_zero_with_one_line_and_valid_json(tmp_path):
    proc = run_cli("train.py", *CLI_TINY, "trainer.limit_train_batches=16", "optim.lr=1e6", "trainer.precision=fp32",
                   f"paths.log_dir={tmp_path}")
    assert proc.returncode == 3, proc.stderr
    (line,) = _lines(proc.stderr)
    assert line.startswith("error: diverged in epoch 1/1: the training loss was nan") and "optim.lr (now 1000000.0)" in line
    (run_dir,) = (tmp_path / "train" / "runs" / "test_av_resnet_synthetic").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert metrics["status"] == "diverged" and not (run_dir / "best.pt").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "diverged"


# --- run directories and sweeps ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_parallel_runs_and_sweeps_never_share_a_directory(tmp_path):
    def start(*args):
        return subprocess.Popen([sys.executable, *args, f"paths.log_dir={tmp_path}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs = [start("train.py", *CLI_TINY, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
             for _ in range(4)]
    procs += [start("count_flops.py", "-m", "model=resnet", "model.depth=test", "data=synthetic",
                    "data.image_size=32,64", "format=json") for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0] * 6, [p.stderr.read() for p in procs]
    assert len(list((tmp_path / "train" / "runs" / "test_av_resnet_synthetic").iterdir())) == 4
    assert len(read_rows(tmp_path / "rows")) == 4
    sweeps = list((tmp_path / "count_flops" / "multiruns").iterdir())
    assert len(sweeps) == 2 and all(len(list((s / "rows").glob("*.json"))) == 2 for s in sweeps)


@pytest.mark.slow
def test_a_bad_job_does_not_end_the_sweep(tmp_path):
    proc = run_cli("count_flops.py", "-m", "model=sasa_resnet", "model.depth=test", "data=synthetic",
                   "model.kernel_size=3,4,5", "format=json", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 1
    lines = _lines(proc.stderr)
    assert lines[0].startswith("job #1 (") and "model.kernel_size=4 must be positive odd" in lines[0]
    assert lines[-1].startswith("sweep: 3 jobs, 2 finished, 1 failed: #1 (") and "Traceback" not in proc.stderr
    (sweep,) = (tmp_path / "count_flops" / "multiruns").iterdir()
    rows = [json.loads(p.read_text()) for p in (sweep / "rows").glob("*.json")]
    assert sorted(r["overrides"][3] for r in rows) == ["model.kernel_size=3", "model.kernel_size=5"]


# --- preemption --------------------------------------------------------------------------------------------------

def test_sigterm_mid_epoch_then_resume_auto_is_bitwise_an_uninterrupted_run(make_cfg, tmp_path, monkeypatch):
    common = [*TINY, "trainer.epochs=2", "trainer.deterministic=true", "trainer.precision=fp32",
              "model.drop_path_rate=0.1", "trainer.ema=true", "trainer.ema_decay=0.9"]
    straight = train(make_cfg(*common, run="elsewhere/straight"))  # out of resume=auto's sight
    real = trainer_module.train_one_epoch

    def sigterm_at_update_3(*args, boundary=None, **kwargs):
        def signalled(updates, snapshot):
            if updates == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            boundary(updates, snapshot)
        return real(*args, boundary=signalled, **kwargs)

    monkeypatch.setattr(trainer_module, "train_one_epoch", sigterm_at_update_3)
    with pytest.raises(trainer_module.Preempted) as err:
        train(make_cfg(*common, "trainer.resume=auto", run="preempted"))
    assert err.value.exit_code == 143 and "preempted by SIGTERM at epoch 1/2, step 3" in str(err.value)
    saved = load_checkpoint(tmp_path / "preempted" / "last.pt")
    assert (saved["epoch"], saved["num_updates"], saved["progress"]["step"]) == (0, 3, 3)
    monkeypatch.setattr(trainer_module, "train_one_epoch", real)

    resumed = train(make_cfg(*common, "trainer.resume=auto", run="resumed"))
    assert resumed.metrics["run_dir"] == str(tmp_path / "preempted") and not (tmp_path / "resumed").exists()
    assert _weights_equal(straight.model.state_dict(), resumed.model.state_dict())
    ema = [load_checkpoint(tmp_path / run / "last.pt")["ema"] for run in ("elsewhere/straight", "preempted")]
    assert _weights_equal(*ema)
    assert resumed.metrics["top1"] == straight.metrics["top1"]
    assert resumed.metrics["val_loss"] == straight.metrics["val_loss"]


def test_checkpoint_every_saves_mid_epoch(make_cfg, tmp_path, monkeypatch):
    saves = []
    real = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda path, state: saves.append((path.name, state["num_updates"])) or real(path, state))
    train(make_cfg(*TINY, "trainer.epochs=1", "trainer.checkpoint_every=3"))
    assert saves == [("last.pt", 3), ("best.pt", 4), ("last.pt", 4)]


@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_and_exits_with_one_line(tmp_path, signum, status):
    args = [sys.executable, "train.py", "model=resnet", "model.depth=test", "trainer.epochs=3",
            "trainer.progress=false", "trainer.device=cpu", f"paths.log_dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if "run dir" in line:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err
    (line,) = _lines(err)
    assert line.startswith(f"preempted by {signal.Signals(signum).name} at ") and "trainer.resume=auto" in line
    (run_dir,) = (tmp_path / "train" / "runs" / "test_av_resnet_digits").iterdir()
    assert load_checkpoint(run_dir / "last.pt")["num_updates"] >= 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "preempted"


def test_imagefolder_class_count_is_checked_before_the_model_is_built(make_cfg, tmp_path, monkeypatch):
    for split in ("train", "val"):
        for cls in ("ant", "bee", "cat"):
            (tmp_path / "inet" / split / cls).mkdir(parents=True)
    monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    cfg = make_cfg("data=imagenet", f"data.root={tmp_path / 'inet'}", "model=resnet", "model.depth=test")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'inet' / 'train'} has 3 class folders but "
                                          rf"data.num_classes=1000; set data.num_classes=3"):
        train(cfg)


# --- one line for every bad value ----------------------------------------------------------------------------------

N_BAD_INPUTS = 30


def _bad_inputs(tmp):
    """(command, what its one stderr line must contain): each a mistake a user makes; all exit 2."""
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    blocked = tmp / "blocked"
    blocked.mkdir()
    (blocked / "rows").write_text("a file where the rows folder goes")
    train_args = ["train.py", *CLI_TINY, f"paths.log_dir={tmp / 'logs'}"]
    return [
        ([*train_args, "trainer.clip_grad=-1"], "trainer.clip_grad=-1 must be a number > 0"),
        ([*train_args, "model=sasa_resnet", "model.kernel_size=4"], "model.kernel_size=4 must be positive odd"),
        ([*train_args, "model.kernel_size=6"], "model.kernel_size=6 must be positive odd"),
        ([*train_args, "model=san_pairwise", "model.kernel_sizes=[3,4,5,7,7]"], "model.kernel_sizes=[3, 4, 5, 7, 7]"),
        ([*train_args, "data.image_size=1"], "data.image_size=1 is below the network's total stride of 8"),
        ([*train_args, "data.image_size=16", "data.small_stem=false"], "data.image_size=16 is below"),
        ([*train_args, "model.kernal_size=3"], "did you mean model.kernel_size?"),
        ([*train_args, "trainer.epoch=3"], "did you mean trainer.epochs?"),
        ([*train_args, "optim.lr=-1"], "optim.lr=-1 must be a number > 0"),
        ([*train_args, "optim.lr=abc"], "optim.lr='abc' must be a number > 0"),
        ([*train_args, "optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must be a number >= 0"),
        ([*train_args, "optim.opt=adamx"], "optim.opt='adamx' is unknown; choose one of"),
        ([*train_args, "optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5 must be a number >= 0 and < 1"),
        ([*train_args, "sched.sched=linear"], "sched.sched='linear' is unknown; choose one of cosine"),
        ([*train_args, "sched.warmup_epochs=-1"], "sched.warmup_epochs=-1 must be a number >= 0"),
        ([*train_args, "sched=step", "sched.decay_rate=0"], "sched.decay_rate=0 must be a number > 0 and <= 1"),
        ([*train_args, "data=digits", "data.num_classes=5"], "data.num_classes=5 but digits has 10 classes"),
        ([*train_args, "data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
        ([*train_args, "trainer.label_smoothing=2"], "trainer.label_smoothing=2 must be a number >= 0 and < 1"),
        ([*train_args, "trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 must be a positive integer, auto"),
        ([*train_args, "trainer.seed=-1"], "trainer.seed=-1 must be an integer >= 0"),
        ([*train_args, "trainer.epochs=abc"], "trainer.epochs='abc' must be a positive integer"),
        ([*train_args, "trainer.ema_decay=2"], "trainer.ema_decay=2 must be a number >= 0 and < 1"),
        ([*train_args, "trainer.device=tpu"], "trainer.device='tpu' is unknown; choose one of auto, cpu, cuda"),
        ([*train_args, f"trainer.resume={tmp / 'missing.pt'}"], f"trainer.resume={tmp / 'missing.pt'} does not exist"),
        ([*train_args, f"trainer.resume={text}"], f"trainer.resume={text} is not a readable checkpoint"),
        (["train.py", *CLI_TINY, f"paths.log_dir={blocked}"], f"paths.log_dir: cannot write to {blocked / 'rows'}"),
        (["count_flops.py", "model=resnet", "data.image_size=0"], "data.image_size=0 must be a positive integer"),
        (["count_flops.py", "model=resnet", "format=xml"], "format='xml' is unknown; choose one of table, json"),
        (["evaluate.py", *CLI_TINY[:3], f"checkpoint={text}"], f"checkpoint={text} is not a readable"),
    ]


def _run_in_process(args) -> subprocess.CompletedProcess:
    """``python <script> <overrides>`` run in this interpreter (a fresh entry point, so no state is shared between
    runs): its exit status and what it printed. A fresh process costs 8 s of imports; this costs 0.4 s."""
    tasks = {"train.py": ("train", train), "count_flops.py": ("count_flops", count_flops),
             "evaluate.py": ("evaluate", evaluate)}
    out, err, status = io.StringIO(), io.StringIO(), 0
    with mock.patch.object(sys, "argv", list(args)), redirect_stdout(out), redirect_stderr(err):
        try:
            hydra_entry(*tasks[args[0]])()
        except SystemExit as exit_:
            status = exit_.code
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every bad-input command run once, in this process."""
    cases = _bad_inputs(tmp_path_factory.mktemp("bad"))
    assert len(cases) == N_BAD_INPUTS
    return [(case, _run_in_process(case[0])) for case in cases]


def _assert_one_line(args, expected, proc):
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
    assert lines[0].startswith("error: ") and expected in lines[0], (args, lines[0])
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("index", range(N_BAD_INPUTS))
def test_bad_value_is_one_line_naming_the_key(bad_input_runs, index):
    (args, expected), proc = bad_input_runs[index]
    _assert_one_line(args, expected, proc)


@pytest.mark.slow
def test_bad_values_are_one_line_from_a_fresh_process(tmp_path):
    """A sample of the above as real processes: nothing printed at import or start-up adds a line."""
    cases = [case for i, case in enumerate(_bad_inputs(tmp_path)) if i in (6, 9, 26, 27)]
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda case: run_cli(*case[0]), cases))
    for (args, expected), proc in zip(cases, procs):
        _assert_one_line(args, expected, proc)
