"""Deterministic, resumable, process-count-independent sampling.

The training stream of a dataset is a fixed sequence of sample positions: epoch ``e`` visits the
indices in the order of a permutation seeded by ``(seed, e)``; global step ``s`` takes positions
``[s * B, (s + 1) * B)`` of the stream (B = global batch), and process ``r`` of ``W`` takes the
``r``-th contiguous slice of them. Each position also fixes the augmentation seed of its sample.
So the data a step sees depends only on (seed, step, B): resume at any step replays exactly,
and 1 process with batch 2B sees the same images as 2 processes with B each.

A dataset with a ``class_sampling`` (rare class sampling, :mod:`u2plus.data.rare_class`) is drawn
by :class:`RareClassBatchSampler` instead: the same positions, each drawing its class and image
from a generator seeded by the position.
"""

from __future__ import annotations

import signal

import torch

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def sample_seed(seed: int, stream: int, position: int) -> int:
    return ((seed * 1_000_003 + stream) * _MIX + position * 0xBF58476D1CE4E5B9) & _MASK


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start_step, start_step + 1, ...``, this process's list of
    ``(dataset index, augmentation seed)`` pairs. Infinite; the training loop stops it."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, stream: int = 0):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.n, self.batch, self.seed = num_samples, global_batch, seed
        self.start_step, self.rank, self.world, self.stream = start_step, rank, world_size, stream
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed((self.seed * 7919 + self.stream * 104729 + epoch) & _MASK)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def index_at(self, position: int) -> int:
        """The dataset index at a position of the stream."""
        epoch, offset = divmod(position, self.n)
        return int(self._permutation(epoch)[offset])

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        per_rank = self.batch // self.world
        first = step * self.batch + self.rank * per_rank
        return [(self.index_at(pos), sample_seed(self.seed, self.stream, pos)) for pos in range(first, first + per_rank)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch_for_step(step)
            step += 1


class RareClassBatchSampler(StepBatchSampler):
    """Rare class sampling (DAFormer): position ``p`` draws a class from ``class_probs``, then an
    image among those eligible for it, with a generator seeded by (seed, stream, p), so resume
    and any process count replay the same draws."""

    def __init__(self, sampling, global_batch: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1, stream: int = 0):
        super().__init__(sampling.eligible.shape[0], global_batch, seed, start_step, rank, world_size, stream)
        self.class_probs, self.eligible = sampling.class_probs, sampling.eligible

    def index_at(self, position: int) -> int:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.stream, position) ^ 0x5CA1AB1E)
        c = int(torch.multinomial(self.class_probs, 1, generator=g))
        images = self.eligible[:, c].nonzero()[:, 0]
        return int(images[torch.randint(len(images), (1,), generator=g)])


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``(index, seed)`` runs its random augmentation under ``seed``
    (the process-global RNG is restored afterwards)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def make_train_loader(dataset, global_batch: int, seed: int, start_step: int, num_workers: int,
                      rank: int = 0, world_size: int = 1, stream: int = 0):
    sampling = getattr(dataset, "class_sampling", None)
    sampler = (StepBatchSampler(len(dataset), global_batch, seed, start_step, rank, world_size, stream)
               if sampling is None else
               RareClassBatchSampler(sampling, global_batch, seed, start_step, rank, world_size, stream))
    return torch.utils.data.DataLoader(
        SeededDataset(dataset), batch_sampler=sampler, num_workers=num_workers,
        persistent_workers=num_workers > 0, collate_fn=collate, worker_init_fn=leave_stop_signals_to_main,
        # own generator: creating the loader must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
    )


def leave_stop_signals_to_main(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: a worker ignores SIGTERM and SIGINT, which the main
    process handles (it stops at a step boundary, then shuts the workers down). By default a
    worker dies of a SIGTERM sent to the whole process group (as cluster schedulers do) and the
    main process then fails in the middle of a step."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
