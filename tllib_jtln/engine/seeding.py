"""Seeding and the random-number state a checkpoint carries.

:func:`seed_everything` seeds Python's ``random``, NumPy's global generator and torch (every
device). :func:`rng_state` captures the four generators (Python, NumPy, torch CPU, torch CUDA)
as tensors and numbers, so that a checkpoint holding it still loads with
``torch.load(..., weights_only=True)``; :func:`set_rng_state` restores them.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The states of Python's ``random``, NumPy's global generator, torch's CPU and CUDA generators.

    NumPy's state is stored as tensors and numbers (not an ndarray) so the checkpoint stays
    loadable with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "random": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


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
