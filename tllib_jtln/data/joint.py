"""Joint source + target batches, endless and exactly resumable; sequential evaluation loaders.

Index stream of one dataset (``stream`` 0 = source, 1 = target) on one rank, with ``N`` items,
``W`` ranks and batch size ``B`` (DistributedSampler semantics):

- pass ``p`` permutes ``0..N-1`` with ``numpy.random.default_rng([seed, stream, p])`` (the same
  permutation on every rank), pads it to ``L * W`` items (``L = ceil(N / W)``) by repeating
  its start, and rank ``r`` takes ``perm[r::W]``: the ranks' shards of a pass are disjoint
  (up to the padding);
- the rank's endless stream is the concatenation of its shards of passes 0, 1, 2, ...; batch
  ``b`` is items ``b*B .. b*B + B - 1`` of it, so a small set (the few-shot target set) is
  reshuffled every pass and batches wrap across passes: every batch is full;
- each item carries its own augmentation seed, drawn from ``default_rng([seed, stream, rank, b])``;
  the item is loaded with torch's CPU generator and Python's ``random`` seeded by it (the caller's
  generator states are restored), so augmentations do not depend on the number of workers or
  on where the run was resumed.

Batch ``b`` is a pure function of ``(seed, stream, rank, world_size, b)``: the loader's state
is the number of batches consumed per stream, and :meth:`JointLoader.load_state_dict` restarts
the index streams at those counts. Loading runs in a ``torch.utils.data.DataLoader`` per stream
with ``workers`` processes each (as TLlib's two ``ForeverDataIterator``s).
"""
from __future__ import annotations

import math
import random
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

SOURCE, TARGET = 0, 1


class JointBatch(NamedTuple):
    """One training step's data: ``x_s`` (B_s, C, H, W), ``y_s`` (B_s,), ``x_t`` (B_t, C, H, W),
    ``y_t`` (B_t,); the fields of an unused stream are None."""

    x_s: Optional[torch.Tensor]
    y_s: Optional[torch.Tensor]
    x_t: Optional[torch.Tensor]
    y_t: Optional[torch.Tensor]

    def to(self, device, non_blocking: bool = False) -> "JointBatch":
        """The batch with every tensor moved to ``device``."""
        return JointBatch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self))


def _seed_words(*values: int) -> list[int]:
    return [int(v) & 0xFFFFFFFF for v in values]


