"""Random images of any size and class count, for throughput benchmarks and smoke runs (no learnable signal)."""
import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticDataset"]


class SyntheticDataset(Dataset):
    """``num_samples`` Gaussian images 3×S×S with uniform labels; sample i is the same on every call and rank."""

    def __init__(self, num_samples: int, image_size: int, num_classes: int, seed: int = 0, in_chans: int = 3):
        self.num_samples, self.image_size, self.num_classes = num_samples, image_size, num_classes
        self.seed, self.in_chans = seed, in_chans

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randn(self.in_chans, self.image_size, self.image_size, generator=g)
        label = int(torch.randint(self.num_classes, (), generator=g))
        return image, label
