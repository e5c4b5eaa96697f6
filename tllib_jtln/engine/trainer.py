"""The training loop: SGD (Nesterov) + MultiStepLR as TLlib, per-epoch validation, checkpoints.

A method trains in one or more stages (``method.stages()``: ``consecutive`` and ``co_tuning``
with source data have two). Every stage runs the full schedule, ``cfg.epochs`` epochs of
``cfg.iters_per_epoch`` steps, with its own optimizer, momentum buffers and schedule, on the
streams it uses. At step ``t`` (of ``T``, all stages together) the method returns named,
already weighted loss terms ``{name: scalar}`` for the batch, the engine minimises their sum
``L = sum_name term``:

    terms = method.losses(model, batch, progress=t / T);  L.backward();  optimizer.step()

The learning rate follows ``MultiStepLR(lr_decay_epochs, gamma=lr_gamma)``, stepped once per
epoch; parameter groups come from ``JointClassifier.get_parameters(lr)`` (backbone at 0.1x
under ``--finetune``). After each epoch of a stage that trains the target head the target head
is evaluated on the target validation split (top-1 and mean per-class accuracy); the epoch
with the best validation top-1 (ties: the better mean per-class accuracy, then the earlier
epoch) is kept in ``checkpoints/best.pt`` and evaluated on the target test split at the end.
The test split never selects anything. ``images_seen`` counts the images forwarded per stream.

Resume. ``checkpoints/last.pt`` holds the model, the current stage's optimiser, scheduler, AMP
scaler and loader position, the method's tensors, the Python/NumPy/torch RNG states, the
completed epochs, the best epoch and the elapsed wall time, captured after the epoch's
validation (a checkpoint at a stage's end starts the next stage afresh). A
run resumed from it replays exactly what an uninterrupted run does next (with ``--workers 0``
or loaders that re-seed their workers per pass).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..config import Config
from ..errors import UserError
from . import distributed as D
from .checkpoint import (FORMAT, load_checkpoint, rng_state, save_checkpoint, seed_everything,
                         set_rng_state)
from .evaluate import EvalResult, eval_batch_size, evaluate
from .logdir import (MetricsLog, best_checkpoint, check_free_space, clear_run, last_checkpoint, prepare_log_dir,
                     release_log_dirs, write_config, write_env, write_summary)
from .plots import plot_curves, save_transport
from .precision import autocast_context
from .selection import check_validation, no_validation_result, selection_fields, selection_of


def _say(is_main: bool, message: str) -> None:
    if is_main:
        print(message, flush=True)


# ----------------------------------------------------------------------------- assembly
@dataclass
class Parts:
    """Everything a run is made of, built the same way for training and testing."""

    cfg: Config
    task: Any
    model: nn.Module          # the unwrapped JointClassifier, on the device
    device: torch.device
    info: D.DistInfo
    log_dir: Path
    eval_batch_size: int = 64
    extras: dict = field(default_factory=dict)


def build_run_task(cfg: Config):
    """``build_task(cfg, data_config)``.

    ``--transforms timm`` needs the backbone's data config before the task exists; it is read
    from a weight-less instance of the backbone (``pretrained=False``), which has the same config.
    """
    from ..data import build_task

    data_config = None
    if cfg.transforms == "timm":
        from ..models import create_backbone

        probe = create_backbone(cfg.arch, pretrained=False, image_size=cfg.image_size)
        data_config = getattr(probe, "data_config", None)
        del probe
    return build_task(cfg, data_config=data_config)


def build_task_and_model(cfg: Config) -> tuple[Any, nn.Module]:
    """The task, then ``build_model(cfg, task)``."""
    from ..models import build_model

    task = build_run_task(cfg)
    return task, build_model(cfg, task)


def _eval_loader(dataset, parts: Parts, shard: bool = True):
    from ..data import eval_loader

    info = parts.info
    if shard and info.enabled:
        return eval_loader(dataset, parts.eval_batch_size, parts.cfg.workers, rank=info.rank,
                           world_size=info.world_size)
    return eval_loader(dataset, parts.eval_batch_size, parts.cfg.workers)


def source_class_names(model: nn.Module, task) -> Optional[list]:
    """Names of the model's source-head classes: the task's source classes, or, source-free, the
    pretraining classes of the backbone's head (``JointClassifier.source_classes``); None without a head."""
    ks = int(getattr(model, "num_source_classes", 0) or 0)
    if ks == 0:
        return None
    names = getattr(model, "source_classes", None) or getattr(task, "source_classes", None)
    if not names or len(names) != ks:
        names = [f"class_{i}" for i in range(ks)]
    return list(names)


