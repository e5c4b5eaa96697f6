"""Which FAISS search the ``knn`` cost runs (``--cost-index auto|flat|ivfsq|ivfpq``), decided by size.

Exact search compares every query with every database row: ``N * Nq * D`` multiply-adds, about
:data:`EXACT_BUDGET` (1.1e12) in 10-15 s on two CPU cores; the memory it takes is bounded either
way (the database is read in chunks). ``auto`` searches exactly below that budget, and also above
it while the queries are too few for an index to pay: an inverted file (IVF, a coarse k-means
quantizer of ``nlist`` lists) spends about ``N * D * nlist`` multiply-adds before its first query
(assigning every row to a list; product-quantiser codes add ``N * D * 256`` to encode), so it is
taken only when exact search costs more than :data:`IVF_ADVANTAGE` times that (measured: at 100k
x 512 with 2000 queries IVF-PQ took 3x exact search's time). A query scans the ``nprobe``
nearest lists, and its ``refine`` best candidates are re-scored exactly against the database, so
the returned similarities are exact and only the recall is approximate. The rows are stored as
compressed codes, trained on a seeded sample of ``train_rows`` rows:

- ``ivfsq`` (FAISS ``IndexIVFScalarQuantizer``): every dimension quantised uniformly to ``nbits``
  (8, or 4 where 8-bit codes would pass :data:`CODE_BUDGET`): ``D`` bytes a row at 8 bits. Its
  ranking is close enough to the exact one that ``10 k`` candidates keep every neighbour
  (measured at 1.28M x 512, the benchmark's clustered features: Spearman of ``M`` against exact
  search 1.000 with 100 candidates, where IVF-PQ with 400 reached 0.976). ``auto`` takes it.
- ``ivfpq`` (``IndexIVFPQ``, Jegou et al. 2011): ``m`` product-quantiser codes of ``nbits`` bits,
  ``m`` bytes a row (64 at 512-d: 8x smaller than 8-bit scalar codes), a coarser ranking;
  ``auto`` takes it only when even 4-bit scalar codes would pass :data:`CODE_BUDGET`.

:func:`choose_index` returns the decision with the sentence the run logs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

#: ``--cost-index`` values (``torch``, the matmul reference, is a library-only value).
INDEX_KINDS = ("auto", "flat", "ivfsq", "ivfpq")

#: Multiply-adds of an exact search that ``auto`` still accepts: 2**40, about 1.1e12.
EXACT_BUDGET = 2 ** 40

#: How many times cheaper than exact search an IVF index's set-up must be for ``auto`` to take it.
IVF_ADVANTAGE = 4

#: The most bytes of scalar codes ``auto`` holds in memory (1 GiB: 8-bit codes of 2M x 512 rows).
CODE_BUDGET = 2 ** 30

#: Candidates re-scored exactly per neighbour wanted (``refine * k`` per query), by code. PQ: measured
#: on 50k x 512 synthetic features whose neighbours mix classes, Spearman of M against exact search
#: 0.965 with 10, 0.998 with 40 (visiting 4x more lists changed nothing: the PQ ranking, not the
#: lists, loses them), but 0.976 with 40 at 1.28M; SQ: 1.000 with 10 at 1.28M (4-bit: with 20).
REFINE = {"ivfpq": 40, "ivfsq": 10}


@dataclass(frozen=True)
class IndexChoice:
    """A search plan for ``num_rows`` database rows of dimension ``dim`` and ``num_queries`` queries.

    ``kind`` is ``flat`` (exact), ``ivfsq`` or ``ivfpq``; the IVF fields are 0 for ``flat``, ``m`` is 0
    for ``ivfsq`` (whose ``nbits`` are per dimension).
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
        if self.kind == "ivfsq":
            codes = f"{self.nbits}-bit scalar codes ({self.dim * self.nbits // 8} bytes a row)"
            name = "IVF-SQ"
        else:
            codes = f"{self.m} x {self.nbits}-bit product codes ({self.m * self.nbits // 8} bytes a row)"
            name = "IVF-PQ"
        return (f"cost knn: {name} search, {size}: {self.reason}; nlist {self.nlist}, {codes}, nprobe "
                f"{self.nprobe}, trained on {self.train_rows:,} sampled rows, {self.refine} candidates per "
                f"target image re-scored exactly")


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


def ivf_setup_work(kind: str, num_rows: int, dim: int, nlist: int) -> int:
    """Multiply-adds an IVF index spends filling itself: every row against ``nlist`` coarse centroids
    (``N * D * nlist``), and for ``ivfpq`` against ``256`` codewords per sub-vector (``+ N * D * 256``)."""
    return int(num_rows) * int(dim) * (int(nlist) + (256 if kind == "ivfpq" else 0))


