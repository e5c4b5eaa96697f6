"""What a run carries from one epoch to the next, and its checkpoints as one mirror.

- :class:`TrainState`: the counters of the whole run (epochs, steps, best validation record,
  images seen, wall time) and the RNG state;
- :class:`StageRun`: the stage in progress: its optimizer (SGD with Nesterov momentum, or Adam),
  over the method's parameter groups, MultiStepLR schedule,
  AMP gradient scaler and :class:`~tllib_jtln.data.JointLoader`;
- :func:`save_progress` writes ``best.pt`` (when the epoch improved) and ``last.pt``;
  :func:`resume_progress` reads ``last.pt`` back into the model, the method and the state. Both
  go through the ``state_dict()`` / ``load_state_dict()`` pairs of the pieces, so saving and
  resuming cannot drift apart (the layout: :mod:`tllib_jtln.engine.checkpoint`).

A run resumed from ``last.pt`` replays exactly what an uninterrupted run does next (with
``--workers 0`` or loaders that re-seed their workers per pass).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..config import Config
from ..data import JointLoader
from . import distributed as D
from .assembly import Parts, serve_feature_shares
from .checkpoint import FORMAT, check_last, load_checkpoint, restore, save_checkpoint
from .logdir import best_checkpoint, last_checkpoint
from .seeding import rng_state, set_rng_state
from .step import batch_to_device


@dataclass
class TrainState:
    """What a run has done so far; checkpointed in ``last.pt`` and restored by ``--resume``.

    ``epoch``: completed epochs over all stages; ``step``: optimizer steps (skipped ones included);
    ``best``: the best validation record so far; ``images_seen``: images forwarded per stream
    (summed over processes); ``elapsed``: wall seconds of the earlier processes of this run;
    ``progress``: the live ``{"epoch": ...}`` the feature cache reads; ``started``: when this
    process started on the run (``time.time()``).
    """

    epoch: int = 0
    step: int = 0
    best: Optional[dict] = None
    elapsed: float = 0.0
    skipped: int = 0
    images_seen: dict = field(default_factory=lambda: {"source": 0, "target": 0})
    progress: dict = field(default_factory=lambda: {"epoch": 0})
    started: float = field(default_factory=time.time)

    def wall(self) -> float:
        """Wall seconds of the whole run so far, earlier processes included."""
        return self.elapsed + (time.time() - self.started)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "skipped_steps": self.skipped,
                "images_seen": dict(self.images_seen), "rng": rng_state(), "elapsed": self.wall()}

    def load_state_dict(self, ckpt: dict) -> None:
        self.epoch, self.step, self.best = int(ckpt["epoch"]), int(ckpt["step"]), ckpt.get("best")
        self.elapsed, self.skipped = float(ckpt.get("elapsed", 0.0)), int(ckpt.get("skipped_steps", 0))
        self.images_seen = dict(ckpt.get("images_seen") or {"source": 0, "target": 0})
        self.progress["epoch"] = self.epoch
        set_rng_state(ckpt["rng"])


def build_optimizer(cfg: Config, model: torch.nn.Module, method: Any = None):
    """``--optimizer``: SGD with Nesterov momentum (TLlib's) or Adam (``betas=(momentum, 0.999)``) over
    ``method.param_groups(model, lr)`` (default, and without a method: ``model.get_parameters(lr)``,
    TLlib's groups; a group's own ``weight_decay`` wins over ``--wd``); MultiStepLR stepped per epoch."""
    groups = method.param_groups(model, cfg.lr) if method is not None else model.get_parameters(cfg.lr)
    if cfg.optimizer == "Adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999),
                                                            weight_decay=cfg.wd)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_decay_epochs),
                                                     gamma=cfg.lr_gamma)
    return optimizer, scheduler


@dataclass
class StageRun:
    """One stage in progress: its :class:`~tllib_jtln.methods.Stage`, optimizer, schedule and loader."""

    index: int
    stage: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loader: Any
    batches: Any = None

    @classmethod
    def start(cls, parts: Parts, stages: list, index: int) -> "StageRun":
        """A fresh optimizer and MultiStepLR over the full schedule, and the stage's streams (seeded by
        ``--seed`` alone, so a stage sees the same batches as a one-stage method on the same stream)."""
        cfg, task, info, stage = parts.cfg, parts.task, parts.info, stages[index]
        optimizer, scheduler = build_optimizer(cfg, parts.model, parts.method)
        loader = JointLoader(task.source_train if stage.uses_source else None,
                             task.target_train if stage.uses_target else None,
                             source_batch_size=cfg.source_batch_size or cfg.batch_size,
                             target_batch_size=cfg.batch_size, seed=cfg.seed, rank=info.rank,
                             world_size=info.world_size, workers=cfg.workers,
                             use_source=stage.uses_source, use_target=stage.uses_target)
        amp = bool(cfg.amp and parts.device.type == "cuda")
        return cls(index=index, stage=stage, optimizer=optimizer, scheduler=scheduler,
                   scaler=torch.amp.GradScaler("cuda", enabled=amp), loader=loader)

    def next_batch(self, device: torch.device):
        if self.batches is None:
            self.batches = iter(self.loader)
        return batch_to_device(next(self.batches), device)

    def state_dict(self) -> dict:
        return {"stage": self.index, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "loader": self.loader.state_dict()}

    def load_state_dict(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.loader.load_state_dict(ckpt["loader"])
        self.batches = None


# ----------------------------------------------------------------------------- checkpoints
def save_progress(parts: Parts, run: StageRun, state: TrainState, improved: bool) -> None:
    """``best.pt`` when the epoch improved on validation, and ``last.pt`` (everything ``--resume`` needs)."""
    cfg, model, log_dir = parts.cfg, parts.model, parts.log_dir
    if improved:
        save_checkpoint({"format": FORMAT, "epoch": state.best["epoch"], "model": model.state_dict(),
                         "val": dict(state.best), "config": cfg.to_dict()}, best_checkpoint(log_dir))
    save_checkpoint({"format": FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
                     "method": D.to_device(parts.method.state_dict(), "cpu"),
                     **state.state_dict(), **run.state_dict()}, last_checkpoint(log_dir))


def resume_progress(parts: Parts, state: TrainState, num_stages: int) -> dict:
    """Load ``last.pt`` (checked by :func:`~tllib_jtln.engine.checkpoint.check_last`) into the model,
    the method and ``state`` (the RNG included); returns the checkpoint, whose stage part
    :meth:`StageRun.load_state_dict` takes when its stage starts. A checkpoint with every epoch
    done leaves nothing to train: the run goes on to its test pass."""
    cfg, log_dir = parts.cfg, parts.log_dir
    path = last_checkpoint(log_dir)
    ckpt = load_checkpoint(path, map_location="cpu")
    check_last(ckpt, path, cfg.method, num_stages, cfg.epochs)
    restore(path, "model weights", parts.model.load_state_dict, ckpt["model"])
    restore(path, "method state", parts.method.load_state_dict, D.to_device(ckpt["method"], parts.device))
    restore(path, "counters or RNG state", state.load_state_dict, ckpt)
    return ckpt


def share_method_state(parts: Parts) -> None:
    """Under DDP, every rank takes rank 0's method state (cost matrix, relation): built once, broadcast.

    Called by every rank right after each method hook: until rank 0 has built the state, the other
    ranks forward their shares of the feature stores it reads
    (:func:`~tllib_jtln.engine.assembly.serve_feature_shares`)."""
    if not parts.info.enabled:
        return
    serve_feature_shares(parts)
    shared = D.broadcast_object(parts.method.state_dict() if parts.info.is_main else None)
    if not parts.info.is_main:
        parts.method.load_state_dict(D.to_device(shared, parts.device))
