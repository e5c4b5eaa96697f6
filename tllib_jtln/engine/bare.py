"""The bare training step the engine's loop is measured against (``benchmarks/bench_run.py``,
``scripts/cpu_levers.py``, ``scripts/profile_run.py``).

It is built from the engine's own pieces, so that only the loop differs: the run assembled as
training assembles it (:func:`~tllib_jtln.engine.assembly.assemble`: task, method, model with
``--channels-last`` included), the optimiser of :func:`~tllib_jtln.engine.state.build_optimizer`
(SGD Nesterov over the method's parameter groups), the method set up on the model, and ONE pre-made
batch of random images with the run's shapes (``(B_s, C, H, W)`` source and ``(B_t, C, H, W)``
target, random labels). One step is the engine's (:mod:`tllib_jtln.engine.step`)::

    terms, loss = loss_terms(method, model, batch, progress, autocast_context(device, cfg))
    descend(loss, optimizer)   # zero_grad(set_to_none=True), backward, step

No data loading, no device moves, no finite-loss check, no logging.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config
from ..data import JointBatch
from . import distributed as D
from .assembly import assemble, make_context
from .precision import autocast_context
from .state import build_optimizer
from .step import descend, loss_terms


@dataclass
class BareStep:
    """``step(progress) -> {name: loss term}``; ``model`` is what ran (compiled or not), ``batch`` the fixed batch."""

    step: Callable[[float], dict]
    model: Any
    method: Any
    optimizer: torch.optim.Optimizer
    batch: Any
    cfg: Config

    def run(self, steps: int) -> None:
        """``steps`` steps, progress ``i / steps``."""
        for i in range(steps):
            self.step(i / steps)


def bare_step(cfg: Config, log_dir: str | Path, *, compile_model: bool = False, seed: int = 0) -> BareStep:
    """The :class:`BareStep` of ``cfg`` on the CPU (see the module docstring); ``compile_model`` wraps
    the model in ``torch.compile`` (compiled on the first step)."""
    device = torch.device("cpu")
    parts = assemble(cfg, device, D.DistInfo(), log_dir)
    method, model, task = parts.method, parts.model, parts.task
    ctx = make_context(parts, {"epoch": 0})
    method.setup(ctx)
    method.on_stage_start(0, ctx)  # as the engine: the first stage, then its first epoch
    method.on_epoch_start(0, ctx)
    optimizer, _ = build_optimizer(cfg, model, method)
    gen = torch.Generator().manual_seed(seed)
    shape = (task.in_chans, task.image_size, task.image_size)
    bs, bt = cfg.source_batch_size or cfg.batch_size, cfg.batch_size
    ks, kt = max(task.num_source_classes, 1), task.num_target_classes
    batch = JointBatch(torch.randn(bs, *shape, generator=gen), torch.randint(0, ks, (bs,), generator=gen),
                       torch.randn(bt, *shape, generator=gen), torch.randint(0, kt, (bt,), generator=gen))
    if not method.uses_source:
        batch = JointBatch(None, None, batch.x_t, batch.y_t)
    model.train()
    net = torch.compile(model) if compile_model else model

    def step(progress: float) -> dict:
        terms, loss = loss_terms(method, net, batch, progress, autocast_context(device, cfg))
        descend(loss, optimizer)
        return terms

    return BareStep(step=step, model=net, method=method, optimizer=optimizer, batch=batch, cfg=cfg)
