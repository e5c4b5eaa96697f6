"""Nearest-neighbour search and the k-NN class affinity behind the ``knn`` cost.

Search is maximum inner product: pass L2-normalised vectors and the scores are cosine
similarities. Backends:

- ``flat``: ``faiss.IndexFlatIP``, exact;
- ``ivf``: ``faiss.IndexIVFFlat`` (inner product) with ``nlist ~ sqrt(N)`` k-means lists, of which
  ``nprobe`` (default ``~ sqrt(nlist)``) are visited per query: approximate, for large sources;
- ``hnsw``: ``faiss.IndexHNSWFlat`` (inner product graph, ``M = 32``): approximate, no training;
- ``torch``: :func:`knn_search_torch`, chunked matmul + ``topk``: the reference implementation.

``flat`` and ``ivf`` run on GPU 0 when the installed faiss has GPU support and sees a GPU.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

_GPU_RESOURCES = None


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of ``x`` (N, D) scaled to unit Euclidean norm (zero rows stay zero), float32."""
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def faiss_gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` database vectors: ``round(sqrt(n))``, at most ``n // 39`` (FAISS wants about
    39 training points per centroid), at least 1."""
    return max(1, min(int(round(math.sqrt(n))), n // 39))


def default_nprobe(nlist: int) -> int:
    """IVF lists visited per query by default: ``ceil(sqrt(nlist))`` (18 for a 100k source)."""
    return max(1, min(nlist, int(math.ceil(math.sqrt(nlist)))))


def _to_gpu(index):
    import faiss

    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, index)


def build_index(database: np.ndarray, index: str = "flat", *, nlist: Optional[int] = None, seed: int = 0,
                use_gpu: Optional[bool] = None):
    """A FAISS inner-product index over ``database`` (N, D) float32, trained (IVF) and filled.

    Args:
        database: ``(N, D)`` float32 C-contiguous array.
        index: ``flat``, ``ivf`` or ``hnsw``.
        nlist: IVF lists (default :func:`default_nlist`).
        seed: k-means seed for IVF training (the index is deterministic given the seed).
        use_gpu: None: when :func:`faiss_gpu_available`; HNSW always runs on the CPU.
    """
    import faiss

    n, d = database.shape
    gpu = faiss_gpu_available() if use_gpu is None else use_gpu
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
        if gpu:
            idx = _to_gpu(idx)
    elif index == "ivf":
        nlist = default_nlist(n) if nlist is None else max(1, min(nlist, n))
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = int(seed)
        idx.cp.niter = 10  # coarse lists only need to be roughly balanced, not converged
        idx.cp.max_points_per_centroid = 64  # subsample: training costs O(64 nlist^2 D), not O(N nlist D)
        if gpu:
            idx = _to_gpu(idx)
        idx.train(database)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 64
    else:
        raise ValueError(f"index must be flat, ivf or hnsw, got {index!r}")
    idx.add(database)
    return idx


def search_index(idx, queries: np.ndarray, k: int, *, nprobe: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (Nq, k) float32, ids (Nq, k) int64)`` of the ``k`` best matches, best first; ``-1`` ids
    where an approximate index found fewer than ``k``."""
    k = min(k, idx.ntotal)
    nlist = getattr(idx, "nlist", None)
    if nlist is None and hasattr(idx, "getNumLists"):  # GPU IVF indexes
        nlist = idx.getNumLists()
    if nlist is not None:
        probes = default_nprobe(nlist) if nprobe is None else max(1, min(nprobe, nlist))
        if hasattr(idx, "setNumProbes"):
            idx.setNumProbes(probes)
        else:
            idx.nprobe = probes
    hnsw = getattr(idx, "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(64, 2 * k)
    scores, ids = idx.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def knn_search(database: Tensor, queries: Tensor, k: int, index: str = "flat", *, nlist: Optional[int] = None,
               nprobe: Optional[int] = None, seed: int = 0, use_gpu: Optional[bool] = None
               ) -> tuple[Tensor, Tensor]:
    """The ``k`` largest inner products of each query with the database, by FAISS.

    Args:
        database: ``(N, D)`` float (L2-normalise it for cosine similarity).
        queries: ``(Nq, D)`` float.
        k: neighbours per query (clipped to ``N``).
        index: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate).

    Returns:
        ``(scores (Nq, k) float32, ids (Nq, k) int64)`` CPU tensors, best first; ``ids == -1``
        marks a missing neighbour (approximate indexes only).
    """
    db = np.ascontiguousarray(database.detach().to("cpu", torch.float32).numpy())
    q = np.ascontiguousarray(queries.detach().to("cpu", torch.float32).numpy())
    idx = build_index(db, index, nlist=nlist, seed=seed, use_gpu=use_gpu)
    scores, ids = search_index(idx, q, k, nprobe=nprobe)
    return torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64, copy=False))


def knn_search_torch(database: Tensor, queries: Tensor, k: int, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Reference exact search: ``queries @ database.T`` in chunks of queries, then ``topk``.

    Same contract as :func:`knn_search` with ``index="flat"``; runs on the tensors' device and
    returns CPU tensors.
    """
    k = min(k, database.shape[0])
    db = database.float()
    scores, ids = [], []
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start:start + chunk_size].float() @ db.T
        top = sims.topk(k, dim=1)
        scores.append(top.values.cpu())
        ids.append(top.indices.cpu())
    if not scores:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
    return torch.cat(scores), torch.cat(ids)


def knn_affinity(scores: Tensor, ids: Tensor, source_labels: Tensor, target_labels: Tensor,
                 num_source_classes: int, num_target_classes: int) -> tuple[Tensor, Tensor]:
    """Similarity-weighted share of the neighbours of each target class that carry each source label.

    With ``w_ij = max(score_ij, 0)`` (a neighbour with negative cosine similarity is not evidence
    of relatedness and gets no weight) for target image ``i`` and its ``j``-th neighbour ``n_ij``:

        mass[t]  = sum_{i: y_i = t} sum_j w_ij
        A[s, t]  = sum_{i: y_i = t} sum_{j: label(n_ij) = s} w_ij / mass[t]

    so each column with ``mass[t] > 0`` sums to one; columns with no mass are zero.

    Args:
        scores, ids: ``(N_t, k)`` from a search (ids ``-1`` are ignored).
        source_labels: ``(N_s,)`` int64; target_labels: ``(N_t,)`` int64.

    Returns:
        ``(A (Ks, Kt) float64, mass (Kt,) float64)``.
    """
    valid = ids >= 0
    weights = torch.where(valid, scores.double().clamp_min(0.0), torch.zeros((), dtype=torch.float64))
    neighbour_labels = source_labels[ids.clamp_min(0)]
    flat = neighbour_labels * num_target_classes + target_labels.view(-1, 1)
    affinity = torch.zeros(num_source_classes * num_target_classes, dtype=torch.float64)
    affinity.index_add_(0, flat.reshape(-1), weights.reshape(-1))
    affinity = affinity.view(num_source_classes, num_target_classes)
    mass = affinity.sum(0)
    affinity = torch.where(mass > 0, affinity / mass.clamp_min(1e-300), torch.zeros((), dtype=torch.float64))
    return affinity, mass
