"""Child processes side by side, and how Ctrl-C ends them.

:func:`run_side_by_side` keeps up to ``jobs`` children running, polling them from the main thread
(no worker threads: a Ctrl-C reaches the loop at once). On Ctrl-C (SIGINT to the parent or to its
process group) no queued item starts and :func:`stop_children` ends the running ones: a child the
group's SIGINT has not ended within :data:`SIGNAL_AFTER_S` gets one of its own (so a ``train``
unwinds as on Ctrl-C, keeping its checkpoints), and one still alive :data:`STOP_GRACE_S` later is
killed; then the KeyboardInterrupt goes on to the caller. ``tllib-jtln bench`` takes SIGTERM, and a
SIGINT it inherited ignored (started as ``bench &``), as Ctrl-C (:func:`tllib_jtln.stop_signals.stop_signals_as_ctrl_c`);
its children then start with SIGINT at its default, so a forwarded SIGINT unwinds them too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Union

from ..fileio import open_append

#: seconds between looks at the running children
POLL_S = 0.1
#: after Ctrl-C: seconds a child has to end on the group's SIGINT before it is sent one itself,
#: then seconds it has to end on that before it is killed
SIGNAL_AFTER_S = 2.0
STOP_GRACE_S = 20.0


class Child:
    """A child process named ``name``: stdout appended to ``stdout_path`` (a regular file, never a
    link: else a :class:`~tllib_jtln.errors.UserError`), stderr kept aside for the last line (the
    error) of a failed child."""

    def __init__(self, name: str, cmd: list[str], stdout_path: Path, env: dict):
        self.name, self.started = name, time.time()
        stdout = open_append(stdout_path)  # a symlink or FIFO planted there is refused, never written through
        try:
            self.stderr = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(cmd, stdout=stdout, stderr=self.stderr, env=env)
        finally:
            os.close(stdout)

    def status(self) -> tuple[str, float]:
        """('done' | 'failed (exit N): <its last stderr line>', seconds); the process has ended."""
        seconds = time.time() - self.started
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        self.stderr.close()
        if self.proc.returncode != 0:
            return f"failed (exit {self.proc.returncode}): {(lines or ['no message'])[-1]}", seconds
        return "done", seconds


def run_side_by_side(items: Iterable, jobs: int, start: Callable[[object], Union[Child, tuple[str, str]]],
                     report: Callable[[str, str, float], None]) -> None:
    """``start(item)`` for each item, at most ``jobs`` children at a time; ``start`` returns a
    :class:`Child`, or ``(name, status)`` for an item that needs none. ``report(name, status,
    seconds)`` once per item, as each ends. Ctrl-C: see the module docstring."""
    queue, running = deque(items), []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                child = start(queue.popleft())
                if isinstance(child, Child):
                    running.append(child)
                else:
                    report(*child, 0.0)
            for child in [c for c in running if c.proc.poll() is not None]:
                running.remove(child)
                report(child.name, *child.status())
            time.sleep(POLL_S if running else 0)
    except BaseException:  # Ctrl-C, or the parent failing: no child is left running on its own
        stop_children([c.proc for c in running])
        for child in running:
            print(f"{child.name}: stopped (its checkpoints are kept)", flush=True)
        raise


def stop_children(procs: list[subprocess.Popen]) -> None:
    """End ``procs`` after a Ctrl-C (see the module docstring); a second Ctrl-C kills them at once."""
    try:
        for wait_s, then in ((SIGNAL_AFTER_S, signal.SIGINT), (STOP_GRACE_S, signal.SIGKILL)):
            deadline = time.monotonic() + wait_s
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(then)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc in procs:
        proc.wait()
