"""The accuracy suite: methods x settings x seeds, one log folder per run, resumable.

A suite file (YAML, ``yaml.safe_load``)::

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
``<out>.stale/`` and redone.
Each run is a separate ``python -m tllib_jtln train`` process, so one failing run is reported and
the others go on. At the end ``results_<name>.json`` (every run's numbers) and ``results_<name>.md`` (mean +-
std over seeds) are written; see :mod:`tllib_jtln.bench.report`.
"""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ..config import Config, load_yaml
from ..errors import UserError
from .report import collect_results, write_report

SUITE_KEYS = {"name", "out", "seeds", "base", "settings", "methods", "pairs", "metric", "splits"}
PER_SETTING = "per_setting"  # in a method row: {setting: {Config key: value}} for that column only


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


def load_suite(path: str | Path) -> dict:
    """Parse and check a suite file: known top-level keys, Config keys everywhere else."""
    suite = load_yaml(path, flag="--suite")
    unknown = set(suite) - SUITE_KEYS
    if unknown:
        raise UserError(f"--suite {path}: unknown key(s) {sorted(unknown)}; known: {sorted(SUITE_KEYS)}")
    for key in ("seeds", "methods"):
        if not suite.get(key):
            raise UserError(f"--suite {path}: '{key}' is required and must not be empty")
    if not all(isinstance(s, int) for s in suite["seeds"]):
        raise UserError(f"--suite {path}: 'seeds' must be a list of integers")
    _check_splits(suite.get("splits"), path)
    suite.setdefault("settings", {"default": {}})
    suite.setdefault("base", {})
    suite.setdefault("pairs", [])
    suite.setdefault("name", Path(path).stem)
    suite.setdefault("out", f"logs/suite/{suite['name']}")
    for group in ("settings", "methods"):
        if not isinstance(suite[group], dict):
            raise UserError(f"--suite {path}: '{group}' must map names to Config settings")
        for name, values in suite[group].items():
            _check_folder_name(name, f"--suite {path}: {group}")
            values = dict(values or {})
            per_setting = values.pop(PER_SETTING, {}) if group == "methods" else {}
            Config().update({**suite["base"], **values}, f"--suite {path}: {group}.{name}")  # typos fail here
            _check_per_setting(per_setting, suite["settings"], f"--suite {path}: methods.{name}.{PER_SETTING}")
    if suite.get("splits"):
        fixed = [name for name, values in [("base", suite["base"]), *suite["settings"].items(), *suite["methods"].items()]
                 if "class_split" in (values or {}) or "class-split" in (values or {})]
        if fixed:
            raise UserError(f"--suite {path}: 'splits' sets every run's class split, but {', '.join(fixed)} sets "
                            f"class_split too; keep one of them")
    for pair in suite["pairs"]:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in suite["methods"] for p in pair)):
            raise UserError(f"--suite {path}: each pair must be [row, row] of two method rows, got {pair!r}")
    return suite


def _check_per_setting(per_setting, settings: dict, where: str) -> None:
    """A row's ``per_setting`` maps setting names of the suite to Config keys."""
    if not isinstance(per_setting, dict):
        raise UserError(f"{where}: must map setting names to Config settings, got {per_setting!r}")
    for setting, values in per_setting.items():
        if setting not in settings:
            raise UserError(f"{where}: unknown setting {setting!r}; the suite's settings: {', '.join(settings)}")
        Config().update(dict(values or {}), f"{where}.{setting}")


def _check_splits(splits, path) -> None:
    """``splits``: absent, or a non-empty list of distinct ``--class-split`` values."""
    if splits is None:
        return
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise UserError(f"--suite {path}: 'splits' must be a non-empty list of class splits, e.g. [random:0, random:1]")
    if len(set(splits)) != len(splits):
        raise UserError(f"--suite {path}: 'splits' names a class split twice; list each once")
    for split in splits:
        Config(class_split=split).validate()


def _check_folder_name(name, where: str) -> None:
    """Row and setting names are folder names under ``out``: no path separators, no ``.``/``..``."""
    text = str(name)
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\x00" in text:
        raise UserError(f"{where}: name {text!r} is a folder name under out:, so it must not be empty, "
                        f"'.' or '..', nor contain '/' or '\\'; rename it")


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


def set_aside(log_dir: Path, out: Path, name: str) -> Path:
    """Move a run folder whose recipe the suite file no longer asks for to
    ``<out>.stale/<UTC time>/<name>`` (kept, not deleted; the run is then redone)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = out.parent / f"{out.name}.stale" / stamp / name
    target.parent.mkdir(parents=True, exist_ok=True)
    log_dir.rename(target)
    print(f"{name}: its recipe changed in the suite file; the old run moved to {target}", flush=True)
    return target


def run_one(run: SuiteRun, out: Path, threads: int | None = None) -> tuple[str, float]:
    """Train one run in its own process; returns its status ('done', 'skipped', 'failed: ...').

    ``threads``: intra-op threads of that process (OMP_NUM_THREADS), for parallel runs."""
    log_dir = out / run.name
    wanted = {**run.settings, "seed": run.seed}
    recipe = log_dir / "suite_recipe.yaml"
    if recipe.is_file() and yaml.safe_load(recipe.read_text()) != wanted:
        set_aside(log_dir, out, run.name)
    if (log_dir / "summary.json").is_file():
        return "skipped", 0.0
    log_dir.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(wanted, sort_keys=True))
    cmd = [sys.executable, "-m", "tllib_jtln", "train", "--config", str(recipe), "--log", str(log_dir),
           "--no-progress"]
    if (log_dir / "checkpoints" / "last.pt").is_file():
        cmd.append("--resume")
    env = os.environ.copy()
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    start = time.time()
    with open(log_dir / "stdout.txt", "a") as stdout:
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.time() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"failed (exit {proc.returncode}): {last}", seconds
    return "done", seconds


def select_runs(runs: list[SuiteRun], only: str) -> list[SuiteRun]:
    """The runs whose name (``<setting>/<row>/seed<k>``) matches one of the comma-separated shell
    patterns of ``only`` (``fnmatch``), in the suite's order."""
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    return [r for r in runs if any(fnmatch.fnmatch(r.name, p) for p in patterns)]


def run_suite(path: str, out: str | None = None, dry_run: bool = False, only: str | None = None,
              jobs: int = 1) -> int:
    """``tllib-jtln bench --suite FILE``: run what is not finished, then write the tables.

    ``jobs`` runs go side by side, each with ``cpu_count // jobs`` threads."""
    suite = load_suite(path)
    out_dir = Path(out or suite["out"])
    runs = expand_runs(suite)
    if only:
        runs = select_runs(runs, only)
    check_runs(runs, path, out_dir)
    if dry_run:
        for run in runs:
            print(run.name, " ".join(f"{k}={v}" for k, v in sorted(run.settings.items())))
        print(f"{len(runs)} runs -> {out_dir}")
        return 0
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    failures = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, run, out_dir, threads): run for run in runs}
        for index, future in enumerate(as_completed(futures), 1):
            status, seconds = future.result()
            failures += status.startswith("failed")
            print(f"[{index}/{len(runs)}] {futures[future].name}: {status} ({seconds:.0f} s)", flush=True)
    results = collect_results(suite, expand_runs(suite), out_dir)
    md_path = write_report(suite, results, out_dir, suite_file=path)
    print(f"table: {md_path}")
    return 1 if failures else 0
