"""ImageNet (or any dataset) in the ImageFolder layout ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*``.

Transforms come from ``timm.data.create_transform``: RandomResizedCrop + horizontal flip for training, and for
evaluation a resize to ``image_size / crop_pct`` (256 for 224) followed by a centre crop.
"""
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision.datasets import ImageFolder

from attnvision.errors import ConfigError

__all__ = ["imagefolder_datasets"]

HOW_TO_GET = ("download ILSVRC2012 from https://image-net.org and arrange train/ and val/ as one folder per class "
              "(e.g. with the valprep.sh script)")


def _check_split(root, split: str, num_classes: int) -> Path:
    folder = Path(root) / split
    classes = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not classes:
        raise ConfigError(f"data.root={root}: no class folders in {folder}; {HOW_TO_GET}")
    if len(classes) != num_classes:
        raise ConfigError(f"data.root={root}: {folder} has {len(classes)} class folders but "
                          f"data.num_classes={num_classes}; set data.num_classes={len(classes)} or fix the folder")
    return folder


def imagefolder_datasets(root, num_classes: int, image_size: int = 224, crop_pct: float = 0.875,
                         interpolation: str = "bilinear", scale=(0.08, 1.0), hflip: float = 0.5,
                         color_jitter=None, auto_augment=None):
    """Return (train, val) ImageFolder datasets with timm's training and evaluation transforms."""
    if root is None:
        raise ConfigError(f"data.root is not set for the ImageFolder dataset; pass data.root=DIR. {HOW_TO_GET}")
    train_dir, val_dir = _check_split(root, "train", num_classes), _check_split(root, "val", num_classes)
    norm = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation=interpolation)
    train_tf = create_transform(image_size, is_training=True, scale=tuple(scale), hflip=hflip,
                                color_jitter=color_jitter, auto_augment=auto_augment, **norm)
    val_tf = create_transform(image_size, is_training=False, crop_pct=crop_pct, **norm)
    return ImageFolder(str(train_dir), transform=train_tf), ImageFolder(str(val_dir), transform=val_tf)