class EndlessShardSampler(Sampler):
    """Endless batches of ``(index, item_seed)`` for one stream on one rank (see the module docstring)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, stream: int, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        if num_items < 1:
            raise ValueError("EndlessShardSampler: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.n, self.batch_size, self.seed, self.stream = num_items, batch_size, seed, stream
        self.rank, self.world_size, self.start = rank, world_size, start
        self.shard_len = math.ceil(num_items / world_size)
        self._cache: dict[int, np.ndarray] = {}

    def shard(self, pass_index: int) -> np.ndarray:
        """This rank's indices in pass ``pass_index`` (length ``ceil(N / W)``)."""
        if pass_index not in self._cache:
            perm = np.random.default_rng(_seed_words(self.seed, self.stream, pass_index)).permutation(self.n)
            total = self.shard_len * self.world_size
            if total > self.n:
                perm = np.resize(perm, total)  # repeats the start, as DistributedSampler pads
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[pass_index] = perm[self.rank::self.world_size]
        return self._cache[pass_index]

    def indices(self, batch_index: int) -> list[int]:
        """Dataset indices of batch ``batch_index``."""
        out: list[int] = []
        position = batch_index * self.batch_size
        while len(out) < self.batch_size:
            pass_index, offset = divmod(position, self.shard_len)
            take = min(self.batch_size - len(out), self.shard_len - offset)
            out.extend(self.shard(pass_index)[offset:offset + take].tolist())
            position += take
        return out

    def batch(self, batch_index: int) -> list[tuple[int, int]]:
        """``[(index, item_seed), ...]`` of batch ``batch_index``."""
        seeds = np.random.default_rng(_seed_words(self.seed, self.stream, self.rank, batch_index)).integers(
            0, 2 ** 63 - 1, size=self.batch_size)
        return list(zip(self.indices(batch_index), seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch_index = self.start
        while True:
            yield self.batch(batch_index)
            batch_index += 1


class SeededItems(Dataset):
    """Wraps a dataset so that ``self[(index, seed)]`` loads ``dataset[index]`` under that seed.

    Seeds torch's CPU generator and Python's ``random`` for the call and restores both after.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            random.seed(int(seed))
            try:
                return self.dataset[int(index)]
            finally:
                random.setstate(py_state)

    def __getitems__(self, keys: list) -> list:
        """One batch of ``(index, seed)`` keys: in one batched call when the dataset offers it
        (``seeded_batch``, equal to loading item by item), else item by item."""
        seeded_batch = getattr(self.dataset, "seeded_batch", None)
        items = seeded_batch([int(i) for i, _ in keys], [int(s) for _, s in keys]) if seeded_batch else None
        return items if items is not None else [self[key] for key in keys]


def _worker_init(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's (deterministic) worker seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


class _Stream:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, stream: int, rank: int, world_size: int,
                 workers: int, pin_memory: bool):
        if dataset is None or len(dataset) == 0:
            name = "source" if stream == SOURCE else "target"
            raise ValueError(f"JointLoader: the {name} dataset is missing or empty")
        self.dataset, self.batch_size, self.seed, self.stream = dataset, batch_size, seed, stream
        self.rank, self.world_size, self.workers, self.pin_memory = rank, world_size, workers, pin_memory
        self.consumed = 0
        self._iter = None
        # validate the arguments now rather than on the first batch
        EndlessShardSampler(len(dataset), batch_size, seed, stream, rank, world_size)

    def _start(self) -> None:
        sampler = EndlessShardSampler(len(self.dataset), self.batch_size, self.seed, self.stream, self.rank,
                                      self.world_size, start=self.consumed)
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng(_seed_words(self.seed, self.stream, self.rank)).integers(2 ** 62)))
        loader = DataLoader(SeededItems(self.dataset), batch_sampler=sampler, num_workers=self.workers,
                            pin_memory=self.pin_memory, worker_init_fn=_worker_init if self.workers else None,
                            generator=generator)
        self._iter = iter(loader)

    def next(self):
        if self._iter is None:
            self._start()
        x, y = next(self._iter)
        self.consumed += 1
        return x, y

    def close(self) -> None:
        self._iter = None  # the iterator's finaliser shuts its workers down


class JointLoader:
    """Endless joint batches: ``next(loader) -> JointBatch(x_s, y_s, x_t, y_t)``.

    Args:
        source, target: map-style datasets of ``(image (C, H, W), label)``; the one whose stream
            is disabled may be None.
        source_batch_size, target_batch_size: items per batch of each stream (every batch full).
        seed: fixes every permutation and augmentation.
        rank, world_size: this process's shard under DDP (DistributedSampler semantics).
        workers: DataLoader worker processes per stream (0: load in this process).
        use_source, use_target: disable a stream (its JointBatch fields are None).
        pin_memory: pin batches for faster host-to-GPU copies.
    """

    def __init__(self, source: Optional[Dataset], target: Optional[Dataset], source_batch_size: int,
                 target_batch_size: int, seed: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                 use_source: bool = True, use_target: bool = True, pin_memory: bool = False):
        if not (use_source or use_target):
            raise ValueError("JointLoader: use_source and use_target are both False")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        args = (rank, world_size, workers, pin_memory)
        self._source = _Stream(source, source_batch_size, seed, SOURCE, *args) if use_source else None
        self._target = _Stream(target, target_batch_size, seed, TARGET, *args) if use_target else None

    def __iter__(self) -> "JointLoader":
        return self

    def __next__(self) -> JointBatch:
        x_s = y_s = x_t = y_t = None
        if self._source is not None:
            x_s, y_s = self._source.next()
        if self._target is not None:
            x_t, y_t = self._target.next()
        return JointBatch(x_s, y_s, x_t, y_t)

    def state_dict(self) -> dict:
        """Batches consumed per stream (plus the seed and world size, for a consistency check)."""
        return {"source": self._source.consumed if self._source else 0,
                "target": self._target.consumed if self._target else 0,
                "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the batches counted in ``state`` (restarts the workers)."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"JointLoader state was saved with seed {state['seed']}, this loader has {self.seed}")
        for stream, key in ((self._source, "source"), (self._target, "target")):
            if stream is not None:
                count = int(state.get(key, 0))
                if count < 0:
                    raise ValueError(f"JointLoader state: negative count for {key}")
                stream.close()
                stream.consumed = count

    def close(self) -> None:
        """Stop the worker processes (they restart on the next batch)."""
        for stream in (self._source, self._target):
            if stream is not None:
                stream.close()


def shard_range(num_items: int, rank: int = 0, world_size: int = 1) -> range:
    """Contiguous, disjoint shard of ``0..num_items-1`` for ``rank``; the shards cover every item once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return range(rank * num_items // world_size, (rank + 1) * num_items // world_size)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> DataLoader:
    """Sequential loader (no shuffle, last batch kept) over this rank's contiguous shard.

    Under DDP every item is seen by exactly one rank (no padding), so summed counts are exact.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    part = dataset if world_size == 1 else Subset(dataset, shard_range(len(dataset), rank, world_size))
    return DataLoader(part, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=workers,
                      pin_memory=pin_memory)