# ----------------------------------------------------------------------------- setup context
def make_feature_fn(parts: Parts, state: dict):
    """``features(split) -> (features (N, D), labels (N,))`` for the method's :class:`SetupContext`.

    ``split`` is ``"source"`` (the source training set) or ``"target"`` (the labelled target
    training set), seen through the evaluation transform (``TransferTask.eval_view``: never an
    augmented view, so two passes over the same weights give the same features). Features are
    the pooled pre-logits ``model.forward_features(x)`` of the current
    model in eval mode over the whole split (every rank computes the same), memoised per epoch
    and, with ``--feature-cache DIR``, cached on disk by :func:`tllib_jtln.cost.collect_features`
    under a key naming the data settings and a hash of the weights (so runs that start from the
    same weights on the same data share the file).
    """
    from ..cost import collect_features

    memo: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    cfg = parts.cfg

    def features(split: str):
        if split not in ("source", "target"):
            raise ValueError(f"features(split): split must be 'source' or 'target', got {split!r}")
        if (parts.task.source_train if split == "source" else parts.task.target_train) is None:
            raise UserError(f"method '{cfg.method}' asked for {split} features, but the task has no "
                            f"{split} training set; give --source-data/--source-root")
        dataset = parts.task.eval_view(split)
        epoch = int(state.get("epoch", 0))
        key = (split, epoch)
        if key not in memo:
            cache_dir = Path(cfg.feature_cache).expanduser() if cfg.feature_cache else None
            cache_key = {"split": split, "view": "eval", "task": parts.task.name, "size": len(dataset), "arch": cfg.arch,
                         **{k: getattr(cfg, k) for k in _DATA_KEYS}}
            loader = _eval_loader(dataset, parts, shard=False)
            feats, labels = collect_features(parts.model.forward_features, loader,
                                             cache_dir=cache_dir if parts.info.is_main and cache_dir else None,
                                             cache_key=cache_key, progress=cfg.progress and parts.info.is_main)
            for old in [k for k in memo if k[1] != epoch]:  # keep the current epoch's features only
                del memo[old]
            memo[key] = (feats, labels)
        return memo[key]

    return features


#: The settings that decide which images (and pixels) a split holds: part of the feature-cache key.
_DATA_KEYS = ("data", "root", "source_data", "source_root", "sample_rate", "num_samples_per_class",
              "val_per_class", "val_split", "source_per_class", "seed", "data_seed", "image_size", "transforms",
              "source_classes", "target_classes", "invert")


def make_context(parts: Parts, state: dict):
    from ..methods import SetupContext

    task = parts.task
    return SetupContext(model=parts.model, device=parts.device, feature_fn=make_feature_fn(parts, state),
                        source_classes=source_class_names(parts.model, task),
                        target_classes=task.target_classes, log_dir=parts.log_dir,
                        is_main=parts.info.is_main)


# ----------------------------------------------------------------------------- batches
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


# ----------------------------------------------------------------------------- optimisation
def build_optimizer(cfg: Config, model: nn.Module):
    """SGD with Nesterov momentum over ``model.get_parameters(lr)``; MultiStepLR stepped per epoch."""
    groups = model.get_parameters(cfg.lr)
    if cfg.momentum <= 0:
        raise UserError(f"--momentum must be > 0 for Nesterov SGD, got {cfg.momentum}")
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_decay_epochs),
                                                     gamma=cfg.lr_gamma)
    return optimizer, scheduler


