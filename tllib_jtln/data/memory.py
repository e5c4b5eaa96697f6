"""Labelled images held in memory (Fashion-MNIST's idx arrays, CIFAR's pickled arrays)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """Images held in memory as a uint8 tensor ``(N, ...)``; items ``(transform(image), label)``.

    Subclasses change what one stored image becomes before the transform (:meth:`load`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 transform: Optional[Callable] = None):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
        self.images, self.labels = images, labels.to(torch.int64)
        self.classes = list(classes)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(self, index: int) -> Any:
        """The stored image ``index`` as the transform expects it (here: the tensor itself)."""
        return self.images[index]

    def __getitem__(self, index: int):
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def seeded_batch(self, indices: list[int], seeds: Optional[list[int]] = None) -> Optional[list]:
        """``[(transform(image), label), ...]`` of ``indices`` in one batched call, or None when the
        transform has no batched form (``apply_batch``) or a subclass changes :meth:`load`.

        ``seeds[i]`` seeds item ``i``'s random draws (as :class:`~tllib_jtln.data.joint.SeededItems`
        does for one item); the items equal the one-by-one path's bit for bit."""
        apply_batch = getattr(self.transform, "apply_batch", None)
        if apply_batch is None or type(self).load is not TensorImages.load:
            return None
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        images = apply_batch(self.images[rows], seeds)
        return list(zip(images, self.labels[rows].tolist()))

    def __getitems__(self, indices: list[int]) -> list:
        """What a ``DataLoader`` fetches for one batch: :meth:`seeded_batch` when the transform is
        batched (evaluation passes), else item by item."""
        items = self.seeded_batch(list(indices))
        return items if items is not None else [self[int(i)] for i in indices]

    def subset(self, indices, transform: Optional[Callable] = None) -> "TensorImages":
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return type(self)(self.images[index], self.labels[index], self.classes, transform)


class ArrayImages(TensorImages):
    """RGB images ``(N, H, W, 3)`` uint8 (CIFAR); items ``(transform(PIL image), label)``."""

    def __init__(self, images, labels, classes, transform: Optional[Callable] = None):
        super().__init__(torch.as_tensor(np.asarray(images)), torch.as_tensor(np.asarray(labels)), classes,
                         transform)

    def load(self, index: int):
        from PIL import Image

        return Image.fromarray(self.images[index].numpy())
