"""The cost matrix at scale: ``knn`` and ``centroid`` built from fp16 source features memory-mapped
from disk, as ``--feature-cache`` stores them, at Ns = 10k, 100k, 1M and 1.28M source images.

Synthetic, clustered features: Ks = 1000 source classes in 50 families (family centre
``f ~ N(0, 4 I)``, class centre ``f + N(0, I)``, image ``centre + N(0, 2.5^2 I)``, all divided by
``sqrt(D)``), Kt = 200 target classes each drawn around one source class, Nt = 2000 target
images (10 per class: the few-shot target set), D = 512 and 2048. For each size, every case runs
in a fresh process (``python benchmarks/bench_cost_scale.py CASE NS DIM FOLDER``), so its peak
resident memory (``VmHWM``, which counts the mapped feature pages it holds) is its own; the
features file is written before and not timed. Cases:

- ``knn``: ``--cost-index auto`` (the run's default; ``index`` says what it chose);
- ``knn-exact``: ``flat`` forced (not rerun where ``auto`` already searched exactly);
- ``knn-ivfsq``: the IVF index with 8-bit scalar codes forced (what ``auto`` takes for many target
  images); ``knn-ivfpq``: IVF-PQ forced; ``knn-sampled``: ``source_per_class=100`` (exact search);
- ``centroid``; ``centroid-sampled``: ``source_per_class=100``.

``extra_info`` holds, per case, ``s`` (build time), ``rss_mb`` and, against the exact cost
(``knn`` under ``flat``, ``centroid``), ``spearman`` and ``same_nearest_source``
(:func:`tllib_jtln.cost.agreement.cost_agreement`).

Test mode (``--benchmark-disable``, the suite's one run): one small size (6000 x 64, 20 and 10
classes), in process, seconds. Real sizes under ``--benchmark-only`` or with
``TLLIB_JTLN_COST_SCALE=full``; ``TLLIB_JTLN_COST_SCALE_SIZES="512:10000,100000"`` picks sizes.

    OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_cost_scale.py --benchmark-only -s
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tllib_jtln.cost import build_cost
from tllib_jtln.cost.agreement import cost_agreement

FULL_SIZES = {512: (10_000, 100_000, 1_000_000, 1_281_167), 2048: (10_000, 100_000, 1_000_000)}
TINY = {"ks": 20, "kt": 10, "families": 5, "per_target": 10}
REAL = {"ks": 1000, "kt": 200, "families": 50, "per_target": 10}
CASES = {  # name: (cost, options)
    "knn": ("knn", {}),
    "knn-exact": ("knn", {"index": "flat"}),
    "knn-ivfsq": ("knn", {"index": "ivfsq"}),
    "knn-ivfpq": ("knn", {"index": "ivfpq"}),
    "knn-sampled": ("knn", {"source_per_class": 100}),
    "centroid": ("centroid", {}),
    "centroid-sampled": ("centroid", {"source_per_class": 100}),
}
EXACT = {"knn": "knn-exact", "centroid": "centroid"}
#: Image noise around its class centre: at 2.5 a target image's 10 nearest source images mix its
#: class with others of the family (655 of the 200k entries of M below 1 at 50k x 512), as real
#: features do; at 1 they all come from one class and every approximation agrees trivially.
NOISE = 2.5


def write_problem(folder: Path, ns: int, dim: int, shape: dict, seed: int = 0) -> None:
    """``source.f16`` (ns, dim) float16 memory map, ``source_labels.npy``, ``target.npy`` (Nt, dim)
    float32, ``target_labels.npy``, written in chunks of 65536 rows."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    scale = dim ** -0.5
    family = torch.randn(shape["families"], dim, generator=g) * 2
    centres = family[torch.arange(shape["ks"]) % shape["families"]] + torch.randn(shape["ks"], dim, generator=g)
    pairing = torch.randperm(shape["ks"], generator=g)[:shape["kt"]]
    labels = torch.randint(0, shape["ks"], (ns,), generator=g)
    source = np.memmap(folder / "source.f16", dtype=np.float16, mode="w+", shape=(ns, dim))
    for start in range(0, ns, 1 << 16):
        y = labels[start:start + (1 << 16)]
        noise = NOISE * torch.randn(len(y), dim, generator=g)
        source[start:start + len(y)] = ((centres[y] + noise) * scale).half().numpy()
    source.flush()
    del source
    tl = torch.arange(shape["kt"]).repeat_interleave(shape["per_target"])
    target = (centres[pairing[tl]] + NOISE * torch.randn(len(tl), dim, generator=g)) * scale
    np.save(folder / "source_labels.npy", labels.numpy())
    np.save(folder / "target.npy", target.numpy())
    np.save(folder / "target_labels.npy", tl.numpy())


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of ``/proc/self/status`` where there is
    one (``ru_maxrss`` carries the parent's resident set over ``fork`` + ``exec``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, folder: Path, ns: int, dim: int, shape: dict) -> dict:
    """Build one case's cost from the memory-mapped features; ``{"s", "rss_mb", "index"}``; the
    matrix is saved as ``{case}.npy`` in ``folder``."""
    name, options = CASES[case]
    source = torch.from_numpy(np.memmap(folder / "source.f16", dtype=np.float16, mode="c", shape=(ns, dim)))
    sl = torch.from_numpy(np.load(folder / "source_labels.npy"))
    tf, tl = torch.from_numpy(np.load(folder / "target.npy")), torch.from_numpy(np.load(folder / "target_labels.npy"))
    said: list[str] = []
    start = time.perf_counter()
    cost = build_cost(name, source, sl, tf, tl, num_source_classes=shape["ks"], num_target_classes=shape["kt"],
                      k=10, log=said.append, **options)
    seconds = time.perf_counter() - start
    np.save(folder / f"{case}.npy", cost.numpy())
    index = next((m.split(" search")[0].removeprefix("cost knn: ") for m in said if m.startswith("cost knn")), "-")
    return {"s": round(seconds, 2), "rss_mb": round(peak_rss_mb()), "index": index}


def run_case_in_child(case: str, folder: Path, ns: int, dim: int) -> dict:
    out = subprocess.run([sys.executable, __file__, case, str(ns), str(dim), str(folder)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_size(folder: Path, ns: int, dim: int, shape: dict, in_child: bool) -> dict:
    """Every case at one size, and each approximation's agreement with its exact cost."""
    write_problem(folder, ns, dim, shape)
    results = {}
    for case in CASES:
        if case == "knn-exact" and results["knn"]["index"] == "exact":  # auto searched exactly: the same run
            (folder / "knn-exact.npy").write_bytes((folder / "knn.npy").read_bytes())
            results[case] = dict(results["knn"])
            continue
        results[case] = (run_case_in_child(case, folder, ns, dim) if in_child
                         else run_case(case, folder, ns, dim, shape))
    for case, result in results.items():
        exact = EXACT[CASES[case][0]]
        if case != exact:
            result.update({k: round(v, 4) for k, v in cost_agreement(
                torch.from_numpy(np.load(folder / f"{case}.npy")), torch.from_numpy(np.load(folder / f"{exact}.npy"))
            ).items()})
    for path in folder.iterdir():
        path.unlink()
    return results


def _full(benchmark) -> bool:
    return not benchmark.disabled or os.environ.get("TLLIB_JTLN_COST_SCALE") == "full"


def _sizes() -> list[tuple[int, int]]:
    spec = os.environ.get("TLLIB_JTLN_COST_SCALE_SIZES")
    if not spec:
        return [(dim, ns) for dim, sizes in FULL_SIZES.items() for ns in sizes]
    return [(int(dim), int(ns)) for part in spec.split(";") for dim, sizes in [part.split(":")]
            for ns in sizes.split(",")]


def test_cost_scale(benchmark, tmp_path):
    full = _full(benchmark)
    sizes = _sizes() if full else [(64, 6_000)]  # the test suite's run: one small size, in process

    def sweep() -> dict:
        table = {}
        for dim, ns in sizes:
            table[f"{dim}-d {ns}"] = measure_size(tmp_path / f"{dim}-{ns}", ns, dim, REAL if full else TINY,
                                                  in_child=full)
            print(f"\n{dim}-d, Ns = {ns:,}: {json.dumps(table[f'{dim}-d {ns}'])}", flush=True)
        return table

    table = benchmark.pedantic(sweep, rounds=1, iterations=1)
    benchmark.extra_info.update(table)
    if not full:
        results = table["64-d 6000"]
        assert results["knn"]["index"] == "exact" and results["knn-ivfpq"]["index"] == "IVF-PQ"
        assert results["knn-ivfpq"]["same_nearest_source"] >= 0.9
        assert results["knn-ivfsq"]["index"] == "IVF-SQ" and results["knn-ivfsq"]["same_nearest_source"] >= 0.9
        assert results["centroid-sampled"]["spearman"] >= 0.99


if __name__ == "__main__":  # one case in a fresh process: python bench_cost_scale.py CASE NS DIM FOLDER
    case_name, rows, width, where = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    print(json.dumps(run_case(case_name, where, rows, width, REAL)))
