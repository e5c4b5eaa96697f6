"""The log folder of a run: whose it is, the lock, ``config.yaml``, ``env.json``, ``metrics.jsonl``.

A folder is a run folder only if it holds the tool's own marker :data:`MARKER` (written when a
run first opens the folder; a folder of an older version is recognised by its ``env.json``).
Nothing the user owns is deleted, replaced or appended:

- an existing folder without the marker is used only if it holds none of the names a run writes
  (:data:`RUN_FILES`, ``checkpoints/``, ``.lock``); otherwise it is refused, naming those files,
  even under ``--overwrite``;
- a run folder that holds a run (``summary.json`` or ``checkpoints/last.pt``) is refused unless
  ``--overwrite`` (the files the run wrote are removed first, and named; other files stay) or
  ``--resume`` (continue from ``checkpoints/last.pt``, or run the missing test pass when every
  epoch is done);
- a run folder without either (a run stopped before its first epoch's checkpoint was complete)
  holds nothing to resume: ``train`` starts it afresh (removing what that run wrote, named), and
  ``--resume`` says so.

Every file is written through :mod:`tllib_jtln.fileio` (never through a symlink; a symlinked
``checkpoints`` folder is refused). A ``--log`` that is itself a symlink is resolved once, when
the run opens it: the run then writes into the real folder, whatever the link later points to.

A log folder is written by one run at a time: the training process (rank 0 under DDP) holds a
POSIX lock on ``LOG/.lock`` (which holds its pid) for its whole life, and a second run on the
folder is refused naming that pid. The kernel drops the lock when the process ends, killed or
not, so ``--resume`` after a ``kill -9`` just works; forked data-loader workers do not inherit
it. Readers (``tllib-jtln test --log``) take no lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .. import readers
from ..errors import UserError
from ..fileio import (append_text, check_replaceable, make_folder, open_regular, temporary_path, write_json,
                      write_text)

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"
#: The marker of a run folder: a folder holds a run of this tool only if this file is in it.
MARKER = ".tllib-jtln-run"

#: Files a run writes; ``--overwrite`` removes exactly these (and ``checkpoints/{last,best}.pt``).
RUN_FILES = (CONFIG, ENV, METRICS, SUMMARY, "cost.npy", "cost.json", "cost.png", "transport.png",
             "transport.txt", "curves.png", "tsne.png", "analysis.json")


def last_checkpoint(log_dir: Path) -> Path:
    return Path(log_dir) / CHECKPOINTS / LAST


def best_checkpoint(log_dir: Path) -> Path:
    return Path(log_dir) / CHECKPOINTS / BEST


def holds_run(log_dir: Path) -> bool:
    """True when ``log_dir`` holds something to resume or test: ``summary.json`` or ``checkpoints/last.pt``."""
    return (Path(log_dir) / SUMMARY).exists() or last_checkpoint(log_dir).is_file()


def _regular_file(path: Path) -> bool:
    """A regular file itself, not a symlink to one."""
    return path.is_file() and not path.is_symlink()


def is_run_folder(log_dir: Path) -> bool:
    """Whether ``log_dir`` holds the marker, or (a run of an older version) an ``env.json`` this tool wrote."""
    log_dir = Path(log_dir)
    if _regular_file(log_dir / MARKER):
        return True
    env = log_dir / ENV
    if not _regular_file(env):
        return False
    try:
        data = readers.load_json(env, str(env), max_bytes=1 << 20, max_values=10_000)
    except UserError:
        return False
    return isinstance(data, dict) and "tllib_jtln" in data and "argv" in data


def _names_of_a_run(log_dir: Path) -> list[str]:
    """The names a run writes that are already in ``log_dir``."""
    return [name for name in (*RUN_FILES, CHECKPOINTS, LOCK) if os.path.lexists(log_dir / name)]


def _check_owner(log_dir: Path) -> None:
    """A folder without the marker must hold none of the names a run writes."""
    if is_run_folder(log_dir):
        return
    clash = _names_of_a_run(log_dir)
    if clash:
        raise UserError(f"--log {log_dir} holds {', '.join(clash)} but no {MARKER} marker: not a folder a "
                        f"tllib-jtln run made, so nothing in it is replaced; choose another --log")


def prepare_log_dir(log_dir: str | Path, *, overwrite: bool, resume: bool, is_main: bool = True,
                    clear: bool = True) -> Path:
    """Check (and on the main process create, mark and lock) the log folder; returns its path.

    - ``resume``: ``checkpoints/last.pt`` must exist, and the run must not be finished.
    - ``overwrite``: the files of a previous run are removed (only those, see :func:`clear_run`),
      here when ``clear``, else by the caller with :func:`clear_run` once the new run is known to start.
    - neither: a folder that already holds a run is a :class:`UserError`.
    The folder must be writable (checked by creating and removing a temporary file).
    """
    log_dir = Path(log_dir).expanduser()
    _check_path(log_dir)
    if log_dir.is_symlink():  # resolved once, deliberately (see the module docstring)
        log_dir = Path(os.path.realpath(log_dir))
    if log_dir.exists() and not log_dir.is_dir():
        raise UserError(f"--log {log_dir}: exists and is not a folder; choose another --log")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if log_dir.is_dir() and is_main:  # the main process checks and owns the folder, the others follow it
        _check_owner(log_dir)
        lock_log_dir(log_dir)  # a folder in use by another run is named before anything else
        if os.path.lexists(log_dir / CHECKPOINTS):
            make_folder(log_dir / CHECKPOINTS)  # a real folder, not a link to one (atomic_write creates it later)
    if resume:
        _check_resumable(log_dir)
    elif holds_run(log_dir) and not overwrite:
        raise UserError(f"--log {log_dir} already holds a run; pass --overwrite to replace it, "
                        f"--resume to continue it, or choose another --log")
    if not is_main:
        return log_dir
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=log_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--log {log_dir}: not writable ({exc.strerror or exc}); choose another --log") from None
    if not _regular_file(log_dir / MARKER):
        write_text("tllib-jtln run folder: --overwrite removes only the files the run wrote\n", log_dir / MARKER)
    lock_log_dir(log_dir)
    if overwrite and not resume and clear:
        clear_run(log_dir)
    return log_dir


def _check_path(log_dir: Path) -> None:
    """The longest path a run writes in ``log_dir`` is one the system takes (not too long, no NUL)."""
    try:
        os.lstat(temporary_path(last_checkpoint(log_dir)))
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError) as exc:
        name = str(log_dir) if len(str(log_dir)) <= 80 else str(log_dir)[:80] + "..."
        raise UserError(f"--log {name}: {getattr(exc, 'strerror', None) or exc}; choose another --log") from None


def _check_resumable(log_dir: Path) -> None:
    """``--resume``: a ``checkpoints/last.pt`` to continue from, and no ``summary.json`` yet."""
    if not last_checkpoint(log_dir).is_file():
        if is_run_folder(log_dir):
            raise UserError(f"--resume: nothing to resume in {log_dir}: no {CHECKPOINTS}/{LAST} (the run stopped "
                            f"before its first epoch's checkpoint was complete); run the same command without "
                            f"--resume to start it again (the files it wrote are replaced)")
        raise UserError(f"--resume: nothing to resume in {log_dir} (no {CHECKPOINTS}/{LAST}); "
                        f"drop --resume to start a new run")
    if (log_dir / SUMMARY).exists():
        raise UserError(f"--resume: the run in {log_dir} is finished ({SUMMARY} exists); "
                        f"evaluate it with `tllib-jtln test --log {log_dir}` or start over with --overwrite")


def resume_hint(log_dir: str | Path) -> str:
    """What a run stopped by an error or an interrupt kept in ``log_dir``, and how to go on."""
    log_dir = Path(log_dir).expanduser()
    if os.path.isfile(last_checkpoint(log_dir)):  # False, not an error, for a path the system refuses
        return f"finished checkpoints are kept (fix the cause, then continue with --resume --log {log_dir})"
    return f"no checkpoint was saved in {log_dir} (fix the cause, then start the run again)"


_LOCKS: dict[str, int] = {}  # real path of a locked log folder -> the open file holding the lock


def lock_log_dir(log_dir: Path, busy: str | None = None) -> bool:
    """Own ``log_dir`` for this process: an exclusive, non-blocking ``lockf`` on ``log_dir/.lock``.

    Held until :func:`release_log_dirs` or the end of the process. Taking a folder this process
    already holds does nothing. Raises :class:`UserError` naming the pid of the process holding it
    (``busy``: the message, with ``{pid}`` for that pid), or when something other than a regular file
    is at ``.lock`` (it is never opened through a link). Returns False when the lock file cannot be
    created (left to the caller's writability check), else True.
    """
    key = os.path.realpath(log_dir)
    if key in _LOCKS:
        return True
    fd = _lock(key, busy or f"--log {log_dir} is in use by another run (pid {{pid}}); wait for it to end, "
                            "or choose another --log")
    if fd is None:
        return False
    _LOCKS[key] = fd
    return True


@contextmanager
def holding(folder: Path, busy: str) -> Iterator[None]:
    """``folder`` locked as a log folder for the block (UserError ``busy`` when another process
    holds it); the lock file travels with the folder if the block renames it. A folder this
    process already holds stays held."""
    key = os.path.realpath(folder)
    fd = None if key in _LOCKS else _lock(key, busy)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _lock(folder: str, busy: str) -> int | None:
    """The open ``folder/.lock``, exclusively locked and holding this pid; None when it cannot be created."""
    try:
        fd = open_regular(os.path.join(folder, LOCK))
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(busy.replace("{pid}", holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_log_dirs() -> None:
    """Give up every log folder this process holds (the end of a run)."""
    while _LOCKS:
        os.close(_LOCKS.popitem()[1])


def check_free_space(log_dir: Path, model: "torch.nn.Module") -> None:
    """Refuse to start when the log folder's disk cannot hold the run's checkpoints.

    A checkpoint holds the weights and about as much optimiser state (SGD momentum); ``last.pt``,
    ``best.pt`` and one temporary copy during the atomic write make six times the weights' bytes,
    plus 16 MiB for metrics, plots and the cost matrix.
    """
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    need = 6 * weights + (16 << 20)
    free = shutil.disk_usage(log_dir).free
    if free < need:
        raise UserError(f"--log {log_dir}: {free / 2**20:.0f} MiB free, the run's checkpoints need about "
                        f"{need / 2**20:.0f} MiB; free some space or choose another --log")


def _written_by_a_run(name: str, own: tuple[str, ...]) -> bool:
    """``name`` is one of ``own`` or a temporary file of one (``NAME.tmp``, ``NAME.<pid>.tmp``)."""
    return name in own or any(re.fullmatch(re.escape(o) + r"(\.\d+)?\.tmp", name) for o in own)


def clear_run(log_dir: Path) -> list[str]:
    """Remove the files a previous run wrote, nothing else; returns their names (relative to ``log_dir``).

    ``checkpoints/`` loses ``last.pt``, ``best.pt`` and their temporary files; the folder and
    anything else in it stay.
    """
    log_dir = Path(log_dir)
    removed = []
    for entry in sorted(os.scandir(log_dir), key=lambda e: e.name):
        if _written_by_a_run(entry.name, RUN_FILES) and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.name)
    folder = log_dir / CHECKPOINTS
    if folder.is_dir() and not folder.is_symlink():
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if _written_by_a_run(entry.name, (LAST, BEST)) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(f"{CHECKPOINTS}/{entry.name}")
    return removed


# ----------------------------------------------------------------------------- config
def write_config(cfg_dict: dict, log_dir: Path) -> Path:
    """The resolved settings as YAML (field names as keys), loadable with ``--config``."""
    from ..config import COMMAND_LINE_ONLY

    text = "# resolved settings of this run; rerun with: tllib-jtln train --config config.yaml\n"
    settings = {k: v for k, v in cfg_dict.items() if k not in COMMAND_LINE_ONLY}  # not settings: switches
    text += yaml.safe_dump(settings, sort_keys=False)
    return write_text(text, Path(log_dir) / CONFIG)


def read_config(log_dir: Path) -> dict:
    """The ``config.yaml`` of a run folder, as a mapping (UserError if missing)."""
    from ..config import load_yaml

    path = Path(log_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"--log {log_dir}: no {CONFIG}; point --log at the folder of a training run")
    check_replaceable(path)  # the run's own file, not a link to someone else's
    return load_yaml(path, flag="")


# ----------------------------------------------------------------------------- environment
def git_revision(path: Path | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding the package."""
    here = Path(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def environment(device: str, world_size: int) -> dict:
    """Versions, git revision, device and command line of this run."""
    import torch

    from .. import __version__

    info: dict[str, Any] = {
        "tllib_jtln": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in
                     ("torch", "torchvision", "timm", "POT", "faiss-cpu", "numpy", "scipy", "scikit-learn")},
        "git": git_revision(),
        "device": device,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "world_size": world_size,
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    return info


def write_env(log_dir: Path, device: str, world_size: int) -> Path:
    return write_json(environment(device, world_size), Path(log_dir) / ENV)


# ----------------------------------------------------------------------------- metrics
#: ``train_*`` fields of a metrics record that are not loss terms
NOT_LOSSES = ("train_steps", "train_time_s")


def loss_keys(record: dict) -> list[str]:
    """The loss-term keys of a ``metrics.jsonl`` record (``train_loss``, ``train_<term>``), in its order."""
    return [k for k in record if k.startswith("train_") and k not in NOT_LOSSES]


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (one per epoch, written by the main process)."""

    def __init__(self, log_dir: Path):
        self.path = Path(log_dir) / METRICS

    def append(self, record: dict) -> None:
        append_text(self.path, json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        """The epoch records (JSON objects with an integer ``epoch``); any other line (cut by a kill,
        edited, not UTF-8, nested too deep to parse) is ignored."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict) and type(record.get("epoch")) is int:
                out.append(record)
        return out

    def truncate_after(self, epoch: int) -> list[dict]:
        """Keep the records of epochs ``<= epoch`` (on resume, drop what the killed run wrote later)."""
        kept = [r for r in self.read() if r["epoch"] <= epoch]
        write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)
        return kept


def write_summary(summary: dict, log_dir: Path) -> Path:
    return write_json(summary, Path(log_dir) / SUMMARY)
