"""Per-class sampling of the source side of a cost (``--cost-source-per-class N``).

A cost built from features needs every source class represented, not every source image: with
``N`` images per class, a 1000-class source holds ``1000 N`` rows for the cost whatever its size
(1.28M for ImageNet), and the ``knn`` search and the class means read only those.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sample_per_class(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Row indices ``(M,)`` int64, sorted: ``min(per_class, n_c)`` rows of each class ``c``, drawn
    without replacement by ``torch.randperm`` under a ``torch.Generator`` seeded with ``seed`` (the
    global RNG is not touched). Rows are returned in their original order, so reads from a
    memory map stay sequential.

    Args:
        labels: ``(N,)`` int class of each row.
        per_class: rows kept per class, ``>= 1``.
        seed: the draw's seed; the same ``(labels, per_class, seed)`` gives the same rows.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    n = labels.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=gen)
    by_class, where = torch.sort(labels[order], stable=True)  # classes grouped, random order inside
    shuffled = order[where]
    counts = torch.bincount(by_class)
    first_of_class = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - first_of_class[by_class]
    return shuffled[rank_in_class < per_class].sort().values
