"""Atomic file writes, shared by checkpoints, cost matrices, feature caches and the log folder.

``atomic_write(path, write)`` calls ``write(binary_file_object)`` on ``path.tmp`` in the same
folder, flushes and fsyncs it, then renames it over ``path`` with :func:`os.replace`: a reader (or a
run killed mid-write) sees the old file or the new one, never half of one. The file gets the
usual permissions (``0o666`` minus the umask).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically through ``write(file_object)``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    data = text.encode()
    return atomic_write(path, lambda fh: fh.write(data))


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically (indented, keys in insertion order, trailing newline)."""
    return write_text(json.dumps(data, indent=2) + "\n", path)


def load_tensors(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: no code from the file runs.

    PyTorch's warnings on the way (a foreign pickle protocol) are silenced: the caller turns any
    failure into one line naming the file (:class:`pickle.UnpicklingError` when it holds objects).
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)
