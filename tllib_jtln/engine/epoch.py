"""One epoch: ``--iters-per-epoch`` steps of the stage in progress, then validation and checkpoints.

At step ``t`` (of ``T``, all stages together) the method returns named, already weighted loss
terms for the batch and the engine minimises their sum (:mod:`tllib_jtln.engine.step`)::

    terms = method.losses(model, batch, progress=t / T);  L = sum(terms);  L.backward();  optimizer.step()

Non-finite policy: a step whose ``L`` is NaN or infinite on any process stops the run with a
one-line error naming the epoch, the step and the first non-finite term, or, under
``--skip-nonfinite``, is skipped (counted in ``skipped_steps``). The learning rate follows
``MultiStepLR``, stepped once per epoch.

After each epoch of a stage that trains the target head (``Stage.selects``) the target head is
evaluated on the target validation split; the best epoch (:func:`~tllib_jtln.engine.selection.better`)
is kept in ``checkpoints/best.pt``; ``checkpoints/last.pt`` holds everything ``--resume`` needs.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn as nn

from ..config import Config
from ..errors import UserError
from . import distributed as D
from .assembly import Parts
from .evaluate import evaluate
from .health import collapse_warning
from .precision import autocast_context
from .reporter import Reporter
from .selection import better, no_validation_result
from .state import StageRun, TrainState, save_progress
from .step import descend, loss_terms


def train_epoch(parts: Parts, net: nn.Module, run: StageRun, state: TrainState, epoch: int, total_epochs: int,
                reporter: Reporter) -> dict:
    """The steps of 0-based ``epoch`` in ``run``'s stage; returns the epoch's record (means over the
    counted steps, and over processes, of the loss terms and of the method's step statistics)."""
    cfg, info, device = parts.cfg, parts.info, parts.device
    seen = {"source": (cfg.source_batch_size or cfg.batch_size) * info.world_size if run.stage.uses_source else 0,
            "target": cfg.batch_size * info.world_size if run.stage.uses_target else 0}
    sums: dict[str, float] = {}
    stats: dict[str, float] = {}
    counted = 0
    net.train()
    bar = reporter.progress_bar(epoch, run.stage.name)
    t_train = time.perf_counter()
    try:
        for i in range(1, cfg.iters_per_epoch + 1):
            values = _step(parts, net, run, state, epoch, total_epochs * cfg.iters_per_epoch, seen)
            if values is None:
                bar.update(i, {"skipped": float(state.skipped)})
                continue
            _add(sums, values)
            _add(stats, parts.method.step_stats())
            counted += 1
            bar.update(i, values)
    finally:
        bar.close()
    train_time = time.perf_counter() - t_train
    group = run.optimizer.param_groups[0]  # the base rate (heads) during this epoch
    epoch_lr = cfg.lr * group["lr"] / group.get("initial_lr", group["lr"])
    run.scheduler.step()
    return {"epoch": epoch + 1, "stage": run.stage.name, "step": state.step, "lr": epoch_lr,
            **{f"train_{k}": mean_over_ranks(v / max(counted, 1), device) for k, v in sums.items()},
            **{k: mean_over_ranks(v / max(counted, 1), device) for k, v in stats.items()},
            "skipped_steps": state.skipped, "images_seen": dict(state.images_seen),
            "train_time_s": round(train_time, 3)}


def _step(parts: Parts, net: nn.Module, run: StageRun, state: TrainState, epoch: int, total_steps: int,
          seen: dict[str, int]) -> Optional[dict[str, float]]:
    """One step: its loss values (``loss`` and each term), or None when it was skipped as non-finite;
    ``seen``: the images a step forwards per stream (all processes)."""
    cfg, info, device = parts.cfg, parts.info, parts.device
    batch = run.next_batch(device)
    for stream, n in seen.items():
        state.images_seen[stream] += n
    terms, loss = loss_terms(parts.method, net, batch, state.step / total_steps, autocast_context(device, cfg))
    if not terms:
        raise UserError(f"method '{cfg.method}' returned no loss terms at step {state.step}")
    if not D.all_agree(bool(torch.isfinite(loss.detach()).item())):
        non_finite(cfg, info, terms, loss, epoch, state.step)
        state.skipped += 1
        run.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return None
    descend(loss, run.optimizer, run.scaler)
    state.step += 1
    values = {k: float(v.detach()) for k, v in terms.items()}
    values["loss"] = float(loss.detach())
    return values


def non_finite(cfg: Config, info: D.DistInfo, terms: dict, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop with the epoch, step and first non-finite term named; under ``--skip-nonfinite`` return (skip)."""
    bad = next((k for k, v in terms.items() if not torch.isfinite(v.detach()).all()), "loss")
    if not cfg.skip_nonfinite:
        raise UserError(f"epoch {epoch + 1}, step {step}: loss term '{bad}' is not finite "
                        f"({float(terms[bad].detach()) if bad in terms else float('nan')}); "
                        f"lower --lr{_ot_hint(bad)}, or pass --skip-nonfinite to skip such steps")
    if info.enabled:  # DDP expects a backward after each forward: run it, the grads are dropped
        (loss * 0.0).backward()


def _ot_hint(term: str) -> str:
    """For an optimal-transport term, the Sinkhorn settings that make it finite again."""
    return ", raise --ot-eps (entropic regularisation) or --ot-iters" if term.startswith("ot") else ""


def validate_and_checkpoint(parts: Parts, net: nn.Module, run: StageRun, state: TrainState, record: dict,
                            val_loader, reporter: Reporter, started: float) -> None:
    """Close the epoch of ``record``: validate (selecting stages), keep the best, report, checkpoint.

    ``val_loader`` is None without validation (``--val-split none``: NaN accuracies, the last
    epoch is kept); ``started`` is when the epoch began (``time.time()``)."""
    improved = False
    if run.stage.selects:
        val = (evaluate(net, val_loader, parts.device, len(parts.task.target_classes),
                        amp=bool(parts.cfg.amp and parts.device.type == "cuda"), cpu_bf16=parts.cfg.cpu_bf16)
               if val_loader is not None else no_validation_result())
        record.update(val_top1=val.top1, val_mean_class_acc=val.mean_class_acc)
        improved = better(record, state.best)
        if improved:
            state.best = {"epoch": record["epoch"], "val_top1": val.top1, "val_mean_class_acc": val.mean_class_acc}
    state.epoch = record["epoch"]
    record["best_epoch"] = state.best["epoch"] if state.best else None
    record["epoch_time_s"] = round(time.time() - started, 3)
    if parts.info.is_main:
        reporter.warn_once("method", parts.method.epoch_warnings(record))
        reporter.warn_once("collapse", collapse_warning(record, len(parts.task.target_classes)))
        reporter.record(record)
        save_progress(parts, run, state, improved)
        reporter.epoch_line(record, improved)
    D.barrier()


def _add(sums: dict[str, float], values: dict[str, float]) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v


def mean_over_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over the processes (itself when not distributed)."""
    if not D.active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    D.all_reduce_sum(t)
    return float(t.item()) / torch.distributed.get_world_size()
