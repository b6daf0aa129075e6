"""ImageNet (or any dataset) in the ImageFolder layout ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*``.

Transforms come from ``timm.data.create_transform``: RandomResizedCrop + horizontal flip for training, and for
evaluation a resize to ``image_size / crop_pct`` (256 for 224) followed by a centre crop. A corrupt or truncated
image stops the run with one line naming the file (``load_image``), in the main process or in a loader worker.
"""
from pathlib import Path

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision.datasets import ImageFolder

from attnvision.errors import ConfigError

__all__ = ["DataError", "check_imagefolder", "imagefolder_datasets", "load_image"]

HOW_TO_GET = ("download ILSVRC2012 from https://image-net.org and arrange train/ and val/ as one folder per class "
              "(e.g. with the valprep.sh script)")


class DataError(ConfigError):
    """A ConfigError raised while reading samples, which keeps its one line when a DataLoader worker raises it.

    torch re-raises a worker's exception in the main process as ``type(err)(msg)``, with ``msg`` = "Caught ... in
    DataLoader worker process N." plus the worker's whole traceback (``torch._utils.ExceptionWrapper.reraise``).
    A plain ConfigError would reach the CLI as that many-line text; this class finds its own original line, which
    closes the traceback as ``<module>.DataError: <line>``, and keeps only that.
    """

    def __init__(self, message: str):
        head = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and head in message:
            message = message.rpartition(head)[2].splitlines()[0]
        super().__init__(message)


def load_image(path: str) -> Image.Image:
    """ImageFolder's loader: ``path`` as an RGB image, or a one-line DataError naming the file.

    Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False rather than padding them with grey.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError; broken PNGs raise SyntaxError
        raise DataError(f"cannot read image {path}: {' '.join(str(err).split())}; remove or replace the file") \
            from err


def _check_split(root, split: str, num_classes: int) -> Path:
    """``root/split``, checked to hold ``num_classes`` class folders."""
    folder = Path(root) / split
    classes = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not classes:
        raise ConfigError(f"data.root={root}: no class folders in {folder}; {HOW_TO_GET}")
    if len(classes) != num_classes:
        raise ConfigError(f"data.root={root}: {folder} has {len(classes)} class folders but "
                          f"data.num_classes={num_classes}; set data.num_classes={len(classes)} or fix the folder")
    return folder


def check_imagefolder(root, num_classes: int):
    """``(root/train, root/val)``, checked to be set and to hold ``num_classes`` class folders each (a listing of
    two folders: cheap enough to run at start-up, before a model is built)."""
    if root is None:
        raise ConfigError(f"data.root is not set for the ImageFolder dataset; pass data.root=DIR. {HOW_TO_GET}")
    return _check_split(root, "train", num_classes), _check_split(root, "val", num_classes)


def imagefolder_datasets(root, num_classes: int, image_size: int = 224, crop_pct: float = 0.875,
                         interpolation: str = "bilinear", scale=(0.08, 1.0), hflip: float = 0.5,
                         color_jitter=None, auto_augment=None):
    """Return (train, val) ImageFolder datasets with timm's training and evaluation transforms."""
    train_dir, val_dir = check_imagefolder(root, num_classes)
    norm = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation=interpolation)
    train_tf = create_transform(image_size, is_training=True, scale=tuple(scale), hflip=hflip,
                                color_jitter=color_jitter, auto_augment=auto_augment, **norm)
    val_tf = create_transform(image_size, is_training=False, crop_pct=crop_pct, **norm)
    return (ImageFolder(str(train_dir), transform=train_tf, loader=load_image),
            ImageFolder(str(val_dir), transform=val_tf, loader=load_image))
