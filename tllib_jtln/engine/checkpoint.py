"""Atomic checkpoints: written through :func:`tllib_jtln.fileio.atomic_write`, read without running code.

A checkpoint is a plain dict of tensors, numbers, strings, lists, tuples and dicts, so that it
loads with ``torch.load(..., weights_only=True)`` (no code from the file runs). Writing is
atomic: the bytes go to ``NAME.<pid>.tmp`` in the same folder (created exclusively, never through
a symlink), are flushed to disk, and the temporary file is renamed over ``NAME`` with
:func:`os.replace`. A run killed while saving keeps the previous checkpoint intact.

Layout of ``last.pt`` (``FORMAT = 1``), the mirror of :meth:`TrainState.state_dict
<tllib_jtln.engine.state.TrainState.state_dict>` and :meth:`StageRun.state_dict
<tllib_jtln.engine.state.StageRun.state_dict>`::

    {"format": 1, "model": state_dict, "config": Config.to_dict(), "method": Method.state_dict(),
     "epoch": int (completed epochs), "step": int, "best": {...}, "skipped_steps": int,
     "images_seen": {...}, "elapsed": float, "rng": rng_state(),
     "stage": int, "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "loader": JointLoader.state_dict()}

``best.pt`` holds ``format``, ``epoch``, ``model``, ``val`` and ``config``.

A checkpoint read back is untrusted even when it loads safely (``best.pt`` copied over
``last.pt``, another method's ``last.pt``, an edited epoch or RNG state): :func:`check_last` checks
its entries, their types and ranges and the method that wrote it, and :func:`restore` turns any
failure of a piece's ``load_state_dict`` into one line naming the file and the piece.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

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


#: The entries of ``last.pt`` and their types (``scaler`` and ``best`` may also be None).
LAST_ENTRIES = {"format": int, "model": dict, "config": dict, "method": dict, "epoch": int, "step": int,
                "rng": dict, "stage": int, "optimizer": dict, "scheduler": dict, "loader": dict,
                "best": (dict, type(None)), "scaler": (dict, type(None)), "images_seen": dict,
                "elapsed": (int, float), "skipped_steps": int}


def check_last(ckpt: dict, path: str | Path, method: str, num_stages: int, epochs: int) -> int:
    """The completed epochs of ``last.pt`` once its entries are checked (a :class:`UserError` naming
    ``path`` otherwise): every entry of :data:`LAST_ENTRIES` with its type, written by a run of
    ``method``, ``0 <= epoch <= num_stages * epochs``, ``0 <= stage < num_stages``, ``step >= 0``,
    method state made of tensors."""
    fix = "start over with --overwrite"
    missing = [key for key in LAST_ENTRIES if key not in ckpt]
    if missing:
        raise UserError(f"{path}: not the last.pt of a run (no {', '.join(missing)}: best.pt copied over it?); {fix}")
    wrong = [key for key, kind in LAST_ENTRIES.items()
             if isinstance(ckpt[key], bool) or not isinstance(ckpt[key], kind)]
    if wrong:
        raise UserError(f"{path}: entries of the wrong type ({', '.join(wrong)}); not a last.pt tllib-jtln wrote; {fix}")
    if ckpt["format"] != FORMAT:
        raise UserError(f"{path}: checkpoint format {ckpt['format']} is not {FORMAT}; {fix}")
    written_by = ckpt["config"].get("method")
    if written_by != method:
        raise UserError(f"{path}: written by a '{written_by}' run, and this run is '{method}'; resume with "
                        f"--method {written_by}, or {fix}")
    if not all(isinstance(value, torch.Tensor) for value in ckpt["method"].values()):
        raise UserError(f"{path}: its method state holds values that are not tensors; {fix}")
    done, total = ckpt["epoch"], num_stages * epochs
    if done < 0 or ckpt["step"] < 0 or not 0 <= ckpt["stage"] < num_stages:
        raise UserError(f"{path}: epoch {done}, step {ckpt['step']}, stage {ckpt['stage']} are out of range "
                        f"(epochs 0..{total}, stages 0..{num_stages - 1}); {fix}")
    if done > total:
        raise UserError(f"--resume: the checkpoint has {done} epochs done and the run has {total} "
                        f"({num_stages} stage(s) x --epochs {epochs}); raise --epochs to train further")
    return done


def restore(path: str | Path, piece: str, load: Callable[[Any], Any], value: Any) -> None:
    """``load(value)`` (a piece's ``load_state_dict``); any failure is one line naming ``path`` and ``piece``."""
    try:
        load(value)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: its {piece} does not fit this run ({first[:160]}); start over with "
                        f"--overwrite") from None
