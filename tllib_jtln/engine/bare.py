"""The bare training step the engine's loop is measured against (``benchmarks/bench_run.py``,
``scripts/cpu_levers.py``, ``scripts/profile_run.py``).

It is built from the engine's own pieces, so that only the loop differs: the task, method, model
(``build_model``: ``--channels-last`` included) and optimiser (``build_optimizer``: SGD Nesterov
over the same parameter groups) of ``cfg``, the method set up on the model, and ONE pre-made batch
of random images with the run's shapes (``(B_s, C, H, W)`` source and ``(B_t, C, H, W)`` target,
random labels). One step is::

    with autocast_context(device, cfg):
        terms = method.losses(model, batch, progress)
    loss = sum(terms.values()); optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()

No data loading, no device moves, no finite-loss check, no logging.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config
from . import distributed as D
from .precision import autocast_context
from .trainer import Parts, build_optimizer, build_run_task, make_context


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
    from ..data import JointBatch
    from ..methods import build_method
    from ..models import build_model

    device = torch.device("cpu")
    task = build_run_task(cfg)
    method = build_method(cfg, task)
    model = build_model(cfg, task)
    method.prepare_model(model)
    parts = Parts(cfg=cfg, task=task, model=model, device=device, info=D.DistInfo(), log_dir=Path(log_dir))
    ctx = make_context(parts, {"epoch": 0})
    method.setup(ctx)
    method.on_stage_start(0, ctx)  # as the engine: the first stage, then its first epoch
    method.on_epoch_start(0, ctx)
    optimizer, _ = build_optimizer(cfg, model)
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
        with autocast_context(device, cfg):
            terms = method.losses(net, batch, progress)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return terms

    return BareStep(step=step, model=net, method=method, optimizer=optimizer, batch=batch, cfg=cfg)
