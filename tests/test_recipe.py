"""Recipe features of the shared trainer: EMA of the weights, Mixup / CutMix, and the overrides in the result row."""

import pytest
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

import attnvision.engine.trainer as trainer_module
from attnvision.data import build_loaders
from attnvision.engine import train
from attnvision.engine.checkpoint import load_checkpoint
from attnvision.engine.evaluate import evaluate
from attnvision.engine.loop import Precision, validate
from attnvision.engine.trainer import build_criterion, build_model
from attnvision.errors import ConfigError
from conftest import train_interrupted
from attnvision.results import read_rows
from conftest import run_cli

TINY = ["data=synthetic", "model=resnet", "model.depth=test", "data.num_train=64", "data.num_val=32",
        "data.batch_size=16"]


def test_ema_after_one_step_is_the_decay_weighted_average(make_cfg, tmp_path, monkeypatch):
    initial = []

    def recording_ema(model, **kwargs):
        initial.append({k: v.clone() for k, v in model.state_dict().items()})
        return ModelEmaV3(model, **kwargs)

    monkeypatch.setattr(trainer_module, "ModelEmaV3", recording_ema)
    decay = 0.75
    cfg = make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1", "sched.warmup_epochs=0",
                   "trainer.ema=true", f"trainer.ema_decay={decay}")
    metrics = train(cfg).metrics
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    (init,), raw, ema = initial, ckpt["model"], ckpt["ema"]
    assert ckpt["num_updates"] == 1 and ema.keys() == raw.keys() == init.keys()
    for key, value in init.items():
        if value.is_floating_point():
            torch.testing.assert_close(ema[key], decay * value + (1 - decay) * raw[key], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(ema[key], raw[key]), key  # BatchNorm's num_batches_tracked is copied
    weight = next(k for k, v in init.items() if v.ndim == 4)  # a convolution
    assert (ema[weight] - raw[weight]).abs().max() > 1e-5 and (ema[weight] - init[weight]).abs().max() > 1e-5

    # The run's top1 is the EMA weights' accuracy, top1_raw the raw weights'.
    _, val_loader = build_loaders(cfg.data)
    model = build_model(cfg.model, torch.device("cpu"), channels_last=True)
    measured = {}
    for name, state in (("top1", ema), ("top1_raw", raw)):
        model.load_state_dict(state)
        measured[name] = validate(model, val_loader, nn.CrossEntropyLoss(), Precision("bf16", "cpu"),
                                  torch.device("cpu"), channels_last=True)["top1"]
    assert {k: metrics[k] for k in measured} == measured and metrics["ema"] is True
    assert load_checkpoint(tmp_path / "run" / "best.pt")["ema"].keys() == ema.keys()


def test_evaluate_reads_the_ema_weights_of_an_ema_run(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=2", "sched.warmup_epochs=0",
                             "trainer.ema=true", "trainer.ema_decay=0.5")).metrics
    last = tmp_path / "run" / "last.pt"
    out = {weights: evaluate(make_cfg(*TINY, f"checkpoint={last}", f"weights={weights}", config_name="evaluate",
                                      run=f"eval_{weights}"))
           for weights in ("auto", "ema", "raw")}
    assert [out[w]["weights"] for w in ("auto", "ema", "raw")] == ["ema", "ema", "raw"]
    for weights in ("auto", "ema"):  # the run's reported (EMA) numbers, to the last digit
        assert (out[weights]["top1"], out[weights]["val_loss"]) == (metrics["top1"], metrics["val_loss"])
    assert out["raw"]["top1"] == metrics["top1_raw"] and out["raw"]["val_loss"] != metrics["val_loss"]
    with pytest.raises(ConfigError, match="weights='best' is unknown; choose one of auto, ema, raw"):
        evaluate(make_cfg(*TINY, f"checkpoint={last}", "weights=best", config_name="evaluate"))


