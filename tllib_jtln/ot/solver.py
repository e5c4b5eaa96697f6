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

__all__ = ["SinkhornResult", "sinkhorn"]

#: iterations between two marginal-error checks (each check is one host sync)
CHECK_EVERY = 10
#: largest cost range / eps for the scaling iterations in a given dtype
_MAX_RANGE = {torch.float32: 40.0, torch.float64: 400.0}
#: tolerance on ``sum(histogram) == 1`` per dtype
_MASS_ATOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-6}


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


def _check_inputs(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int, tol: float) -> tuple[float, float]:
    """Raise ValueError naming the argument for any malformed input; return ``(min(cost), max(cost))``.

    The data checks cost six reductions and one host sync; the detailed diagnosis runs only on failure.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: entropic regularisation must be a finite number > 0, got {eps!r}")
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


def sinkhorn(p: Tensor, q: Tensor, cost: Tensor, eps: float, max_iter: int = 1000, tol: float = 1e-6,
             check_inputs: bool = True) -> SinkhornResult:
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

    Returns:
        :class:`SinkhornResult`; ``value`` carries the gradient in ``p``, ``q`` (centred dual
        potentials) and ``cost`` (the plan). Computation runs in float32 or float64 (half inputs are
        upcast); outputs have the promoted dtype of ``p``, ``q`` and ``cost``, at least float32.

    Raises:
        ValueError: naming ``p``, ``q``, ``cost``, ``eps``, ``max_iter`` or ``tol``.

    Example:
        >>> p = torch.tensor([[0.5, 0.5]]); q = torch.tensor([[1.0, 0.0]])
        >>> res = sinkhorn(p, q, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), eps=0.1)
        >>> round(res.transport_cost.item(), 4)
        0.5
    """
    if check_inputs:
        c_min, c_max = _check_inputs(p, q, cost, eps, max_iter, tol)
    else:
        c_min, c_max = torch.stack([cost.detach().min(), cost.detach().max()]).tolist()
    eps = float(eps)
    dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), cost.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    pd, qd, cd = p.detach().to(dtype), q.detach().to(dtype), cost.detach().to(dtype)
    spread = (c_max - c_min) / eps
    out = None
    method = "log"
    # no autocast: half-precision matrix products would break the iterations
    no_autocast = (torch.autocast(device_type=pd.device.type, enabled=False) if pd.device.type in ("cpu", "cuda")
                   else contextlib.nullcontext())
    with torch.no_grad(), no_autocast:
        tiers = [(dtype, "scaling")] + ([(torch.float64, "scaling-float64")] if dtype != torch.float64 else [])
        for work, name in tiers:
            if spread <= _MAX_RANGE[work]:
                out = _scaling(pd.to(work), qd.to(work), cd.to(work), eps, max_iter, tol, c_min)
                if out is not None:
                    method = name
                    break
        if out is None:
            out = _log_domain(pd, qd, cd, eps, max_iter, tol)
    f, g, transport, n_iter, err, worst = (x.to(dtype) if isinstance(x, Tensor) else x for x in out)
    value = _EntropicOTValue.apply(p.to(dtype), q.to(dtype), cost.to(dtype), f, g, eps)
    return SinkhornResult(transport_cost=transport, value=value, f=f, g=g, n_iter=n_iter,
                          converged=worst <= tol, marginal_error=err, method=method,
                          eps=eps, cost=cd)
