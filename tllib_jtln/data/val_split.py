"""Where the target validation split comes from: ``--val-split rest|train|test|none`` (default ``auto``).

With ``n_c`` the images of class ``c`` in the training pool (``image_list/train_100.txt``, or the
embedded task's target training images), ``S`` the sampled training list (``train_{sr}.txt``)
and ``v = --val-per-class``:

- ``rest``: the training set is exactly TLlib's (``train_{sr}.txt``, or the ``K`` seeded images
  per class of ``-K``); validation takes ``v`` seeded images per class from the pool *outside* it
  (``train_100.txt`` minus ``train_{sr}.txt``; the pool minus the ``K`` drawn images). Selection
  never sees the test set. The default whenever ``-sr < 100`` or ``-K`` is given (the embedded
  task always draws ``K``).
- ``train``: validation is carved from the training set itself, ``min(v, n_c // 2)`` seeded
  images per class, the rest trains. The default at ``-sr 100`` without ``-K`` (no pool is left).
- ``test``: TLlib's own protocol: the epoch is chosen on the test set (recorded as
  ``selected_on: test`` and flagged in suite tables); the training set is TLlib's.
- ``none``: no validation; the last epoch is kept (``selected_on: last``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import UserError
from .sampling import STREAM_TARGET, cap_per_class, check_validation_left, split_per_class

VAL_SPLITS = ("auto", "rest", "train", "test", "none")
#: stream id of the validation draw outside a sampled list (see sampling.py)
STREAM_VAL = 3


def resolve_val_split(cfg, embedded: bool = False) -> str:
    """``cfg.val_split`` with ``auto`` resolved: ``rest`` when ``-sr < 100``, ``-K`` or the embedded
    task (which always draws K), else ``train``.

    The settings pass (:func:`tllib_jtln.settings.resolve_settings`) applies it; the task builders
    call it too, which changes nothing in a resolved ``Config`` and resolves ``auto`` in one built by
    hand (library use)."""
    choice = getattr(cfg, "val_split", "auto") or "auto"
    if choice not in VAL_SPLITS:
        raise UserError(f"--val-split must be one of {', '.join(VAL_SPLITS)}, got {choice!r}")
    if choice != "auto":
        return choice
    if embedded or cfg.sample_rate < 100 or cfg.num_samples_per_class is not None:
        return "rest"
    return "train"


def selected_on(choice: str) -> str:
    """What chooses the kept epoch: ``val``, ``test`` (TLlib's protocol) or ``last`` (no validation)."""
    return {"test": "test", "none": "last"}.get(choice, "val")


def split_pool(targets: Sequence[int], choice: str, num_per_class: Optional[int], val_per_class: int,
               seed: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(train, val)`` indices into one training pool, for every choice that stays inside it.

    ``num_per_class = K``: train = the K-shot draw (the same images for every choice); ``rest``:
    val from the pool outside it; ``train``: val carved from the K images (at most half a class).
    ``num_per_class = None``: train = the whole pool; ``train``: the carve; ``rest`` is the caller's
    (it needs the images outside the list). ``test``/``none``: val is None (the caller decides).
    """
    targets = np.asarray(targets, dtype=np.int64)
    if num_per_class is not None:
        train, rest_val = split_per_class(targets, num_per_class, val_per_class, seed, STREAM_TARGET)
    else:
        train, rest_val = np.arange(len(targets)), None
    if choice == "rest":
        return train, rest_val
    if choice == "train":
        kept, carved = split_per_class(targets[train], None, val_per_class, seed, STREAM_TARGET)
        return train[kept], train[carved]
    return train, None


def outside_list(pool_keys: Sequence, pool_targets: Sequence[int], sampled_keys: Sequence, val_per_class: int,
                 seed: int) -> np.ndarray:
    """Sorted indices into the pool of ``val_per_class`` seeded images per class among those whose
    key (image path) is not in ``sampled_keys``."""
    sampled = set(sampled_keys)
    outside = np.array([i for i, key in enumerate(pool_keys) if key not in sampled], dtype=np.int64)
    if len(outside) == 0 or val_per_class == 0:
        return outside[:0]
    keep = cap_per_class(np.asarray(pool_targets, dtype=np.int64)[outside], val_per_class, seed, STREAM_VAL)
    return outside[keep]


def carve_target(pool, targets: Sequence[int], choice: str, num_per_class: Optional[int], val_per_class: int,
                 seed: int, transforms: tuple, test, name: str = "target"):
    """``(target_train, target_val)`` of one training ``pool`` under ``choice`` (:func:`split_pool`).

    ``pool`` has ``subset(indices, transform)`` and ``targets`` its labels; ``transforms`` is
    ``(train transform, eval transform)``; ``test`` is the test set (the validation set under
    ``--val-split test``). ``target_val`` is None when nothing is carved (``none``, ``rest``
    without ``num_per_class``: the caller takes it from outside the list). A ``-K`` that leaves
    no image for validation, or a carve that leaves none for training, is a UserError.
    """
    train_tf, eval_tf = transforms
    train_idx, val_idx = split_pool(targets, choice, num_per_class, val_per_class, seed)
    if choice in ("rest", "train") and val_idx is not None:
        check_validation_left(targets, val_idx, num_per_class, val_per_class)
    if len(train_idx) == 0:
        raise UserError(f"dataset {name}: no training images left after the validation carve")
    target_train = pool.subset(train_idx, train_tf)
    if choice == "test":
        return target_train, test
    return target_train, (pool.subset(val_idx, eval_tf) if val_idx is not None and len(val_idx) else None)
