"""Which FAISS search the ``knn`` cost runs (``--cost-index auto|flat|ivfpq``), decided by size.

Exact search compares every query with every database row: ``N * Nq * D`` multiply-adds, about
:data:`EXACT_BUDGET` (1.1e12) in 10-15 s on two CPU cores; the memory it takes is bounded either
way (the database is read in chunks). ``auto`` searches exactly below that budget, and also above
it while the queries are too few for an index to pay: IVF-PQ spends about ``N * D * (nlist + 256)``
multiply-adds before its first query (assigning every row to a list and encoding it), so it
is taken only when exact search costs more than :data:`IVFPQ_ADVANTAGE` times that, i.e. for
``Nq > 4 (nlist + 256)`` queries (measured: at 100k x 512 with 2000 queries IVF-PQ took 3x exact
search's time). IVF-PQ (Jegou et al. 2011) is a coarse k-means quantizer of ``nlist``
lists, each row stored as ``m`` product-quantiser codes of ``nbits`` bits (``m`` bytes at 8 bits
instead of ``4 D``), both trained on a seeded sample of ``train_rows`` rows; a query scans the
``nprobe`` nearest lists, and its ``refine * k`` best candidates are re-scored exactly against the
database, so the returned similarities are exact and only the recall is approximate.

:func:`choose_index` returns the decision with the sentence the run logs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

#: ``--cost-index`` values (``torch``, the matmul reference, is a library-only value).
INDEX_KINDS = ("auto", "flat", "ivfpq")

#: Multiply-adds of an exact search that ``auto`` still accepts: 2**40, about 1.1e12.
EXACT_BUDGET = 2 ** 40

#: How many times cheaper than exact search IVF-PQ's set-up must be for ``auto`` to take it.
IVFPQ_ADVANTAGE = 4

#: Candidates re-scored exactly per neighbour wanted (``refine * k`` per query). Measured on 50k x 512
#: synthetic features whose neighbours mix classes: Spearman of M against exact search 0.965 with 10,
#: 0.998 with 40 (visiting 4x more lists changed nothing: the PQ ranking, not the lists, loses them).
REFINE = 40


@dataclass(frozen=True)
class IndexChoice:
    """A search plan for ``num_rows`` database rows of dimension ``dim`` and ``num_queries`` queries.

    ``kind`` is ``flat`` (exact) or ``ivfpq``; the IVF-PQ fields are 0 for ``flat``.
    """

    kind: str
    num_rows: int
    num_queries: int
    dim: int
    reason: str
    nlist: int = 0
    m: int = 0
    nbits: int = 0
    nprobe: int = 0
    train_rows: int = 0
    refine: int = 0

    def describe(self) -> str:
        """One line for the run's log: the plan and why."""
        size = f"{self.num_rows:,} source x {self.num_queries:,} target rows x {self.dim}-d"
        if self.kind == "flat":
            return f"cost knn: exact search (FAISS flat), {size}: {self.reason}"
        return (f"cost knn: IVF-PQ search, {size}: {self.reason}; nlist {self.nlist}, {self.m} x "
                f"{self.nbits}-bit codes, nprobe {self.nprobe}, trained on {self.train_rows:,} sampled rows, "
                f"{self.refine} candidates per target image re-scored exactly")


def exact_work(num_rows: int, num_queries: int, dim: int) -> int:
    """Multiply-adds of an exact search: ``N * Nq * D``."""
    return int(num_rows) * int(num_queries) * int(dim)


def pq_subquantizers(dim: int) -> int:
    """``m``: the most sub-vectors of at least 8 dimensions that divide ``dim``, at most 128
    (64 codes at 512-d, 128 at 2048-d)."""
    m = max(1, min(128, dim // 8))
    while dim % m:
        m -= 1
    return m


def ivfpq_setup_work(num_rows: int, dim: int, nlist: int) -> int:
    """Multiply-adds IVF-PQ spends filling its index: every row against ``nlist`` coarse centroids
    and ``256`` codewords per sub-vector (``N * D * (nlist + 256)``)."""
    return int(num_rows) * int(dim) * (int(nlist) + 256)


def ivfpq_plan(num_rows: int, num_queries: int, dim: int, k: int, nprobe: Optional[int], reason: str
               ) -> IndexChoice:
    """IVF-PQ parameters for ``num_rows`` rows: ``nlist ~ sqrt(N)`` (at most ``N / 39``: k-means wants
    about 39 points per centroid), ``nprobe`` ``nlist / 8`` by default (at least 8), a training
    sample of ``max(64 nlist, 39 * 256)`` rows (at most ``N``), 8-bit codes where that sample allows
    (``39 * 2**nbits`` points per code book), else fewer bits (at least 1)."""
    nlist = max(1, min(int(round(math.sqrt(num_rows))), num_rows // 39))
    train_rows = min(num_rows, max(64 * nlist, 39 * 256))
    nbits = max(1, min(8, int(math.log2(max(2, train_rows // 39)))))
    probes = max(1, min(nlist, nprobe if nprobe is not None else max(8, nlist // 8)))
    return IndexChoice("ivfpq", num_rows, num_queries, dim, reason, nlist=nlist, m=pq_subquantizers(dim),
                       nbits=nbits, nprobe=probes, train_rows=train_rows, refine=min(num_rows, REFINE * k))


def choose_index(num_rows: int, num_queries: int, dim: int, k: int = 10, requested: str = "auto",
                 nprobe: Optional[int] = None, budget: int = EXACT_BUDGET) -> IndexChoice:
    """The search the ``knn`` cost runs for ``num_rows`` database rows and ``num_queries`` queries.

    Args:
        requested: ``auto`` (exact while :func:`exact_work` ``<= budget`` or while it is under
            :data:`IVFPQ_ADVANTAGE` times :func:`ivfpq_setup_work`, else IVF-PQ), ``flat`` (exact,
            whatever the size) or ``ivfpq``.
        nprobe: IVF lists visited per query (``--cost-nprobe``); None: :func:`ivfpq_plan`'s default.
        budget: the largest exact search ``auto`` accepts, in multiply-adds.
    """
    if requested not in INDEX_KINDS:
        raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got {requested!r}")
    work = exact_work(num_rows, num_queries, dim)
    if requested == "flat":
        return IndexChoice("flat", num_rows, num_queries, dim, "forced by --cost-index flat")
    if requested == "ivfpq":
        return ivfpq_plan(num_rows, num_queries, dim, k, nprobe, "forced by --cost-index ivfpq")
    if work <= budget:
        return IndexChoice("flat", num_rows, num_queries, dim,
                           f"{work:.2g} multiply-adds <= the exact-search budget {budget:.2g}")
    plan = ivfpq_plan(num_rows, num_queries, dim, k, nprobe, "")
    setup = ivfpq_setup_work(num_rows, dim, plan.nlist)
    if work <= IVFPQ_ADVANTAGE * setup:
        return IndexChoice("flat", num_rows, num_queries, dim,
                           f"{work:.2g} multiply-adds, over the budget {budget:.2g}, but too few target rows for "
                           f"IVF-PQ to pay (its set-up alone takes {setup:.2g}; --cost-index ivfpq forces it)")
    return dataclasses.replace(plan, reason=f"exact search would take {work:.2g} multiply-adds > {budget:.2g} and "
                                            f"> {IVFPQ_ADVANTAGE} x IVF-PQ's set-up {setup:.2g} "
                                            f"(--cost-index flat forces exact search)")
