"""CIFAR-10 / CIFAR-100 from torchvision, read from ``data.root`` in the original pickled-batch layout."""
import pickle
from pathlib import Path

from torchvision import datasets, transforms

from attnvision.errors import ConfigError

__all__ = ["cifar_datasets", "CIFAR_MEAN", "CIFAR_STD"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TORCHVISION_CIFAR = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


def _missing_files(root, dataset_cls) -> list:
    folder = Path(root) / dataset_cls.base_folder
    names = [name for name, _ in dataset_cls.train_list + dataset_cls.test_list] + [dataset_cls.meta["filename"]]
    return [name for name in names if not (folder / name).is_file()]


def _presence_checked(dataset_cls):
    """torchvision's CIFAR class with presence checks instead of md5 checks on every load.

    The md5 list only matches the full official archive, so it rejects subsets and test fixtures written in the same
    format; ``download=True`` still verifies the archive it fetches.
    """
    class PresenceChecked(dataset_cls):
        def _check_integrity(self) -> bool:
            return not _missing_files(self.root, dataset_cls)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
    PresenceChecked.__name__ = dataset_cls.__name__
    return PresenceChecked


def cifar_transforms(image_size: int, is_training: bool):
    """The standard CIFAR recipe: 4-pixel-padded random crop and flip for training, nothing but scaling for eval."""
    ops = [transforms.Resize(image_size)] if image_size != 32 else []
    if is_training:
        ops += [transforms.RandomCrop(image_size, padding=image_size // 8), transforms.RandomHorizontalFlip()]
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


def cifar_datasets(name: str, root, image_size: int = 32, download: bool = False):
    """Return (train, test) datasets of ``name`` in {cifar10, cifar100}; the test split serves as validation."""
    base_cls = TORCHVISION_CIFAR[name]
    if root is None:
        raise ConfigError(f"data.root is not set for data={name}; pass data.root=DIR (add data.download=true "
                          f"to fetch {name} into it)")
    missing = _missing_files(root, base_cls)
    if missing and not download:
        folder = Path(root) / base_cls.base_folder
        raise ConfigError(f"data.root={root}: {name} is missing or incomplete at {folder} (no {', '.join(missing)}); "
                          f"pass data.download=true, or extract the python version of {name} from "
                          f"https://www.cs.toronto.edu/~kriz/cifar.html into {root}")
    dataset_cls = _presence_checked(base_cls)
    train = dataset_cls(str(root), train=True, download=download, transform=cifar_transforms(image_size, True))
    val = dataset_cls(str(root), train=False, download=False, transform=cifar_transforms(image_size, False))
    return train, val
