r"""Batched entropic optimal transport: Sinkhorn iterations with envelope-theorem gradients.

For every sample ``b`` of a batch, with histograms :math:`p_b` (size ``Ks``) and :math:`q_b`
(size ``Kt``) and one cost matrix :math:`M` (``Ks x Kt``) shared by the batch, solve

.. math::
    W_\varepsilon(p_b, q_b) = \min_{P \ge 0,\; P\mathbf 1 = p_b,\; P^\top \mathbf 1 = q_b}
        \langle P, M\rangle - \varepsilon H(P), \qquad H(P) = -\sum_{ij} P_{ij}\log P_{ij}.

The solution is :math:`P_{ij} = \exp((f_i + g_j - M_{ij})/\varepsilon)` for dual potentials
:math:`f` (``Ks``) and :math:`g` (``Kt``), and :math:`W_\varepsilon = \langle f, p\rangle + \langle
g, q\rangle`. By the envelope theorem (Frogner et al., 2015) the gradient of :math:`W_\varepsilon`
with respect to :math:`p` is :math:`f` and with respect to :math:`q` is :math:`g`; both are defined
up to an additive constant on the simplex, so the backward pass returns the centred potentials
:math:`f - \bar f` and :math:`g - \bar g`. Nothing is backpropagated through the iterations: the
autograd graph holds ``f``, ``g`` and ``M`` whatever the iteration count.

Three numerically exact regimes, chosen from :math:`R = (\max M - \min M)/\varepsilon` alone
(no runtime overflow guessing):

* ``R <= 40`` (float32) or ``R <= 400`` (float64): scaling iterations
  :math:`v = q / (K^\top u)`, :math:`u = p / (K v)` with the shared kernel
  :math:`K = \exp(-(M - \min M)/\varepsilon)`, i.e. two ``(B x Ks) @ (Ks x Kt)`` matrix products
  per iteration. Every kernel entry lies in :math:`[e^{-R}, 1]`, so each marginal sum is at least
  :math:`e^{-R}` times the largest scaling and nothing over- or underflows that matters.
* float32 input with ``40 < R <= 400``: the same scaling iterations in float64.
* larger ``R`` (e.g. ``eps = 1e-3`` on a ``[0, 1]`` cost): log-domain iterations
  (a log-sum-exp over ``B x Ks x Kt`` per half step), slower but exact for any ``eps``.

A non-finite intermediate in the scaling regimes (never expected) falls back to the log domain.
That is ``method="auto"``; as in POT, ``method="scaling"`` or ``method="log"`` runs one regime
explicitly (``SinkhornResult.method`` says which ran).

Exact zeros in ``p`` or ``q`` are treated as the smallest normal number of the dtype
(``torch.finfo(dtype).tiny``): values change by less than that mass, and the potentials stay
finite (the true one-sided derivative at a zero mass is ``-inf``; smooth the histograms, as
:class:`~tllib_jtln.ot.WassersteinLoss` does, for informative gradients there).

References: M. Cuturi, *Sinkhorn Distances*, NeurIPS 2013; C. Frogner et al., *Learning with a
Wasserstein Loss*, NeurIPS 2015; B. Schmitzer, *Stabilized Sparse Scaling Algorithms for Entropy
Regularized Transport Problems*, 2016 (stability of scaling iterations).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import check_problem

__all__ = ["METHODS", "SinkhornResult", "sinkhorn"]

#: iterations between two marginal-error checks (each check is one host sync)
CHECK_EVERY = 10
#: largest cost range / eps for the scaling iterations in a given dtype
_MAX_RANGE = {torch.float32: 40.0, torch.float64: 400.0}


@dataclass
class SinkhornResult:
    """What :func:`sinkhorn` returns. Shapes: ``B`` samples, ``Ks`` source and ``Kt`` target bins.

    Attributes:
        transport_cost: ``(B,)`` :math:`\\langle P, M\\rangle`, not differentiable.
        value: ``(B,)`` the entropic objective :math:`\\langle f,p\\rangle + \\langle g,q\\rangle
            = \\langle P, M\\rangle - \\varepsilon H(P)`, differentiable in ``p`` and ``q``
            (centred potentials) and in ``cost`` (the plan, summed over the batch).
        f: ``(B, Ks)`` dual potential of ``p`` (detached).
        g: ``(B, Kt)`` dual potential of ``q`` (detached).
        n_iter: iterations run.
        converged: whether every sample's marginal error is ``<= tol``.
        marginal_error: ``(B,)`` L1 violation of the target marginal, :math:`\\|P^\\top\\mathbf 1 - q\\|_1`.
        method: ``"scaling"``, ``"scaling-float64"`` or ``"log"``: which regime ran.
    """

    transport_cost: Tensor
    value: Tensor
    f: Tensor
    g: Tensor
    n_iter: int
    converged: bool
    marginal_error: Tensor
    method: str
    eps: float
    cost: Tensor

    def plan(self) -> Tensor:
        """The transport plans ``(B, Ks, Kt)``, :math:`P_{ij} = \\exp((f_i + g_j - M_{ij})/\\varepsilon)`."""
        cost = self.cost.to(self.f.dtype)
        return torch.exp((self.f[:, :, None] + self.g[:, None, :] - cost) / self.eps)


class _EntropicOTValue(torch.autograd.Function):
    """``value = <f, p> + <g, q>`` with envelope-theorem gradients (no graph through iterations)."""

    @staticmethod
    def forward(ctx, p: Tensor, q: Tensor, cost: Tensor, f: Tensor, g: Tensor, eps: float) -> Tensor:
        ctx.eps = eps
        # the cost is saved only when its gradient is wanted (a learned cost)
        ctx.save_for_backward(f, g, cost if ctx.needs_input_grad[2] else None)
        return (f * p).sum(1) + (g * q).sum(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        f, g, cost = ctx.saved_tensors
        grad_p = grad_q = grad_cost = None
        if ctx.needs_input_grad[0]:
            grad_p = grad[:, None] * (f - f.mean(1, keepdim=True))
        if ctx.needs_input_grad[1]:
            grad_q = grad[:, None] * (g - g.mean(1, keepdim=True))
        if ctx.needs_input_grad[2]:
            # dW/dM = P; materialises (B, Ks, Kt) only when the cost itself is learned
            plan = torch.exp((f[:, :, None] + g[:, None, :] - cost.to(f.dtype)) / ctx.eps)
            grad_cost = torch.einsum("b,bij->ij", grad.to(f.dtype), plan).to(cost.dtype)
        return grad_p, grad_q, grad_cost, None, None, None


def _scaling(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int, tol: float, c_min: float):
    """Scaling iterations with the shared kernel; two GEMMs per iteration. ``None`` on overflow."""
    kernel = torch.exp((c_min - cost) / eps)  # (Ks, Kt), entries in [exp(-R), 1]
    kernel_t = kernel.t().contiguous()
    u = torch.full_like(p, 1.0 / p.shape[1])
    v = torch.empty_like(q)
    ktu, ktu_used = torch.empty_like(q), torch.empty_like(q)
    kv = torch.empty_like(p)
    err, worst = None, math.inf
    n_iter = 0
    while True:
        torch.mm(u, kernel, out=ktu)  # (B, Kt): column sums of diag(u) K
        if n_iter > 0 and (n_iter % CHECK_EVERY == 0 or n_iter == max_iter):
            err = (v * ktu - q).abs().sum(1)  # target-marginal violation of diag(u) K diag(v)
            worst = err.max().item()
            if not math.isfinite(worst):
                return None
            if worst <= tol or n_iter == max_iter:
                break
            scale = u.sum(1, keepdim=True)  # keep the scalings' magnitude ~1
            u.div_(scale)
            ktu.div_(scale)
        torch.div(q, ktu, out=v)
        ktu, ktu_used = ktu_used, ktu
        torch.mm(v, kernel_t, out=kv)  # (B, Ks)
        torch.div(p, kv, out=u)
        n_iter += 1
    tiny = torch.finfo(p.dtype).tiny
    f = torch.log(p.clamp_min(tiny)).sub_(torch.log(kv)).mul_(eps)
    g = torch.log(q.clamp_min(tiny)).sub_(torch.log(ktu_used)).mul_(eps).add_(c_min)
    transport = (u * torch.mm(v, (kernel * cost).t())).sum(1)
    if not math.isfinite((f.sum() + g.sum()).item()):  # potentials are O(max M): the sum only overflows on inf/NaN
        return None
    return f, g, transport, n_iter, err, worst


def _log_domain(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int, tol: float):
    """Log-domain iterations on scaled potentials ``f/eps``, ``g/eps``: stable for any eps."""
    tiny = torch.finfo(p.dtype).tiny
    log_p = torch.log(p.clamp_min(tiny))
    log_q = torch.log(q.clamp_min(tiny))
    neg_c = -cost / eps  # (Ks, Kt)
    neg_c_t = neg_c.t().contiguous()  # (Kt, Ks): both reductions run over a contiguous last axis
    fs = torch.zeros_like(p)
    gs = torch.zeros_like(q)
    err = None
    n_iter = 0
    while True:
        lse_col = torch.logsumexp(fs[:, None, :] + neg_c_t, dim=2)  # (B, Kt): LSE_i(fs_i - C_ij)
        if n_iter > 0 and (n_iter % CHECK_EVERY == 0 or n_iter == max_iter):
            err = (torch.exp(gs + lse_col) - q).abs().sum(1)
            worst = err.max().item()
            if worst <= tol or n_iter == max_iter:
                break
        gs = log_q - lse_col
        fs = log_p - torch.logsumexp(gs[:, None, :] + neg_c, dim=2)
        n_iter += 1
    plan = torch.exp(fs[:, :, None] + gs[:, None, :] + neg_c)
    transport = (plan * cost).sum((1, 2))
    return eps * fs, eps * gs, transport, n_iter, err, worst


#: the ``method`` choices of :func:`sinkhorn`, as POT's ``ot.sinkhorn(..., method=...)``
METHODS = ("auto", "scaling", "log")


def sinkhorn(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int = 1000, tol: float = 1e-6,
             check_inputs: bool = True, method: str = "auto") -> SinkhornResult:
    r"""Solve a batch of entropic OT problems sharing one cost matrix.

    .. math::
        W_\varepsilon(p_b, q_b) = \min_{P\ge 0,\, P\mathbf 1 = p_b,\, P^\top\mathbf 1 = q_b}
            \langle P, M\rangle + \varepsilon \sum_{ij} P_{ij}\log P_{ij}

    Args:
        p: ``(B, Ks)`` source histograms (rows >= 0, summing to 1).
        q: ``(B, Kt)`` target histograms.
        cost: ``(Ks, Kt)`` cost matrix, finite and >= 0, shared by the batch.
        eps: entropic regularisation ``> 0`` (in the cost's units).
        max_iter: iteration budget (one iteration updates both potentials).
        tol: stop when every sample's target-marginal L1 error :math:`\|P^\top\mathbf 1 - q\|_1`
            is at most ``tol``; checked every ``CHECK_EVERY`` (10) iterations.
        check_inputs: validate shapes and values (one host sync); ``False`` skips it.
        method: as POT's ``method``: ``"auto"`` (the regime of the module docstring, chosen from
            :math:`R = (\max M - \min M)/\varepsilon`), ``"scaling"`` (scaling iterations in the
            working dtype, whatever ``R``: fast, and a ValueError naming ``eps`` when they
            overflow) or ``"log"`` (log-domain iterations: exact for any ``eps``).

    Returns:
        :class:`SinkhornResult`; ``value`` carries the gradient in ``p``, ``q`` (centred dual
        potentials) and ``cost`` (the plan). Computation runs in float32 or float64 (half inputs are
        upcast); outputs have the promoted dtype of ``p``, ``q`` and ``cost``, at least float32.
        ``method`` says which regime ran.

    Raises:
        ValueError: naming ``p``, ``q``, ``cost``, ``eps``, ``max_iter``, ``tol`` or ``method``.

    Example:
        >>> p = torch.tensor([[0.5, 0.5]]); q = torch.tensor([[1.0, 0.0]])
        >>> res = sinkhorn(p, q, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), eps=0.1)
        >>> round(res.transport_cost.item(), 4), res.method
        (0.5, 'scaling')
        >>> res = sinkhorn(p, q, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), eps=0.1, method="log")
        >>> round(res.transport_cost.item(), 4), res.method
        (0.5, 'log')
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if check_inputs:
        c_min, c_max = check_problem(p, q, cost, eps, max_iter, tol)
    else:
        c_min, c_max = torch.stack([cost.detach().min(), cost.detach().max()]).tolist()
    eps = float(eps)
    dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), cost.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    pd, qd, cd = p.detach().to(dtype), q.detach().to(dtype), cost.detach().to(dtype)
    # no autocast: half-precision matrix products would break the iterations
    no_autocast = (torch.autocast(device_type=pd.device.type, enabled=False) if pd.device.type in ("cpu", "cuda")
                   else contextlib.nullcontext())
    with torch.no_grad(), no_autocast:
        out, regime = _solve(pd, qd, cd, eps, max_iter, tol, c_min, (c_max - c_min) / eps, method)
    f, g, transport, n_iter, err, worst = (x.to(dtype) if isinstance(x, Tensor) else x for x in out)
    value = _EntropicOTValue.apply(p.to(dtype), q.to(dtype), cost.to(dtype), f, g, eps)
    return SinkhornResult(transport_cost=transport, value=value, f=f, g=g, n_iter=n_iter,
                          converged=worst <= tol, marginal_error=err, method=regime,
                          eps=eps, cost=cd)


def _solve(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int, tol: float, c_min: float,
           spread: float, method: str):
    """``(iterations' output, regime name)`` for ``method`` (see :func:`sinkhorn`); ``spread`` is ``R``."""
    if method == "log":
        return _log_domain(p, q, cost, eps, max_iter, tol), "log"
    if method == "scaling":
        out = _scaling(p, q, cost, eps, max_iter, tol, c_min)
        if out is None:
            raise ValueError(f"eps: {eps:g} is too small for scaling iterations on this cost (range / eps = "
                             f"{spread:.3g}); use method='log' or 'auto'")
        return out, "scaling"
    tiers = [(p.dtype, "scaling")] + ([(torch.float64, "scaling-float64")] if p.dtype != torch.float64 else [])
    for work, name in tiers:
        if spread <= _MAX_RANGE[work]:
            out = _scaling(p.to(work), q.to(work), cost.to(work), eps, max_iter, tol, c_min)
            if out is not None:
                return out, name
    return _log_domain(p, q, cost, eps, max_iter, tol), "log"
