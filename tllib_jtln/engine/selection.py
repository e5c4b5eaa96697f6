"""Which epoch a run keeps, and what ``summary.json`` says about it (``--val-split``).

``selected_on`` is ``val`` (the target validation split chose the epoch), ``test`` (``--val-split
test``: TLlib's protocol, the test set chose it) or ``last`` (``--val-split none``: no validation,
the last epoch is kept). Without validation every epoch's record carries NaN accuracies and
:func:`no_validation_result` stands in for the evaluation.
"""
from __future__ import annotations

import math
from typing import Optional

from ..data.val_split import selected_on
from ..errors import UserError
from .evaluate import EvalResult


def selection_of(cfg) -> str:
    """``val``, ``test`` or ``last`` for the resolved ``--val-split`` of ``cfg`` (``auto`` picks a split)."""
    return selected_on(cfg.val_split)


def check_validation(cfg, task) -> None:
    """A run that selects on a split needs images in it (one-line UserError naming the fixes)."""
    if selection_of(cfg) == "last":
        return
    if task.target_val is None or len(task.target_val) == 0:
        raise UserError("the target validation split is empty; raise --val-per-class, or pick another "
                        "--val-split (rest, train; none keeps the last epoch)")


def no_validation_result() -> EvalResult:
    """What an epoch's validation reads as without a validation split: NaN accuracies."""
    return EvalResult(top1=math.nan, mean_class_acc=math.nan)


def selection_fields(cfg, task) -> dict:
    """``summary.json`` fields: ``selected_on``, ``val_split`` and the target train/val sizes."""
    on = selection_of(cfg)
    val = task.target_val
    fields = {"selected_on": on, "val_split": cfg.val_split,
              "target_train_size": len(task.target_train),
              "target_val_size": 0 if val is None else len(val)}
    if on == "last":
        fields.update(val_top1=None, val_mean_class_acc=None)
    return fields


def better(a: dict, b: Optional[dict]) -> bool:
    """Validation record ``a`` beats ``b``: higher top-1, then higher mean per-class accuracy (ties:
    the earlier epoch stays). Without validation (NaN accuracies) the later epoch is kept."""
    if b is None or (math.isnan(_num(a["val_top1"], math.nan)) and math.isnan(_num(b["val_top1"], math.nan))):
        return True  # the first epoch, or no validation (--val-split none): the later epoch is kept
    ka = (_num(a["val_top1"]), _num(a["val_mean_class_acc"]))
    kb = (_num(b["val_top1"]), _num(b["val_mean_class_acc"]))
    return ka > kb


def _num(x: float, missing: float = -1.0) -> float:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