def check_settings(cfg: Config) -> None:
    """Settings the engine itself needs to make sense (one-line UserErrors)."""
    if cfg.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.iters_per_epoch < 1:
        raise UserError(f"--iters-per-epoch must be >= 1, got {cfg.iters_per_epoch}")
    if cfg.batch_size < 1 or (cfg.source_batch_size is not None and cfg.source_batch_size < 1):
        raise UserError("--batch-size and --source-batch-size must be >= 1")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.workers < 0:
        raise UserError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.print_freq < 1:
        raise UserError(f"--print-freq must be >= 1, got {cfg.print_freq}")
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")


def _better(a: dict, b: Optional[dict]) -> bool:
    """Validation record ``a`` beats ``b``: higher top-1, then higher mean per-class accuracy."""
    if b is None or (math.isnan(_num(a["val_top1"], math.nan)) and math.isnan(_num(b["val_top1"], math.nan))):
        return True  # the first epoch, or no validation (--val-split none): the later epoch is kept
    ka = (_num(a["val_top1"]), _num(a["val_mean_class_acc"]))
    kb = (_num(b["val_top1"]), _num(b["val_mean_class_acc"]))
    return ka > kb


def _num(x: float, missing: float = -1.0) -> float:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


class _Bar:
    """tqdm on the main process (when ``--progress``), TLlib-style lines every ``print_freq`` otherwise."""

    def __init__(self, enabled: bool, is_main: bool, total: int, desc: str, print_freq: int):
        self.is_main, self.desc, self.print_freq, self.total = is_main, desc, print_freq, total
        self.bar = None
        if enabled and is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, i: int, terms: dict[str, float]) -> None:
        text = {k: f"{v:.4f}" for k, v in terms.items()}
        if self.bar is not None:
            self.bar.update(1)
            if i % max(1, min(10, self.print_freq)) == 0 or i == self.total:
                self.bar.set_postfix(text, refresh=False)
        elif self.is_main and (i % self.print_freq == 0 or i == self.total):
            print(f"{self.desc} [{i:>{len(str(self.total))}}/{self.total}] "
                  + " ".join(f"{k} {v}" for k, v in text.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- train
def train(cfg: Config, *, stop_after_epoch: Optional[int] = None) -> dict:
    """Train ``cfg.method`` as configured; returns the summary (or a partial one when stopped early).

    ``stop_after_epoch`` (internal, for tests; env ``TLLIB_JTLN_STOP_AFTER_EPOCH`` on the CLI)
    stops cleanly after that many completed epochs, as if the run had been killed right after
    writing its checkpoint.
    """
    check_settings(cfg)
    info = D.env_info()
    device = D.resolve_device(cfg.device, info)
    D.init(info, device)
    try:
        result = _train(cfg, info, device, stop_after_epoch)
        D.barrier()  # rank 0 may still be writing plots: tear the process group down together
        return result
    finally:
        release_log_dirs()  # the lock on --log taken by prepare_log_dir
        D.cleanup()


def _train(cfg: Config, info: D.DistInfo, device: torch.device, stop_after_epoch: Optional[int]) -> dict:
    from ..methods import METHODS, build_method
    from ..models import build_model

    started = time.time()
    is_main = info.is_main
    # refusals first (nothing is removed yet), then build everything, then write
    log_dir = prepare_log_dir(cfg.log, overwrite=cfg.overwrite, resume=cfg.resume, is_main=is_main,
                              clear=False)
    if cfg.amp and device.type != "cuda":
        _say(is_main, "note: --amp has no effect on the CPU (mixed precision runs on CUDA only)")
    if cfg.cpu_bf16 and device.type != "cpu":
        _say(is_main, "note: --cpu-bf16 has no effect on CUDA (use --amp there)")
    amp = bool(cfg.amp and device.type == "cuda")

    seed_everything(cfg.seed)
    METHODS.get(cfg.method)  # an unknown method fails before any data is read
    task = build_run_task(cfg)
    method = build_method(cfg, task)  # checks the settings against the data
    model = build_model(cfg, task)
    method.prepare_model(model)  # before the optimizer and DDP, on resume too
    model = model.to(device)
    D.barrier()  # every rank has checked the folder and built its model
    if is_main:
        check_free_space(log_dir, model)
        if cfg.overwrite and not cfg.resume:
            clear_run(log_dir)
        write_config(cfg.to_dict(), log_dir)
        write_env(log_dir, str(device), info.world_size)
        _say(True, task.summary() if hasattr(task, "summary") else task.name)
    D.barrier()
    parts = Parts(cfg=cfg, task=task, model=model, device=device, info=info, log_dir=log_dir,
                  eval_batch_size=eval_batch_size(cfg, task.image_size, device))
    check_validation(cfg, task)
    stages = method.stages()
    if any(stage.uses_source for stage in stages) and task.source_train is None:
        raise UserError(f"method '{cfg.method}' trains on source data but the task has none; "
                        f"give --source-data and --source-root, or use --method erm")

    state = TrainState()
    ctx = make_context(parts, state.progress)
    metrics = MetricsLog(log_dir)
    ckpt = None
    if cfg.resume:
        ckpt = _load_resume_checkpoint(log_dir, cfg, len(stages))
        model.load_state_dict(ckpt["model"])
        method.load_state_dict(_to_device(ckpt["method"], device))
        state.load_state_dict(ckpt)
        if is_main:
            metrics.truncate_after(state.epoch)
        _say(is_main, f"resumed {log_dir} after epoch {state.epoch}")
    else:
        if is_main:
            t0 = time.time()
            method.setup(ctx)
            _say(is_main, f"setup of '{cfg.method}' took {time.time() - t0:.1f}s")
        _share_method_state(method, info, device)
        if is_main:
            _save_artifacts(method, source_class_names(model, task), task.target_classes, log_dir)
        # the RNG must not depend on what setup consumed on rank 0 only
        seed_everything(cfg.seed + 1)

    net: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)

    total_epochs = len(stages) * cfg.epochs
    _say(is_main, f"training '{cfg.method}' on {task.name}: {len(task.target_classes)} target classes, "
                  + (f"stages {' -> '.join(s.name for s in stages)}, each " if len(stages) > 1 else "")
                  + f"{cfg.epochs} epochs x {cfg.iters_per_epoch} iterations, device {device}"
                  + (f", {info.world_size} processes" if info.enabled else ""))
    val_loader = _eval_loader(task.target_val, parts) if selection_of(cfg) != "last" else None
    run: Optional[StageRun] = None
    warned = False
    for epoch in range(state.epoch, total_epochs):
        index = epoch // cfg.epochs
        if run is None or run.index != index:
            run = StageRun.start(parts, method, stages, index, amp)
            if ckpt is not None and ckpt.get("stage") == index:  # resumed inside this stage
                run.load_state_dict(ckpt)
            ckpt = None
            method.on_stage_start(index, ctx)
            _share_method_state(method, info, device)
        state.progress["epoch"] = epoch
        method.on_epoch_start(epoch, ctx)
        _share_method_state(method, info, device)
        t_epoch = time.time()
        record = _train_epoch(parts, method, net, run, state, epoch, total_epochs)
        if run.stage.selects:
            val = (evaluate(net, val_loader, device, len(task.target_classes), amp=amp,
                            cpu_bf16=cfg.cpu_bf16) if val_loader is not None
                   else no_validation_result())
            record.update(val_top1=val.top1, val_mean_class_acc=val.mean_class_acc)
            improved = _better(record, state.best)
            if improved:
                state.best = {"epoch": epoch + 1, "val_top1": val.top1, "val_mean_class_acc": val.mean_class_acc}
        else:
            improved = False
        state.epoch = epoch + 1
        record["best_epoch"] = state.best["epoch"] if state.best else None
        record["epoch_time_s"] = round(time.time() - t_epoch, 3)
        if is_main:
            warnings = method.epoch_warnings(record)
            if warnings and not warned:
                warned = True
                for line in warnings:
                    print(f"warning: {line}", file=sys.stderr, flush=True)
            metrics.append(record)
            _save_checkpoints(parts, method, run, state, record, improved, elapsed=state.elapsed + time.time() - started)
            _print_epoch(record, total_epochs, improved)
        D.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < total_epochs:
            _say(is_main, f"stopped after epoch {epoch + 1} as asked; continue with --resume --log {log_dir}")
            return {"stopped_after_epoch": epoch + 1, "best": state.best}

    return _finish(parts, method, state, state.elapsed + (time.time() - started))


@dataclass
class TrainState:
    """What a run has done so far; checkpointed in ``last.pt`` and restored by ``--resume``.

    ``epoch``: completed epochs over all stages; ``step``: optimizer steps (skipped ones included);
    ``best``: the best validation record so far; ``images_seen``: images forwarded per stream
    (summed over processes); ``progress``: the live ``{"epoch": ...}`` the feature cache reads.
    """

    epoch: int = 0
    step: int = 0
    best: Optional[dict] = None
    elapsed: float = 0.0
    skipped: int = 0
    images_seen: dict = field(default_factory=lambda: {"source": 0, "target": 0})
    progress: dict = field(default_factory=lambda: {"epoch": 0})

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "skipped_steps": self.skipped,
                "images_seen": dict(self.images_seen)}

    def load_state_dict(self, ckpt: dict) -> None:
        self.epoch, self.step, self.best = int(ckpt["epoch"]), int(ckpt["step"]), ckpt.get("best")
        self.elapsed, self.skipped = float(ckpt.get("elapsed", 0.0)), int(ckpt.get("skipped_steps", 0))
        self.images_seen = dict(ckpt.get("images_seen") or {"source": 0, "target": 0})
        self.progress["epoch"] = self.epoch
        set_rng_state(ckpt["rng"])


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
    def start(cls, parts: Parts, method, stages: list, index: int, amp: bool) -> "StageRun":
        """A fresh optimizer and MultiStepLR over the full schedule, and the stage's streams (seeded by
        ``--seed`` alone, so a stage sees the same batches as a one-stage method on the same stream)."""
        from ..data import JointLoader

        cfg, task, info, stage = parts.cfg, parts.task, parts.info, stages[index]
        optimizer, scheduler = build_optimizer(cfg, parts.model)
        loader = JointLoader(task.source_train if stage.uses_source else None,
                             task.target_train if stage.uses_target else None,
                             source_batch_size=cfg.source_batch_size or cfg.batch_size,
                             target_batch_size=cfg.batch_size, seed=cfg.seed, rank=info.rank,
                             world_size=info.world_size, workers=cfg.workers,
                             use_source=stage.uses_source, use_target=stage.uses_target)
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


