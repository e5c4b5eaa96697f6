r"""``jtln``: Joint Transfer Learning Network (Lu, Chen and Saidi, arXiv:1709.02995), as ``docs/method.md``.

.. math::
    L = \mathrm{CE}(h_s(g(x_s)), y_s) + \mathrm{CE}(h_t(g(x_t)), y_t)
        + \alpha \, \mathrm{mean}_x\, W_\varepsilon(p(x), q(x); M)

with :math:`p = \mathrm{softmax}(h_s(g(x)))` over the ``Ks`` source classes, ``q`` a distribution
over the ``Kt`` target classes and ``M`` the ``(Ks, Kt)`` cost matrix
(:func:`tllib_jtln.cost.build_cost`): the OT term is :class:`tllib_jtln.regularization.JTLNLoss`
over :class:`tllib_jtln.ot.WassersteinLoss`; this method is the adapter (settings, cost matrix, hooks).

Switches (``Config``):

- ``ot_on``: ``target`` (the default, the paper's: "a constraint on the source classifier"): on
  target images :math:`p = \mathrm{softmax}(h_s(g(x_t)))` learns (gradient into the source head
  and the trunk) against ``q``, the target head's detached prediction or, under
  ``ot_target=label``, the label. ``source`` (beyond the paper): on source images the roles swap,
  :math:`q = \mathrm{softmax}(h_t(g(x_s)))` learns against the source label ``y_s``, solved as
  :math:`W_\varepsilon(q, y_s; M^\top)`, the same problem transposed.
- ``ot_reg`` (``entropy`` or ``kl``, see :class:`~tllib_jtln.ot.WassersteinLoss`), ``ot_weight``
  (alpha), ``ot_eps``, ``ot_iters``, ``ot_tol``, ``ot_smooth``; ``cost``, ``cost_normalize`` and
  the other ``cost_*`` options; ``cost_refresh`` (rebuild ``M`` from the current features every N
  epochs of the JTLN stage, on the main process). Costs that read no features (``uniform``,
  ``semantic``, ``file:``) run no feature pass (:func:`~tllib_jtln.cost.features_read`). ``cost=source-head`` with a NEW source head (source data whose classes are not the
  pretraining classes) needs ``cost_refresh``: ``M`` is uniform until the first refresh, then the
  relation of the head trained so far (Co-Tuning's relation, learned jointly).
- ``source_stage`` (beyond the paper, with source data): two stages as ``co_tuning``'s, each with
  the full schedule. Stage 1 trains on the source set alone, :math:`L = \mathrm{CE}(h_s(g(x_s)), y_s)`
  (as many source images as ``joint``); then ``M`` is built from the trunk and source head it
  trained (``knn``: its features; ``source-head``: its relation), and stage 2 sees the target
  images only (as many as ``erm``): :math:`L = \mathrm{CE}(h_t(g(x_t)), y_t) + \alpha\,
  \mathrm{mean}_{x_t} W_\varepsilon(p(x_t), q(x_t); M)`. Needs ``ot_on=target``.

Source-free: without source data (``task.source_train is None``) and a pretrained source head
(e.g. ImageNet), the source cross-entropy is absent, the OT term uses target images only and the
source head is frozen (the pretrained classifier whose classes ``M`` relates). The ``knn`` and ``centroid``
costs then compare target features with the source head's class prototypes (its weight rows,
:func:`head_prototypes`) in place of source images.

Shape (of one step): ``x_s`` (B_s, C, H, W), ``x_t`` (B_t, C, H, W) go through the network in one
forward pass; every returned term is a scalar: ``ce_source``, ``ce_target``, ``ot`` (already
multiplied by ``ot_weight``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..cost import build_cost, cost_options, features_read
from ..errors import UserError
from ..regularization import JTLNLoss
from .base import (SOURCE_STAGE, Method, SetupContext, Stage, cross_entropy, forward_joint, register_method,
                   source_head_probs, source_stage_losses, target_rows)
from .regularizer import TargetView

#: below this share of converged Sinkhorn problems in an epoch, the user is warned (once)
CONVERGED_SHARE = 0.99


def check_ot_on(ot_on: str, has_source_data: bool, source_stage: bool = False) -> str:
    """``ot_on`` itself; ``source`` needs source images (and none reach the stage after ``--source-stage``)."""
    if not has_source_data and ot_on != "target":
        raise UserError(f"--ot-on {ot_on} needs source data; without --source-data use --ot-on target")
    if source_stage and ot_on != "target":
        raise UserError(f"--ot-on {ot_on} with --source-stage: the JTLN stage after the source stage sees target "
                        "images only; use --ot-on target, or drop --source-stage")
    return ot_on


def head_prototypes(model) -> tuple[Tensor, Tensor]:
    """Source-free stand-ins for source features: the pretrained source head's weight rows.

    A linear head ``h_s(f) = W f + c`` over trunk features scores class ``s`` by ``<W[s], f>``,
    so ``W[s]`` (D,) is class ``s``'s prototype in the feature space; with one "image" per class
    (labels ``arange(Ks)``) the ``knn`` and ``centroid`` costs then measure how close each target
    class's features are to each source class's prototype (cosine). Returns ``(W (Ks, D), arange(Ks))``.
    """
    head = model.source_head
    weight = getattr(head, "weight", None)
    if weight is None or weight.ndim != 2 or weight.shape[1] != model.features_dim:
        raise UserError("--cost knn/centroid without --source-data needs a linear pretrained source head over the "
                        "trunk features; use --cost source-head, or give --source-data")
    return weight.detach().float().cpu(), torch.arange(weight.shape[0])


@register_method("jtln")
class JTLN(Method):
    takes_regularizers = True
    trade_off_field = "ot_weight"

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        self.source_free = not self.has_source_data
        self.uses_source = self.has_source_data
        self.uses_target = True
        self.source_stage = bool(cfg.source_stage)
        if self.source_stage and self.source_free:
            raise UserError("--source-stage needs source data (the stage trains the source head on it); give "
                            "--source-data, or drop --source-stage")
        if self.source_stage and self.regularizers:
            raise UserError(f"--with {','.join(r.name for r in self.regularizers)} and --source-stage: the "
                            "regularisers start from the weights the run starts from, not the source stage's; "
                            "drop one of them")
        self.ot_on = check_ot_on(cfg.ot_on, self.has_source_data, self.source_stage)
        self.stage = 0
        self.ot_loss = JTLNLoss(weight=cfg.ot_weight, on=self.ot_on, target_dist=cfg.ot_target, eps=cfg.ot_eps,
                                max_iter=cfg.ot_iters, tol=cfg.ot_tol, smooth=cfg.ot_smooth, reg=cfg.ot_reg)
        self.cost: Optional[Tensor] = None

    def prepare_model(self, model) -> None:
        if getattr(model, "source_head", None) is None:
            raise UserError("--method jtln needs a source head: give --source-data, or a backbone with a pretrained "
                            "classifier (drop --no-pretrained, or give --pretrained-file)")
        if self.source_free:  # the pretrained classifier M relates: kept as it is
            model.set_source_head_lr(0.0)
        super().prepare_model(model)

    # ------------------------------------------------------------------ cost matrix
    def build_cost(self, ctx: SetupContext, refresh: bool = False) -> Tensor:
        """``M`` (Ks, Kt) on ``ctx.device`` from the current features of the training images."""
        model = ctx.model
        # the source-head relation means something only for a pretrained (or already trained) head:
        # a new head's relation is learned, so M is constant (uniform, no features needed) until the
        # first refresh
        base = self.cfg.cost_base if self.cfg.cost == "shuffled" else self.cfg.cost
        if base == "source-head" and not (model.source_head_pretrained or refresh):
            if self.cfg.cost_refresh < 1:
                raise UserError(f"--cost {self.cfg.cost}: the source head is new (trained from scratch here), so its "
                                "relation to the target classes exists only after training; add --cost-refresh N "
                                "(a uniform cost until epoch N) or use --cost knn")
            return torch.ones(model.num_source_classes, model.num_target_classes, device=ctx.device)
        reads = features_read(self.cfg.cost, self.cfg.cost_base)  # no feature pass for uniform, semantic, file:
        target_features, target_labels = ctx.features("target", refresh=refresh) if "target" in reads else (None, None)
        source_features, source_labels = None, None
        if "source" in reads:
            source_features, source_labels = (head_prototypes(model) if self.source_free
                                              else ctx.features("source", refresh=refresh))
        probs = source_head_probs(model, target_features, ctx.device) if base == "source-head" else None
        options = dict(cost_options(self.cfg))
        options.update(num_source_classes=model.num_source_classes, num_target_classes=model.num_target_classes,
                       source_classes=ctx.source_classes or model.source_classes,
                       target_classes=ctx.target_classes, source_probs=probs, log=print if ctx.is_main else None)
        cost = build_cost(self.cfg.cost, source_features, source_labels, target_features, target_labels, **options)
        expected = (model.num_source_classes, model.num_target_classes)
        if tuple(cost.shape) != expected:
            raise UserError(f"--cost {self.cfg.cost}: matrix of shape {tuple(cost.shape)}, expected {expected} "
                            "(source classes x target classes)")
        return cost.to(device=ctx.device, dtype=torch.float32)

    def stages(self) -> list[Stage]:
        if not self.source_stage:
            return super().stages()
        return [SOURCE_STAGE, Stage(self.name, uses_source=False, uses_target=True)]

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if not self.source_stage:  # with a source stage, M is built when the JTLN stage starts
            self.cost = self.build_cost(ctx)

    def on_stage_start(self, index: int, ctx: SetupContext) -> None:
        self.stage = index
        # the source stage has trained the trunk and the source head: relate the classes now (on a
        # resume inside the JTLN stage, M comes back with the checkpoint and is kept)
        if self.source_stage and index == 1 and self.cost is None:
            self.rebuild_cost(ctx)

    def on_epoch_start(self, epoch: int, ctx: SetupContext) -> None:
        """``--cost-refresh N``: rebuild ``M`` at epochs N, 2N, ... of the JTLN stage, counted from its
        start (the stage start itself builds ``M``: setup, or the end of ``--source-stage``'s source stage)."""
        every = self.cfg.cost_refresh
        in_source_stage = self.source_stage and self.stage == 0  # no M there
        epoch_in_stage = epoch % self.cfg.epochs  # every stage runs --epochs epochs
        if every > 0 and epoch_in_stage > 0 and epoch_in_stage % every == 0 and not in_source_stage:
            self.rebuild_cost(ctx)

    def rebuild_cost(self, ctx: SetupContext) -> None:
        """``M`` from the current features, on the main process only: the engine broadcasts it to the
        other ranks after the hook (:func:`~tllib_jtln.engine.state.share_method_state`)."""
        if ctx.is_main:
            self.cost = self.build_cost(ctx, refresh=True)

    # ------------------------------------------------------------------ loss
    def losses(self, model, batch, progress):
        if self.source_stage and self.stage == 0:
            return source_stage_losses(model, batch)
        use_source = self.uses_source and batch.x_s is not None
        x_s = batch.x_s if use_source else None
        out_s, out_t = forward_joint(model, x_s, batch.x_t)
        terms = {"ce_target": cross_entropy(out_t.target_logits, batch.y_t)}
        if use_source:
            terms["ce_source"] = cross_entropy(out_s.source_logits, batch.y_s)
        terms.update(self.regularizer_terms(TargetView(batch.x_t, batch.y_t, out_t, target_rows(x_s))))
        self.ot_loss.last_results, self.ot_loss.last_parts = [], {}
        if self.cfg.ot_weight == 0:
            return terms
        if self.cost is None:
            raise RuntimeError("jtln: setup(ctx) (or load_state_dict) must run before losses()")
        source_side = (out_s.source_logits, out_s.target_logits, batch.y_s) if use_source else None
        terms["ot"] = self.ot_loss(self.cost, (out_t.source_logits, out_t.target_logits, batch.y_t), source_side)
        return terms

    def step_stats(self) -> dict[str, float]:
        """``ot_transport`` and ``ot_reg_term``: the last step's ``ot`` term split into the transport
        part ``alpha <P, M>`` and the regulariser part (``-alpha eps H(P)``, or ``alpha eps KL`` under
        ``--ot-reg kl``), which sum to it (:attr:`JTLNLoss.last_parts
        <tllib_jtln.regularization.JTLNLoss>`); ``ot_iters``: Sinkhorn iterations of the last step;
        ``ot_converged``: share of its problems (samples) whose marginal error reached ``--ot-tol``
        (these two only when a problem was solved iteratively). Empty when no OT term was computed."""
        stats = {name: float(part) for name, part in self.ot_loss.last_parts.items()}
        solves = self.ot_loss.last_results
        if solves:
            converged = torch.cat([(r.marginal_error <= self.ot_loss.ot.tol).float() for r in solves])
            stats.update(ot_iters=sum(r.n_iter for r in solves) / len(solves), ot_converged=float(converged.mean()))
        return stats

    def epoch_warnings(self, means: dict[str, float]) -> list[str]:
        share = means.get("ot_converged")
        if share is None or share >= CONVERGED_SHARE:
            return []
        return [f"Sinkhorn converged on {100 * share:.1f}% of the OT problems this epoch (mean "
                f"{means.get('ot_iters', float('nan')):.0f} of --ot-iters {self.cfg.ot_iters} iterations, "
                f"--ot-tol {self.cfg.ot_tol:g}): raise --ot-iters, raise --ot-eps or loosen --ot-tol"]

    def switches(self) -> dict:
        cfg = self.cfg
        return {"ot_on": self.ot_on, "ot_target": cfg.ot_target, "ot_reg": cfg.ot_reg, "ot_weight": cfg.ot_weight,
                "ot_eps": cfg.ot_eps,
                "cost": cfg.cost, "cost_base": cfg.cost_base if cfg.cost == "shuffled" else None,
                "cost_normalize": cfg.cost_normalize, "cost_refresh": cfg.cost_refresh,
                "source_stage": self.source_stage,
                "source_free": self.source_free,
                **({"cost_source_per_class": cfg.cost_source_per_class} if cfg.cost_source_per_class else {}),
                **super().switches()}

    def transport_plan(self, source_logits: Tensor, target_logits: Tensor, labels: Tensor) -> Optional[Tensor]:
        """The mean target-side OT plan ``(Ks, Kt)`` (:meth:`JTLNLoss.mean_plan
        <tllib_jtln.regularization.JTLNLoss.mean_plan>`) on images with logits ``(N, Ks)``, ``(N, Kt)``
        and target labels ``(N,)`` (the engine passes the validation images): the problem the loss
        solves under ``--ot-on target``; under ``--ot-on source`` (which solves on source images) a view."""
        if self.cost is None:
            return None
        return self.ot_loss.mean_plan(self.cost, source_logits, target_logits, labels)

    def state_keys(self) -> tuple[str, ...]:
        return ("cost",)
