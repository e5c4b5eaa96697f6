"""Speed of tllib_jtln.ot.sinkhorn (forward + backward) against POT, float32 on the CPU (issue 3).

Each group times the same problems, same ``eps``, same tolerance and iteration budget:
- ``ours``: one batched call of :func:`tllib_jtln.ot.sinkhorn`, backward of ``value.sum()``;
- ``pot-loop``: a Python loop of ``ot.sinkhorn2`` (torch backend), autograd through POT;
- ``pot-solve-batch``: ``ot.solve_batch(method="sinkhorn", grad="last_step")``, POT's batched solver
  in the gradient mode that yields histogram gradients (``envelope`` only differentiates ``M``).
Values are checked equal to ours before anything is timed.

Run: ``python -m pytest benchmarks/bench_ot.py --benchmark-only`` (the speed ratios are the
``Mean`` columns of one group divided by each other).
"""
import ot
import pytest
import torch

from tllib_jtln.ot import sinkhorn

EPS = 0.05  # on a cost normalised to max 1
TOL = 1e-5
MAX_ITER = 1000


def make(B, Ks, Kt, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(Ks, Kt, generator=gen)
    p = torch.softmax(2 * torch.randn(B, Ks, generator=gen), 1)
    q = torch.softmax(2 * torch.randn(B, Kt, generator=gen), 1)
    return p, q, cost / cost.max()


def ours(p, q, cost, eps=EPS, max_iter=MAX_ITER, tol=TOL):
    p, q = p.clone().requires_grad_(True), q.clone().requires_grad_(True)
    res = sinkhorn(p, q, cost, eps, max_iter=max_iter, tol=tol)
    res.value.sum().backward()
    return res.transport_cost.detach(), res.value.detach(), p.grad


def pot_loop(p, q, cost, eps=EPS):
    p, q = p.clone().requires_grad_(True), q.clone().requires_grad_(True)
    costs = torch.stack([ot.sinkhorn2(p[b], q[b], cost, eps, numItermax=MAX_ITER, stopThr=TOL, warn=False)
                         for b in range(p.shape[0])])
    costs.sum().backward()
    return costs.detach(), p.grad


def pot_solve_batch(p, q, cost, eps=EPS):
    p, q = p.clone().requires_grad_(True), q.clone().requires_grad_(True)
    res = ot.solve_batch(cost.expand(p.shape[0], *cost.shape), eps, a=p, b=q, max_iter=MAX_ITER, tol=TOL,
                         method="sinkhorn", grad="last_step")
    res.value.sum().backward()
    return res.value_linear.detach(), res.value.detach(), p.grad


@pytest.fixture(scope="module")
def large():
    return make(64, 1000, 200)


@pytest.fixture(scope="module")
def small():
    return make(64, 5, 5)


@pytest.fixture(scope="module")
def large_ref(large):
    return ours(*large)


@pytest.fixture(scope="module")
def small_ref(small):
    return ours(*small)


def check_cost(theirs, ref):
    torch.testing.assert_close(theirs, ref, rtol=2e-3, atol=1e-5)


# ---- B=64, Ks=1000, Kt=200 (the problem)
@pytest.mark.benchmark(group="ot-large B=64 Ks=1000 Kt=200 eps=0.05")
def test_ot_large_ours(benchmark, large):
    transport, value, grad = benchmark(ours, *large)
    assert torch.isfinite(grad).all() and torch.isfinite(value).all()


@pytest.mark.benchmark(group="ot-large B=64 Ks=1000 Kt=200 eps=0.05")
def test_ot_large_pot_loop(benchmark, large, large_ref):
    transport, grad = benchmark.pedantic(pot_loop, args=large, rounds=3, iterations=1)
    check_cost(transport, large_ref[0])


@pytest.mark.benchmark(group="ot-large B=64 Ks=1000 Kt=200 eps=0.05")
def test_ot_large_pot_solve_batch(benchmark, large, large_ref):
    transport, value, grad = benchmark.pedantic(pot_solve_batch, args=large, rounds=2, iterations=1)
    check_cost(transport, large_ref[0])
    torch.testing.assert_close(value, large_ref[1], rtol=2e-3, atol=1e-4)


# ---- B=64, Ks=Kt=5: fixed per-call overhead (every training step of the embedded task)
@pytest.mark.benchmark(group="ot-small B=64 Ks=Kt=5 eps=0.05")
def test_ot_small_ours(benchmark, small):
    transport, value, grad = benchmark(ours, *small)
    assert torch.isfinite(grad).all()


@pytest.mark.benchmark(group="ot-small B=64 Ks=Kt=5 eps=0.05")
def test_ot_small_ours_50_iterations(benchmark, small, small_ref):
    """A fixed budget of 50 iterations (tol=0): the per-call cost of a training step's OT term."""
    transport, value, grad = benchmark(ours, *small, max_iter=50, tol=0.0)
    check_cost(transport, small_ref[0])


@pytest.mark.benchmark(group="ot-small B=64 Ks=Kt=5 eps=0.05")
def test_ot_small_pot_loop(benchmark, small, small_ref):
    transport, grad = benchmark.pedantic(pot_loop, args=small, rounds=5, iterations=1)
    check_cost(transport, small_ref[0])


@pytest.mark.benchmark(group="ot-small B=64 Ks=Kt=5 eps=0.05")
def test_ot_small_pot_solve_batch(benchmark, small, small_ref):
    transport, value, grad = benchmark.pedantic(pot_solve_batch, args=small, rounds=5, iterations=1)
    check_cost(transport, small_ref[0])


# ---- the same problems on CUDA (scripts/gpu_smoke.sh runs these; skipped without a GPU)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def ours_cuda(p, q, cost, **kwargs):
    out = ours(p, q, cost, **kwargs)
    torch.cuda.synchronize()
    return out


@needs_cuda
@pytest.mark.benchmark(group="ot-cuda")
@pytest.mark.parametrize("size", ["large", "small"])
def test_ot_ours_cuda(benchmark, request, size):
    problem = request.getfixturevalue(size)
    ref = request.getfixturevalue(f"{size}_ref")
    transport, value, grad = benchmark(ours_cuda, *(t.cuda() for t in problem))
    check_cost(transport.cpu(), ref[0])
    assert torch.isfinite(grad).all()


# ---- small eps: the float64 scaling regime (eps=0.01) and the log-domain regime (eps=1e-3)
@pytest.mark.benchmark(group="ot-small-eps")
def test_ot_large_ours_eps_0_01(benchmark, large):
    transport, value, grad = benchmark.pedantic(ours, args=large, kwargs=dict(eps=0.01), rounds=2, iterations=1)
    assert torch.isfinite(grad).all()


@pytest.mark.benchmark(group="ot-small-eps")
def test_ot_medium_ours_eps_1e3_100_iterations(benchmark):
    """B=64, Ks=100, Kt=50, eps=1e-3: log domain, fixed budget of 100 iterations."""
    p, q, cost = make(64, 100, 50)
    transport, value, grad = benchmark.pedantic(ours, args=(p, q, cost), kwargs=dict(eps=1e-3, max_iter=100, tol=0.0),
                                                rounds=3, iterations=1)
    assert torch.isfinite(grad).all() and torch.isfinite(value).all()
