"""The end of a run: the best checkpoint on the target test split, the views, ``summary.json``.

The epoch kept in ``checkpoints/best.pt`` (the best validation top-1, see
:mod:`tllib_jtln.engine.selection`) is evaluated once on the target test split; the test split
never selects anything. Under ``--skip-test`` (selection runs) that pass is skipped and
``summary.json`` holds the validation figures alone (``test_skipped: true``). With a source head the run also draws the transport view
(``transport.png``/``.txt``: the method's mean OT plan over the validation images, the source-head
posterior over the test images, the cost matrix), then ``curves.png`` and ``summary.json``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import UserError
from . import distributed as D
from .assembly import Parts, eval_loader_of, source_class_names
from .checkpoint import load_checkpoint, restore
from .evaluate import EvalResult, evaluate
from .logdir import best_checkpoint, write_summary
from .plots import plot_curves, save_cost_files, save_transport
from .reporter import Reporter
from .selection import selection_fields
from .state import TrainState


def finish(parts: Parts, state: TrainState, reporter: Reporter) -> dict:
    """Load the best checkpoint, test it (one pass over the test images), write the views and
    ``summary.json`` (main process); returns the summary."""
    task, log_dir, best, wall = parts.task, parts.log_dir, state.best, state.wall()
    if best is None:
        raise UserError("no epoch was completed; nothing to test")
    D.barrier()
    path = best_checkpoint(log_dir)
    restore(path, "model weights", parts.model.load_state_dict, load_checkpoint(path, map_location="cpu")["model"])
    source_names = source_class_names(parts.model, task)
    ks = len(source_names) if source_names else 0
    amp = bool(parts.cfg.amp and parts.device.type == "cuda")
    result = None if parts.cfg.skip_test else evaluate(
        parts.model, eval_loader_of(parts, task.target_test), parts.device, len(task.target_classes),
        source_mass=ks, amp=amp, cpu_bf16=parts.cfg.cpu_bf16)
    plan = _validation_plan(parts, amp) if ks else None
    summary = _summary(parts, state, result, wall)
    if parts.info.is_main:
        artifacts = save_artifacts(parts)
        if ks:
            cost = artifacts.get("cost")
            if cost is not None and tuple(cost.shape) != (ks, len(task.target_classes)):
                cost = None
            views = {"plan": plan, "posterior": result.source_mass if result is not None else None, "cost": cost}
            if any(view is not None for view in views.values()):  # --skip-test: no posterior, maybe nothing
                save_transport(log_dir, source_names, task.target_classes, **views)
        plot_curves(reporter.metrics.read(), log_dir / "curves.png")
        write_summary(summary, log_dir)
        reporter.finished(summary, best, wall, log_dir)
    return summary


def _summary(parts: Parts, state: TrainState, result: Optional[EvalResult], wall: float) -> dict:
    """The fields of ``summary.json``: what ran, the classes, the test accuracies of the kept epoch
    (None, with ``test_skipped: true``, under ``--skip-test``), the budgets."""
    cfg, task, method, best = parts.cfg, parts.task, parts.method, state.best
    summary = {
        "method": cfg.method, "data": task.name, "arch": cfg.arch, "seed": cfg.seed,
        "num_samples_per_class": cfg.num_samples_per_class, "cost": cfg.cost,
        "class_split": cfg.class_split, "source_classes": None if task.source_classes is None else list(task.source_classes),
        "target_classes": list(task.target_classes), **_test_fields(result, task),
        "val_top1": best["val_top1"], "val_mean_class_acc": best["val_mean_class_acc"],
        "best_epoch": best["epoch"], "epochs": cfg.epochs, "iters_per_epoch": cfg.iters_per_epoch,
        "stages": [stage.name for stage in method.stages()], "images_seen": dict(state.images_seen),
        "skipped_steps": state.skipped, "world_size": parts.info.world_size,
        "wall_time_s": round(wall, 2), "skipped_images": len(task.bad_images()), "switches": method.switches(),
    }
    summary.update(selection_fields(cfg, task))
    return summary


def _test_fields(result: Optional[EvalResult], task) -> dict:
    """``test_skipped``, ``test_top1``, ``test_mean_class_acc``, ``test_images``, ``test_per_class``
    (None each when the test pass was skipped)."""
    if result is None:
        return {"test_skipped": True, "test_top1": None, "test_mean_class_acc": None, "test_images": None,
                "test_per_class": None}
    return {"test_skipped": False, "test_top1": result.top1, "test_mean_class_acc": result.mean_class_acc,
            "test_images": result.count,
            "test_per_class": result.as_dict("test", list(task.target_classes))["test_per_class"]}


def save_artifacts(parts: Parts) -> dict:
    """Write the method's cost matrix (``cost.npy/json/png``); returns the method's artifacts."""
    artifacts = dict(parts.method.artifacts() or {})
    cost = artifacts.get("cost")
    if cost is not None:
        cost = cost.detach().float().cpu()
        source_names = source_class_names(parts.model, parts.task)
        names = source_names if source_names and len(source_names) == cost.shape[0] else None
        save_cost_files(cost, names, list(parts.task.target_classes), parts.log_dir)
        artifacts["cost"] = cost
    return artifacts


def _validation_plan(parts: Parts, amp: bool) -> Optional[torch.Tensor]:
    """The method's mean OT plan ``(Ks, Kt)`` over the validation images (None for methods without one)."""
    plan_fn = getattr(parts.method, "transport_plan", None)
    if plan_fn is None or not parts.task.target_val:
        return None
    val = evaluate(parts.model, eval_loader_of(parts, parts.task.target_val, shard=False), parts.device,
                   len(parts.task.target_classes), amp=amp, cpu_bf16=parts.cfg.cpu_bf16, keep_outputs=True)
    return plan_fn(*val.outputs) if val.outputs is not None else None
