"""Nearest-neighbour search and the k-NN class affinity behind the ``knn`` cost.

Search is maximum inner product; with ``cosine=True`` every row is L2-normalised first (chunk by
chunk), so the scores are cosine similarities. The database is read in row chunks of
:func:`~tllib_jtln.cost.paging.chunk_rows` rows, so it may be an fp16 tensor memory-mapped from disk
(:class:`~tllib_jtln.cost.feature_store.FeatureStore`): it is never copied whole, and the memory
a search takes is one float32 chunk plus the ``(Nq, k)`` results (plus an IVF index's codes: ``D``
bytes a row for 8-bit scalar codes, ``m`` for product codes). Plans (:mod:`tllib_jtln.cost.index_choice`, ``--cost-index``):

- ``flat``: exact; each chunk searched with ``faiss.IndexFlatIP`` (on GPU 0 when the installed
  faiss has GPU support and sees a GPU), the running top ``k`` merged;
- ``ivfsq``, ``ivfpq``: ``faiss.IndexIVFScalarQuantizer`` or ``faiss.IndexIVFPQ`` trained on a seeded
  sample, filled chunk by chunk; each query's ``refine`` best candidates are re-scored exactly
  against the database rows;
- ``torch``: :func:`knn_search_torch`, chunked matmul + ``topk``: the reference implementation.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .index_choice import IndexChoice, choose_index
from .paging import chunk_rows, gather_rows, row_chunks

_GPU_RESOURCES = None


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of ``x`` (N, D) scaled to unit Euclidean norm (zero rows stay zero), float32."""
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def iter_chunks(x: Tensor, rows: int, cosine: bool) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, chunk (rows, D) float32 C-contiguous numpy)`` over ``x`` (any float dtype, e.g. an
    fp16 memory map, whose pages are released behind the reader: :func:`~tllib_jtln.cost.paging.row_chunks`),
    L2-normalised when ``cosine``."""
    for start, chunk in row_chunks(x, rows):
        chunk = chunk.float()
        if cosine:
            chunk = l2_normalize(chunk)
        yield start, np.ascontiguousarray(chunk.numpy())


def faiss_gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_gpu(index):
    import faiss

    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, index)


def merge_topk(best: Optional[tuple[Tensor, Tensor]], scores: Tensor, ids: Tensor, k: int
               ) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of the running ``best = (scores (Nq, k'), ids (Nq, k'))`` and a new
    ``(scores, ids)`` block, best first."""
    if best is not None:
        scores, ids = torch.cat([best[0], scores], 1), torch.cat([best[1], ids], 1)
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.values, ids.gather(1, top.indices)


def exact_search(database: Tensor, queries: np.ndarray, k: int, *, cosine: bool = False,
                 use_gpu: Optional[bool] = None) -> tuple[Tensor, Tensor]:
    """Exact top ``k`` inner products of ``queries`` (Nq, D) float32 over ``database`` (N, D), one
    chunk of the database at a time."""
    import faiss

    gpu = faiss_gpu_available() if use_gpu is None else use_gpu
    best = None
    for start, chunk in iter_chunks(database, chunk_rows(database.shape[1]), cosine):
        index = faiss.IndexFlatIP(chunk.shape[1])
        if gpu:
            index = _to_gpu(index)
        index.add(chunk)
        scores, ids = index.search(queries, min(k, chunk.shape[0]))
        best = merge_topk(best, torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64)) + start, k)
    return best


def sample_rows(database: Tensor, count: int, seed: int, cosine: bool) -> np.ndarray:
    """``count`` distinct rows of ``database`` drawn with a seeded generator, in row order (reads
    from a memory map stay sequential), as float32 numpy."""
    gen = torch.Generator().manual_seed(int(seed))
    rows = torch.randperm(database.shape[0], generator=gen)[:count].sort().values
    sample = gather_rows(database, rows).float()
    return np.ascontiguousarray((l2_normalize(sample) if cosine else sample).numpy())


