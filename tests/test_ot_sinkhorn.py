"""tllib_jtln.ot.sinkhorn against POT, finite differences, an unrolled reference and the closed forms."""
import math

import numpy as np
import ot
import pytest
import torch

import tllib_jtln.ot.solver as solver
from tllib_jtln.ot import sinkhorn


pytestmark = pytest.mark.usefixtures("one_thread")


def problem(B, Ks, Kt, dtype=torch.float64, seed=0, peak=2.0):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(Ks, Kt, generator=gen, dtype=dtype)
    cost = cost / cost.max()
    p = torch.softmax(peak * torch.randn(B, Ks, generator=gen, dtype=dtype), 1)
    q = torch.softmax(peak * torch.randn(B, Kt, generator=gen, dtype=dtype), 1)
    return p, q, cost


def pot_plans(p, q, cost, eps, method="sinkhorn", tol=1e-14):
    plans = [ot.sinkhorn(p[b].numpy(), q[b].numpy(), cost.numpy(), eps, method=method,
                         numItermax=100000, stopThr=tol) for b in range(p.shape[0])]
    return torch.from_numpy(np.stack(plans))


def primal(plan, cost, eps):
    """<P, M> + eps * sum P log P (0 log 0 = 0)."""
    return (plan * cost).sum((1, 2)) + eps * torch.special.xlogy(plan, plan).sum((1, 2))


def rel(a, b):
    return ((a - b).abs().sum() / b.abs().sum()).item()


@pytest.mark.parametrize("B,Ks,Kt,eps", [(4, 7, 7, 0.1), (4, 12, 5, 0.05), (3, 5, 16, 0.02), (2, 1000, 200, 0.05)])
def test_plans_and_costs_match_pot(B, Ks, Kt, eps):
    p, q, cost = problem(B, Ks, Kt)
    res = sinkhorn(p, q, cost, eps, max_iter=100000, tol=1e-13)
    assert res.converged and res.method == "scaling"
    ref = pot_plans(p, q, cost, eps)
    assert rel(res.plan(), ref) < 1e-6
    pot_cost = torch.tensor([ot.sinkhorn2(p[b].numpy(), q[b].numpy(), cost.numpy(), eps, numItermax=100000,
                                          stopThr=1e-14) for b in range(B)])
    torch.testing.assert_close(res.transport_cost, pot_cost, rtol=1e-6, atol=0)
    torch.testing.assert_close(res.value, primal(ref, cost, eps), rtol=1e-6, atol=1e-9)


def test_log_domain_matches_pot_at_small_eps():
    p, q, cost = problem(2, 5, 5, seed=4)
    eps = 1e-3  # exp(-1/eps) underflows even in float64: only the log domain can do this
    res = sinkhorn(p, q, cost, eps, max_iter=200000, tol=1e-12)
    assert res.method == "log" and res.converged
    ref = pot_plans(p, q, cost, eps, method="sinkhorn_log", tol=1e-11)
    assert rel(res.plan(), ref) < 1e-6
    torch.testing.assert_close(res.transport_cost, (ref * cost).sum((1, 2)), rtol=1e-6, atol=0)


def test_regimes_agree():
    """The scaling iterations and the log-domain iterations solve the same problem."""
    p, q, cost = problem(5, 9, 6, seed=2)
    eps = 0.05
    a = solver._scaling(p, q, cost, eps, 5000, 1e-13, 0.0)
    b = solver._log_domain(p, q, cost, eps, 5000, 1e-13)
    # potentials are defined up to (f + c, g - c): compare centred ones, and the transport costs
    for x, y in zip(a[:2], b[:2]):
        torch.testing.assert_close(x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True), rtol=0, atol=1e-10)
    torch.testing.assert_close(a[2], b[2], rtol=1e-10, atol=0)


