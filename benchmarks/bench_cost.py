"""The ``knn`` cost at the issue's size: 100k source features (D = 512, 1000 classes) and 10k target
features (200 classes).

- ``test_knn_cost_faiss_exact``: ``build_cost("knn", ..., index="flat")`` (FAISS ``IndexFlatIP``)
  against the same cost with the torch matmul + topk reference (``index="torch"``,
  :func:`tllib_jtln.cost.knn_search_torch`); ``extra_info``: both times (min over rounds) and
  ``speedup_vs_torch`` (goal >= 1.4). Both sides get the same number of threads.
- IVF-PQ against exact search, and the growth with the source size: ``bench_cost_scale.py``.

Full size under ``--benchmark-only`` (1-2 min on an idle 2-core machine); with ``--benchmark-disable`` (one
run in CI) the source and target sets are 10x smaller. ``TLLIB_JTLN_BENCH_SCALE=0.5`` forces a
scale. Features are synthetic and clustered: class centres ``c ~ N(0, I)``, an image
``c_y + N(0, I)``, target class ``t`` drawn around source class ``pi(t)``.

    python -m pytest benchmarks/bench_cost.py --benchmark-only --benchmark-columns=min,mean,rounds
"""
from __future__ import annotations

import functools
import os
import time

import faiss
import pytest
import torch

from tllib_jtln.cost import build_cost

N_SOURCE, N_TARGET, DIM, K_SOURCE, K_TARGET, K = 100_000, 10_000, 512, 1000, 200, 10


def _scale(benchmark) -> float:
    forced = os.environ.get("TLLIB_JTLN_BENCH_SCALE")
    if forced:
        return float(forced)
    return 0.1 if benchmark.disabled else 1.0


@functools.lru_cache(maxsize=1)
def _problem(scale: float):
    g = torch.Generator().manual_seed(0)
    ns, nt = int(N_SOURCE * scale), int(N_TARGET * scale)
    centres = torch.randn(K_SOURCE, DIM, generator=g)
    pi = torch.randperm(K_SOURCE, generator=g)[:K_TARGET]
    sl = torch.randint(0, K_SOURCE, (ns,), generator=g)
    tl = torch.randint(0, K_TARGET, (nt,), generator=g)
    sf = centres[sl] + torch.randn(ns, DIM, generator=g)
    tf = centres[pi[tl]] + torch.randn(nt, DIM, generator=g)
    return sf, sl, tf, tl, pi


def _knn(problem, index: str) -> torch.Tensor:
    sf, sl, tf, tl, _ = problem
    return build_cost("knn", sf, sl, tf, tl, num_source_classes=K_SOURCE, num_target_classes=K_TARGET,
                      k=K, index=index)


def _min_time(fn, rounds: int):
    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


@pytest.fixture(autouse=True)
def _same_threads():
    """FAISS (OpenMP) and torch get the same number of threads, restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    yield
    faiss.omp_set_num_threads(before)


def test_knn_cost_faiss_exact(benchmark):
    scale = _scale(benchmark)
    problem = _problem(scale)
    rounds = 1 if benchmark.disabled else 3
    torch_s, reference = _min_time(lambda: _knn(problem, "torch"), rounds)
    cost = benchmark.pedantic(_knn, args=(problem, "flat"), rounds=rounds, iterations=1, warmup_rounds=0)
    flat_s = benchmark.stats.stats.min if benchmark.stats is not None else _min_time(lambda: _knn(problem, "flat"), 1)[0]
    info = {"scale": scale, "n_source": problem[0].shape[0], "n_target": problem[2].shape[0],
            "threads": torch.get_num_threads(), "faiss_flat_s": round(flat_s, 4), "torch_topk_s": round(torch_s, 4),
            "speedup_vs_torch": round(torch_s / flat_s, 3)}
    benchmark.extra_info.update(info)
    print(f"\nknn cost, FAISS IndexFlatIP vs torch matmul+topk: {info}")
    assert cost.shape == (K_SOURCE, K_TARGET)
    torch.testing.assert_close(cost, reference, atol=1e-4, rtol=0)  # the same neighbours, the same cost
    assert (cost.argmin(0) == problem[4]).float().mean() > 0.95
