"""The ``knn`` cost at the issue's size: 100k source features (D = 512, 1000 classes) and 10k target
features (200 classes).

- ``test_knn_cost_faiss_exact``: ``build_cost("knn", ..., index="flat")`` (FAISS ``IndexFlatIP``)
  against the same cost with the torch matmul + topk reference (``index="torch"``,
  :func:`tllib_jtln.cost.knn_search_torch`); ``extra_info``: both times (min over rounds) and
  ``speedup_vs_torch`` (goal >= 1.4). Both sides get the same number of threads.
- ``test_knn_cost_faiss_ivf``: ``index="ivf"`` (IVFFlat, nlist ~ sqrt(N), nprobe ~ sqrt(nlist))
  against exact; ``extra_info``: search-only and end-to-end (training included) speed-ups,
  ``recall_at_k`` of the neighbours and how many target classes keep their nearest source class.

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
import numpy as np
import pytest
import torch

from tllib_jtln.cost import build_cost, l2_normalize
from tllib_jtln.cost.knn import build_index, default_nlist, default_nprobe, search_index

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


def test_knn_cost_faiss_ivf(benchmark):
    scale = _scale(benchmark)
    problem = _problem(scale)
    sf, _, tf, _, pi = problem
    rounds = 1 if benchmark.disabled else 3
    db, queries = l2_normalize(sf), l2_normalize(tf)
    db_np, q_np = db.numpy(), queries.numpy()
    # search only: indexes built once
    flat = build_index(db_np, "flat")
    exact_search_s, (_, exact_ids) = _min_time(lambda: search_index(flat, q_np, K), rounds)
    start = time.perf_counter()
    ivf = build_index(db_np, "ivf")
    ivf_build_s = time.perf_counter() - start
    ivf_search_s, (_, ivf_ids) = _min_time(lambda: search_index(ivf, q_np, K), rounds)
    recall = float(np.mean([np.intersect1d(a, e).size / K for a, e in zip(ivf_ids, exact_ids)]))
    # end to end: the whole knn cost, IVF training included
    exact_total_s, exact_cost = _min_time(lambda: _knn(problem, "flat"), rounds)
    cost = benchmark.pedantic(_knn, args=(problem, "ivf"), rounds=rounds, iterations=1, warmup_rounds=0)
    ivf_total_s = benchmark.stats.stats.min if benchmark.stats is not None else _min_time(lambda: _knn(problem, "ivf"), 1)[0]
    nlist = default_nlist(db.shape[0])
    info = {"scale": scale, "nlist": nlist, "nprobe": default_nprobe(nlist), "k": K,
            "recall_at_k": round(recall, 4),
            "same_nearest_source": float((cost.argmin(0) == exact_cost.argmin(0)).float().mean()),
            "max_abs_cost_diff": round(float((cost - exact_cost).abs().max()), 4),
            "exact_search_s": round(exact_search_s, 4), "ivf_search_s": round(ivf_search_s, 4),
            "ivf_build_s": round(ivf_build_s, 4), "search_speedup": round(exact_search_s / ivf_search_s, 3),
            "exact_cost_s": round(exact_total_s, 4), "ivf_cost_s": round(ivf_total_s, 4),
            "end_to_end_speedup": round(exact_total_s / ivf_total_s, 3)}
    benchmark.extra_info.update(info)
    print(f"\nknn cost, FAISS IVFFlat vs exact: {info}")
    assert recall > 0.8  # a broken index scores about nprobe / nlist
    assert (cost.argmin(0) == pi).float().mean() > 0.95