def sq_bits(num_rows: int, dim: int, budget: int = CODE_BUDGET) -> int:
    """Bits per dimension of ``ivfsq``'s codes: 8 while ``N * D`` bytes fit ``budget``, else 4; 0 when
    even 4-bit codes do not (``auto`` then takes ``ivfpq``)."""
    for bits in (8, 4):
        if num_rows * dim * bits // 8 <= budget:
            return bits
    return 0


def ivf_plan(kind: str, num_rows: int, num_queries: int, dim: int, k: int, nprobe: Optional[int], reason: str
             ) -> IndexChoice:
    """IVF parameters for ``num_rows`` rows: ``nlist ~ sqrt(N)`` (at most ``N / 39``: k-means wants
    about 39 points per centroid), ``nprobe`` ``nlist / 8`` by default (at least 8), a training
    sample of ``max(64 nlist, 39 * 256)`` rows (at most ``N``). ``ivfpq``: 8-bit codes where that
    sample allows (``39 * 2**nbits`` points per code book), else fewer bits (at least 1);
    ``ivfsq``: :func:`sq_bits`, or 4 where even 4-bit codes pass the budget (forced by the user);
    4-bit codes re-score twice as many candidates."""
    nlist = max(1, min(int(round(math.sqrt(num_rows))), num_rows // 39))
    train_rows = min(num_rows, max(64 * nlist, 39 * 256))
    probes = max(1, min(nlist, nprobe if nprobe is not None else max(8, nlist // 8)))
    if kind == "ivfpq":
        m, nbits = pq_subquantizers(dim), max(1, min(8, int(math.log2(max(2, train_rows // 39)))))
    else:
        m, nbits = 0, sq_bits(num_rows, dim) or 4
    refine = REFINE[kind] * (2 if kind == "ivfsq" and nbits < 8 else 1)
    return IndexChoice(kind, num_rows, num_queries, dim, reason, nlist=nlist, m=m, nbits=nbits, nprobe=probes,
                       train_rows=train_rows, refine=min(num_rows, refine * k))


def choose_index(num_rows: int, num_queries: int, dim: int, k: int = 10, requested: str = "auto",
                 nprobe: Optional[int] = None, budget: int = EXACT_BUDGET) -> IndexChoice:
    """The search the ``knn`` cost runs for ``num_rows`` database rows and ``num_queries`` queries.

    Args:
        requested: ``auto`` (exact while :func:`exact_work` ``<= budget`` or while it is under
            :data:`IVF_ADVANTAGE` times the index's :func:`ivf_setup_work`, else ``ivfsq``, or ``ivfpq``
            where scalar codes would pass :data:`CODE_BUDGET`), ``flat`` (exact, whatever the size),
            ``ivfsq`` or ``ivfpq``.
        nprobe: IVF lists visited per query (``--cost-nprobe``); None: :func:`ivf_plan`'s default.
        budget: the largest exact search ``auto`` accepts, in multiply-adds.
    """
    if requested not in INDEX_KINDS:
        raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got {requested!r}")
    work = exact_work(num_rows, num_queries, dim)
    if requested == "flat":
        return IndexChoice("flat", num_rows, num_queries, dim, "forced by --cost-index flat")
    if requested in ("ivfsq", "ivfpq"):
        return ivf_plan(requested, num_rows, num_queries, dim, k, nprobe, f"forced by --cost-index {requested}")
    if work <= budget:
        return IndexChoice("flat", num_rows, num_queries, dim,
                           f"{work:.2g} multiply-adds <= the exact-search budget {budget:.2g}")
    kind = "ivfsq" if sq_bits(num_rows, dim) else "ivfpq"
    plan = ivf_plan(kind, num_rows, num_queries, dim, k, nprobe, "")
    setup = ivf_setup_work(kind, num_rows, dim, plan.nlist)
    if work <= IVF_ADVANTAGE * setup:
        return IndexChoice("flat", num_rows, num_queries, dim,
                           f"{work:.2g} multiply-adds, over the budget {budget:.2g}, but too few target rows for "
                           f"an IVF index to pay (its set-up alone takes {setup:.2g}; --cost-index {kind} forces it)")
    return dataclasses.replace(plan, reason=f"exact search would take {work:.2g} multiply-adds > {budget:.2g} and "
                                            f"> {IVF_ADVANTAGE} x the index's set-up {setup:.2g} "
                                            f"(--cost-index flat forces exact search)")
