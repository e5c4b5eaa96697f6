"""The accuracy suite: methods x settings x seeds, one log folder per run, resumable.

A suite file (YAML, ``yaml.safe_load``; checked as a whole by :mod:`~tllib_jtln.bench.schema`)::

    name: fashion_mnist            # used in the table title
    out: logs/suite/fashion_mnist  # one folder per run under it
    seeds: [0, 1, 2]
    base: {epochs: 10}             # Config keys shared by every run
    settings:                      # columns of the table
      K1: {num_samples_per_class: 1}
      K5: {num_samples_per_class: 5}
    methods:                       # rows of the table
      erm: {method: erm}
      jtln: {method: jtln, cost: knn}
      lwf: {method: lwf, lr: 0.001, per_setting: {K5: {lr: 0.01}}}  # a row's values in one column only
    pairs:                         # optional paired differences (same seeds, same data)
      - [jtln, joint]
    splits: [random:0, random:1]   # optional: class splits (--class-split), a factor like the seeds

Run ``r`` = (method row, setting column, seed) writes ``out/<setting>/<row>/seed<seed>/`` (so row and
setting names are folder names: no ``/`` and no ``..``); with ``splits``, every run is repeated on
each class split, in ``out/<setting>/<row>/<split>/seed<seed>/`` (the split's ``:`` and ``/`` as
``_`` and ``-``: ``random_3``), and the paired unit of the tables is (split, seed). Every run's settings are checked as
``train`` checks them before the first run starts (and by ``--dry-run``); ``overwrite`` and
``resume`` are refused in a suite file, as in any ``--config`` file. A run
whose ``summary.json`` exists is not redone; one with a checkpoint but no summary is resumed; one
whose recorded recipe (``suite_recipe.yaml``) differs from the suite file's is moved aside to
``<out>.stale/`` and redone (:mod:`~tllib_jtln.bench.runfolder`).
Each run is a separate ``python -m tllib_jtln train`` process, so one failing run is reported and
the others go on. One ``bench`` writes to an ``out`` at a time (``out/.lock``, as a log folder's).
Ctrl-C (SIGINT to ``bench`` or to its process group; also SIGTERM, and SIGINT to a ``bench``
started in the background, which inherits it ignored) stops it at once
(:mod:`~tllib_jtln.bench.children`): no queued run starts, running ones are ended; finished runs and
the checkpoints of stopped ones are kept, so the same command continues. At the end ``results_<name>.json`` (every run's numbers) and ``results_<name>.md`` (mean +-
std over seeds) are written; see :mod:`tllib_jtln.bench.report`.
"""
from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ..engine.logdir import lock_log_dir
from ..errors import UserError, one_line
from ..fileio import write_text
from .children import Child, run_side_by_side
from .report import collect_results, write_report
from .runfolder import StaleArea, read_recipe, read_summary, refuse_symlinks
from .schema import PER_SETTING, load_suite, path_text

__all__ = ["SuiteRun", "load_suite", "expand_runs", "select_runs", "check_runs", "run_one", "run_suite"]

@dataclass(frozen=True)
class SuiteRun:
    """One training run of the suite."""

    row: str
    setting: str
    seed: int
    settings: dict  # the Config keys of this run, without log/seed
    split: Optional[str] = None  # the class split of the suite's ``splits`` (None: the suite has none)

    @property
    def name(self) -> str:
        split = "" if self.split is None else split_folder(self.split) + "/"
        return f"{self.setting}/{self.row}/{split}seed{self.seed}"


def split_folder(split: str) -> str:
    """The folder name of a class split: ``random:3:6/4`` -> ``random_3_6-4``."""
    return split.replace(":", "_").replace("/", "-")


PER_SETTING = "per_setting"  # in a method row: {setting: {Config key: value}} for that column only
def check_runs(runs: list["SuiteRun"], path, out: Path) -> None:
    """Resolve every run's settings as ``train`` would (ranges, a known method), without training."""
    from ..settings import resolve_settings

    for run in runs:
        try:
            resolve_settings({**run.settings, "seed": run.seed, "log": str(out / run.name)})
        except UserError as exc:
            raise UserError(f"--suite {path}: run {run.name}: {exc}") from None


def expand_runs(suite: dict) -> list[SuiteRun]:
    """Every (row, setting, split, seed), settings merged as base < setting < method row < the row's
    ``per_setting`` values for that setting (< the split)."""
    runs = []
    for setting, setting_values in suite["settings"].items():
        for row, row_values in suite["methods"].items():
            row_values = dict(row_values or {})
            only_here = (row_values.pop(PER_SETTING, None) or {}).get(setting) or {}
            for split in suite.get("splits") or [None]:
                for seed in suite["seeds"]:
                    merged = {**suite["base"], **(setting_values or {}), **row_values, **only_here}
                    if split is not None:
                        merged["class_split"] = split
                    runs.append(SuiteRun(row, setting, seed, merged, split))
    return runs


def train_command(recipe: Path, log_dir: Path, resume: bool) -> list[str]:
    """The ``train`` process of one run."""
    return [sys.executable, "-m", "tllib_jtln", "train", "--config", str(recipe), "--log", str(log_dir),
            "--no-progress", *(["--resume"] if resume else [])]


