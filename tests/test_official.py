"""The authors' released checkpoints (SAN: hszhao/SAN; Axial-DeepLab: csrhddlam/axial-deeplab): state_dicts in their
layout, built here from their documented key names and layout rules, load into our models with the same outputs as
the same weights loaded natively; evaluate.py and scripts/convert_checkpoint.py read them."""
import pytest
import timm
import torch
import torch.nn.functional as F

from attnvision.engine.checkpoint import convert_official, load_checkpoint, save_checkpoint
from attnvision.engine.evaluate import evaluate
from attnvision.engine.trainer import build_model
from attnvision.errors import ConfigError
from attnvision.models import axial, official_filter_fn, san

from conftest import run_cli


SAN_BLOCK = {"attn.phi": "sam.conv1", "attn.psi": "sam.conv2", "attn.beta": "sam.conv3", "attn.position": "sam.conv_p",
             "attn.gamma": "sam.conv_w", "bn1": "bn1", "bn2": "bn2", "conv": "conv"}
AXIAL_BLOCK = {"conv1": "conv_down", "bn1": "bn1", "conv2.0": "hight_block", "conv2.2": "width_block",
               "conv3": "conv_up", "bn3": "bn2", "downsample": "downsample"}


def _randomized(model):
    """``model`` in float64 eval mode with every parameter and BN statistic random (no zero-init, no unit BNs)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.dtype.is_floating_point:
                t.normal_(0, 0.3)
    return model.double().eval()


def _renamed(state, prefix, names):
    """{their key: value} of our keys under ``prefix`` in the modules of ``names`` ({our module: their module})."""
    out = {}
    for key, value in state.items():
        rest = key[len(prefix):]
        module = next((m for m in names if key.startswith(prefix) and rest.startswith(m + ".")), None)
        if module is not None:
            out[names[module] + rest[len(module):]] = value
    return out


def san_official(model):
    """hszhao/SAN's state_dict of ``model``: stem ``conv_in``/``bn_in``; per stage i ``conv{i}`` and ``bn{i}`` (both
    registered before the blocks), then ``layer{i}.{j}`` blocks whose SAM names φ, ψ, β ``conv1..3``, the position
    map ``conv_p`` and γ ``conv_w``; ``fc``. Saved by DataParallel under 'state_dict'."""
    sd = model.state_dict()
    out = _renamed(sd, "stem.", {"0": "conv_in", "1": "bn_in"})
    for i, stage in enumerate(model.stages):
        out.update(_renamed(sd, f"stages.{i}.", {"1": f"conv{i}", str(len(stage) - 2): f"bn{i}"}))
        for j in range(len(stage) - 4):
            out.update(_renamed(sd, f"stages.{i}.{j + 2}.", {k: f"layer{i}.{j}.{v}" for k, v in SAN_BLOCK.items()}))
    out.update(_renamed(sd, "head.", {"fc": "fc"}))
    return {"epoch": 100, "state_dict": {"module." + k: v for k, v in out.items()}}


def axial_official(model):
    """csrhddlam/axial-deeplab's state_dict of ``model``: stem ``conv1``/``bn1``, stage i's blocks ``layer{i+1}.{j}``;
    an attention layer's projection is a Conv1d ``qkv_transform``, its logit BN ``bn_similarity``, its output BN's
    channels interleave [sum w v_c, sum w r^v_c], its ``relative`` table is read at o - p for r^q and r^v (ours at
    p - o: mirrored columns), and it keeps the table's index as a ``flatten_index`` buffer. Saved under 'net'."""
    sd = model.state_dict()
    out = {**_renamed(sd, "stem.", {"0": "conv1", "1": "bn1"}), **_renamed(sd, "head.", {"fc": "fc"})}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            out.update(_renamed(sd, f"stages.{i}.{j}.", {k: f"layer{i + 1}.{j}.{v}" for k, v in AXIAL_BLOCK.items()}))
            for layer, name in ((block.conv2[0], "hight_block"), (block.conv2[2], "width_block")):
                p = f"layer{i + 1}.{j}.{name}."
                rows = out[p + "relative"].split([layer.widths[t] for t in layer.terms])
                out[p + "relative"] = torch.cat([r.flip(-1) if t in "qv" else r for t, r in zip(layer.terms, rows)])
                index = torch.arange(layer.relative.shape[1] // 2 + 1)
                out[p + "flatten_index"] = (index[:, None] - index[None, :] + len(index) - 1).flatten()
                out[p + "qkv_transform.weight"] = out.pop(p + "qkv.weight").squeeze(-1)
                for stat in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    out[p + "bn_similarity." + stat] = out.pop(p + "bn_logits." + stat)
                    if stat != "num_batches_tracked":
                        out[p + "bn_output." + stat] = out[p + "bn_output." + stat].view(2, -1).t().flatten()
    return {"epoch": 10, "net": {"module." + k: v for k, v in out.items()}}


def _bn(p, name):
    return dict(running_mean=p[name + ".running_mean"], running_var=p[name + ".running_var"],
                weight=p[name + ".weight"], bias=p[name + ".bias"], training=False)


def authors_height_layer(x, p, heads):
    """The authors' height-axis layer in eval mode, computed from their layout's documented rules: per column, q·k,
    q_i·r^q at table column i - j + L - 1, k_j·r^k at j - i + L - 1 (i the query, j the key), one BN over the
    [qk, qr, kr] maps, softmax over j; sum w v and sum w r^v (r^v at i - j) interleaved per channel in the output
    BN, then summed."""
    n, _, h, w = x.shape
    lines = x.permute(0, 3, 1, 2).reshape(n * w, -1, h)  # N·W, C, H
    qkv = F.batch_norm(F.conv1d(lines, p["qkv_transform.weight"]), **_bn(p, "bn_qkv"))
    width = qkv.shape[1] // 2 // heads
    q, k, v = qkv.view(n * w, heads, 2 * width, h).split([width // 2, width // 2, width], 2)
    i = torch.arange(h)
    rq, rk, rv = p["relative"][:, i[:, None] - i[None, :] + h - 1].split([width // 2, width // 2, width])
    logits = torch.cat([torch.einsum("bgci,bgcj->bgij", q, k), torch.einsum("bgci,cij->bgij", q, rq),
                        torch.einsum("bgcj,cji->bgij", k, rk)], 1)
    weights = F.batch_norm(logits, **_bn(p, "bn_similarity")).view(n * w, 3, heads, h, h).sum(1).softmax(-1)
    outputs = torch.stack([torch.einsum("bgij,bgcj->bgci", weights, v), torch.einsum("bgij,cij->bgci", weights, rv)],
                          -2).reshape(n * w, -1, h)  # N·W, (channel, [v, r^v]), H
    y = F.batch_norm(outputs, **_bn(p, "bn_output")).view(n * w, -1, 2, h).sum(2)
    return y.view(n, w, -1, h).permute(0, 2, 3, 1)  # N, C, H, W


@pytest.mark.parametrize("name,to_official,filter_fn", [
    ("test_san_pairwise", san_official, san.checkpoint_filter_fn),
    ("test_san_patchwise", san_official, san.checkpoint_filter_fn),
    ("test_axial_resnet", axial_official, axial.checkpoint_filter_fn),
])
def test_the_authors_layout_loads_with_the_same_outputs(name, to_official, filter_fn):
    native = _randomized(timm.create_model(name))
    theirs = to_official(native)
    loaded = timm.create_model(name).double().eval()
    state = filter_fn(theirs, loaded)
    assert state.keys() == native.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in native.state_dict().items())
    loaded.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x), native(x))
    assert filter_fn(state, loaded) is not None  # ours passes through: timm may apply the filter to a converted file


def test_axial_layout_rules_give_the_authors_layer():
    """Not only a round trip: our layer, loaded from the authors' layout, computes what their rules compute (a
    missed mirror of r^q / r^v or a missed interleave of the output BN changes the output)."""
    model = _randomized(timm.create_model("test_axial_resnet"))
    loaded = timm.create_model("test_axial_resnet").double().eval()
    theirs = axial_official(model)["net"]
    loaded.load_state_dict(axial.checkpoint_filter_fn({"net": theirs}, loaded))
    layer = loaded.stages[0][0].conv2[0]
    p = {k[len("module.layer1.0.hight_block."):]: v for k, v in theirs.items()
         if k.startswith("module.layer1.0.hight_block.")}
    x = torch.randn(2, layer.qkv.in_channels, 32, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), authors_height_layer(x, p, layer.num_heads), rtol=1e-10, atol=1e-10)
        mirrored = dict(p, relative=p["relative"].flip(-1))
        assert not torch.allclose(layer(x), authors_height_layer(x, mirrored, layer.num_heads), atol=1e-3)


def test_unknown_and_missing_keys_are_one_line():
    model = timm.create_model("test_san_pairwise")
    theirs = san_official(model)["state_dict"]
    with pytest.raises(ConfigError, match=r"^the checkpoint does not fit test_san_pairwise as configured: unknown "
                                          r"keys layer9\.0\.conv\.weight$"):
        san.checkpoint_filter_fn({**theirs, "layer9.0.conv.weight": torch.zeros(1)}, model)
    del theirs["module.fc.bias"]
    with pytest.raises(ConfigError, match=r"missing keys head\.fc\.bias$"):
        san.checkpoint_filter_fn(theirs, model)
    other = timm.create_model("test_san_pairwise", num_classes=5)
    with pytest.raises(ConfigError, match=r"shapes differ: head\.fc\.bias \(1000,\) \(ours \(5,\)\)"):
        san.checkpoint_filter_fn(san_official(model), other)
    assert official_filter_fn("san19_patchwise") is san.checkpoint_filter_fn
    assert official_filter_fn("axial50m") is axial.checkpoint_filter_fn
    with pytest.raises(ConfigError, match="builds sasa_resnet26, for which no official weights exist"):
        official_filter_fn("sasa_resnet26")


def test_evaluate_reads_the_authors_file(make_cfg, tmp_path):
    """``evaluate.py checkpoint=official:PATH`` and the same weights saved natively evaluate alike (SAN10 patchwise
    at 32 px, 10 classes, on a batch of synthetic images)."""
    args = ["model=san_patchwise", "model.depth=10", "data=synthetic", "trainer.limit_val_batches=1"]
    torch.manual_seed(0)  # PyTorch's init (random weights at 32 px would overflow the loss: 10 random blocks deep)
    native = build_model(make_cfg(*args, "checkpoint=x", config_name="evaluate").model, torch.device("cpu"))
    save_checkpoint(tmp_path / "native.pt", {"model": native.state_dict(), "model_name": "san10_patchwise"})
    torch.save(san_official(native), tmp_path / "official.pth")
    checkpoints = {"native": tmp_path / "native.pt", "official": f"official:{tmp_path / 'official.pth'}"}
    out = {name: evaluate(make_cfg(*args, f"checkpoint={ckpt}", config_name="evaluate", run=name))
           for name, ckpt in checkpoints.items()}
    assert out["official"]["weights"] == "official" and out["native"]["weights"] == "raw"
    assert out["official"]["val_loss"] == out["native"]["val_loss"] and out["official"]["top1"] == out["native"]["top1"]
    assert 0 < out["native"]["val_loss"] < 10
    with pytest.raises(ConfigError, match="builds test_san_patchwise, for which no official weights exist"):
        evaluate(make_cfg("model=san_patchwise", "model.depth=test", "data=synthetic",
                          f"checkpoint=official:{tmp_path / 'official.pth'}", config_name="evaluate", run="bad"))


def test_convert_checkpoint_writes_a_file_timm_and_evaluate_read(tmp_path):
    native = _randomized(timm.create_model("axial26s")).float()
    torch.save(axial_official(native), tmp_path / "axial26s.pth")
    proc = run_cli("scripts/convert_checkpoint.py", "--model", "axial26s", "--src", str(tmp_path / "axial26s.pth"),
                   "--out", str(tmp_path / "av.pt"))
    assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {tmp_path / 'av.pt'}", proc.stderr
    loaded = timm.create_model("axial26s", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "av.pt")))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in native.state_dict().items())
    assert load_checkpoint(tmp_path / "av.pt")["model_name"] == "axial26s"  # what evaluate.py checks
    with pytest.raises(ConfigError, match=f"^--src={tmp_path / 'axial26s.pth'}: the checkpoint does not fit "
                                          f"san10_pairwise as configured: unknown keys"):
        convert_official("san10_pairwise", tmp_path / "axial26s.pth", tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()
