"""One optimisation step, in the two halves the engine's loop, the bare benchmark step and the
train-step benchmark all share::

    terms, loss = loss_terms(method, model, batch, progress, autocast)   # {name: term}, L = sum of terms
    descend(loss, optimizer, scaler)                                     # zero_grad, backward, step

Between the halves the engine applies its non-finite policy (:mod:`tllib_jtln.engine.epoch`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional

import torch


def loss_terms(method, model, batch, progress: float,
               autocast: Optional[contextlib.AbstractContextManager] = None) -> tuple[dict, torch.Tensor]:
    """``(terms, loss)``: the method's named, already weighted loss terms for ``batch`` (under
    ``autocast``, e.g. :func:`~tllib_jtln.engine.precision.autocast_context`) and their sum."""
    with autocast if autocast is not None else contextlib.nullcontext():
        terms = method.losses(model, batch, progress)
    return terms, sum(terms.values())


def descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any = None) -> None:
    """One SGD step on ``loss``: clear the gradients, backward (scaled by an AMP ``scaler``), step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _move(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    return value


def batch_to_device(batch, device: torch.device):
    """A ``JointBatch`` (dataclass or named tuple) with every tensor field on ``device``."""
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: _move(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch)})
    if hasattr(batch, "_fields"):
        return type(batch)(*(_move(v, device) for v in batch))
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch
