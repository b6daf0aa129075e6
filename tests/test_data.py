"""Loaders read the bundled digits and tiny datasets written here in CIFAR's and ImageFolder's on-disk formats."""
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from attnvision.data import build_datasets, build_loaders
from attnvision.errors import ConfigError


def test_digits_fixed_stratified_split(make_cfg):
    cfg = make_cfg()
    train, val = build_datasets(cfg.data)
    assert (len(train), len(val)) == (1437, 360)
    x, y = val.tensors
    assert x.shape == (360, 3, 32, 32) and x.dtype == torch.float32
    val_counts, train_counts = Counter(y.tolist()), Counter(train.tensors[1].tolist())
    for c in range(10):  # stratified: each class keeps its 20 % share in val, to within one image
        assert abs(val_counts[c] - 0.2 * (val_counts[c] + train_counts[c])) <= 1
    again = build_datasets(cfg.data)[1]
    assert torch.equal(again.tensors[0], x)  # the split is fixed
    assert abs(float(train.tensors[0].mean())) < 1e-4 and abs(float(train.tensors[0].std()) - 1) < 1e-3


def _write_cifar(root, name, n_train=6, n_test=4):
    """Tiny CIFAR in the original pickled-batch layout (uint8 N×3072 rows, channel-major)."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta, meta_key, classes = "batches.meta", "label_names", 10
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files, meta, meta_key, classes = ["train", "test"], "meta", "fine_label_names", 100
    folder.mkdir(parents=True)
    for f in files:
        n = n_test if "test" in f else n_train
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, classes, n).tolist()}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / meta, "wb") as fh:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, fh)
    return 5 * n_train if name == "cifar10" else n_train, n_test


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickled_batches(make_cfg, tmp_path, name):
    n_train, n_test = _write_cifar(tmp_path / name, name)
    cfg = make_cfg(f"data={name}", f"data.root={tmp_path / name}", "data.batch_size=4", "data.num_workers=0")
    train_loader, val_loader = build_loaders(cfg.data)
    assert (len(train_loader.dataset), len(val_loader.dataset)) == (n_train, n_test)
    images, labels = next(iter(val_loader))
    assert images.shape == (4, 3, 32, 32) and labels.max() < cfg.data.num_classes


def test_cifar_missing_names_path_and_remedy(make_cfg, tmp_path):
    cfg = make_cfg("data=cifar10", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError) as err:
        build_loaders(cfg.data)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data.download=true" in msg


def _write_imagefolder(root, classes=("ant", "bee", "cat"), per_class=2):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder_layout(make_cfg, tmp_path):
    _write_imagefolder(tmp_path / "inet")
    cfg = make_cfg("data=imagenet", f"data.root={tmp_path / 'inet'}", "data.num_classes=3", "data.image_size=32",
                   "data.batch_size=2", "data.num_workers=0")
    train_loader, val_loader = build_loaders(cfg.data)
    assert train_loader.dataset.classes == ["ant", "bee", "cat"]
    images, labels = next(iter(train_loader))
    assert images.shape == (2, 3, 32, 32)
    val_images, _ = next(iter(val_loader))
    assert val_images.shape == (2, 3, 32, 32)


def test_imagefolder_incomplete_is_one_clear_line(make_cfg, tmp_path):
    _write_imagefolder(tmp_path / "inet")
    cfg = make_cfg("data=imagenet", f"data.root={tmp_path / 'inet'}")  # 1000 classes expected
    with pytest.raises(ConfigError, match="has 3 class folders but data.num_classes=1000"):
        build_loaders(cfg.data)
    cfg = make_cfg("data=imagenet", f"data.root={tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match=f"no class folders in {tmp_path / 'empty' / 'train'}"):
        build_loaders(cfg.data)


def test_synthetic_any_size_and_deterministic(make_cfg):
    cfg = make_cfg("data=synthetic", "data.image_size=20", "data.num_classes=7", "data.num_train=9")
    train, val = build_datasets(cfg.data, seed=3)
    assert len(train) == 9 and train[4][0].shape == (3, 20, 20) and 0 <= train[4][1] < 7
    assert torch.equal(train[4][0], build_datasets(cfg.data, seed=3)[0][4][0])


@pytest.mark.parametrize("override,match", [("data.batch_size=-1", "data.batch_size=-1 must be a positive"),
                                            ("data.image_size=0", "data.image_size=0 must be a positive")])
def test_bad_data_values(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        build_loaders(make_cfg("data=synthetic", override).data)
