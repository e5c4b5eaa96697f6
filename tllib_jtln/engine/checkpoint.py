"""Atomic checkpoints and the random-number state they carry.

A checkpoint is a plain dict of tensors, numbers, strings, lists, tuples and dicts, so that it
loads with ``torch.load(..., weights_only=True)`` (no code from the file runs). Writing is
atomic: the bytes go to ``NAME.tmp`` in the same folder, are flushed to disk, and the temporary
file is renamed over ``NAME`` with :func:`os.replace`. A run killed while saving keeps the
previous checkpoint intact.

Layout written by the trainer (``FORMAT = 1``)::

    {"format": 1, "epoch": int (completed epochs), "step": int, "best": {...},
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "loader": JointLoader.state_dict(), "method": Method.state_dict(),
     "rng": rng_state(), "config": Config.to_dict(), "skipped_steps": int}
"""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
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


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically (indented, keys in insertion order, trailing newline)."""
    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write(Path(path), lambda fh: fh.write(text))
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    data = text.encode()
    atomic_write(Path(path), lambda fh: fh.write(data))
    return Path(path)


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """The states of Python's ``random``, NumPy's global generator, torch's CPU and CUDA generators.

    NumPy's state is stored as tensors and numbers (not an ndarray) so the checkpoint stays
    loadable with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "random": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when CUDA is present)."""
    py = state["random"]
    # weights_only loading may turn the inner tuple into a list; random.setstate wants tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        for index, s in enumerate(cuda):
            torch.cuda.set_rng_state(s.cpu(), index)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