@pytest.mark.parametrize("eps,method", [(0.1, "scaling"), (0.02, "scaling-float64"), (0.002, "log")])
def test_float32_regimes(eps, method):
    p, q, cost = problem(4, 10, 7, seed=3)
    exact = sinkhorn(p, q, cost, eps, max_iter=100000, tol=1e-11)
    res = sinkhorn(p.float(), q.float(), cost.float(), eps, max_iter=100000, tol=1e-5)
    assert res.method == method and res.value.dtype == torch.float32 and res.f.dtype == torch.float32
    torch.testing.assert_close(res.transport_cost.double(), exact.transport_cost, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(res.value.double(), exact.value, rtol=1e-3, atol=1e-4)


def test_result_fields_and_marginals():
    p, q, cost = problem(3, 8, 5)
    res = sinkhorn(p, q, cost, 0.1, max_iter=2000, tol=1e-10)
    assert res.transport_cost.shape == res.value.shape == res.marginal_error.shape == (3,)
    assert res.f.shape == (3, 8) and res.g.shape == (3, 5)
    assert isinstance(res.n_iter, int) and 0 < res.n_iter < 2000 and res.converged
    plan = res.plan()
    assert plan.shape == (3, 8, 5)
    torch.testing.assert_close(plan.sum(2), p, atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(1), q, atol=1e-9, rtol=0)
    # value = <f, p> + <g, q> = <P, M> - eps H(P)
    torch.testing.assert_close(res.value, primal(plan, cost, 0.1), atol=1e-9, rtol=0)
    short = sinkhorn(p, q, cost, 0.1, max_iter=1, tol=1e-10)
    assert short.n_iter == 1 and not short.converged and short.marginal_error.max() > 1e-10


def test_batch_samples_are_independent():
    p, q, cost = problem(6, 9, 4, seed=4)
    full = sinkhorn(p, q, cost, 0.05, max_iter=5000, tol=1e-12)
    for b in (0, 3, 5):
        one = sinkhorn(p[b:b + 1], q[b:b + 1], cost, 0.05, max_iter=5000, tol=1e-12)
        torch.testing.assert_close(one.value, full.value[b:b + 1], rtol=1e-10, atol=1e-12)


def test_transport_cost_approaches_emd_as_eps_shrinks():
    p, q, cost = problem(3, 8, 6, seed=5)
    emd = torch.tensor([ot.emd2(p[b].numpy(), q[b].numpy(), cost.numpy()) for b in range(3)])
    gaps = []
    for eps in (0.1, 0.03, 0.01, 0.003, 0.001):
        res = sinkhorn(p, q, cost, eps, max_iter=100000, tol=1e-9)
        gap = res.transport_cost - emd
        # 0 <= <P_eps, M> - W_0 <= eps (H(P_eps) - H(P_0)) <= eps log(Ks Kt)
        assert (gap >= -1e-7).all() and (gap <= eps * math.log(8 * 6) + 1e-7).all(), (eps, gap)
        gaps.append(gap.max().item())
    assert gaps[-1] < 2e-3 and gaps[-1] < gaps[0] / 10


def test_gradients_match_finite_differences():
    p, q, cost = problem(3, 6, 4, seed=6)
    eps = 0.05
    p.requires_grad_(True)
    q.requires_grad_(True)
    res = sinkhorn(p, q, cost, eps, max_iter=100000, tol=1e-14)
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    (res.value * weights).sum().backward()
    gen = torch.Generator().manual_seed(7)
    for x, grad in ((p, p.grad), (q, q.grad)):
        torch.testing.assert_close(grad.sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        d = d - d.mean(1, keepdim=True)  # stay on the simplex
        h = 1e-6

        def f(xx):
            args = (xx, q.detach()) if x is p else (p.detach(), xx)
            return (sinkhorn(*args, cost, eps, max_iter=100000, tol=1e-14).value * weights).sum()

        fd = (f(x.detach() + h * d) - f(x.detach() - h * d)) / (2 * h)
        assert abs(fd.item() - (grad * d).sum().item()) < 1e-6 * max(1.0, abs(fd.item()))


def unrolled_value(p, q, cost, eps, n_iter):
    """Float64 log-domain Sinkhorn differentiated by autograd through every iteration (the reference)."""
    neg = -cost / eps
    fs = torch.zeros_like(p)
    for _ in range(n_iter):
        gs = torch.log(q) - torch.logsumexp(fs[:, :, None] + neg, 1)
        fs = torch.log(p) - torch.logsumexp(gs[:, None, :] + neg, 2)
    plan = torch.exp(fs[:, :, None] + gs[:, None, :] + neg)
    return primal(plan, cost, eps)


def test_gradients_match_unrolled_autograd():
    p0, q0, cost = problem(2, 5, 4, seed=8)
    eps = 0.1
    p, q = p0.clone().requires_grad_(True), q0.clone().requires_grad_(True)
    unrolled_value(p, q, cost, eps, 500).sum().backward()
    p2, q2 = p0.clone().requires_grad_(True), q0.clone().requires_grad_(True)
    res = sinkhorn(p2, q2, cost, eps, max_iter=10000, tol=1e-14)
    res.value.sum().backward()
    for ref, ours in ((p.grad, p2.grad), (q.grad, q2.grad)):
        torch.testing.assert_close(ours, ref - ref.mean(1, keepdim=True), atol=1e-7, rtol=0)


def test_cost_gradient_is_the_plan():
    p, q, cost = problem(3, 5, 4, seed=9)
    eps = 0.1
    c = cost.clone().requires_grad_(True)
    res = sinkhorn(p, q, c, eps, max_iter=10000, tol=1e-14)
    res.value.sum().backward()
    torch.testing.assert_close(c.grad, res.plan().sum(0), atol=1e-12, rtol=0)
    d = torch.randn(5, 4, dtype=torch.float64) * 0.1
    h = 1e-6
    fd = (sinkhorn(p, q, cost + h * d, eps, max_iter=10000, tol=1e-14).value.sum()
          - sinkhorn(p, q, cost - h * d, eps, max_iter=10000, tol=1e-14).value.sum()) / (2 * h)
    assert abs(fd.item() - (c.grad * d).sum().item()) < 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [1e-3, 0.05])
def test_zero_masses_and_peaked_inputs_stay_finite(dtype, eps):
    Ks, Kt = 7, 5
    cost = torch.rand(Ks, Kt, dtype=dtype)
    cost[0, 0] = 0.0
    cost = cost / cost.max()
    p = torch.softmax(torch.tensor([[60.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=dtype) * 3, 1)
    p = torch.cat([p, torch.tensor([[0.0, 0.5, 0.5, 0, 0, 0, 0]], dtype=dtype)]).requires_grad_(True)
    q = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0.25, 0.75, 0, 0], [0.2] * 5], dtype=dtype).requires_grad_(True)
    res = sinkhorn(p, q, cost, eps, max_iter=3000, tol=1e-6)
    res.value.sum().backward()
    for x in (res.value, res.transport_cost, res.f, res.g, p.grad, q.grad, res.plan()):
        assert torch.isfinite(x).all()
    assert (res.transport_cost >= 0).all()
    # first sample: all source mass on class 0 and all target mass on class 0 -> cost M[0, 0] = 0
    assert res.transport_cost[0].item() < 1e-3