def test_resume_restores_the_ema_exactly(make_cfg, tmp_path, monkeypatch):
    common = [*TINY, "trainer.epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.deterministic=true", "trainer.ema=true", "trainer.ema_decay=0.9"]
    train(make_cfg(*common, run="straight"))
    interrupted = train_interrupted(make_cfg, monkeypatch, *common)
    resumed = train(make_cfg(*common, f"trainer.resume={interrupted}", run="resumed")).metrics
    straight, again = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert again["epoch"] == 2 and resumed["top1"] == straight["history"][-1]["top1"]
    for key, value in straight["ema"].items():
        assert torch.equal(value, again["ema"][key]), key
    assert any(not torch.equal(v, again["model"][k]) for k, v in again["ema"].items() if v.is_floating_point())

    no_ema = [arg for arg in common if not arg.startswith("trainer.ema")]
    with pytest.raises(ConfigError, match="is another run: trainer.ema=True -> False, trainer.ema_decay=0.9 -> 0.9998"):
        train(make_cfg(*no_ema, f"trainer.resume={interrupted}", run="mismatch"))
    with pytest.raises(ConfigError, match="trainer.ema=False but trainer.resume=.* was trained with trainer.ema=True"):
        train(make_cfg(*no_ema, f"trainer.resume={interrupted}", "trainer.resume_force=true", run="mismatch"))


def test_mixup_cutmix_train_with_soft_targets(make_cfg, tmp_path, monkeypatch):
    seen = {}
    real_epoch = trainer_module.train_one_epoch

    def spy(*args, **kwargs):
        seen["loss_fn"], seen["mixup"] = args[4], kwargs["mixup"]
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_one_epoch", spy)
    train(make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.mixup_alpha=0.8",
                   "trainer.cutmix_alpha=1.0"))
    assert isinstance(seen["loss_fn"], SoftTargetCrossEntropy) and isinstance(seen["mixup"], Mixup)
    mixup = seen["mixup"]
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing, mixup.num_classes) == (0.8, 1.0, 0.1, 10)
    (row,) = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert torch.isfinite(torch.tensor(row["train_loss"])) and 0 <= row["train_top1"] <= 100


def test_without_mixup_the_loss_is_label_smoothed_cross_entropy(make_cfg):
    cfg = make_cfg(*TINY, "trainer.label_smoothing=0.2")
    mixup, loss_fn = build_criterion(cfg, build_loaders(cfg.data)[0])
    assert mixup is None and isinstance(loss_fn, nn.CrossEntropyLoss) and loss_fn.label_smoothing == 0.2


@pytest.mark.parametrize("overrides,match", [
    (["data.batch_size=15", "trainer.mixup_alpha=0.2"],
     r"data.batch_size=15 gives odd training batches \(15 images per process, 64 per epoch\) but "
     r"trainer.mixup_alpha=0.2 / trainer.cutmix_alpha=0.0 need even ones"),
    (["data.num_train=31", "trainer.cutmix_alpha=1.0"], r"data.batch_size=16 gives odd training batches"),
    (["trainer.mixup_alpha=-1"], r"trainer.mixup_alpha=-1 must be a number >= 0$"),
    (["trainer.ema_decay=1.5"], r"trainer.ema_decay=1.5 must be a number >= 0 and < 1$"),
    (["trainer.ema=maybe"], r"trainer.ema='maybe' must be true or false"),
])
def test_bad_recipe_values(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        train(make_cfg(*TINY, *overrides))


def test_row_records_ema_and_no_overrides_without_hydra(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1")).metrics
    (row,) = read_rows(tmp_path / "logs" / "rows")
    assert row["overrides"] == metrics["overrides"] == [] and row["ema"] is False
    assert row["top1_raw"] == row["top1"] and row["top5_raw"] == row["top5"]


@pytest.mark.slow
def test_cli_row_records_the_overrides(tmp_path):
    args = [*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.ema=true", "trainer.device=cpu",
            f"paths.log_dir={tmp_path}"]
    proc = run_cli("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    (row,) = read_rows(tmp_path / "rows")
    assert row["overrides"] == args and row["ema"] is True
