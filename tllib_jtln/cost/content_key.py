"""What a dataset's pixels depend on, as a hash: the key of its cached features.

:func:`dataset_fingerprint` hashes, for a dataset of image files (an ``ImageList``: ``samples``
of ``(path, label)``), every path, label, file size and modification time (``st_mtime_ns``), so
an image changed in place, a list file that lists other images or other labels, or a reordered
list gives another key; for images held in memory (``images``/``labels`` tensors, e.g.
Fashion-MNIST) the bytes themselves. Both add the dataset's type and ``repr(transform)``. Other
datasets have no fingerprint (None): their features are not cached.

Cost: one ``os.stat`` per image (about 1.3M stats for ImageNet, seconds on a warm disk).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

from torch import Tensor

from .features import hash_tensor


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def dataset_fingerprint(dataset: Any) -> Optional[str]:
    """A BLAKE2b hex digest of ``dataset``'s content and transform (see the module docstring), or None."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(dataset).__qualname__}:{len(dataset)}:{getattr(dataset, 'transform', None)!r}\n".encode())
    samples = getattr(dataset, "samples", None)
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(samples, list):
        lines = []
        for path, label in samples:
            lines.append(f"{path}\t{label}\t{_file_stamp(path)}\n")
            if len(lines) >= 4096:
                digest.update("".join(lines).encode())
                lines.clear()
        digest.update("".join(lines).encode())
    elif isinstance(images, Tensor) and isinstance(labels, Tensor):
        hash_tensor(digest, images)
        hash_tensor(digest, labels)
    else:
        return None
    return digest.hexdigest()
