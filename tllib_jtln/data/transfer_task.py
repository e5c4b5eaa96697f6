"""The data of one run: :class:`TransferTask`, the target splits, the optional source set, their class names.

Its own module so that every task builder (:mod:`tllib_jtln.data.task` for TLlib's datasets,
:mod:`tllib_jtln.data.fashion_mnist` for the embedded task) can import it without a loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch.utils.data import Dataset


@dataclass
class TransferTask:
    """The data of one run. Datasets yield ``(image (in_chans, image_size, image_size) float, label)``."""

    name: str
    target_train: Dataset
    target_val: Optional[Dataset]
    target_test: Dataset
    target_classes: list
    source_train: Optional[Dataset] = None
    source_classes: Optional[list] = None
    in_chans: int = 3
    image_size: int = 224
    eval_transform: Optional[Callable] = None

    def eval_view(self, split: str) -> Dataset:
        """``source``/``target`` training images with the evaluation transform (no augmentation):
        what cost matrices and feature caches should see.

        Raises ``ValueError`` when there is no such split, no ``eval_transform``, or a training set
        without ``subset(indices, transform)``: the augmented training set is never handed out instead.
        """
        dataset = {"source": self.source_train, "target": self.target_train}.get(split)
        if dataset is None:
            raise ValueError(f"eval_view: no '{split}' training set (source or target)")
        if self.eval_transform is None:
            raise ValueError(f"eval_view('{split}'): the task has no eval_transform; give TransferTask one")
        if not hasattr(dataset, "subset"):
            raise ValueError(f"eval_view('{split}'): {type(dataset).__name__} has no subset(indices, transform), "
                             "so its images cannot be seen without the training augmentation")
        return dataset.subset(range(len(dataset)), self.eval_transform)

    @property
    def num_source_classes(self) -> int:
        return len(self.source_classes) if self.source_classes is not None else 0

    @property
    def num_target_classes(self) -> int:
        return len(self.target_classes)

    def bad_images(self) -> list[str]:
        """Files skipped as unreadable so far in any split (``--skip-bad-images``; found at load time)."""
        found: list[str] = []
        for dataset in (self.source_train, self.target_train, self.target_val, self.target_test):
            found += getattr(dataset, "bad_images", None) or []
        return sorted(set(found))

    def summary(self) -> str:
        """One line: sizes of every split (for logs)."""
        parts = [f"target train {len(self.target_train)}",
                 f"val {len(self.target_val) if self.target_val is not None else 0}",
                 f"test {len(self.target_test)} ({self.num_target_classes} classes)"]
        if self.source_train is not None:
            parts.append(f"source {len(self.source_train)} ({self.num_source_classes} classes)")
        return f"{self.name}: " + ", ".join(parts)
