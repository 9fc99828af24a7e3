"""The training sampler: a seeded shuffle per epoch, sharded per DDP rank, that can resume mid-epoch.

    sampler = ResumableSampler(dataset, batch_size=8, num_replicas=2, rank=0, seed=3407)
    sampler.set_epoch(3)                  # Lightning calls this at each epoch start
    state = sampler.state_dict(batches=120)   # after 120 batches of epoch 3 were trained on
    sampler.load_state_dict(state)        # in a new process: iteration continues with batch 121

The order of an epoch depends only on (seed, epoch): the dataset's indices shuffled as `DistributedSampler` shuffles
them, padded by repeating the first ones to a multiple of the world size, and dealt to the ranks in turn (rank r gets
positions r, r + W, ...), so a step's global batch is `batch_size x W` consecutive positions. The position saved is
how many of those positions were trained on; a resumed epoch skips them, so no story is repeated or skipped.

The sampler does not count what it yields: a DataLoader runs ahead of training (worker prefetch, Lightning's own
prefetch), so the caller passes the number of batches the trainer actually completed.

With `lengths`, batches are length-grouped (the idea of Hugging Face's `LengthGroupedSampler`): the shuffled order is
cut into mega-batches of 50 global batches and each is sorted by length, longest first, so a batch holds stories of
similar length and little padding, while the mega-batches keep the epoch random.
"""

import warnings
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

MEGA_BATCH = 50  # global batches per length-sorted group, as in Hugging Face's LengthGroupedSampler


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` (so Lightning leaves it in place under DDP) whose epoch can resume mid-way."""

    def __init__(self, dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 lengths: Optional[Sequence[int]] = None):
        """A seeded, sharded order of samples.

        Args:
            dataset: Anything with a length; indices into it are yielded.
            batch_size: Samples per rank per step: the unit of positions saved and of length groups.
            num_replicas: DDP world size.
            rank: This process's global rank.
            seed: Shuffling seed; epoch e's order is seeded by `seed + e`.
            lengths: Each sample's length, to group batches by length; None for a plain shuffle.
        """
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.start = 0  # positions of `self.epoch` already trained on, in the global (unsharded) order

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # Lightning calls it again for a resumed epoch: keep its position then
            self.epoch, self.start = epoch, 0

    def global_order(self) -> list[int]:
        """The epoch's indices in training order, padded to `total_size` like `DistributedSampler`'s."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).numpy()
        if self.lengths is not None:
            size = MEGA_BATCH * self.batch_size * self.num_replicas
            groups = [order[i:i + size] for i in range(0, len(order), size)]
            order = np.concatenate([g[np.argsort(-self.lengths[g], kind="stable")] for g in groups])
        order = order.tolist()
        while len(order) < self.total_size:  # a dataset smaller than the world size repeats more than once
            order += order[:self.total_size - len(order)]
        return order

    def __iter__(self) -> Iterator[int]:
        rest = self.global_order()[self.start:]
        if len(rest) % self.num_replicas:  # only after resuming on another number of devices
            rest += rest[:self.num_replicas - len(rest) % self.num_replicas]
        return iter(rest[self.rank::self.num_replicas])

    def __len__(self) -> int:
        # The whole epoch, also when resumed: Lightning counts the batches trained before the restart itself.
        return self.num_samples

    def state_dict(self, batches: int) -> dict:
        """The position after `batches` batches of the current epoch (counted from its start) were trained on."""
        return {"epoch": self.epoch, "samples": batches * self.batch_size * self.num_replicas, "seed": self.seed,
                "batch_size": self.batch_size, "world_size": self.num_replicas,
                "group_by_length": self.lengths is not None}

    def load_state_dict(self, state: dict) -> None:
        # The saved seed wins over the resumed command's: a position means something only in the order it counts.
        self.seed, self.epoch, self.start = state["seed"], state["epoch"], state["samples"]
        if self.start >= self.total_size:  # saved at the end of an epoch: the next one starts from its beginning
            self.epoch, self.start = self.epoch + 1, 0
        shape = (self.batch_size, self.num_replicas, self.lengths is not None)
        if self.start and shape != (state["batch_size"], state["world_size"], state["group_by_length"]):
            warnings.warn(f"resuming mid-epoch with batch size, devices or group_by_length changed "
                          f"({state['batch_size']}, {state['world_size']}, {state['group_by_length']} -> "
                          f"{', '.join(map(str, shape))}): the rest of epoch {self.epoch} is approximate")
