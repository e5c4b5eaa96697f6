"""Every file the tool creates or appends goes through here: nothing in its place is followed.

A run folder may hold things planted by someone else (a symlink named ``metrics.jsonl`` that
points at ``~/.bashrc``, a FIFO named ``.lock``). Writing through them would overwrite or append
to any file the user (or root) can write. So:

- :func:`atomic_write` writes ``write(binary_file_object)`` to a temporary file
  ``NAME.<pid>.tmp`` created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never an existing file, never
  through a link), flushes and fsyncs it, then renames it over ``NAME`` with :func:`os.replace`
  (which replaces a directory entry and never follows one). A reader, or a run killed mid-write,
  sees the old file or the new one, never half of one. ``NAME`` itself must be absent or a
  regular file: a symlink, folder, FIFO or device there is refused before anything is written.
- :func:`append_text` appends through ``O_APPEND | O_NOFOLLOW`` and checks the opened file is a
  regular one (``O_NONBLOCK`` so a FIFO cannot make the open wait for a reader).
- :func:`open_regular` opens (creating if missing) a regular file read-write the same way (the
  lock file of a log folder); :func:`open_append` opens one for appending (a child's stdout).

Each refusal is a :class:`~tllib_jtln.errors.UserError` naming the path and what is there. Files
get the usual permissions (``0o666`` minus the umask). :func:`load_tensors` reads tensors back
without running code from the file.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .errors import UserError
from .stop_signals import stop_signals_deferred

_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISREG, "a file"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "something unknown")


def refuse_non_regular(path: str | Path, mode: int) -> None:
    """A :class:`UserError` naming ``path`` when ``mode`` (from ``lstat``) is not a regular file."""
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: {_kind(mode)} is where tllib-jtln writes a file of its own; it is never "
                        f"written through: remove it, or choose another folder")


def check_replaceable(path: str | Path) -> None:
    """``path`` is absent or a regular file (else the one-line :class:`UserError` of :func:`refuse_non_regular`)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    refuse_non_regular(path, mode)


def _open_flags(flags: int) -> int:
    return flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _open_no_follow(path: str | Path, flags: int) -> int:
    """``os.open`` that never follows a final symlink; a symlink or special file there is refused."""
    try:
        fd = os.open(path, _open_flags(flags), 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a symlink, a folder, a FIFO without reader
            refuse_non_regular(path, os.lstat(path).st_mode)
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        refuse_non_regular(path, mode)
    os.set_blocking(fd, True)
    return fd


def open_regular(path: str | Path) -> int:
    """A read-write descriptor of the regular file ``path`` (created if missing), never through a link."""
    return _open_no_follow(path, os.O_RDWR | os.O_CREAT)


def open_append(path: str | Path) -> int:
    """A write-only, appending descriptor of the regular file ``path`` (created if missing), never
    through a link: for a stream another process writes (a child's stdout); the caller closes it."""
    return _open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` (UTF-8) to the regular file ``path`` (created if missing) and fsync it."""
    with open(open_append(path), "ab", closefd=True) as handle:
        handle.write(text.encode())
        handle.flush()
        os.fsync(handle.fileno())


def _exclusive(path: str, flags: int) -> int:
    return os.open(path, _open_flags(flags | os.O_EXCL | os.O_CREAT), 0o666)


def temporary_path(path: str | Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` first: ``NAME.<pid>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically through ``write(file_object)``; returns ``path``.

    A regular file left at the temporary name by an earlier process with this pid is replaced;
    anything else there, or a non-regular file at ``path``, is a :class:`UserError`. A stop signal
    during the write lands once the file is in place: a torch.save cut by Ctrl-C raised a zip error
    instead of KeyboardInterrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(path)
    tmp = temporary_path(path)
    try:
        mode = os.lstat(tmp).st_mode
    except FileNotFoundError:
        pass
    else:
        refuse_non_regular(tmp, mode)
        tmp.unlink()
    with stop_signals_deferred():
        try:
            with open(tmp, "wb", opener=_exclusive) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    data = text.encode()
    return atomic_write(path, lambda fh: fh.write(data))


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically (indented, keys in insertion order, trailing newline)."""
    return write_text(json.dumps(data, indent=2) + "\n", path)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """A matplotlib figure as PNG, through :func:`atomic_write`."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", **savefig_kwargs))


def load_tensors(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: no code from the file runs.

    PyTorch's warnings on the way (a foreign pickle protocol) are silenced: the caller turns any
    failure into one line naming the file (:class:`pickle.UnpicklingError` when it holds objects).
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def make_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (its parent must exist) unless it is there; a symlink or a file
    in its place is a :class:`UserError` (files are never written into a folder reached by a link)."""
    path = Path(path)
    try:
        path.mkdir(exist_ok=True)
    except FileExistsError:
        pass
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        raise UserError(f"{path}: {_kind(mode)} is where tllib-jtln keeps a folder of its own; it is never "
                        f"written through: remove it, or choose another folder")
    return path
