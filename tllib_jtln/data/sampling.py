"""Seeded per-class subsets: the K-shot draw, the validation carve and the source cap.

Every draw uses ``numpy.random.default_rng([seed, stream])``; classes are visited in increasing
label order and each class's indices are permuted once, so the same ``(seed, stream)`` gives the
same subsets on every machine, and the K-shot set does not depend on ``val_per_class``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import UserError

# stream ids of the seeded draws (kept stable: changing one changes every published subset)
STREAM_TARGET = 1
STREAM_SOURCE = 2


def split_per_class(targets: Sequence[int], num_per_class: Optional[int], val_per_class: int, seed: int,
                    stream: int = STREAM_TARGET) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into (train, val), both sorted.

    For class ``c`` with ``n_c`` images, permuted by the seeded generator (``perm``):

    - ``num_per_class = K``: train ``perm[:K]``, val ``perm[K : K + val_per_class]`` (the
      validation images come from the rest of the pool; a class with ``<= K`` images gets
      all of them for training and none for validation);
    - ``num_per_class = None``: val ``perm[:v]`` with ``v = min(val_per_class, n_c // 2)`` (never
      more than half a class), train the rest.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if num_per_class is not None and num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
    if val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0, got {val_per_class}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, stream])
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(targets):
        perm = rng.permutation(np.flatnonzero(targets == c))
        if num_per_class is not None:
            train.append(perm[:num_per_class])
            val.append(perm[num_per_class:num_per_class + val_per_class])
        else:
            v = min(val_per_class, len(perm) // 2)
            val.append(perm[:v])
            train.append(perm[v:])
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate(train)) if train else empty,
            np.sort(np.concatenate(val)) if val else empty)


def check_validation_left(targets: Sequence[int], val_idx: np.ndarray, num_per_class: Optional[int],
                          val_per_class: int) -> None:
    """A UserError when ``-K`` takes every image of every class, so the validation carve is empty.

    (An empty carve with ``--val-per-class 0`` is the engine's to report.)
    """
    if len(val_idx) or num_per_class is None or val_per_class < 1:
        return
    largest = int(np.bincount(np.asarray(targets, dtype=np.int64)).max()) if len(targets) else 0
    raise UserError(f"-K/--num-samples-per-class {num_per_class} takes every training image (the largest class "
                    f"has {largest}), so none is left for validation; use -K {max(1, largest - 1)} or less")


def cap_per_class(targets: Sequence[int], cap: Optional[int], seed: int, stream: int = STREAM_SOURCE) -> np.ndarray:
    """Sorted indices keeping at most ``cap`` seeded images per class (all when ``cap`` is None)."""
    if cap is None:
        return np.arange(len(targets))
    return split_per_class(targets, cap, 0, seed, stream)[0]


def data_seed(cfg) -> int:
    """The seed of the data draws: ``cfg.data_seed`` when set, else ``cfg.seed``."""
    return cfg.data_seed if getattr(cfg, "data_seed", None) is not None else cfg.seed
