"""Loaders read the bundled digits and tiny datasets written here in CIFAR's and ImageFolder's on-disk formats."""
import io
import os
import pickle
import traceback
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from attnvision.data import build_datasets, build_loaders
from attnvision.data.cifar import CIFAR_MEAN, CIFAR_STD
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


def _write_cifar(root, name, n_train=6, n_test=4, protocol=pickle.DEFAULT_PROTOCOL, bytes_keys=False):
    """Tiny CIFAR in the original pickled-batch layout (uint8 N×3072 rows, channel-major); returns the folder and
    {file name: the batch or meta dict written}. Protocol 2 with bytes keys is how the official files look to Python 3.
    """
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta, meta_key, classes = "batches.meta", "label_names", 10
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files, meta, meta_key, classes = ["train", "test"], "meta", "fine_label_names", 100
    folder.mkdir(parents=True)
    written = {f: {"data": rng.integers(0, 256, (n_test if "test" in f else n_train, 3072), dtype=np.uint8)}
               for f in files}
    for batch in written.values():
        batch[label_key] = rng.integers(0, classes, len(batch["data"])).tolist()
    written[meta] = {meta_key: [f"class{i}" for i in range(classes)]}
    for f, entry in written.items():
        with open(folder / f, "wb") as fh:
            pickle.dump({k.encode() if bytes_keys else k: v for k, v in entry.items()}, fh, protocol=protocol)
    return folder, written


@pytest.mark.parametrize("name,protocol,bytes_keys", [("cifar10", pickle.DEFAULT_PROTOCOL, False),
                                                      ("cifar100", 2, True)])
def test_cifar_pickled_batches(make_cfg, tmp_path, name, protocol, bytes_keys):
    folder, written = _write_cifar(tmp_path / name, name, protocol=protocol, bytes_keys=bytes_keys)
    label_key, test_file = ("labels", "test_batch") if name == "cifar10" else ("fine_labels", "test")
    cfg = make_cfg(f"data={name}", f"data.root={tmp_path / name}", "data.batch_size=4", "data.num_workers=0")
    train_loader, val_loader = build_loaders(cfg.data)
    train_batches = [b for f, b in written.items() if label_key in b and f != test_file]
    assert train_loader.dataset.targets == [y for b in train_batches for y in b[label_key]]
    assert train_loader.dataset.classes == [f"class{i}" for i in range(cfg.data.num_classes)]
    images, labels = next(iter(val_loader))  # eval transform at 32 px: ToTensor and Normalize only
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == written[test_file][label_key]
    pixels = torch.from_numpy(written[test_file]["data"][0].reshape(3, 32, 32)).float() / 255  # channel-major rows
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    torch.testing.assert_close(images[0], (pixels - mean) / std)


