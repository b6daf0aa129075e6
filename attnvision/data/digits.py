"""scikit-learn's bundled 8×8 handwritten digits as a 3-channel image-classification set that needs no download.

1,797 images of 10 classes (UCI optical digits, ships inside scikit-learn). They are upsampled to ``image_size``
(bilinear), replicated to 3 channels and normalised to zero mean / unit variance on the training split. The
train/val split is stratified and fixed by ``split_seed``, so every run sees the same validation images.
"""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

__all__ = ["digits_datasets"]


def digits_datasets(image_size: int = 32, val_fraction: float = 0.2, split_seed: int = 0):
    """Return (train, val) TensorDatasets of float images B×3×S×S and int64 labels."""
    images, labels = load_digits(return_X_y=True)
    train_idx, val_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=val_fraction,
                                          stratify=labels, random_state=split_seed)
    x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # N, 1, 8, 8 in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)  # N, 3, S, S
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = ((x - mean) / std).contiguous()
    y = torch.as_tensor(labels, dtype=torch.int64)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])
