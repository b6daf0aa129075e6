"""CIFAR-10 / CIFAR-100 in the original pickled-batch layout under ``data.root``, read without running pickled code.

Folder names, file lists, meta keys and the download archive come from torchvision's CIFAR10/CIFAR100 classes; the
items are the same (PIL image through ``transform``, int label). The reading is ours: the batches are pickles, and
``pickle.load`` calls whatever a pickle names, so a planted file in a shared or downloaded folder could run code.
``_CifarUnpickler`` builds only what the format holds, and every refused, truncated or malformed file is a one-line
ConfigError naming it.
"""
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.datasets.utils import download_and_extract_archive

from attnvision.errors import ConfigError

__all__ = ["CifarDataset", "cifar_datasets", "CIFAR_MEAN", "CIFAR_STD"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# name -> (torchvision class giving the layout and archive, batch key of the labels)
CIFAR = {"cifar10": (datasets.CIFAR10, "labels"), "cifar100": (datasets.CIFAR100, "fine_labels")}


class _Refused(Exception):
    """A global named by a pickle that ``_CifarUnpickler`` will not build."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain data only; dicts, lists, bytes, str and ints need no globals.

    ``_codecs.encode`` is how protocol-2 pickles written by Python 3 carry bytes (the raw array data).
    """

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _corrupt(root, path: Path, problem: str) -> ConfigError:
    """The one-line error for a CIFAR file that is not in the format, with the remedy."""
    return ConfigError(f"data.root={root}: {path} is not a valid CIFAR file: {problem}; remove {path.parent} and "
                       f"pass data.download=true to fetch it again")


def _unpickle(path: Path, root) -> dict:
    """The dict pickled in ``path``, read as torchvision does (latin1) but with str keys and no code run."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise ConfigError(f"data.root={root}: refusing to unpickle {path}: it asks for {err}, which a CIFAR file "
                          f"never holds") from None
    except Exception as err:  # a damaged pickle fails in many ways: EOFError, UnpicklingError, ValueError, ...
        raise _corrupt(root, path, f"cannot unpickle it ({type(err).__name__}: {' '.join(str(err).split())})") \
            from err
    if not isinstance(entry, dict):
        raise _corrupt(root, path, f"it holds a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batch(path: Path, root, label_key: str, num_classes: int):
    """(uint8 N×3072 rows, N int labels) of one batch file, checked against the format and ``num_classes``."""
    entry = _unpickle(path, root)
    missing = [repr(key) for key in ("data", label_key) if key not in entry]
    if missing:
        raise _corrupt(root, path, f"it has no {' or '.join(missing)} entry")
    data, labels = entry["data"], entry[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise _corrupt(root, path, f"'data' is {got}, not a uint8 N×3072 array")
    if not isinstance(labels, list) or len(labels) != len(data):
        got = f"{len(labels)} labels" if isinstance(labels, list) else f"a {type(labels).__name__}"
        raise _corrupt(root, path, f"{label_key!r} holds {got} for {len(data)} images")
    bad = next((y for y in labels if not isinstance(y, int) or not 0 <= y < num_classes), None)
    if bad is not None:
        raise _corrupt(root, path, f"label {bad!r} is not a class index below data.num_classes={num_classes}")
    return data, labels


class CifarDataset(Dataset):
    """One split of CIFAR-10/100: items are (transform(PIL image), int label) and ``classes`` names each label."""

    def __init__(self, root, name: str, train: bool, num_classes: int, transform=None):
        tv_cls, label_key = CIFAR[name]
        folder = Path(root) / tv_cls.base_folder
        meta_path = folder / tv_cls.meta["filename"]
        self.classes = _unpickle(meta_path, root).get(tv_cls.meta["key"])
        if not isinstance(self.classes, list) or len(self.classes) != num_classes:
            raise _corrupt(root, meta_path, f"{tv_cls.meta['key']!r} does not list {num_classes} class names")
        files = tv_cls.train_list if train else tv_cls.test_list
        batches = [_read_batch(folder / file, root, label_key, num_classes) for file, _ in files]
        self.data = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [label for _, labels in batches for label in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform else image), self.targets[index]


def _missing_files(root, tv_cls) -> list:
    """Names of the batch and meta files of ``tv_cls`` that are absent under ``root``."""
    folder = Path(root) / tv_cls.base_folder
    names = [name for name, _ in tv_cls.train_list + tv_cls.test_list] + [tv_cls.meta["filename"]]
    return [name for name in names if not (folder / name).is_file()]


def cifar_transforms(image_size: int, is_training: bool):
    """The standard CIFAR recipe: 4-pixel-padded random crop and flip for training, nothing but scaling for eval."""
    ops = [transforms.Resize(image_size)] if image_size != 32 else []
    if is_training:
        ops += [transforms.RandomCrop(image_size, padding=image_size // 8), transforms.RandomHorizontalFlip()]
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


def cifar_datasets(name: str, root, num_classes: int, image_size: int = 32, download: bool = False):
    """Return (train, test) datasets of ``name`` in {cifar10, cifar100}; the test split serves as validation.

    Files are checked for presence, not md5: the md5 list only matches the full official archive and would reject
    subsets and test fixtures in the same format. ``download=True`` fetches the archive (md5-checked) when files
    are missing.
    """
    tv_cls = CIFAR[name][0]
    if root is None:
        raise ConfigError(f"data.root is not set for data={name}; pass data.root=DIR (add data.download=true "
                          f"to fetch {name} into it)")
    if download and _missing_files(root, tv_cls):
        download_and_extract_archive(tv_cls.url, str(root), filename=tv_cls.filename, md5=tv_cls.tgz_md5)
    missing = _missing_files(root, tv_cls)
    if missing:
        folder = Path(root) / tv_cls.base_folder
        raise ConfigError(f"data.root={root}: {name} is missing or incomplete at {folder} (no {', '.join(missing)}); "
                          f"pass data.download=true, or extract the python version of {name} from "
                          f"https://www.cs.toronto.edu/~kriz/cifar.html into {root}")
    return (CifarDataset(root, name, True, num_classes, cifar_transforms(image_size, True)),
            CifarDataset(root, name, False, num_classes, cifar_transforms(image_size, False)))
