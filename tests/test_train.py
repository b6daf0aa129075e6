"""The shared trainer end to end on tiny data: outputs, exact resume, evaluation, rows and tables."""
import json

import pytest
import torch

from attnvision.engine import train
from attnvision.engine.checkpoint import load_checkpoint
from attnvision.engine.evaluate import evaluate
from attnvision.errors import ConfigError
from attnvision.results import comparison_table, read_rows
from conftest import train_interrupted

TINY = ["data=synthetic", "model=resnet", "model.depth=test", "data.num_train=64", "data.num_val=32",
        "data.batch_size=16"]
REQUIRED = {"model", "data", "image_size", "epochs", "params", "macs", "top1", "top5", "train_img_per_s", "wall_s",
            "seed", "git_commit"}


def test_two_step_run_writes_everything(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=2")
    result = train(cfg)
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "metrics.json", "config.yaml"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert REQUIRED <= set(metrics) and metrics["model"] == "test_av_resnet"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["num_updates"] == 2 and len(ckpt["history"]) == 1
    assert torch.isfinite(torch.tensor(ckpt["history"][0]["train_loss"]))
    assert 0 <= metrics["top1"] <= 100 and metrics["params"] == sum(p.numel() for p in result.model.parameters())
    rows = read_rows(tmp_path / "logs" / "rows")
    assert len(rows) == 1 and rows[0]["top1"] == metrics["top1"]
    assert list(comparison_table(rows)["gmacs"]) == [round(metrics["macs"] / 1e9, 3)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_matches_uninterrupted_run(make_cfg, tmp_path, monkeypatch, precision):
    """Kill a 2-epoch run right after its epoch-1 checkpoint, resume it, compare with a run never stopped."""
    common = [*TINY, "trainer.epochs=2", "trainer.deterministic=true", f"trainer.precision={precision}",
              "model.drop_path_rate=0.1"]
    straight = train(make_cfg(*common, run="straight")).model.state_dict()

    train_interrupted(make_cfg, monkeypatch, *common)
    assert load_checkpoint(tmp_path / "interrupted" / "last.pt")["epoch"] == 1

    resumed = train(make_cfg(*common, f"trainer.resume={tmp_path / 'interrupted' / 'last.pt'}", run="resumed"))
    assert resumed.metrics["epochs"] == 2 and len(load_checkpoint(tmp_path / "resumed" / "last.pt")["history"]) == 2
    for key, value in straight.items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_recorded_as_it_ran(make_cfg, tmp_path, monkeypatch, capsys, native):
    """``trainer.precision=auto`` (the default) runs bf16 only where the device has it natively, and the saved config,
    the identity and the row name the precision that ran; an explicit bf16 where it is emulated says so."""
    monkeypatch.setattr("attnvision.engine.runtime.native_bf16", lambda device_type: native)
    seen = []
    monkeypatch.setattr("attnvision.engine.loop.Precision.autocast",
                        lambda self: seen.append(self.dtype) or torch.autocast("cpu", enabled=False))
    metrics = train(make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1")).metrics
    expected = "bf16" if native else "fp32"
    assert metrics["precision"] == expected and set(seen) == {torch.bfloat16 if native else None}
    assert f"precision: {expected}" in (tmp_path / "run" / "config.yaml").read_text()
    explicit = train(make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.precision=bf16",
                              run="bf16")).metrics
    assert (explicit["identity"] == metrics["identity"]) is native  # auto is not an identity of its own
    assert ("emulated on this CPU" in capsys.readouterr().out) is not native


def test_evaluate_reproduces_recorded_top1(make_cfg, tmp_path):
    cfg = make_cfg("model.depth=test", "trainer.epochs=4", "optim.lr=3e-3")
    metrics = train(cfg).metrics
    best = tmp_path / "run" / "best.pt"
    recorded = load_checkpoint(best)["best"]
    assert recorded["top1"] == metrics["best_top1"]
    out = evaluate(make_cfg("model.depth=test", f"checkpoint={best}", config_name="evaluate", run="eval"))
    assert out["top1"] == recorded["top1"] and out["top5"] == recorded["top5"] and out["weights"] == "raw"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == recorded["top1"]
    assert out["top1"] > 60  # digits after 4 short epochs: far above the 10 % of chance


def test_evaluate_rejects_a_checkpoint_of_another_model(make_cfg, tmp_path):
    train(make_cfg(*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1"))
    cfg = make_cfg("data=synthetic", "model=resnet", "model.depth=26", f"checkpoint={tmp_path / 'run' / 'last.pt'}",
                   config_name="evaluate", run="eval")
    with pytest.raises(ConfigError, match="holds a test_av_resnet model but .* builds av_resnet26"):
        evaluate(cfg)
    cfg = make_cfg(*TINY, f"checkpoint={tmp_path / 'run' / 'last.pt'}", "weights=ema", config_name="evaluate",
                   run="eval")
    with pytest.raises(ConfigError, match="weights=ema but checkpoint=.* was trained without trainer.ema"):
        evaluate(cfg)


@pytest.mark.parametrize("override,match", [
    ("trainer.epochs=0", "trainer.epochs=0 must be a positive integer"),
    ("trainer.precision=fp8", "trainer.precision='fp8' is unknown; choose one of auto, fp32, bf16, fp16"),
    ("trainer.precision=fp16", "fp16 needs CUDA"),
])
def test_bad_trainer_values(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        train(make_cfg(*TINY, override))