def test_memory_does_not_grow_with_iterations():
    p, q, cost = problem(4, 30, 20, dtype=torch.float32)
    p.requires_grad_(True)

    def saved_bytes(max_iter):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            res = sinkhorn(p, q, cost, 0.05, max_iter=max_iter, tol=0.0)
        assert res.n_iter == max_iter
        res.value.sum().backward()
        return sum(total)

    assert 0 < saved_bytes(10) == saved_bytes(1000) <= 4 * (4 * 30 + 4 * 20 + 30 * 20)


@pytest.mark.parametrize("args,match", [
    (dict(q=torch.full((3, 4), 0.25)), "q: batch size"),
    (dict(cost=torch.rand(5, 3)), "cost: shape"),
    (dict(cost=-torch.rand(5, 4)), "cost: has negative"),
    (dict(cost=torch.full((5, 4), float("nan"))), "cost: contains NaN"),
    (dict(cost=torch.tensor([[float("inf")] * 4] * 5)), "cost: contains NaN"),
    (dict(p=torch.full((2, 5), 0.3)), "p: every row must sum to 1"),
    (dict(p=torch.tensor([[1.5, -0.5, 0, 0, 0]] * 2)), "p: histogram has negative"),
    (dict(q=torch.tensor([[float("nan"), 0.5, 0.5, 0]] * 2)), "q: histogram contains NaN"),
    (dict(p=torch.full((2, 1, 5), 0.2)), "p: expected a 2-D"),
    (dict(q=torch.ones(2, 4, dtype=torch.int64)), "q: expected a floating-point"),
    (dict(eps=0.0), "eps"),
    (dict(eps=-1.0), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(max_iter=0), "max_iter"),
    (dict(tol=-1.0), "tol"),
])
def test_bad_input_raises_value_error_naming_the_argument(args, match):
    kw = dict(p=torch.full((2, 5), 0.2), q=torch.full((2, 4), 0.25), cost=torch.rand(5, 4), eps=0.1)
    kw.update(args)
    with pytest.raises(ValueError, match=match):
        sinkhorn(kw.pop("p"), kw.pop("q"), kw.pop("cost"), kw.pop("eps"), **kw)


def test_half_inputs_are_solved_in_float32():
    p, q, cost = problem(2, 6, 4, dtype=torch.float32)
    res = sinkhorn(p.half(), q.half(), cost.half(), 0.1, tol=1e-5)
    assert res.value.dtype == torch.float32 and torch.isfinite(res.value).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("eps", [0.1, 1e-3])
def test_cuda_matches_cpu(eps):
    p, q, cost = problem(8, 20, 10, dtype=torch.float32)
    cpu = sinkhorn(p, q, cost, eps, max_iter=5000, tol=1e-5)
    pc, qc = p.cuda().requires_grad_(True), q.cuda()
    gpu = sinkhorn(pc, qc, cost.cuda(), eps, max_iter=5000, tol=1e-5)
    gpu.value.sum().backward()
    assert gpu.method == cpu.method and torch.isfinite(pc.grad).all()
    torch.testing.assert_close(gpu.value.cpu(), cpu.value, rtol=1e-3, atol=1e-4)