def build_ivf(database: Tensor, plan: IndexChoice, *, seed: int = 0, cosine: bool = False):
    """A FAISS inverted-file index (inner product) as ``plan`` says (``ivfsq``:
    ``IndexIVFScalarQuantizer``; ``ivfpq``: ``IndexIVFPQ``), trained on a seeded sample of
    ``plan.train_rows`` rows and filled chunk by chunk."""
    import faiss

    dim = database.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if plan.kind == "ivfsq":
        codes = {8: faiss.ScalarQuantizer.QT_8bit, 4: faiss.ScalarQuantizer.QT_4bit}[plan.nbits]
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, plan.nlist, codes, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, plan.nlist, plan.m, plan.nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed, index.pq.cp.niter = int(seed), 10
    # The coarse lists only need to be roughly balanced, and candidates are re-scored exactly, so 10
    # k-means iterations (not FAISS's 25) suffice (recall@10 0.998 at 100k x 512).
    index.cp.seed, index.cp.niter = int(seed), 10
    sample = sample_rows(database, plan.train_rows, seed, cosine)
    # PQ trains on one thread: its many small k-means (one per sub-vector) pay more for OpenMP's
    # barriers than a second thread gives (20k x 512: 5 s on one thread, 45 s on two of a busy 2-core
    # machine). The scalar quantiser's training is the coarse k-means alone, one large product.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if plan.kind == "ivfpq" else threads)
    try:
        index.train(sample)
    finally:
        faiss.omp_set_num_threads(threads)
    for _, chunk in iter_chunks(database, chunk_rows(dim), cosine):
        index.add(chunk)
    index.nprobe = plan.nprobe
    return index


def rescore(database: Tensor, queries: np.ndarray, ids: Tensor, k: int, cosine: bool) -> tuple[Tensor, Tensor]:
    """Exact scores of candidate ids ``(Nq, c)`` (``-1``: none) against ``database``; the ``k`` best.

    Queries go a block at a time, ``block * c`` database rows gathered at once (about 64 MB of float32)."""
    block = max(1, (1 << 24) // max(1, ids.shape[1] * database.shape[1]))
    scores, found = [], []
    for start in range(0, ids.shape[0], block):
        cand = ids[start:start + block]
        rows = gather_rows(database, cand.clamp_min(0).reshape(-1)).float()
        rows = (l2_normalize(rows) if cosine else rows).view(*cand.shape, -1)  # (block, c, D)
        sims = torch.einsum("qd,qcd->qc", torch.from_numpy(queries[start:start + block]), rows)
        top = sims.masked_fill(cand < 0, float("-inf")).topk(min(k, cand.shape[1]), dim=1)
        ids_top = cand.gather(1, top.indices)
        scores.append(top.values.masked_fill(ids_top < 0, 0.0))
        found.append(ids_top)
    return torch.cat(scores), torch.cat(found)


def ivf_search(database: Tensor, queries: np.ndarray, k: int, plan: IndexChoice, *, seed: int = 0,
               cosine: bool = False) -> tuple[Tensor, Tensor]:
    """Top ``k`` by an IVF index's candidates (``plan.refine`` per query) re-scored exactly."""
    index = build_ivf(database, plan, seed=seed, cosine=cosine)
    _, candidates = index.search(queries, max(k, plan.refine))
    return rescore(database, queries, torch.from_numpy(candidates.astype(np.int64)), k, cosine)


def knn_search(database: Tensor, queries: Tensor, k: int, index: Union[str, IndexChoice] = "auto", *,
               nprobe: Optional[int] = None, seed: int = 0, cosine: bool = False,
               use_gpu: Optional[bool] = None) -> tuple[Tensor, Tensor]:
    """The ``k`` largest inner products of each query with the database, by FAISS.

    Args:
        database: ``(N, D)`` float of any precision, e.g. an fp16 memory map; read in chunks.
        queries: ``(Nq, D)`` float.
        k: neighbours per query (clipped to ``N``).
        index: ``auto``, ``flat`` (exact), ``ivfsq`` or ``ivfpq``
            (:func:`~tllib_jtln.cost.index_choice.choose_index`),
            or a ready :class:`~tllib_jtln.cost.index_choice.IndexChoice`.
        nprobe: IVF lists visited per query.
        seed: seed of the IVF training sample and k-means.
        cosine: L2-normalise database and queries first (scores are cosine similarities).
        use_gpu: exact search on GPU 0; None: when :func:`faiss_gpu_available`.

    Returns:
        ``(scores (Nq, k) float32, ids (Nq, k) int64)`` CPU tensors, best first; ``ids == -1``
        marks a missing neighbour (IVF only, when the visited lists hold fewer than ``k`` rows).
    """
    k = min(k, database.shape[0])
    q = queries.detach().to("cpu", torch.float32)
    q = np.ascontiguousarray((l2_normalize(q) if cosine else q).numpy())
    plan = index if isinstance(index, IndexChoice) else choose_index(
        database.shape[0], q.shape[0], database.shape[1], k, index, nprobe)
    if plan.kind != "flat":
        return ivf_search(database, q, k, plan, seed=seed, cosine=cosine)
    return exact_search(database, q, k, cosine=cosine, use_gpu=use_gpu)


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
