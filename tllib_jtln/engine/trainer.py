"""The training loop: SGD (Nesterov) + MultiStepLR as TLlib, per-epoch validation, checkpoints.

A method trains in one or more stages (``method.stages()``: ``consecutive`` and ``co_tuning``
with source data have two). Every stage runs the full schedule, ``cfg.epochs`` epochs of
``cfg.iters_per_epoch`` steps, with its own optimizer, momentum buffers and schedule, on the
streams it uses. A run reads as its pieces, one module each::

    parts = assemble(cfg, ...)                      # assembly: task, method, model (shared with `test`)
    method.setup(ctx)  |  resume_progress(...)      # state: TrainState, StageRun, checkpoints
    for epoch in ...:
        record = train_epoch(...)                   # epoch: the steps, the non-finite policy
        validate_and_checkpoint(...)                # epoch: validation, best.pt, last.pt, the report
    finish(parts, state, reporter)                  # finish: the test pass, the views, summary.json

Parameter groups come from ``method.param_groups(model, lr)`` (by default TLlib's
``JointClassifier.get_parameters(lr)``: backbone at 0.1x under ``--finetune``). The epoch with the best validation top-1 (ties: the better mean per-class
accuracy, then the earlier epoch) is kept in ``checkpoints/best.pt`` and evaluated on the target
test split at the end. ``images_seen`` counts the images forwarded per stream.

Resume. ``checkpoints/last.pt`` holds the model, the current stage's optimiser, scheduler, AMP
scaler and loader position, the method's tensors, the Python/NumPy/torch RNG states, the
completed epochs, the best epoch and the elapsed wall time, captured after the epoch's
validation (a checkpoint at a stage's end starts the next stage afresh). A run resumed from it
replays exactly what an uninterrupted run does next (with ``--workers 0`` or loaders that
re-seed their workers per pass).
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn as nn

from ..config import Config
from ..errors import UserError, one_line
from . import distributed as D
from .assembly import Parts, assemble, eval_loader_of, make_context
from .epoch import train_epoch, validate_and_checkpoint
from .checkpoint import restore
from .finish import finish, save_artifacts
from .logdir import (check_free_space, clear_run, last_checkpoint, prepare_log_dir, release_log_dirs, resume_hint,
                     write_config, write_env)
from .reporter import Reporter
from .seeding import seed_everything
from .selection import check_validation, selection_of
from .state import StageRun, TrainState, resume_progress, share_method_state


def train(cfg: Config, *, stop_after_epoch: Optional[int] = None) -> dict:
    """Train ``cfg.method`` as configured; returns the summary (or a partial one when stopped early).

    ``stop_after_epoch`` (internal, for tests; env ``TLLIB_JTLN_STOP_AFTER_EPOCH`` on the CLI)
    stops cleanly after that many completed epochs, as if the run had been killed right after
    writing its checkpoint.
    """
    cfg.validate()
    info = D.env_info()
    device = D.resolve_device(cfg.device, info)
    D.init(info, device)
    try:
        result = _train(cfg, info, device, stop_after_epoch)
        D.barrier()  # rank 0 may still be writing plots: tear the process group down together
        return result
    except OSError as exc:  # a full disk, a vanished folder: the atomic writes kept the previous files
        where = f"{exc.filename}: " if exc.filename else ""
        raise UserError(f"{where}{exc.strerror or one_line(exc)}; {resume_hint(cfg.log)}") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(resume_hint(cfg.log)) from None
    finally:
        release_log_dirs()  # the lock on --log taken by prepare_log_dir
        D.cleanup()


def _train(cfg: Config, info: D.DistInfo, device: torch.device, stop_after_epoch: Optional[int]) -> dict:
    state = TrainState()
    # refusals first (nothing is removed yet), then build everything, then write
    log_dir = prepare_log_dir(cfg.log, overwrite=cfg.overwrite, resume=cfg.resume, is_main=info.is_main,
                              clear=False)
    if cfg.amp and device.type != "cuda" and info.is_main:
        print("note: --amp has no effect on the CPU (mixed precision runs on CUDA only)", flush=True)
    if cfg.cpu_bf16 and device.type != "cpu" and info.is_main:
        print("note: --cpu-bf16 has no effect on CUDA (use --amp there)", flush=True)
    parts = assemble(cfg, device, info, log_dir)
    stages = parts.method.stages()
    reporter = Reporter(cfg, log_dir, info.is_main, len(stages) * cfg.epochs)
    _open_log(parts, reporter)
    _check_data(parts, stages)
    ctx = make_context(parts, state.progress)
    ckpt = None
    if cfg.resume:
        ckpt = resume_progress(parts, state, len(stages))
        reporter.resumed(log_dir, state.epoch)
    else:
        _setup(parts, ctx, reporter)
    net = _wrap_ddp(parts, stages[state.epoch // cfg.epochs:])
    reporter.training_starts(parts.task, stages, device, info)
    stopped = _run_epochs(parts, net, ctx, stages, state, reporter, ckpt, stop_after_epoch)
    return stopped if stopped is not None else finish(parts, state, reporter)


def _open_log(parts: Parts, reporter: Reporter) -> None:
    """Once every rank has checked the folder and built its model: the free space, then (main
    process) the previous run's files removed (under ``--overwrite``, or left by a run stopped
    before its first checkpoint; each named), ``config.yaml``, ``env.json``."""
    cfg, info, log_dir = parts.cfg, parts.info, parts.log_dir
    D.barrier()
    if info.is_main:
        check_free_space(log_dir, parts.model)
        removed = [] if cfg.resume else clear_run(log_dir)
        if removed:
            why = "--overwrite" if cfg.overwrite else "the run stopped before its first checkpoint; starting it again"
            reporter.say(f"{why}: removed {', '.join(removed)} from {log_dir}")
        write_config(cfg.to_dict(), log_dir)
        write_env(log_dir, str(parts.device), info.world_size)
        reporter.say(parts.task.summary() if hasattr(parts.task, "summary") else parts.task.name)
    D.barrier()


def _check_data(parts: Parts, stages: list) -> None:
    """The splits the run needs have images: the validation split, and source images for source stages."""
    check_validation(parts.cfg, parts.task)
    if any(stage.uses_source for stage in stages) and parts.task.source_train is None:
        raise UserError(f"method '{parts.cfg.method}' trains on source data but the task has none; "
                        f"give --source-data and --source-root, or use --method erm")


def _setup(parts: Parts, ctx, reporter: Reporter) -> None:
    """``method.setup(ctx)`` on the main process (cost matrix, relation), shared with every rank and saved."""
    if parts.info.is_main:
        t0 = time.time()
        parts.method.setup(ctx)
        reporter.say(f"setup of '{parts.cfg.method}' took {time.time() - t0:.1f}s")
    share_method_state(parts)
    if parts.info.is_main:
        save_artifacts(parts)
    # the RNG must not depend on what setup consumed on rank 0 only
    seed_everything(parts.cfg.seed + 1)


def _wrap_ddp(parts: Parts, stages: list) -> nn.Module:
    """The model the steps call: the model itself, or its DistributedDataParallel wrapper under torchrun.

    DDP searches each step's graph for parameters without a gradient (``find_unused_parameters``)
    only when one of the ``stages`` still to run leaves some idle (``Stage.idle_parameters``):
    elsewhere the search is wasted work, and torch warns about it on every rank. (It warns in an
    idle stage too, where the search is needed: it counts only parameters outside the forward pass,
    and the idle head's logits are computed there.)"""
    if not parts.info.enabled:
        return parts.model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = parts.device
    return DDP(parts.model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=any(stage.idle_parameters for stage in stages))


def _run_epochs(parts: Parts, net: nn.Module, ctx, stages: list, state: TrainState, reporter: Reporter,
                ckpt: Optional[dict], stop_after_epoch: Optional[int]) -> Optional[dict]:
    """Every epoch from ``state.epoch`` on; a partial summary when stopped early, else None."""
    cfg = parts.cfg
    total_epochs = len(stages) * cfg.epochs
    val_loader = eval_loader_of(parts, parts.task.target_val) if selection_of(cfg) != "last" else None
    run: Optional[StageRun] = None
    for epoch in range(state.epoch, total_epochs):
        if run is None or run.index != epoch // cfg.epochs:
            run = _enter_stage(parts, ctx, stages, epoch // cfg.epochs, ckpt)
            ckpt = None
        state.progress["epoch"] = epoch
        parts.method.on_epoch_start(epoch, ctx)
        share_method_state(parts)
        started = time.time()
        record = train_epoch(parts, net, run, state, epoch, total_epochs, reporter)
        validate_and_checkpoint(parts, net, run, state, record, val_loader, reporter, started)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < total_epochs:
            reporter.say(f"stopped after epoch {epoch + 1} as asked; continue with --resume --log {parts.log_dir}")
            return {"stopped_after_epoch": epoch + 1, "best": state.best}
    return None


def _enter_stage(parts: Parts, ctx, stages: list, index: int, ckpt: Optional[dict]) -> StageRun:
    """Stage ``index`` starts (or resumes, when ``ckpt`` was saved inside it): its optimizer and loader,
    then the method's :meth:`~tllib_jtln.methods.Method.on_stage_start`."""
    run = StageRun.start(parts, stages, index)
    if ckpt is not None and ckpt.get("stage") == index:  # resumed inside this stage
        restore(last_checkpoint(parts.log_dir), "optimizer, schedule or loader state", run.load_state_dict, ckpt)
    parts.method.on_stage_start(index, ctx)
    share_method_state(parts)
    return run
