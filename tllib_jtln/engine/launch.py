"""``tllib-jtln train --nproc-per-node N ...``: start N DDP workers through PyTorch's own launcher.

The workers are started by ``torch.distributed.run`` (torchrun's code) exactly as::

    torchrun --standalone --nproc-per-node N -m tllib_jtln -- <the same arguments>

so the command a user types is the single-process one plus one flag (torchrun's own options never
see ``--log``). Each worker finds ``LOCAL_RANK`` in its environment and trains as one rank; the
``--nproc-per-node`` it still carries is then a no-op.

Errors keep the single-process promise (one line, exit 2). When one worker stops on bad input,
the others fail as a consequence (a closed connection, torchrun's SIGTERM), each with its own
traceback. So the workers started here do not print their errors: each writes it to a file in a
folder named by :data:`RELAY_ENV` (the one-line message, or the traceback of an unexpected
exception), and the launcher, with torchrun's own log lines silenced, prints the first one-line
error and exits 2; with none, it prints the workers' tracebacks and exits 1.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UserError

#: environment variable naming the folder where workers started by :func:`launch_workers` leave their errors
RELAY_ENV = "TLLIB_JTLN_WORKER_ERRORS"
_TORCHRUN_LOGGERS = ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")


def launcher_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's argument list for ``nproc`` workers running ``python -m tllib_jtln <argv>``."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "tllib_jtln", "--", *argv]


def launch_workers(nproc: int, argv: list[str]) -> int:
    """Run the workers and wait: 0 when every worker succeeded; 2 with the first worker's one-line
    error printed; 1 with the tracebacks of workers that failed otherwise."""
    if nproc < 1:
        raise UserError(f"--nproc-per-node must be >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    with tempfile.TemporaryDirectory(prefix="tllib-jtln-workers-") as relay, _worker_env(relay), _quiet_torchrun():
        try:
            run(parse_args(launcher_args(nproc, argv)))
        except ChildFailedError as exc:
            return _report_failure(Path(relay), exc, nproc)
    return 0


def _report_failure(relay: Path, exc, nproc: int) -> int:
    """Print what the failed workers left in ``relay`` (see the module docstring); the exit status."""
    by_time = sorted(relay.glob("rank*.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    errors = [p for p in by_time if p.suffix == ".error"]
    if errors:
        sys.stderr.write(errors[0].read_text(errors="replace").strip() + "\n")
        return 2
    for path in sorted(p for p in by_time if p.suffix == ".traceback"):
        lines = path.read_text(errors="replace").rstrip().splitlines()
        sys.stderr.write("".join(f"[{path.stem}] {line}\n" for line in lines))
    failures = getattr(exc, "failures", {}) or {}
    codes = sorted({getattr(f, "exitcode", 1) for f in failures.values()}) or [1]
    sys.stderr.write(f"tllib-jtln: {len(failures) or 'some'} of {nproc} worker(s) failed "
                     f"(exit {', '.join(map(str, codes))})\n")
    return 1


@contextmanager
def _worker_env(relay: str) -> Iterator[None]:
    """:data:`RELAY_ENV` set for the workers torchrun starts from this process."""
    before = os.environ.get(RELAY_ENV)
    os.environ[RELAY_ENV] = relay
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RELAY_ENV, None)
        else:
            os.environ[RELAY_ENV] = before


@contextmanager
def _quiet_torchrun() -> Iterator[None]:
    """torchrun's own log lines (its OMP_NUM_THREADS note, "Sending process ... SIGTERM", "failed
    (exitcode ...)") off while it runs: the launcher reports the outcome itself."""
    loggers = [logging.getLogger(name) for name in _TORCHRUN_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def relay_worker_error(message: str | None = None) -> bool:
    """In a worker started by :func:`launch_workers`: leave ``message`` (a one-line error), or the
    traceback of the exception being handled, for the launcher; True when left, False (print it
    yourself) in any other process."""
    relay = os.environ.get(RELAY_ENV)
    if not relay or "LOCAL_RANK" not in os.environ:
        return False
    rank = os.environ.get("RANK", os.environ["LOCAL_RANK"])
    text, suffix = (message, "error") if message is not None else (traceback.format_exc(), "traceback")
    try:
        Path(relay, f"rank{rank}.{suffix}").write_text(text + "\n")
    except OSError:
        return False
    return True
