"""Class-name embeddings of the ``semantic`` cost, read as data (``--semantic-file``).

Formats: ``.json`` ``{"class name": [v1, v2, ...]}`` or ``.csv`` rows ``class name,v1,v2,...``
(an optional header row whose value cells are not numbers is skipped). Every problem is a
one-line :class:`UserError` naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from .io import is_number, read_csv_rows, read_json


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Class-name embeddings ``{name: (D,) float64}`` from ``.json`` or ``.csv`` (see the module doc)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--semantic-file not found: {path}")
    suffix = path.suffix.lower()
    table: dict[str, list] = {}
    if suffix == ".json":
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"--semantic-file {path}: expected a JSON object {{\"class name\": [numbers]}}")
        for name, vec in data.items():
            if not isinstance(vec, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in vec):
                raise UserError(f"--semantic-file {path}: the embedding of '{name}' must be a list of numbers")
            table[name] = vec
    elif suffix == ".csv":
        rows = read_csv_rows(path)
        if rows and not all(is_number(c) for c in rows[0][1:]):
            rows = rows[1:]  # header
        for line, row in enumerate(rows, start=1):
            try:
                table[row[0]] = [float(c) for c in row[1:]]
            except ValueError:
                raise UserError(f"--semantic-file {path}: row '{row[0]}' has a value that is not a number") from None
    else:
        raise UserError(f"--semantic-file {path}: unknown format '{suffix}'; use .json or .csv")
    if not table:
        raise UserError(f"--semantic-file {path}: no embeddings in it")
    dims = {len(v) for v in table.values()}
    if len(dims) != 1 or 0 in dims:
        raise UserError(f"--semantic-file {path}: embeddings have different or zero lengths ({sorted(dims)}); "
                        f"give every class the same number of values")
    out = {}
    for name, vec in table.items():
        arr = np.asarray(vec, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise UserError(f"--semantic-file {path}: the embedding of '{name}' has NaN or inf")
        out[name] = arr
    return out


def loose_name(text: str) -> str:
    """A class name for loose matching: lower case, ``_`` and ``-`` as spaces, spaces collapsed."""
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def lookup_embeddings(table: dict[str, np.ndarray], names: Sequence[str], side: str, path) -> np.ndarray:
    """``(len(names), D)`` rows of ``table``; exact names first, then case/underscore-insensitive."""
    loose = {loose_name(k): v for k, v in table.items()}
    rows = []
    for name in names:
        vec = table.get(name)
        if vec is None:
            vec = loose.get(loose_name(name))
        if vec is None:
            raise UserError(f"--semantic-file {path}: no embedding for {side} class '{name}'; add it to the file")
        rows.append(vec)
    return np.stack(rows)