def _load_resume_checkpoint(log_dir: Path, cfg: Config, num_stages: int) -> dict:
    ckpt = load_checkpoint(last_checkpoint(log_dir), map_location="cpu")
    if ckpt.get("format") != FORMAT:
        raise UserError(f"{last_checkpoint(log_dir)}: checkpoint format {ckpt.get('format')} is not "
                        f"{FORMAT}; start over with --overwrite")
    done = int(ckpt["epoch"])
    if done >= num_stages * cfg.epochs:
        raise UserError(f"--resume: the checkpoint has {done} epochs done and the run has "
                        f"{num_stages * cfg.epochs} ({num_stages} stage(s) x --epochs {cfg.epochs}); "
                        f"raise --epochs to train further")
    return ckpt


def _train_epoch(parts: Parts, method, net: nn.Module, run: StageRun, state: TrainState, epoch: int,
                 total_epochs: int) -> dict:
    """``--iters-per-epoch`` steps of ``run``'s stage; returns the epoch's record (means of the loss terms
    and of the method's step statistics, over processes). The non-finite policy: stop naming the
    epoch, step and term, or skip the step under ``--skip-nonfinite``."""
    cfg, info, device = parts.cfg, parts.info, parts.device
    total_steps = total_epochs * cfg.iters_per_epoch
    seen = {"source": (cfg.source_batch_size or cfg.batch_size) * info.world_size if run.stage.uses_source else 0,
            "target": cfg.batch_size * info.world_size if run.stage.uses_target else 0}
    optimizer = run.optimizer
    sums: dict[str, float] = {}
    stats: dict[str, float] = {}
    counted = 0
    net.train()
    bar = _Bar(cfg.progress, info.is_main, cfg.iters_per_epoch, f"epoch {epoch + 1}/{total_epochs}"
               + (f" ({run.stage.name})" if run.stage.name != cfg.method else ""), cfg.print_freq)
    t_train = time.perf_counter()
    try:
        for i in range(1, cfg.iters_per_epoch + 1):
            batch = run.next_batch(device)
            for stream, n in seen.items():
                state.images_seen[stream] += n
            with autocast_context(device, cfg):
                terms = method.losses(net, batch, state.step / total_steps)
            if not terms:
                raise UserError(f"method '{cfg.method}' returned no loss terms at step {state.step}")
            loss = sum(terms.values())
            if not D.all_agree(bool(torch.isfinite(loss.detach()).item())):
                _non_finite(cfg, info, terms, loss, epoch, state.step)
                state.skipped += 1
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                bar.update(i, {"skipped": float(state.skipped)})
                continue
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(optimizer)
            run.scaler.update()
            state.step += 1
            values = {k: float(v.detach()) for k, v in terms.items()}
            values["loss"] = float(loss.detach())
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            for k, v in method.step_stats().items():
                stats[k] = stats.get(k, 0.0) + v
            counted += 1
            bar.update(i, values)
    finally:
        bar.close()
    train_time = time.perf_counter() - t_train
    group = optimizer.param_groups[0]  # the base rate (heads) during this epoch
    epoch_lr = cfg.lr * group["lr"] / group.get("initial_lr", group["lr"])
    run.scheduler.step()
    return {"epoch": epoch + 1, "stage": run.stage.name, "step": state.step, "lr": epoch_lr,
            **{f"train_{k}": _mean_over_ranks(v / max(counted, 1), device) for k, v in sums.items()},
            **{k: _mean_over_ranks(v / max(counted, 1), device) for k, v in stats.items()},
            "skipped_steps": state.skipped, "images_seen": dict(state.images_seen),
            "train_time_s": round(train_time, 3)}