class _Hostile:
    """Unpickling this calls ``func(*args)``, as a planted pickle would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("target", ["data_batch_2", "batches.meta"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.open"])
def test_cifar_hostile_pickle_runs_nothing(make_cfg, tmp_path, target, attack):
    folder, written = _write_cifar(tmp_path / "c10", "cifar10")
    marker = tmp_path / "MARKER"
    payload = _Hostile(os.system, f"touch {marker}") if attack == "os.system" else _Hostile(open, str(marker), "w")
    with open(folder / target, "wb") as fh:  # the payload sits inside an otherwise valid dict
        pickle.dump({**written[target], "batch_label": payload}, fh)
    cfg = make_cfg("data=cifar10", f"data.root={tmp_path / 'c10'}")
    with pytest.raises(ConfigError) as err:
        build_loaders(cfg.data)
    msg = str(err.value)
    assert not marker.exists()
    assert "\n" not in msg and f"refusing to unpickle {folder / target}: it asks for " in msg
    assert ("system" if attack == "os.system" else "open") in msg


def _truncate(path):
    """Keep the first half of the file."""
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _rewrite(**changes):
    """A damage that rewrites a batch with ``changes`` applied."""
    def change(path):
        with open(path, "rb") as fh:
            entry = pickle.load(fh)  # our own fixture
        with open(path, "wb") as fh:
            pickle.dump({**entry, **changes}, fh)
    return change


@pytest.mark.parametrize("damage,problem", [
    (_truncate, "cannot unpickle it (UnpicklingError: pickle data was truncated)"),
    (lambda path: path.write_bytes(b""), "cannot unpickle it (EOFError: Ran out of input)"),
    (_rewrite(data=np.zeros((6, 3072), np.float32)), "'data' is float32 of shape (6, 3072), not a uint8 N×3072"),
    (_rewrite(data=np.zeros((6, 1024), np.uint8)), "'data' is uint8 of shape (6, 1024), not a uint8 N×3072"),
    (_rewrite(labels=[0, 1]), "'labels' holds 2 labels for 6 images"),
    (_rewrite(labels=[0, 1, 2, 3, 4, 10]), "label 10 is not a class index below data.num_classes=10"),
])
def test_cifar_damaged_batch_names_file_and_problem(make_cfg, tmp_path, damage, problem):
    folder, _ = _write_cifar(tmp_path / "c10", "cifar10")
    damage(folder / "data_batch_3")
    cfg = make_cfg("data=cifar10", f"data.root={tmp_path / 'c10'}")
    with pytest.raises(ConfigError) as err:
        build_loaders(cfg.data)
    msg = str(err.value)
    assert "\n" not in msg and f"{folder / 'data_batch_3'} is not a valid CIFAR file: {problem}" in msg


@pytest.mark.parametrize("name,wrong,right", [("digits", 5, 10), ("cifar10", 100, 10), ("cifar100", 10, 100)])
def test_num_classes_must_match_dataset(make_cfg, tmp_path, name, wrong, right):
    # the root does not exist: the class count is checked before anything is read
    cfg = make_cfg(f"data={name}", f"data.root={tmp_path / 'nowhere'}", f"data.num_classes={wrong}")
    with pytest.raises(ConfigError, match=f"^data.num_classes={wrong} but {name} has {right} classes; "
                                          f"set data.num_classes={right}$"):
        build_loaders(cfg.data)


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


def _corrupt(path):
    """Replace the file with random bytes."""
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())


def _truncated_jpeg(path):
    """Replace the file with the first half of its JPEG encoding."""
    buf = io.BytesIO()
    Image.open(path).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])


def _iteration_error(loader) -> str:
    """The message of the ConfigError that iterating ``loader`` raises; str() of what reached this process."""
    try:
        for _ in loader:
            pass
    except ConfigError as err:
        # torch's reraise frame and the exception form a cycle holding the worker iterator; freed by a later gc,
        # its workers take 10 s to stop, so drop the frames' references now
        traceback.clear_frames(err.__traceback__)
        return str(err)
    pytest.fail("no ConfigError")


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("damage,suffix,reason", [(_corrupt, ".png", "cannot identify image file"),
                                                  (_truncate, ".png", "image file is truncated"),
                                                  (_truncated_jpeg, ".jpg", "image file is truncated")])
def test_imagefolder_bad_image_is_one_line(make_cfg, tmp_path, damage, suffix, reason, num_workers):
    _write_imagefolder(tmp_path / "inet")
    bad = (tmp_path / "inet" / "val" / "bee" / "1.png").with_suffix(suffix)
    (tmp_path / "inet" / "val" / "bee" / "1.png").rename(bad)
    damage(bad)
    cfg = make_cfg("data=imagenet", f"data.root={tmp_path / 'inet'}", "data.num_classes=3", "data.image_size=32",
                   "data.batch_size=2", f"data.num_workers={num_workers}")
    msg = _iteration_error(build_loaders(cfg.data)[1])
    assert msg.startswith(f"cannot read image {bad}: {reason}") and msg.endswith("; remove or replace the file")
    assert "\n" not in msg


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
