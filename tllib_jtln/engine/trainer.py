"""The training loop: SGD (Nesterov) + MultiStepLR as TLlib, per-epoch validation, checkpoints.

One epoch is ``cfg.iters_per_epoch`` steps. At step ``t`` (of ``T = epochs * iters_per_epoch``)
the method returns named, already weighted loss terms ``{name: scalar}`` for the batch, the
engine minimises their sum ``L = sum_name term``:

    terms = method.losses(model, batch, progress=t / T);  L.backward();  optimizer.step()

The learning rate follows ``MultiStepLR(lr_decay_epochs, gamma=lr_gamma)``, stepped once per
epoch; parameter groups come from ``JointClassifier.get_parameters(lr)`` (backbone at 0.1x
under ``--finetune``). After each epoch the target head is evaluated on the target validation
split (top-1 and mean per-class accuracy); the epoch with the best validation top-1 (ties: the
better mean per-class accuracy, then the earlier epoch) is kept in ``checkpoints/best.pt`` and
evaluated on the target test split at the end. The test split never selects anything.

Resume. ``checkpoints/last.pt`` holds the model, optimiser, scheduler, AMP scaler, the joint
loader's position, the method's tensors, the Python/NumPy/torch RNG states, the completed
epochs, the best epoch and the elapsed wall time, captured after the epoch's validation. A
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
                     write_config, write_env, write_summary)
from .precision import autocast_context


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
    training set), seen through the evaluation transform (``task.eval_view``: no augmentation).
    Features are the pooled pre-logits ``model.forward_features(x)`` of the current
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
        dataset = parts.task.eval_view(split)  # the evaluation transform: no augmentation
        epoch = int(state.get("epoch", 0))
        key = (split, epoch)
        if key not in memo:
            cache_dir = Path(cfg.feature_cache).expanduser() if cfg.feature_cache else None
            cache_key = {"split": split, "task": parts.task.name, "size": len(dataset), "arch": cfg.arch,
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
              "val_per_class", "source_per_class", "seed", "image_size", "transforms")


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
    if b is None:
        return True
    ka = (_num(a["val_top1"]), _num(a["val_mean_class_acc"]))
    kb = (_num(b["val_top1"]), _num(b["val_mean_class_acc"]))
    return ka > kb


def _num(x: float) -> float:
    return -1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


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
        D.cleanup()


def _train(cfg: Config, info: D.DistInfo, device: torch.device, stop_after_epoch: Optional[int]) -> dict:
    from ..data import JointLoader
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
    if task.target_val is None or len(task.target_val) == 0:
        raise UserError("the target validation split is empty; raise --val-per-class (model selection "
                        "never uses the test set)")
    if method.uses_source and task.source_train is None:
        raise UserError(f"method '{cfg.method}' trains on source data but the task has none; "
                        f"give --source-data and --source-root, or use --method erm")

    optimizer, scheduler = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loader = JointLoader(task.source_train if method.uses_source else None,
                         task.target_train if method.uses_target else None,
                         source_batch_size=cfg.source_batch_size or cfg.batch_size,
                         target_batch_size=cfg.batch_size, seed=cfg.seed, rank=info.rank,
                         world_size=info.world_size, workers=cfg.workers,
                         use_source=method.uses_source, use_target=method.uses_target)
    val_loader = _eval_loader(task.target_val, parts)
    state: dict[str, Any] = {"epoch": 0}
    ctx = make_context(parts, state)
    metrics = MetricsLog(log_dir)

    start_epoch, step, best, elapsed, skipped = 0, 0, None, 0.0, 0
    if cfg.resume:
        ckpt = load_checkpoint(last_checkpoint(log_dir), map_location="cpu")
        if ckpt.get("format") != FORMAT:
            raise UserError(f"{last_checkpoint(log_dir)}: checkpoint format {ckpt.get('format')} is not "
                            f"{FORMAT}; start over with --overwrite")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["loader"])
        method.load_state_dict(_to_device(ckpt["method"], device))
        start_epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), ckpt.get("best")
        elapsed, skipped = float(ckpt.get("elapsed", 0.0)), int(ckpt.get("skipped_steps", 0))
        if start_epoch >= cfg.epochs:
            raise UserError(f"--resume: the checkpoint has {start_epoch} epochs done and --epochs is "
                            f"{cfg.epochs}; raise --epochs to train further")
        if is_main:
            metrics.truncate_after(start_epoch)
        set_rng_state(ckpt["rng"])
        _say(is_main, f"resumed {log_dir} after epoch {start_epoch}")
        del ckpt
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

    total_steps = cfg.epochs * cfg.iters_per_epoch
    batches = iter(loader)
    num_classes = len(task.target_classes)
    _say(is_main, f"training '{cfg.method}' on {task.name}: {len(task.target_classes)} target classes, "
                  f"{cfg.epochs} epochs x {cfg.iters_per_epoch} iterations, device {device}"
                  + (f", {info.world_size} processes" if info.enabled else ""))
    record: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.time()
        state["epoch"] = epoch
        method.on_epoch_start(epoch, ctx)
        _share_method_state(method, info, device)
        net.train()
        sums: dict[str, float] = {}
        counted = 0
        bar = _Bar(cfg.progress, is_main, cfg.iters_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.print_freq)
        t_train = time.perf_counter()
        try:
            for i in range(1, cfg.iters_per_epoch + 1):
                batch = batch_to_device(next(batches), device)
                with autocast_context(device, cfg):
                    terms = method.losses(net, batch, step / total_steps)
                if not terms:
                    raise UserError(f"method '{cfg.method}' returned no loss terms at step {step}")
                loss = sum(terms.values())
                finite = bool(torch.isfinite(loss.detach()).item())
                finite = D.all_agree(finite)
                if not finite:
                    bad = next((k for k, v in terms.items() if not torch.isfinite(v.detach()).all()), "loss")
                    if not cfg.skip_nonfinite:
                        raise UserError(f"epoch {epoch + 1}, step {step}: loss term '{bad}' is not finite "
                                        f"({float(terms[bad].detach()) if bad in terms else float('nan')}); "
                                        f"lower --lr, or pass --skip-nonfinite to skip such steps")
                    skipped += 1
                    if info.enabled:  # DDP expects a backward after each forward: run it, drop the grads
                        (loss * 0.0).backward()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update(i, {"skipped": float(skipped)})
                    continue
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                values = {k: float(v.detach()) for k, v in terms.items()}
                values["loss"] = float(loss.detach())
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                counted += 1
                bar.update(i, values)
        finally:
            bar.close()
        train_time = time.perf_counter() - t_train
        group = optimizer.param_groups[0]  # the base rate (heads) during this epoch
        epoch_lr = cfg.lr * group["lr"] / group.get("initial_lr", group["lr"])
        scheduler.step()

        val = evaluate(net, val_loader, device, num_classes, amp=amp, cpu_bf16=cfg.cpu_bf16)
        record = {"epoch": epoch + 1, "step": step,
                  "lr": epoch_lr,
                  **{f"train_{k}": _mean_over_ranks(v / max(counted, 1), device) for k, v in sums.items()},
                  "val_top1": val.top1, "val_mean_class_acc": val.mean_class_acc,
                  "skipped_steps": skipped, "epoch_time_s": round(time.time() - t_epoch, 3),
                  "train_time_s": round(train_time, 4)}
        improved = _better(record, best)
        if improved:
            best = {"epoch": epoch + 1, "val_top1": val.top1, "val_mean_class_acc": val.mean_class_acc}
        record["best_epoch"] = best["epoch"]
        elapsed_now = elapsed + (time.time() - started)
        if is_main:
            metrics.append(record)
            if improved:
                save_checkpoint({"format": FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                                 "val": dict(best), "config": cfg.to_dict()}, best_checkpoint(log_dir))
            save_checkpoint({
                "format": FORMAT, "epoch": epoch + 1, "step": step, "best": best,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if amp else None,
                "loader": loader.state_dict(), "method": _to_device(method.state_dict(), "cpu"),
                "rng": rng_state(), "config": cfg.to_dict(), "elapsed": elapsed_now,
                "skipped_steps": skipped,
            }, last_checkpoint(log_dir))
            terms_text = ", ".join(f"{k.removeprefix('train_')} {v:.4f}" for k, v in record.items()
                                   if k.startswith("train_") and k not in ("train_loss", "train_time_s"))
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record.get('train_loss', float('nan')):.4f}"
                  f"{' (' + terms_text + ')' if terms_text else ''}, val top-1 {100 * val.top1:.2f}%, "
                  f"mean class {100 * val.mean_class_acc:.2f}%, lr {record['lr']:.4g}"
                  f"{' *best*' if improved else ''} [{record['epoch_time_s']:.1f}s]", flush=True)
        D.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            _say(is_main, f"stopped after epoch {epoch + 1} as asked; continue with --resume --log {log_dir}")
            return {"stopped_after_epoch": epoch + 1, "best": best}

    return _finish(parts, method, best, elapsed + (time.time() - started), skipped)


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


def _finish(parts: Parts, method, best: Optional[dict], wall: float, skipped: int) -> dict:
    """Load the best checkpoint, test it, write the plots and ``summary.json`` (main process)."""
    from .plots import plot_curves, save_transport

    cfg, task, log_dir, is_main = parts.cfg, parts.task, parts.log_dir, parts.info.is_main
    if best is None:
        raise UserError("no epoch was completed; nothing to test")
    D.barrier()
    ckpt = load_checkpoint(best_checkpoint(log_dir), map_location="cpu")
    parts.model.load_state_dict(ckpt["model"])
    source_names = source_class_names(parts.model, task)
    ks = len(source_names) if source_names else 0
    test_loader = _eval_loader(task.target_test, parts)
    result = evaluate(parts.model, test_loader, parts.device, len(task.target_classes),
                      source_mass=ks, amp=bool(cfg.amp and parts.device.type == "cuda"),
                      cpu_bf16=cfg.cpu_bf16)
    summary = {
        "method": cfg.method, "data": task.name, "arch": cfg.arch, "seed": cfg.seed,
        "num_samples_per_class": cfg.num_samples_per_class, "cost": cfg.cost,
        "test_top1": result.top1, "test_mean_class_acc": result.mean_class_acc,
        "val_top1": best["val_top1"], "val_mean_class_acc": best["val_mean_class_acc"],
        "best_epoch": best["epoch"], "epochs": cfg.epochs, "iters_per_epoch": cfg.iters_per_epoch,
        "test_images": result.count, "skipped_steps": skipped, "world_size": parts.info.world_size,
        "wall_time_s": round(wall, 2),
        "test_per_class": result.as_dict("test", list(task.target_classes))["test_per_class"],
    }
    if is_main:
        artifacts = _save_artifacts(method, source_names, task.target_classes, log_dir)
        if ks:
            cost, plan = artifacts.get("cost"), artifacts.get("plan")
            mass = plan if plan is not None else result.source_mass
            if cost is not None and tuple(cost.shape) != (ks, len(task.target_classes)):
                cost = None
            save_transport(log_dir, source_names, task.target_classes, mass=mass, cost=cost)
        plot_curves(MetricsLog(log_dir).read(), log_dir / "curves.png")
        write_summary(summary, log_dir)
        print(f"best epoch {best['epoch']}: val top-1 {100 * best['val_top1']:.2f}%; "
              f"test top-1 {100 * result.top1:.2f}%, mean class {100 * result.mean_class_acc:.2f}% "
              f"({result.count} images); {wall:.1f}s; log: {log_dir}", flush=True)
    return summary


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
