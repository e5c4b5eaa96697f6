r"""The JTLN optimal-transport loss between a source-head prediction and a target-side distribution."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_eps
from .solver import SinkhornResult, sinkhorn

__all__ = ["WassersteinLoss", "onehot_transport_cost", "smooth_histogram", "entropy"]

_REDUCTIONS = ("mean", "sum", "none")
#: ``entropy``: the plan's entropy, ``-eps H(P)`` (Cuturi 2013); ``kl``: ``eps KL(P || p q^T)``.
REGULARIZERS = ("entropy", "kl")


def _check_labels(labels: Tensor, num_classes: int, name: str = "labels") -> None:
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name}: expected a 1-D integer tensor of class indices")
    if labels.numel() and (labels.min().item() < 0 or labels.max().item() >= num_classes):
        raise ValueError(f"{name}: class indices must lie in [0, {num_classes - 1}], "
                         f"got range [{labels.min().item()}, {labels.max().item()}]")


def onehot_transport_cost(p: Tensor, labels: Tensor, cost: Tensor) -> Tensor:
    r"""Transport cost to a one-hot target, in closed form.

    With :math:`q = e_j` the only feasible plan is :math:`P_{:, j} = p`, so
    :math:`\langle P, M\rangle = \sum_i p_i M_{ij} = p^\top M_{:, j}`.

    Args:
        p: ``(B, Ks)`` source histograms.
        labels: ``(B,)`` target class indices ``j`` in ``[0, Kt)``.
        cost: ``(Ks, Kt)`` cost matrix.

    Returns:
        ``(B,)`` costs, differentiable in ``p`` (and ``cost``).
    """
    if not isinstance(p, Tensor) or p.dim() != 2:
        raise ValueError("p: expected a (B, Ks) tensor")
    if not isinstance(cost, Tensor) or cost.dim() != 2 or cost.shape[0] != p.shape[1]:
        raise ValueError(f"cost: expected shape ({p.shape[1]}, Kt), got {tuple(getattr(cost, 'shape', ()))}")
    _check_labels(labels, cost.shape[1])
    if labels.shape[0] != p.shape[0]:
        raise ValueError(f"labels: batch size {labels.shape[0]} does not match p's {p.shape[0]}")
    return (p * cost.t()[labels.to(cost.device)].to(p.dtype)).sum(1)


def entropy(x: Tensor) -> Tensor:
    r"""Row entropies :math:`H(x_b) = -\sum_i x_{bi} \log x_{bi}` of ``(B, K)`` histograms, ``(B,)`` (``0 log 0 = 0``)."""
    return -(x * x.clamp_min(torch.finfo(x.dtype).tiny).log()).sum(1)


def smooth_histogram(x: Tensor, delta: float) -> Tensor:
    r"""Mix with the uniform distribution, :math:`x \mapsto (1-\delta)\,x + \delta/K`, so no mass is zero."""
    if delta == 0:
        return x
    return x * (1.0 - delta) + delta / x.shape[1]


class WassersteinLoss(nn.Module):
    r"""Entropic Wasserstein loss between source-head predictions and a target-side distribution.

    For each sample, with :math:`p = \mathrm{softmax}(z)` from the source logits :math:`z`, a
    target-side distribution :math:`q` (a target-head prediction or a label), both smoothed,
    :math:`\tilde x = (1-\delta)\,x + \delta/K`, and the cost :math:`M`,

    .. math::
        \ell(z, q) = W_\varepsilon(\tilde p, \tilde q)
            = \min_{P \ge 0,\, P\mathbf 1 = \tilde p,\, P^\top\mathbf 1 = \tilde q}
              \langle P, M\rangle - \varepsilon H(P),

    solved by :func:`~tllib_jtln.ot.sinkhorn`; its gradient is the centred dual potential
    (envelope theorem, Frogner et al. 2015), never a backward pass through the iterations.
    The batch is reduced by ``reduction`` (``mean``, ``sum`` or ``none``).

    ``reg='kl'`` regularises with :math:`\varepsilon\,\mathrm{KL}(P \,\|\, \tilde p \tilde q^\top)`
    instead of :math:`-\varepsilon H(P)`. On the transport polytope
    :math:`\mathrm{KL}(P \| \tilde p\tilde q^\top) = -H(P) + H(\tilde p) + H(\tilde q)`, so the
    plan is the same and the value is

    .. math::
        \ell_{\mathrm{kl}} = W_\varepsilon(\tilde p, \tilde q)
            + \varepsilon\,\bigl(H(\tilde p) + H(\tilde q)\bigr) \;\ge\; \min_{ij} M_{ij},

    which no longer rewards spreading :math:`p` over many bins (the ``entropy`` value is lowered
    by up to :math:`\varepsilon \log(K_s K_t)` for a uniform ``p``), and a constant cost
    :math:`M = c` gives :math:`\ell_{\mathrm{kl}} = c` for every ``p``, ``q``: an exact no-op.

    Which side receives gradients is the caller's choice: pass ``target_dist.detach()`` (or
    detached logits) for the side that must not learn. The module only smooths and solves.

    Integer labels ``(B,)`` as ``target_dist`` are one-hot targets; with ``smooth == 0`` they take
    the closed form :math:`p^\top M_{:, j} + \varepsilon \sum_i p_i \log p_i` (no iterations).

    Args:
        eps: entropic regularisation, on a cost in ``[0, 1]`` (0.1 here; the command line's default
            is ``Config.ot_eps``).
        max_iter: Sinkhorn iteration budget.
        tol: stopping tolerance on the L1 marginal error.
        smooth: ``delta`` in ``[0, 1)``, the uniform mixing weight.
        reduction: ``mean`` | ``sum`` | ``none``.
        reg: ``entropy`` (the plan's entropy, Cuturi 2013) | ``kl`` (KL to the independent plan).

    Shape:
        - source_logits: ``(B, Ks)``
        - target_dist: ``(B, Kt)`` probabilities, or ``(B,)`` integer labels
        - cost: ``(Ks, Kt)``
        - output: scalar, or ``(B,)`` with ``reduction='none'``

    After a call, ``last_result`` holds the :class:`SinkhornResult` (``n_iter``, ``converged``,
    ``transport_cost``), or ``None`` when the closed form was used, and ``last_transport`` the
    ``(B,)`` transport part :math:`\langle P, M\rangle` of each sample's value (detached, either
    way): the value minus it is the regulariser part, :math:`-\varepsilon H(P)` under ``entropy``
    and :math:`\varepsilon\,\mathrm{KL}(P \,\|\, \tilde p\tilde q^\top)` under ``kl``.

    Example:
        >>> loss_fn = WassersteinLoss(eps=0.1, reduction="none")
        >>> logits = torch.zeros(3, 4, requires_grad=True)  # (B, Ks)
        >>> loss = loss_fn(logits, torch.full((3, 5), 0.2), torch.rand(4, 5))  # q (B, Kt), M (Ks, Kt)
        >>> loss.shape
        torch.Size([3])
    """

    def __init__(self, eps: float = 0.1, max_iter: int = 100, tol: float = 1e-6, smooth: float = 1e-3,
                 reduction: str = "mean", reg: str = "entropy"):
        super().__init__()
        if reg not in REGULARIZERS:
            raise ValueError(f"reg: must be one of {', '.join(REGULARIZERS)}, got {reg!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
        if not 0 <= smooth < 1:
            raise ValueError(f"smooth: the uniform mixing weight must lie in [0, 1), got {smooth!r}")
        check_eps(eps)
        self.eps, self.max_iter, self.tol = float(eps), int(max_iter), float(tol)
        self.smooth, self.reduction, self.reg = float(smooth), reduction, reg
        self.last_result: Optional[SinkhornResult] = None
        self.last_transport: Optional[Tensor] = None

    @classmethod
    def from_config(cls, cfg, reduction: str = "mean") -> "WassersteinLoss":
        """Build from a :class:`~tllib_jtln.config.Config` (``ot_eps``, ``ot_iters``, ``ot_tol``, ``ot_smooth``,
        ``ot_reg``)."""
        return cls(eps=cfg.ot_eps, max_iter=cfg.ot_iters, tol=cfg.ot_tol, smooth=cfg.ot_smooth, reduction=reduction,
                   reg=cfg.ot_reg)

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, max_iter={self.max_iter}, tol={self.tol}, smooth={self.smooth}, "
                f"reduction={self.reduction!r}, reg={self.reg!r}")

    def forward(self, source_logits: Tensor, target_dist: Tensor, cost: Tensor) -> Tensor:
        if not isinstance(source_logits, Tensor) or source_logits.dim() != 2 or not source_logits.is_floating_point():
            raise ValueError("source_logits: expected a floating-point (B, Ks) tensor")
        if not isinstance(cost, Tensor) or cost.dim() != 2:
            raise ValueError("cost: expected a (Ks, Kt) tensor")
        dtype = source_logits.dtype if source_logits.dtype == torch.float64 else torch.float32
        p = torch.softmax(source_logits.to(dtype), dim=1)
        if not isinstance(target_dist, Tensor):
            raise ValueError("target_dist: expected a (B, Kt) tensor of probabilities or (B,) labels")
        if target_dist.dim() == 1 and not target_dist.is_floating_point():
            _check_labels(target_dist, cost.shape[1], "target_dist")
            if target_dist.shape[0] != p.shape[0]:
                raise ValueError(f"target_dist: batch size {target_dist.shape[0]} does not match "
                                 f"source_logits' {p.shape[0]}")
            if cost.shape[0] != p.shape[1]:
                raise ValueError(f"cost: shape {tuple(cost.shape)} does not match Ks = {p.shape[1]} "
                                 "from source_logits (B, Ks)")
            if self.smooth == 0:
                self.last_result = None
                losses = onehot_transport_cost(p, target_dist, cost)
                self.last_transport = losses.detach()
                if self.reg == "entropy":  # -eps H(P) with P = p e_j^T; under kl the two entropies cancel
                    losses = losses - self.eps * entropy(p)
                return self._reduce(losses)
            target_dist = F.one_hot(target_dist, cost.shape[1]).to(dtype)
        q = target_dist.to(torch.promote_types(dtype, target_dist.dtype))
        p, q = smooth_histogram(p, self.smooth), smooth_histogram(q, self.smooth)
        result = sinkhorn(p, q, cost, self.eps, max_iter=self.max_iter, tol=self.tol)
        self.last_result, self.last_transport = result, result.transport_cost
        value = result.value
        if self.reg == "kl":
            value = value + self.eps * (entropy(p) + entropy(q))
        return self._reduce(value)

    def _reduce(self, losses: Tensor) -> Tensor:
        if self.reduction == "mean":
            return losses.mean()
        if self.reduction == "sum":
            return losses.sum()
        return losses
