"""Argument checks of the OT entry points: ValueErrors that name the argument (``p``, ``q``, ``cost``,
``eps``, ``max_iter``, ``tol``), shared by :func:`~tllib_jtln.ot.sinkhorn` and
:class:`~tllib_jtln.ot.WassersteinLoss`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: tolerance on ``sum(histogram) == 1`` per dtype
_MASS_ATOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-6}


def check_eps(eps: float) -> None:
    """``eps`` must be a finite number > 0 (ValueError naming ``eps``); shared by every OT entry point."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: entropic regularisation must be a finite number > 0, got {eps!r}")


def check_problem(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int, tol: float) -> tuple[float, float]:
    """Raise ValueError naming the argument for any malformed input; return ``(min(cost), max(cost))``.

    The data checks cost six reductions and one host sync; the detailed diagnosis runs only on failure.
    """
    check_eps(eps)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol: must be a number >= 0, got {tol!r}")
    for name, x in (("p", p), ("q", q), ("cost", cost)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(x.shape)}")
    if p.shape[0] != q.shape[0]:
        raise ValueError(f"q: batch size {q.shape[0]} does not match p's {p.shape[0]} (p is (B, Ks), q is (B, Kt))")
    if tuple(cost.shape) != (p.shape[1], q.shape[1]):
        raise ValueError(f"cost: shape {tuple(cost.shape)} does not match (Ks, Kt) = ({p.shape[1]}, {q.shape[1]}) "
                         "from p (B, Ks) and q (B, Kt)")
    if p.shape[0] == 0 or p.shape[1] == 0 or q.shape[1] == 0:
        raise ValueError(f"p, q: empty histograms, shapes {tuple(p.shape)} and {tuple(q.shape)}")
    if not (p.device == q.device == cost.device):
        raise ValueError(f"cost: p, q and cost must be on one device, got {p.device}, {q.device}, {cost.device}")
    p, q, cost = p.detach(), q.detach(), cost.detach()
    # min/max propagate NaN, sums propagate NaN and inf
    stats = [p.min(), q.min(), (p.sum(1) - 1).abs().max(), (q.sum(1) - 1).abs().max(), cost.min(), cost.max()]
    if p.dtype == q.dtype == cost.dtype:
        stats = torch.stack(stats).tolist()
    else:
        stats = [x.item() for x in stats]
    for name, x, low, off in (("p", p, stats[0], stats[2]), ("q", q, stats[1], stats[3])):
        if not (math.isfinite(low) and math.isfinite(off)):
            raise ValueError(f"{name}: histogram contains NaN or inf")
        if low < 0:
            raise ValueError(f"{name}: histogram has negative entries ({low:.3g}); pass probabilities (e.g. a softmax)")
        if off > _MASS_ATOL.get(x.dtype, 1e-4):
            raise ValueError(f"{name}: every row must sum to 1 (within {_MASS_ATOL.get(x.dtype, 1e-4):g}), "
                             f"worst row is off by {off:.3g}; normalise it")
    c_min, c_max = stats[4], stats[5]
    if not (math.isfinite(c_min) and math.isfinite(c_max)):
        raise ValueError("cost: contains NaN or inf; fix the cost matrix")
    if c_min < 0:
        raise ValueError(f"cost: has negative entries (min {c_min:.3g}); an OT cost must be >= 0 "
                         "(shift it by its minimum)")
    return c_min, c_max
