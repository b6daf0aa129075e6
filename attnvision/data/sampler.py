"""The training sampler: a DistributedSampler that can start an epoch part-way, for exact mid-epoch resumption."""
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["ResumableSampler", "start_epoch"]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (epoch e's order is a function of the seed and e alone) that skips the first ``skip``
    indices of its epoch: a run resumed after k batches sees exactly the batches it had not seen, without loading
    the others. ``len`` stays the full epoch's, so the schedule's updates per epoch do not change."""

    skip: int = 0

    def __iter__(self):
        indices = super().__iter__()
        for _ in range(self.skip):
            next(indices, None)
        return indices


def start_epoch(loader: DataLoader, epoch: int, done_batches: int = 0) -> None:
    """Set ``loader`` up for ``epoch``, skipping its first ``done_batches`` batches: the sampler's order, and the
    loader's own generator (it seeds the workers) reseeded from the sampler's seed and the epoch, so that neither
    depends on how many epochs this process ran before."""
    sampler = loader.sampler
    sampler.set_epoch(epoch)
    sampler.skip = done_batches * loader.batch_size
    if loader.generator is not None:
        loader.generator.manual_seed(sampler.seed * 1_000_003 + epoch)
