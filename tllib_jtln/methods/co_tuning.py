r"""``co_tuning``: Co-Tuning for Transfer Learning (You, Kou, Jiang, Wang and Long, NeurIPS 2020).

The source head is kept; each target label is translated into a soft label over the source
classes through the category relation

.. math::
    R[j, :] = \frac{1}{|\{i: y_i = j\}|} \sum_{i: y_i = j} \mathrm{softmax}(h_s(g(x_i))),
    \qquad R \in [0, 1]^{K_t \times K_s},

the mean source-head prediction over the target training images of class ``j`` (computed once,
model in eval mode), and the loss is

.. math::
    L = \mathrm{CE}(h_t(g(x_t)), y_t)
        - \lambda\, \mathrm{mean}_{x_t} \sum_s R[y_t, s] \log \mathrm{softmax}(h_s(g(x_t)))_s

with ``lambda = trade_off`` (2.3 by default, as TLlib): :class:`~tllib_jtln.regularization.Relationship`
and :class:`~tllib_jtln.regularization.CoTuningLoss`, over which this method is the adapter.
With a pretrained source head and no source data (the usual setting: ImageNet head) the
relation is computed in ``setup`` and there is one stage. With source data there are two stages (:class:`~tllib_jtln.methods.Stage`), each
with its own optimizer and full schedule: the source head is first trained by source
cross-entropy (as many source images as ``joint``), then the relation is computed and the
co-tuning stage sees as many target images as ``erm``. The source head is always trained
(rate as TLlib: 0.1x under ``--finetune`` when pretrained).

``relationship`` (TLlib's ``--relationship``): a ``.npy`` file of ``R`` (Kt, Ks), read when it
exists (so several runs on the same data and weights compute it once), else computed and written
there; a relative path is under ``--log``. Source-free only (with source data ``R`` comes from the
head the source stage trains).

Shape: ``relation`` (Kt, Ks); terms ``ce_source`` (first stage) or ``ce_target`` and
``co_tuning`` (scalars, the latter already multiplied by ``trade_off``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..fileio import atomic_write
from ..regularization import CoTuningLoss, Relationship, category_relation
from .base import (SOURCE_STAGE, Method, SetupContext, Stage, cross_entropy, register_method, source_head_probs,
                   source_stage_losses)

__all__ = ["CoTuning", "category_relation"]


@register_method("co_tuning")
class CoTuning(Method):
    trade_off_field = "trade_off"

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        self.uses_source = self.has_source_data
        self.uses_target = True
        self.relation: Optional[Tensor] = None
        self.co_tuning_loss = CoTuningLoss()
        if cfg.relationship and self.uses_source:
            raise UserError(f"--relationship {cfg.relationship}: with source data the relation comes from the source "
                            "head the first stage trains, not from a file; drop --relationship or --source-data")

    def stages(self) -> list[Stage]:
        co_tuning = Stage("co_tuning", uses_source=False, uses_target=True)
        if not self.uses_source:
            return [co_tuning]
        return [SOURCE_STAGE, co_tuning]

    def prepare_model(self, model) -> None:
        if getattr(model, "source_head", None) is None:
            raise UserError("--method co_tuning needs a source head: give --source-data, or a backbone with a "
                            "pretrained classifier (drop --no-pretrained, or give --pretrained-file)")
        model.set_source_head_lr(1.0)
        super().prepare_model(model)

    def compute_relation(self, ctx: SetupContext, refresh: bool = False) -> Tensor:
        """``R`` (Kt, Ks) on ``ctx.device`` from the source head's predictions on the target training images
        (or the ``relationship`` file, when it exists; written there otherwise)."""
        path = relationship_path(self.cfg.relationship, ctx.log_dir)
        shape = (ctx.model.num_target_classes, ctx.model.num_source_classes)
        if path is not None and path.is_file():
            return load_relationship(path, shape).to(ctx.device)
        features, labels = ctx.features("target", refresh=refresh)
        probs = source_head_probs(ctx.model, features, ctx.device)
        relation = Relationship(probs, labels, ctx.model.num_target_classes).matrix
        if path is not None and ctx.is_main:
            array = relation.detach().float().cpu().numpy()
            atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))
        return relation.to(ctx.device)

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if not self.uses_source:
            self.relation = self.compute_relation(ctx)

    def on_stage_start(self, index: int, ctx: SetupContext) -> None:
        # the source head has been trained: relate the classes now (on a resume inside the stage, the
        # relation comes back with the checkpoint and is kept)
        # (on the main process: the engine broadcasts it)
        if self.uses_source and index == 1 and self.relation is None and ctx.is_main:
            self.relation = self.compute_relation(ctx, refresh=True)

    def losses(self, model, batch, progress):
        if self.relation is None:
            if not self.uses_source:
                raise RuntimeError("co_tuning: setup(ctx) (or load_state_dict) must run before losses()")
            return source_stage_losses(model, batch)
        source_logits, target_logits = model(batch.x_t)
        soft = self.relation.to(source_logits.device)[batch.y_t]
        return {"ce_target": cross_entropy(target_logits, batch.y_t),
                "co_tuning": self.cfg.trade_off * self.co_tuning_loss(source_logits, soft)}

    def state_keys(self) -> tuple[str, ...]:
        return ("relation",)


def relationship_path(name: Optional[str], log_dir: Optional[Path]) -> Optional[Path]:
    """The ``--relationship`` file: as given when absolute (or without a log folder), else under ``log_dir``."""
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() or log_dir is None else Path(log_dir) / path


def load_relationship(path: Path, shape: tuple[int, int]) -> Tensor:
    """A relation file ``R`` (Kt, Ks): float, finite, non-negative, of ``shape``; a UserError naming the file otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"--relationship {path}: not a .npy array ({exc}); delete it to compute it again") from None
    if array.shape != shape or not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all() \
            or (array < 0).any():
        raise UserError(f"--relationship {path}: expected finite non-negative floats of shape {shape} (target x "
                        f"source classes), got {array.dtype} {array.shape}; delete it to compute it again")
    return torch.from_numpy(array.astype(np.float32))
