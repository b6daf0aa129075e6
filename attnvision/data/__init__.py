"""Datasets selected by ``data=<name>`` and the loaders every entry point shares."""
from typing import Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from attnvision.errors import ConfigError, check_positive_int
from .cifar import cifar_datasets
from .digits import digits_datasets
from .imagenet import imagefolder_datasets
from .sampler import ResumableSampler
from .synthetic import SyntheticDataset

__all__ = ["DATASETS", "build_datasets", "build_loaders", "check_data_cfg"]

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")
# datasets whose class count is fixed by the data; imagenet counts its class folders, synthetic takes any
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}


def check_data_cfg(data_cfg, world_size: int = 1) -> None:
    """Reject bad data values with a one-line ConfigError before anything is built."""
    if data_cfg.name not in DATASETS:
        raise ConfigError(f"data.name={data_cfg.name!r} is unknown; choose one of {', '.join(DATASETS)}")
    for key in ("batch_size", "image_size", "num_classes"):
        check_positive_int(f"data.{key}", data_cfg[key])
    fixed = NUM_CLASSES.get(data_cfg.name, data_cfg.num_classes)
    if data_cfg.num_classes != fixed:
        raise ConfigError(f"data.num_classes={data_cfg.num_classes} but {data_cfg.name} has {fixed} classes; "
                          f"set data.num_classes={fixed}")
    if data_cfg.batch_size % world_size:
        raise ConfigError(f"data.batch_size={data_cfg.batch_size} is the global batch and must divide evenly "
                          f"over {world_size} processes")


def build_datasets(data_cfg, seed: int = 0) -> Tuple[Dataset, Dataset]:
    """(train, val) for ``data_cfg.name``; ``seed`` only matters for synthetic data."""
    name = data_cfg.name
    if name == "digits":
        return digits_datasets(data_cfg.image_size, data_cfg.val_fraction, data_cfg.split_seed)
    if name in ("cifar10", "cifar100"):
        return cifar_datasets(name, data_cfg.root, data_cfg.num_classes, data_cfg.image_size, data_cfg.download)
    if name == "imagenet":
        return imagefolder_datasets(data_cfg.root, data_cfg.num_classes, data_cfg.image_size, data_cfg.crop_pct,
                                    data_cfg.interpolation, data_cfg.scale, data_cfg.hflip, data_cfg.color_jitter,
                                    data_cfg.auto_augment)
    size, classes = data_cfg.image_size, data_cfg.num_classes
    return (SyntheticDataset(data_cfg.num_train, size, classes, seed),
            SyntheticDataset(data_cfg.num_val, size, classes, seed + 1))


def build_loaders(data_cfg, seed: int = 0, rank: int = 0, world_size: int = 1):
    """Train and val loaders for one process of ``world_size``; ``data_cfg.batch_size`` is the global batch.

    Training shuffles with a DistributedSampler even in one process: its ``set_epoch`` makes epoch e's order a
    function of (seed, e) alone, which is what makes a resumed run bit-identical to an uninterrupted one; the loader
    has its own generator, reseeded per epoch by ``sampler.start_epoch``, so that starting an epoch (which draws
    the workers' seed from it) leaves the global generators, and so the model's dropout draws, untouched.
    Validation gives each rank a disjoint, unpadded shard, so summed counts are exact.
    """
    check_data_cfg(data_cfg, world_size)
    train_set, val_set = build_datasets(data_cfg, seed)
    per_rank = data_cfg.batch_size // world_size
    common = dict(batch_size=per_rank, num_workers=data_cfg.num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=data_cfg.num_workers > 0)
    sampler = ResumableSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=len(train_set) >= 2 * data_cfg.batch_size,
                              generator=torch.Generator(), **common)
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world_size)), shuffle=False, **common)
    return train_loader, val_loader