def start_run(run: SuiteRun, out: Path, stale: StaleArea, threads: int | None = None) -> Child | str:
    """Start one run's ``train`` process, or return its final status when it needs none:
    'skipped' (finished) or 'failed: ...' (a folder or file bench cannot use, named)."""
    log_dir = out / run.name
    wanted = {**run.settings, "seed": run.seed}
    try:
        refuse_symlinks(out, run.name)
        recipe = read_recipe(log_dir)
        if recipe is not None and recipe != wanted:
            stale.move(log_dir, run.name)
        if read_summary(log_dir) is not None:
            return "skipped"
        log_dir.mkdir(parents=True, exist_ok=True)
        recipe_path = write_text(yaml.safe_dump(wanted, sort_keys=True), log_dir / "suite_recipe.yaml")
        resume = (log_dir / "checkpoints" / "last.pt").is_file()
        env = os.environ.copy()
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        return Child(run.name, train_command(recipe_path, log_dir, resume), log_dir / "stdout.txt", env)
    except UserError as exc:
        return f"failed: {one_line(exc)}"
    except OSError as exc:  # a folder that cannot be written: this run fails, the others go on
        return f"failed: {exc.filename or log_dir}: {exc.strerror or exc}"


def run_one(run: SuiteRun, out: Path, threads: int | None = None) -> tuple[str, float]:
    """Train one run in its own process and wait; returns its status ('done', 'skipped', 'failed: ...')
    and seconds. ``threads``: intra-op threads of that process (OMP_NUM_THREADS), for parallel runs."""
    child = start_run(run, out, StaleArea(out), threads)
    if isinstance(child, str):
        return child, 0.0
    child.proc.wait()
    return child.status()


def select_runs(runs: list[SuiteRun], only: str) -> list[SuiteRun]:
    """The runs whose name (``<setting>/<row>/seed<k>``) matches one of the comma-separated shell
    patterns of ``only`` (``fnmatch``), in the suite's order."""
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    return [r for r in runs if any(fnmatch.fnmatch(r.name, p) for p in patterns)]


def lock_out(out_dir: Path) -> None:
    """Own the suite's ``out`` for this process (one ``bench`` per ``out``, as one run per log folder)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out: {out_dir}: cannot create it ({exc.strerror or exc}); give another --out") from None
    busy = f"out: {out_dir} is in use by another `tllib-jtln bench` (pid {{pid}}); wait for it to end, " \
           f"or give another --out"
    if not out_dir.is_dir() or not lock_log_dir(out_dir, busy):
        raise UserError(f"out: {out_dir}: not a writable folder; give another --out")


def run_runs(runs: list[SuiteRun], out_dir: Path, jobs: int) -> int:
    """Run ``runs``, ``jobs`` at a time (each with ``cpu_count // jobs`` threads); prints one line per
    run and returns the number that failed. Ctrl-C stops every child (:mod:`~tllib_jtln.bench.children`)."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    stale, counts = StaleArea(out_dir), {"done": 0, "failed": 0}

    def start(run: SuiteRun) -> Child | tuple[str, str]:
        child = start_run(run, out_dir, stale, threads)
        return (run.name, child) if isinstance(child, str) else child

    def report(name: str, status: str, seconds: float) -> None:
        counts["done"] += 1
        counts["failed"] += status.startswith("failed")
        print(f"[{counts['done']}/{len(runs)}] {name}: {status} ({seconds:.0f} s)", flush=True)

    run_side_by_side(runs, jobs, start, report)
    return counts["failed"]


def run_suite(path: str, out: str | None = None, dry_run: bool = False, only: str | None = None,
              jobs: int = 1, report_only: bool = False, results_doc: str | None = None) -> int:
    """``tllib-jtln bench --suite FILE``: run what is not finished, then write the tables.

    ``jobs`` runs go side by side, each with ``cpu_count // jobs`` threads. ``report_only``: run
    nothing (no lock taken: a running bench may hold ``out``), write the tables of the finished
    runs. ``results_doc``: also put the tables into that page as the suite's own section
    (:func:`~tllib_jtln.bench.results_doc.update_results_doc`)."""
    suite = load_suite(path)
    out_dir = Path(path_text(out, "--out") if out is not None else suite["out"])
    runs = expand_runs(suite)
    if only:
        runs = select_runs(runs, only)
        if not runs:
            raise UserError(f"--only {only!r} matches none of the suite's {len(expand_runs(suite))} runs "
                            f"(names are SETTING/ROW/seedN, e.g. {expand_runs(suite)[0].name}); "
                            f"see them with --dry-run")
    check_runs(runs, path, out_dir)
    if dry_run:
        for run in runs:
            print(run.name, " ".join(f"{k}={v}" for k, v in sorted(run.settings.items())))
        print(f"{len(runs)} runs -> {out_dir}")
        return 0
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    failures = []
    if not report_only:
        lock_out(out_dir)
        failures = run_runs(runs, out_dir, jobs)
    every = expand_runs(suite)
    results = collect_results(suite, every, out_dir)
    for run, record in zip(every, results):  # outside --only, a summary that cannot be read: said
        if "error" in record and run not in runs:
            print(f"{run.name}: not in the tables: {record['error']}", flush=True)
    md_path = write_report(suite, results, out_dir, suite_file=path)
    print(f"table: {md_path}")
    if results_doc is not None:
        from .results_doc import update_results_doc

        print(f"results page: {update_results_doc(Path(path_text(results_doc, '--results-doc')), suite['name'], md_path)}")
    return 1 if failures else 0
