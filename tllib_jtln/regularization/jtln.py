r"""JTLN's optimal-transport term (Lu, Chen and Saidi, arXiv:1709.02995), as ``docs/method.md``.

With :math:`z_s, z_t` the source- and target-head logits of an image, :math:`M` the ``(Ks, Kt)``
cost matrix and :math:`W_\varepsilon` the entropic Wasserstein loss of
:class:`~tllib_jtln.ot.WassersteinLoss` (smoothed histograms, Sinkhorn, envelope gradients):

.. math::
    L_{\mathrm{ot}} = \alpha \sum_{\text{side}} \frac{n_{\text{side}}}{n}\,
        \mathrm{mean}_{x \in \text{side}}\, W_\varepsilon(\cdot, \cdot),

- target side (``on`` = ``target``, the paper's, or ``both``), on target images:
  :math:`W_\varepsilon(\mathrm{softmax}(z_s), q; M)`, where :math:`q` is the target head's
  prediction :math:`\mathrm{softmax}(z_t)` (detached under ``detach``) or, with
  ``target_dist='label'``, the label: the source head learns against the target side;
- source side (``on`` = ``source``, beyond the paper, or ``both``), on source images:
  :math:`W_\varepsilon(\mathrm{softmax}(z_t), p; M^\top)`, where :math:`p` is the source label or,
  with ``source_dist='prediction'``, :math:`\mathrm{softmax}(z_s)` (detached under ``detach``).

``n_side`` are the images of each side and ``n`` their sum (a sample-weighted mean).

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

from ..ot import SinkhornResult, WassersteinLoss, sinkhorn, smooth_histogram

#: which images feed the OT term
OT_ON = ("target", "source", "both")

#: ``(source_logits (B, Ks), target_logits (B, Kt), labels (B,))`` of one side's images
Side = tuple[Tensor, Tensor, Tensor]


class JTLNLoss(nn.Module):
    r"""The OT term :math:`L_{\mathrm{ot}}` of JTLN (see the module docstring).

    Args:
        weight: :math:`\alpha`.
        on: ``target`` | ``source`` | ``both``: which images feed the term.
        target_dist: on target images, ``q`` is the target head's ``prediction`` or the ``label``.
        source_dist: on source images, ``p`` is the source ``label`` or the source head's ``prediction``.
        detach: detach the prediction on the side that is not constrained.
        eps, max_iter, tol, smooth, reg: the :class:`~tllib_jtln.ot.WassersteinLoss` of each side.

    Shape:
        - cost: ``(Ks, Kt)``
        - target side: ``(source_logits (B_t, Ks), target_logits (B_t, Kt), labels (B_t,))``
        - source side (optional): ``(source_logits (B_s, Ks), target_logits (B_s, Kt), labels (B_s,))``
        - output: scalar; NaN, without solving, when any logits are not finite (the caller's
          non-finite policy decides)

    After a call, ``last_results`` holds the :class:`~tllib_jtln.ot.SinkhornResult` of each
    side that was solved iteratively, and ``last_parts`` the output split into its two parts
    (detached scalars, weighted as the output, so they sum to it): ``ot_transport``, :math:`\alpha
    \sum_{\text{side}} \frac{n_{\text{side}}}{n} \mathrm{mean}\,\langle P, M\rangle`, and
    ``ot_reg_term``, the same mean of the regulariser, :math:`-\varepsilon H(P)` (``entropy``) or
    :math:`\varepsilon\,\mathrm{KL}(P \,\|\, p q^\top)` (``kl``); empty when nothing was solved.
    """

    def __init__(self, weight: float = 1.0, on: str = "target", target_dist: str = "prediction",
                 source_dist: str = "label", detach: bool = True, eps: float = 0.1, max_iter: int = 100,
                 tol: float = 1e-6, smooth: float = 1e-3, reg: str = "entropy"):
        super().__init__()
        for name, value, choices in (("on", on, OT_ON), ("target_dist", target_dist, ("prediction", "label")),
                                     ("source_dist", source_dist, ("label", "prediction"))):
            if value not in choices:
                raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
        self.weight, self.on, self.detach = weight, on, detach
        self.target_dist, self.source_dist = target_dist, source_dist
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
        parts: list[tuple[Tensor, Tensor, int]] = []  # (value, transport part, images) of each side
        if self.on in ("target", "both"):
            q = y_t if self.target_dist == "label" else self._free_side(tgt_t)
            parts.append((*self._solve(src_t, q, cost), src_t.shape[0]))
        if self.on in ("source", "both") and source_side is not None:
            src_s, tgt_s, y_s = source_side
            p = y_s if self.source_dist == "label" else self._free_side(src_s)
            parts.append((*self._solve(tgt_s, p, cost.t()), tgt_s.shape[0]))
        total = sum(n for *_, n in parts)
        value = self.weight * sum(value * (n / total) for value, _, n in parts)
        transport = self.weight * sum(part * (n / total) for _, part, n in parts)
        self.last_parts = {"ot_transport": transport, "ot_reg_term": value.detach() - transport}
        return value

    def _free_side(self, logits: Tensor) -> Tensor:
        """The distribution on the side that is not constrained: a softmax, detached under ``detach``."""
        probs = torch.softmax(logits.float(), dim=1)
        return probs.detach() if self.detach else probs

    def _solve(self, logits: Tensor, dist: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
        """The side's mean OT value and its mean transport part ``<P, M>`` (detached)."""
        value = self.ot(logits, dist, cost)
        if self.ot.last_result is not None:
            self.last_results.append(self.ot.last_result)
        return value, self.ot.last_transport.mean().to(value.dtype)

    @torch.no_grad()
    def mean_plan(self, cost: Tensor, source_logits: Tensor, target_logits: Tensor, labels: Tensor,
                  chunk: int = 256) -> Optional[Tensor]:
        """The mean OT plan ``(Ks, Kt)`` of the target side over images with logits ``(N, Ks)``,
        ``(N, Kt)`` and labels ``(N,)`` (None for ``N = 0``).

        ``p`` is the source head's prediction and ``q`` the target-side distribution of the mode in
        use (the label under ``on='target', target_dist='label'``, else the target head's
        prediction); the plan of each image sums to 1, so the mean says which source classes each
        target class draws its mass from.
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
        return (f"weight={self.weight}, on={self.on!r}, target_dist={self.target_dist!r}, "
                f"source_dist={self.source_dist!r}, detach={self.detach}")
