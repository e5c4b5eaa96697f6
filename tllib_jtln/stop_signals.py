"""The signals that stop a run (Ctrl-C, ``kill PID``): SIGINT and SIGTERM, and the two ways this
package handles them, both by swapping the Python-level handlers of the pair and restoring them."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

#: the signals that stop a run: Ctrl-C, and ``kill PID`` (SLURM preemption, systemd, ``docker stop``)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _handled_by(handler: Callable, previous: dict) -> Iterator[None]:
    """``handler`` for both stop signals while inside; ``previous`` (signal -> handler) on leaving."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _current() -> dict:
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


@contextlib.contextmanager
def stop_signals_as_ctrl_c() -> Iterator[None]:
    """While inside: SIGINT and SIGTERM (``kill PID``, SLURM preemption, systemd, ``docker stop``) raise
    KeyboardInterrupt in the main thread, as Ctrl-C does, also where SIGINT came in ignored (a script's
    background job: ``cmd &``, ``nohup cmd &``); the previous handlers come back on leaving.

    A caught signal is reset to its default across exec (an ignored one stays ignored), so the
    children started inside take SIGINT as Ctrl-C whatever this process inherited."""
    with _handled_by(signal.default_int_handler, _current()):
        yield


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block: a handler notes one that arrives, and the first noted is
    raised again (``signal.raise_signal``) to the handlers restored as the block ends. Main thread only
    (Python runs signal handlers there); a handler installed outside Python is left alone."""
    previous = _current()
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    held: list[int] = []
    with _handled_by(lambda received, frame: held.append(received), previous):
        yield
    if held:
        signal.raise_signal(held[0])
