"""The log folder of a run: safety checks, ``config.yaml``, ``env.json``, ``metrics.jsonl``.

Nothing already in a log folder is overwritten unless the user says so: a folder that holds
a run (``summary.json`` or anything under ``checkpoints/``) is refused unless ``--overwrite``
(the run's files are removed first, other files are left alone) or ``--resume`` (continue
from ``checkpoints/last.pt``).

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
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..errors import UserError
from ..fileio import write_json, write_text

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"

#: Files a run writes; ``--overwrite`` removes exactly these (and the checkpoints folder).
RUN_FILES = (CONFIG, ENV, METRICS, SUMMARY, "cost.npy", "cost.json", "cost.png", "transport.png",
             "transport.txt", "curves.png")


def last_checkpoint(log_dir: Path) -> Path:
    return Path(log_dir) / CHECKPOINTS / LAST


def best_checkpoint(log_dir: Path) -> Path:
    return Path(log_dir) / CHECKPOINTS / BEST


def holds_run(log_dir: Path) -> bool:
    """True when ``log_dir`` has a ``summary.json`` or any file under ``checkpoints/``."""
    log_dir = Path(log_dir)
    ckpt = log_dir / CHECKPOINTS
    return (log_dir / SUMMARY).exists() or (ckpt.is_dir() and any(ckpt.iterdir()))


def prepare_log_dir(log_dir: str | Path, *, overwrite: bool, resume: bool, is_main: bool = True,
                    clear: bool = True) -> Path:
    """Check (and on the main process create) the log folder; returns its path.

    - ``resume``: ``checkpoints/last.pt`` must exist, and the run must not be finished.
    - ``overwrite``: the files of a previous run are removed (only those: :data:`RUN_FILES` and
      ``checkpoints/``), here when ``clear``, else by the caller with :func:`clear_run` once the
      new run is known to start.
    - neither: a folder that already holds a run is a :class:`UserError`.
    The folder must be writable (checked by creating and removing a temporary file).
    """
    log_dir = Path(log_dir).expanduser()
    if log_dir.exists() and not log_dir.is_dir():
        raise UserError(f"--log {log_dir}: exists and is not a folder; choose another --log")
    if is_main and log_dir.is_dir():
        lock_log_dir(log_dir)  # a folder in use by another run is named before anything else
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if resume:
        if not last_checkpoint(log_dir).is_file():
            raise UserError(f"--resume: nothing to resume in {log_dir} (no {CHECKPOINTS}/{LAST}); "
                            f"drop --resume to start a new run")
        if (log_dir / SUMMARY).exists():
            raise UserError(f"--resume: the run in {log_dir} is finished ({SUMMARY} exists); "
                            f"evaluate it with `tllib-jtln test --log {log_dir}` or start over with --overwrite")
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
    lock_log_dir(log_dir)
    if overwrite and not resume and clear:
        clear_run(log_dir)
    return log_dir


_LOCKS: dict[str, int] = {}  # real path of a locked log folder -> the open file holding the lock


def lock_log_dir(log_dir: Path, busy: str | None = None) -> bool:
    """Own ``log_dir`` for this process: an exclusive, non-blocking ``lockf`` on ``log_dir/.lock``.

    Held until :func:`release_log_dirs` or the end of the process. Taking a folder this process
    already holds does nothing. Raises :class:`UserError` naming the pid of the process holding it
    (``busy``: the message, with ``{pid}`` for that pid). Returns False when the lock file cannot
    be created (left to the caller's writability check), else True.
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
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
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


def clear_run(log_dir: Path) -> None:
    """Remove the files a previous run wrote (nothing else)."""
    import shutil

    for name in RUN_FILES:
        (log_dir / name).unlink(missing_ok=True)
    if (log_dir / CHECKPOINTS).is_dir():
        shutil.rmtree(log_dir / CHECKPOINTS)


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
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                continue
        return out

    def truncate_after(self, epoch: int) -> list[dict]:
        """Keep the records of epochs ``<= epoch`` (on resume, drop what the killed run wrote later)."""
        kept = [r for r in self.read() if int(r.get("epoch", 0)) <= epoch]
        write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)
        return kept


def write_summary(summary: dict, log_dir: Path) -> Path:
    return write_json(summary, Path(log_dir) / SUMMARY)
