"""A run's health check after each epoch: is the target head at chance, learning nothing?

A collapsed classifier predicts (nearly) the same distribution for every image: its mean training
cross-entropy stays at the uniform guess's ``log Kt`` and its validation top-1 at chance ``1 / Kt``
(``Kt`` target classes); a diverged one has the same top-1 and a cross-entropy above ``log Kt``.
Both happen when the backbone is trained at too high a rate (TLlib's Bi-Tuning recipe at lr 0.01
without ``--finetune`` does it on every seed of the source-free suite: cross-entropy 1.00-1.01 x
log 5 from epoch 2, or 6.7 x on one seed), and the run then finishes without an error, at chance.
This check names it at the first epoch it shows (the engine prints it once per run).
"""
from __future__ import annotations

import math

#: training cross-entropy at or above this share of ``log Kt`` counts as uniform
UNIFORM_CE_SHARE = 0.97
#: validation top-1 at or below this multiple of chance ``1 / Kt`` counts as chance
CHANCE_MULTIPLE = 1.25
#: epochs (1-based) before this one are never judged: a fresh head starts uniform
FIRST_JUDGED_EPOCH = 2


def collapse_warning(record: dict, num_target_classes: int) -> list[str]:
    """The one-line warning for a ``metrics.jsonl`` ``record`` whose target head is at chance, else ``[]``.

    At chance means, from epoch :data:`FIRST_JUDGED_EPOCH` on: ``train_ce_target >= 0.97 log Kt``
    (no better than a uniform guess on the training images) and ``val_top1 <= 1.25 / Kt``. A record
    without both numbers (a source-only stage, a run without validation) or with ``Kt < 2`` is not
    judged."""
    ce, top1, epoch = record.get("train_ce_target"), record.get("val_top1"), record.get("epoch")
    if (num_target_classes < 2 or not all(_is_number(x) for x in (ce, top1, epoch)) or math.isnan(top1)
            or epoch < FIRST_JUDGED_EPOCH):
        return []
    uniform = math.log(num_target_classes)
    if ce < UNIFORM_CE_SHARE * uniform or top1 > CHANCE_MULTIPLE / num_target_classes:
        return []
    return [f"epoch {record['epoch']}: the target head is at chance (validation top-1 {100 * top1:.1f}%, chance "
            f"{100 / num_target_classes:.1f}%; training cross-entropy {ce:.3f}, a uniform guess's log "
            f"{num_target_classes} = {uniform:.3f}): the run has collapsed or diverged; lower --lr, or pass "
            f"--finetune to train the backbone at 0.1x"]


def run_at_chance(metrics: list[dict], kept_epoch: int, num_target_classes: int) -> bool:
    """Whether a finished run ended at chance: the check above fired at some epoch of ``metrics`` (its
    ``metrics.jsonl`` records) and the kept epoch's validation top-1 is at most 1.25 x chance too."""
    kept = next((r for r in metrics if r.get("epoch") == kept_epoch), None)
    top1 = None if kept is None else kept.get("val_top1")
    if not _is_number(top1) or top1 > CHANCE_MULTIPLE / max(num_target_classes, 1):
        return False
    return any(collapse_warning(r, num_target_classes) for r in metrics)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
