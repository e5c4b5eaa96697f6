"""Atomic checkpoints: written through :func:`tllib_jtln.fileio.atomic_write`, read without running code.

A checkpoint is a plain dict of tensors, numbers, strings, lists, tuples and dicts, so that it
loads with ``torch.load(..., weights_only=True)`` (no code from the file runs). Writing is
atomic: the bytes go to ``NAME.tmp`` in the same folder, are flushed to disk, and the temporary
file is renamed over ``NAME`` with :func:`os.replace`. A run killed while saving keeps the
previous checkpoint intact.

Layout of ``last.pt`` (``FORMAT = 1``), the mirror of :meth:`TrainState.state_dict
<tllib_jtln.engine.state.TrainState.state_dict>` and :meth:`StageRun.state_dict
<tllib_jtln.engine.state.StageRun.state_dict>`::

    {"format": 1, "model": state_dict, "config": Config.to_dict(), "method": Method.state_dict(),
     "epoch": int (completed epochs), "step": int, "best": {...}, "skipped_steps": int,
     "images_seen": {...}, "elapsed": float, "rng": rng_state(),
     "stage": int, "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "loader": JointLoader.state_dict()}

``best.pt`` holds ``format``, ``epoch``, ``model``, ``val`` and ``config``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..fileio import atomic_write, load_tensors

FORMAT = 1


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (``torch.save`` to a temporary file, then ``os.replace``)."""
    path = Path(path)
    atomic_write(path, lambda fh: torch.save(state, fh))
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, without executing code from the file.

    Raises :class:`UserError` when the file is missing or is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (train first, or point --log at a run folder)")
    try:
        state = load_tensors(path, map_location)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        # PyTorch's unpickling text suggests turning the safe loader off: never pass it on
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        unpickling = isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc)
        detail = "" if unpickling else f" ({first[:200]})"
        raise UserError(f"checkpoint {path} cannot be read{detail}: not a checkpoint tllib-jtln wrote (corrupt, "
                        f"cut short, or holding Python objects, which are never unpickled here); delete it or "
                        f"start over with --overwrite") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} is not a tllib-jtln checkpoint (no 'model' entry)")
    return state
