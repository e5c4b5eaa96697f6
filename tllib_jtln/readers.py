"""Bounded readers of the text and array files users hand in: YAML, JSON and ``.npy``.

A small file can still cost unbounded time or memory once parsed: ``'[' * 50000`` recurses past
Python's stack, nine YAML aliases of nine aliases expand to 9^9 values (a "billion laughs"), a
401-digit integer overflows every float, and a ``.npy`` header may declare a 10^9 x 10^9 array
in 100 bytes. Every reader here bounds, before or while parsing:

- the bytes read (``max_bytes``; the file must be a regular file, so a FIFO cannot hang us);
- the nesting depth (:data:`MAX_DEPTH`) and the values visited with aliases expanded
  (``max_values``), walked iteratively with an early stop;
- integers to 64 bits (:data:`INT_LIMIT`); text to UTF-8;
- for ``.npy``: the bytes the header declares (shape x item size) against the file's size.

Each refusal is a one-line :class:`~tllib_jtln.errors.UserError` that starts with ``what`` (the
flag and the path, e.g. ``--config recipe.yaml``) and names the bound.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import UserError

#: The deepest nesting of lists and mappings any reader accepts (a recipe needs 3).
MAX_DEPTH = 64
#: Integers in these files must fit in 64 bits (seeds, counts); larger ones are typos or attacks.
INT_LIMIT = 2 ** 63
#: Defaults for settings files (recipes, suites, run ``config.yaml``): 1 MiB, 100,000 values.
SETTINGS_BYTES, SETTINGS_VALUES = 1 << 20, 100_000
#: Defaults for data files (cost matrices, class-name embeddings): 256 MiB, 50 million values.
DATA_BYTES, DATA_VALUES = 256 << 20, 50_000_000


def _check_regular(path: str | Path, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UserError(f"{what}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what}: not a regular file; give a file")


def read_bytes(path: str | Path, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them."""
    _check_regular(path, what)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f"{what}: larger than {max_bytes / 2 ** 20:g} MiB, the most read from such a file")
    return data


def read_text(path: str | Path, what: str, max_bytes: int) -> str:
    """:func:`read_bytes` decoded as UTF-8 (a byte-order mark is dropped)."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what}: byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8; "
                        f"save the file as UTF-8") from None


def check_tree(data: Any, what: str, max_values: int) -> Any:
    """``data`` (parsed YAML or JSON) within :data:`MAX_DEPTH`, ``max_values`` and :data:`INT_LIMIT`.

    Values are counted as a reader of the result would see them: a YAML alias counts its whole
    anchored value again, so the walk stops as soon as an alias bomb passes ``max_values``.
    """
    stack = [(data, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise UserError(f"{what}: more than {max_values} values (with YAML aliases expanded); "
                            f"a settings or data file this large is refused")
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and abs(value) >= INT_LIMIT:
            raise UserError(f"{what}: integer with {len(str(abs(value)))} digits; integers here must fit "
                            f"in 64 bits")
        if isinstance(value, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise UserError(f"{what}: nested deeper than {MAX_DEPTH} levels; flatten it")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return data


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _too_deep(what: str) -> UserError:
    return UserError(f"{what}: nested deeper than {MAX_DEPTH} levels; flatten it")


def load_yaml(path: str | Path, what: str, max_bytes: int = SETTINGS_BYTES,
              max_values: int = SETTINGS_VALUES) -> Any:
    """A YAML file parsed with ``yaml.safe_load`` (no code runs; a python tag is an error), bounded."""
    import yaml

    text = read_text(path, what, max_bytes)
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise _too_deep(what) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer past Python's digit limit
        raise UserError(f"{what}: not valid YAML ({_first_line(exc)})") from None
    return check_tree(data, what, max_values)


def load_json(path: str | Path, what: str, max_bytes: int = DATA_BYTES, max_values: int = DATA_VALUES) -> Any:
    """A JSON file parsed with :func:`json.loads`, bounded like :func:`load_yaml`."""
    text = read_text(path, what, max_bytes)
    try:
        data = json.loads(text)
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise UserError(f"{what}: not valid JSON ({_first_line(exc)})") from None
    return check_tree(data, what, max_values)


def npy_header(path: str | Path, what: str) -> tuple:
    """``(shape, dtype, data offset)`` of a ``.npy`` file, checked against the file's size.

    The header is read without reading the array; an object dtype (pickles) is refused, and so is
    a header declaring more bytes (prod(shape) x item size) than the file holds after it.
    """
    from numpy.lib import format as npy

    _check_regular(path, what)
    try:
        with open(path, "rb") as handle:
            version = npy.read_magic(handle)
            reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f".npy format version {version} is not supported")
            shape, _, dtype = reader(handle, max_header_size=10_000)
            offset = handle.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise UserError(f"{what}: not a .npy array ({_first_line(exc)})") from None
    if dtype.hasobject:
        raise UserError(f"{what}: not a numeric .npy array (dtype {dtype} holds Python objects, which are never "
                        f"unpickled); save a numeric array")
    declared = math.prod(shape) * dtype.itemsize
    available = os.path.getsize(path) - offset
    if declared > available:
        raise UserError(f"{what}: its header declares shape {tuple(shape)} ({declared} bytes of {dtype}) but "
                        f"the file holds {available} bytes after it; the file is cut short or forged")
    return tuple(shape), dtype, offset


def load_npy(path: str | Path, what: str):
    """A ``.npy`` array (``allow_pickle=False``) after :func:`npy_header` checked its declared size."""
    import numpy as np

    npy_header(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{what}: not a .npy array ({_first_line(exc)})") from None
