"""What ``bench`` reads back from a run folder, and how it sets a folder aside.

A run folder ``<out>/<setting>/<row>/seed<k>/`` is the suite's, but its files can have been
edited, cut by a full disk or replaced by hand since: ``suite_recipe.yaml`` and ``summary.json``
are read as untrusted input, and a file that cannot be read is a :class:`UserError` naming it (the
suite counts that run as failed and goes on with the others).

A run whose recorded recipe differs from the suite file's is moved, not deleted, to
``<out>.stale/<UTC time>/<setting>/<row>/seed<k>`` by :class:`StaleArea`: the time folder is
created afresh by each ``bench`` process (``-2``, ``-3``, ... when the name is taken), so a move
never lands on an existing entry; a run folder another process holds (its ``.lock``) is not moved,
and no symlink on the way (the run folder, its parents under ``out``, ``<out>.stale``) is followed.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ..config import load_yaml
from ..engine.logdir import METRICS, MetricsLog, holding
from ..errors import UserError

RECIPE = "suite_recipe.yaml"
SUMMARY = "summary.json"

#: summary.json fields the tables read, and the types a value may have (None always allowed)
_FRACTIONS = ("test_top1", "test_mean_class_acc", "val_top1", "val_mean_class_acc")
_FIX = "fix the file, or move the run folder away to redo the run"
_TYPES = {"best_epoch": int, "wall_time_s": (int, float), "images_seen": dict, "switches": dict,
          "selected_on": str, "test_skipped": bool, "target_classes": list}


def read_recipe(log_dir: Path) -> dict | None:
    """The run's ``suite_recipe.yaml`` as a mapping, or None when there is none."""
    path = Path(log_dir) / RECIPE
    if not os.path.lexists(path):
        return None
    try:
        return load_yaml(path, flag="")
    except UserError as exc:
        raise UserError(f"{exc}; {_FIX}") from None


def read_summary(log_dir: Path) -> dict | None:
    """The fields of the run's ``summary.json`` that the tables use, checked; None when there is none."""
    path = Path(log_dir) / SUMMARY
    if not os.path.lexists(path):
        return None
    try:
        summary = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable summary ({reason}); {_FIX}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(summary).__name__}; {_FIX}")
    for key in _FRACTIONS:
        value = summary.get(key)
        if value is not None and not (type(value) in (int, float) and math.isfinite(value) and 0 <= value <= 1):
            raise UserError(f"{path}: {key} must be a fraction in [0, 1], got {value!r}; {_FIX}")
    for key, kind in _TYPES.items():
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)):
            raise UserError(f"{path}: {key} has the wrong type ({type(value).__name__}); {_FIX}")
    seen = summary.get("images_seen") or {}
    if not all(type(v) is int and v >= 0 for v in seen.values()):
        raise UserError(f"{path}: images_seen must map each stream to a count of images, got {seen!r}; {_FIX}")
    return {key: summary.get(key) for key in (*_FRACTIONS, *_TYPES)}


def read_metrics(log_dir: Path) -> list[dict] | None:
    """The run's ``metrics.jsonl`` epoch records (:meth:`MetricsLog.read
    <tllib_jtln.engine.logdir.MetricsLog.read>`, which skips lines it cannot parse), or None when the
    log is missing, is a symlink, cannot be read or holds no record: it only annotates the tables (the
    report's at-chance note), so such a log leaves that note out for the run rather than failing the report."""
    if (Path(log_dir) / METRICS).is_symlink():
        return None
    try:
        return MetricsLog(log_dir).read() or None
    except OSError:
        return None


def refuse_symlinks(out: Path, name: str) -> None:
    """No folder from ``out`` down to the run folder ``out/name`` is a symlink (none is followed)."""
    path = Path(out)
    for part in Path(name).parts:
        path = path / part
        if path.is_symlink():
            raise UserError(f"{path} is a symlink; bench does not follow links in its run folders: "
                            f"replace it with a folder or remove it")


class StaleArea:
    """``<out>.stale/<UTC time>/``: where this process moves run folders whose recipe changed.

    Created on the first move (never an existing folder: a taken name gets ``-2``, ``-3``, ...)."""

    def __init__(self, out: Path):
        self.root = Path(out).parent / f"{Path(out).name}.stale"
        self.folder: Path | None = None

    def _claim(self) -> Path:
        if self.folder is None:
            if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
                raise UserError(f"{self.root} is a symlink or not a folder; bench does not follow links: "
                                f"move it away so stale runs can be kept there")
            self.root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            for n in range(1, 1000):
                candidate = self.root / (stamp if n == 1 else f"{stamp}-{n}")
                try:
                    os.mkdir(candidate)
                except FileExistsError:
                    continue
                self.folder = candidate
                break
            else:
                raise UserError(f"{self.root}: no free folder name for {stamp}; clear out old stale runs")
        return self.folder

    def move(self, log_dir: Path, name: str) -> Path:
        """Move the run folder ``log_dir`` (named ``name`` under ``out``) here; returns its new path.
        Refused (UserError) while another process holds the folder."""
        busy = f"{log_dir}: its recipe changed in the suite file, but pid {{pid}} is using the folder; " \
               f"it is left in place: wait for that run to end, then run bench again"
        with holding(log_dir, busy):
            target = self._claim() / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(log_dir, target)
        print(f"{name}: its recipe changed in the suite file; the old run moved to {target}", flush=True)
        return target
