r"""JTLN's optimal-transport term (Lu, Chen and Saidi, arXiv:1709.02995), as ``docs/method.md``.

With :math:`z_s, z_t` the source- and target-head logits of an image, :math:`M` the ``(Ks, Kt)``
cost matrix and :math:`W_\varepsilon` the entropic Wasserstein loss of
:class:`~tllib_jtln.ot.WassersteinLoss` (smoothed histograms, Sinkhorn, envelope gradients), the
term is :math:`L_{\mathrm{ot}} = \alpha\, \mathrm{mean}_x\, W_\varepsilon(\cdot, \cdot)` over the
images of one side:

- ``on='target'`` (the paper's), on target images:
  :math:`W_\varepsilon(\mathrm{softmax}(z_s), q; M)`, where :math:`q` is the target head's
  prediction :math:`\mathrm{softmax}(z_t)`, detached, or, with ``target_dist='label'``, the label:
  only the source head (and the trunk) learns, "a constraint on the source classifier";
- ``on='source'`` (beyond the paper), on source images:
  :math:`W_\varepsilon(\mathrm{softmax}(z_t), y_s; M^\top)` against the (smoothed) source label
  :math:`y_s`: the target head learns from the source images through the cost.

The defaults are the command line's (:class:`~tllib_jtln.config.Config`: ``ot_weight``,
``ot_eps``, ...), read from there, so a library user and ``tllib-jtln train`` start from the same term.

Example:
    >>> loss_fn = JTLNLoss(weight=1.0, eps=0.3)
    >>> z_s, z_t = torch.zeros(4, 3, requires_grad=True), torch.zeros(4, 2)  # (B, Ks), (B, Kt)
    >>> loss = loss_fn(torch.rand(3, 2), (z_s, z_t, torch.tensor([0, 1, 0, 1])))
    >>> loss.backward(); z_s.grad.shape, loss_fn.last_results[0].plan().shape
    (torch.Size([4, 3]), torch.Size([4, 3, 2]))
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..config import Config
from ..ot import SinkhornResult, WassersteinLoss, sinkhorn, smooth_histogram

#: which images feed the OT term
OT_ON = ("target", "source")

#: on target images, what ``q`` is
TARGET_DIST = ("prediction", "label")

#: ``(source_logits (B, Ks), target_logits (B, Kt), labels (B,))`` of one side's images
Side = tuple[Tensor, Tensor, Tensor]


class JTLNLoss(nn.Module):
    r"""The OT term :math:`L_{\mathrm{ot}}` of JTLN (see the module docstring).

    Args:
        weight: :math:`\alpha` (``--ot-weight``).
        on: ``target`` | ``source``: which images feed the term (``--ot-on``).
        target_dist: on target images, ``q`` is the target head's detached ``prediction`` or the
            ``label`` (``--ot-target``).
        eps, max_iter, tol, smooth, reg: the :class:`~tllib_jtln.ot.WassersteinLoss` (``--ot-eps``,
            ``--ot-iters``, ``--ot-tol``, ``--ot-smooth``, ``--ot-reg``).

    Shape:
        - cost: ``(Ks, Kt)``
        - target side: ``(source_logits (B_t, Ks), target_logits (B_t, Kt), labels (B_t,))``
        - source side (read under ``on='source'``): ``(source_logits (B_s, Ks), target_logits
          (B_s, Kt), labels (B_s,))``
        - output: scalar; zero when ``on='source'`` and no source side is given; NaN, without
          solving, when any logits are not finite (the caller's non-finite policy decides)

    After a call, ``last_results`` holds the :class:`~tllib_jtln.ot.SinkhornResult` of the
    problem when it was solved iteratively, and ``last_parts`` the output split into its two parts
    (detached scalars, weighted as the output, so they sum to it): ``ot_transport``, :math:`\alpha
    \sum_{\text{side}} \frac{n_{\text{side}}}{n} \mathrm{mean}\,\langle P, M\rangle`, and
    ``ot_reg_term``, the same mean of the regulariser, :math:`-\varepsilon H(P)` (``entropy``) or
    :math:`\varepsilon\,\mathrm{KL}(P \,\|\, p q^\top)` (``kl``); empty when nothing was solved.
    """

    def __init__(self, weight: float = Config.ot_weight, on: str = Config.ot_on,
                 target_dist: str = Config.ot_target, eps: float = Config.ot_eps, max_iter: int = Config.ot_iters,
                 tol: float = Config.ot_tol, smooth: float = Config.ot_smooth, reg: str = Config.ot_reg):
        super().__init__()
        for name, value, choices in (("on", on, OT_ON), ("target_dist", target_dist, TARGET_DIST)):
            if value not in choices:
                raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
        self.weight, self.on, self.target_dist = weight, on, target_dist
        self.ot = WassersteinLoss(eps=eps, max_iter=max_iter, tol=tol, smooth=smooth, reg=reg)
        self.last_results: list[SinkhornResult] = []
        self.last_parts: dict[str, Tensor] = {}

    def forward(self, cost: Tensor, target_side: Side, source_side: Optional[Side] = None) -> Tensor:
        self.last_results, self.last_parts = [], {}
        src_t, tgt_t, y_t = target_side
        logits = [src_t, tgt_t, *(source_side[:2] if source_side is not None else ())]
        if not bool(torch.stack([torch.isfinite(x.detach()).all() for x in logits]).all()):  # one host sync
            return torch.full((), float("nan"), device=src_t.device)
        cost = cost.to(src_t.device)
        if self.on == "target":
            q = y_t if self.target_dist == "label" else torch.softmax(tgt_t.float(), dim=1).detach()
            value, transport = self._solve(src_t, q, cost)
        elif source_side is None:  # a batch without source images: no term, as a tensor
            return src_t.new_zeros((), dtype=torch.float32)
        else:
            _, tgt_s, y_s = source_side
            value, transport = self._solve(tgt_s, y_s, cost.t())
        value, transport = self.weight * value, self.weight * transport
        self.last_parts = {"ot_transport": transport, "ot_reg_term": value.detach() - transport}
        return value

    def _solve(self, logits: Tensor, dist: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
        """The side's mean OT value and its mean transport part ``<P, M>`` (detached)."""
        value = self.ot(logits, dist, cost)
        if self.ot.last_result is not None:
            self.last_results.append(self.ot.last_result)
        return value, self.ot.last_transport.mean().to(value.dtype)

    @torch.no_grad()
    def mean_plan(self, cost: Tensor, source_logits: Tensor, target_logits: Tensor, labels: Tensor,
                  chunk: int = 256) -> Optional[Tensor]:
        """The mean OT plan ``(Ks, Kt)`` of the target-side problem over images with logits ``(N, Ks)``,
        ``(N, Kt)`` and labels ``(N,)`` (None for ``N = 0``).

        ``p`` is the source head's prediction and ``q`` the label under ``on='target',
        target_dist='label'``, else the target head's prediction. Under ``on='target'`` this is the
        problem the loss solves; under ``on='source'`` the loss solves on source images against
        their labels, and this plan is a view of how the two heads relate on these images, not the
        problem optimised. The plan of each image sums to 1, so the mean says which source classes
        each target class draws its mass from.
        """
        if source_logits.shape[0] == 0:
            return None
        cost = cost.to(source_logits.device, torch.float32)
        if self.on == "target" and self.target_dist == "label":
            q = torch.nn.functional.one_hot(labels.long(), cost.shape[1]).float()
        else:
            q = torch.softmax(target_logits.float(), dim=1)
        p = torch.softmax(source_logits.float(), dim=1)
        plans = []
        for i in range(0, p.shape[0], chunk):
            result = sinkhorn(smooth_histogram(p[i:i + chunk], self.ot.smooth),
                              smooth_histogram(q[i:i + chunk], self.ot.smooth), cost, self.ot.eps,
                              max_iter=self.ot.max_iter, tol=self.ot.tol)
            plans.append(result.plan().sum(0))
        return (sum(plans) / p.shape[0]).float().cpu()

    def extra_repr(self) -> str:
        return f"weight={self.weight}, on={self.on!r}, target_dist={self.target_dist!r}"