def _non_finite(cfg: Config, info: D.DistInfo, terms: dict, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop with the epoch, step and first non-finite term named; under ``--skip-nonfinite`` return (skip)."""
    bad = next((k for k, v in terms.items() if not torch.isfinite(v.detach()).all()), "loss")
    if not cfg.skip_nonfinite:
        raise UserError(f"epoch {epoch + 1}, step {step}: loss term '{bad}' is not finite "
                        f"({float(terms[bad].detach()) if bad in terms else float('nan')}); "
                        f"lower --lr, or pass --skip-nonfinite to skip such steps")
    if info.enabled:  # DDP expects a backward after each forward: run it, the grads are dropped
        (loss * 0.0).backward()


def _save_checkpoints(parts: Parts, method, run: StageRun, state: TrainState, record: dict, improved: bool,
                      elapsed: float) -> None:
    """``best.pt`` when the epoch improved on validation, and ``last.pt`` (everything ``--resume`` needs)."""
    cfg, model, log_dir = parts.cfg, parts.model, parts.log_dir
    if improved:
        save_checkpoint({"format": FORMAT, "epoch": record["epoch"], "model": model.state_dict(),
                         "val": dict(state.best), "config": cfg.to_dict()}, best_checkpoint(log_dir))
    save_checkpoint({"format": FORMAT, "model": model.state_dict(), **state.state_dict(), **run.state_dict(),
                     "method": _to_device(method.state_dict(), "cpu"), "rng": rng_state(),
                     "config": cfg.to_dict(), "elapsed": elapsed}, last_checkpoint(log_dir))


def _print_epoch(record: dict, total_epochs: int, improved: bool) -> None:
    terms_text = ", ".join(f"{k.removeprefix('train_')} {v:.4f}" for k, v in record.items()
                           if k.startswith("train_") and k not in ("train_loss", "train_time_s"))
    val = (f", val top-1 {100 * record['val_top1']:.2f}%, mean class {100 * record['val_mean_class_acc']:.2f}%"
           if "val_top1" in record else f" (stage '{record['stage']}', not validated)")
    print(f"epoch {record['epoch']}/{total_epochs}: loss {record.get('train_loss', float('nan')):.4f}"
          f"{' (' + terms_text + ')' if terms_text else ''}{val}, lr {record['lr']:.4g}"
          f"{' *best*' if improved else ''} [{record['epoch_time_s']:.1f}s]", flush=True)


def _share_method_state(method, info: D.DistInfo, device: torch.device) -> None:
    """Under DDP, every rank takes rank 0's method state (cost matrix, relation): built once, broadcast."""
    if not info.enabled:
        return
    shared = D.broadcast_object(method.state_dict() if info.is_main else None)
    if not info.is_main:
        method.load_state_dict(_to_device(shared, device))


def _mean_over_ranks(value: float, device: torch.device) -> float:
    if not D.active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    D.all_reduce_sum(t)
    return float(t.item()) / torch.distributed.get_world_size()


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _save_artifacts(method, source_names: Optional[list], target_names: list, log_dir: Path) -> dict:
    """Write the method's cost matrix (``cost.npy/json/png``); returns the method's artifacts."""
    from .plots import save_cost_files

    artifacts = dict(method.artifacts() or {})
    cost = artifacts.get("cost")
    if cost is not None:
        cost = cost.detach().float().cpu()
        names = source_names if source_names and len(source_names) == cost.shape[0] else None
        save_cost_files(cost, names, list(target_names), log_dir)
        artifacts["cost"] = cost
    return artifacts


def _finish(parts: Parts, method, state: TrainState, wall: float) -> dict:
    """Load the best checkpoint, test it (one pass over the test images), write the views and
    ``summary.json`` (main process)."""
    cfg, task, log_dir, is_main = parts.cfg, parts.task, parts.log_dir, parts.info.is_main
    best = state.best
    if best is None:
        raise UserError("no epoch was completed; nothing to test")
    D.barrier()
    ckpt = load_checkpoint(best_checkpoint(log_dir), map_location="cpu")
    parts.model.load_state_dict(ckpt["model"])
    source_names = source_class_names(parts.model, task)
    ks = len(source_names) if source_names else 0
    amp = bool(cfg.amp and parts.device.type == "cuda")
    result = evaluate(parts.model, _eval_loader(task.target_test, parts), parts.device, len(task.target_classes),
                      source_mass=ks, amp=amp, cpu_bf16=cfg.cpu_bf16)
    plan = _validation_plan(parts, method, amp) if ks else None
    summary = {
        "method": cfg.method, "data": task.name, "arch": cfg.arch, "seed": cfg.seed,
        "num_samples_per_class": cfg.num_samples_per_class, "cost": cfg.cost,
        "test_top1": result.top1, "test_mean_class_acc": result.mean_class_acc,
        "val_top1": best["val_top1"], "val_mean_class_acc": best["val_mean_class_acc"],
        "best_epoch": best["epoch"], "epochs": cfg.epochs, "iters_per_epoch": cfg.iters_per_epoch,
        "stages": [stage.name for stage in method.stages()], "images_seen": dict(state.images_seen),
        "test_images": result.count, "skipped_steps": state.skipped, "world_size": parts.info.world_size,
        "wall_time_s": round(wall, 2), "skipped_images": len(task.bad_images()), "switches": method.switches(),
        "test_per_class": result.as_dict("test", list(task.target_classes))["test_per_class"],
    }
    summary.update(selection_fields(cfg, task))
    if is_main:
        artifacts = _save_artifacts(method, source_names, task.target_classes, log_dir)
        if ks:
            cost = artifacts.get("cost")
            if cost is not None and tuple(cost.shape) != (ks, len(task.target_classes)):
                cost = None
            save_transport(log_dir, source_names, task.target_classes, plan=plan, posterior=result.source_mass,
                           cost=cost)
        plot_curves(MetricsLog(log_dir).read(), log_dir / "curves.png")
        write_summary(summary, log_dir)
        print(f"best epoch {best['epoch']}: val top-1 {100 * best['val_top1']:.2f}%; "
              f"test top-1 {100 * result.top1:.2f}%, mean class {100 * result.mean_class_acc:.2f}% "
              f"({result.count} images); {wall:.1f}s; log: {log_dir}", flush=True)
        if summary["skipped_images"]:
            print(f"skipped {summary['skipped_images']} bad images (--skip-bad-images); each is named above",
                  flush=True)
    return summary


def _validation_plan(parts: Parts, method, amp: bool) -> Optional[torch.Tensor]:
    """The method's mean OT plan ``(Ks, Kt)`` over the validation images (None for methods without one)."""
    plan_fn = getattr(method, "transport_plan", None)
    if plan_fn is None or not parts.task.target_val:
        return None
    val = evaluate(parts.model, _eval_loader(parts.task.target_val, parts, shard=False), parts.device,
                   len(parts.task.target_classes), amp=amp, cpu_bf16=parts.cfg.cpu_bf16, keep_outputs=True)
    return plan_fn(*val.outputs) if val.outputs is not None else None


# ----------------------------------------------------------------------------- test
def evaluate_run(cfg: Config) -> dict:
    """Evaluate ``LOG/checkpoints/best.pt`` on the target test split (and validation split)."""
    info = D.env_info()
    device = D.resolve_device(cfg.device, info)
    D.init(info, device)
    try:
        log_dir = Path(cfg.log)
        ckpt_path = best_checkpoint(log_dir)
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        seed_everything(cfg.seed)
        from ..methods import build_method
        from ..models import build_model

        task = build_run_task(cfg)
        model = build_model(cfg, task)
        build_method(cfg, task).prepare_model(model)  # same parameters as in training
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{ckpt_path} does not fit the model of {log_dir}/config.yaml ({first[:160]})") from None
        model = model.to(device)
        parts = Parts(cfg=cfg, task=task, model=model, device=device, info=info, log_dir=log_dir,
                      eval_batch_size=eval_batch_size(cfg, task.image_size, device))
        amp = bool(cfg.amp and device.type == "cuda")
        n = len(task.target_classes)
        out: dict = {"best_epoch": ckpt.get("epoch")}
        results: dict[str, EvalResult] = {}
        for split, dataset in (("val", task.target_val), ("test", task.target_test)):
            if dataset is not None and len(dataset):
                results[split] = evaluate(model, _eval_loader(dataset, parts), device, n, amp=amp,
                                          cpu_bf16=cfg.cpu_bf16)
                out.update(results[split].as_dict(split))
        if info.is_main:
            parts_text = ", ".join(f"{s} top-1 {100 * r.top1:.2f}% (mean class {100 * r.mean_class_acc:.2f}%)"
                                   for s, r in results.items())
            print(f"{ckpt_path} (epoch {ckpt.get('epoch')}): {parts_text}", flush=True)
        D.barrier()  # tear the process group down together (see train)
        return out
    finally:
        D.cleanup()
