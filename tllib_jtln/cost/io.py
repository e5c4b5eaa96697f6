"""Cost matrices on disk: ``file:PATH`` loading, saving with class names, heatmaps (the
class-name embedding files of the ``semantic`` cost: :mod:`tllib_jtln.cost.embeddings`).

Files are read as data only: ``.npy`` with ``allow_pickle=False``, JSON with ``json``, CSV with
``csv``. Every problem is a one-line :class:`UserError` naming the file and the fix.

Formats:

- ``.npy``: a 2-D numeric ``(Ks, Kt)`` array; optional class names in the sibling ``.json``
  (same stem): ``{"source_classes": [...], "target_classes": [...]}``, either key optional.
  :func:`save_cost` writes exactly this pair.
- ``.csv``: ``Ks`` rows of ``Kt`` numbers; optionally a header row of target class names (its
  first cell is a free label such as ``source\\target`` when there is a name column) and a first
  column of source class names. Class names must not be numbers.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import readers
from ..errors import UserError
from ..fileio import atomic_write, save_figure


# ---------------------------------------------------------------------------- small helpers
def is_number(text: str) -> bool:
    """Whether a CSV cell reads as a number."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_rows(path: Path) -> list[list[str]]:
    """The non-empty rows of a UTF-8 CSV file (at most 256 MiB), cells stripped (a UserError naming the file otherwise)."""
    text = readers.read_text(path, str(path), readers.DATA_BYTES)
    try:
        rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text, newline=""))]
    except csv.Error as exc:
        raise UserError(f"{path}: not a valid CSV file ({exc})") from None
    return [row for row in rows if any(row)]


def read_json(path: Path):
    """A UTF-8 JSON file as data, within :mod:`tllib_jtln.readers`' bounds (a UserError naming the file otherwise)."""
    return readers.load_json(path, str(path))


def _check_names(kind: str, found: Optional[Sequence[str]], expected: Optional[Sequence[str]], path: Path) -> None:
    """One-line error at the first position where the file's class names differ from the dataset's."""
    if found is None or expected is None:
        return
    for i, (a, b) in enumerate(zip(found, expected)):
        if str(a) != str(b):
            raise UserError(f"cost file {path}: {kind} class {i} is '{a}' in the file but '{b}' in the dataset; "
                            f"reorder the file's {'rows' if kind == 'source' else 'columns'} to the dataset's "
                            f"class order")
    if len(found) != len(expected):
        raise UserError(f"cost file {path}: {len(found)} {kind} class names but the dataset has {len(expected)}")


# ---------------------------------------------------------------------------- file:PATH
def _load_npy(path: Path) -> tuple[np.ndarray, Optional[list], Optional[list]]:
    matrix = readers.load_npy(path, f"cost file {path}")  # the declared shape checked against the file size
    if not isinstance(matrix, np.ndarray) or matrix.dtype.kind not in "fiub":
        raise UserError(f"cost file {path}: expected a numeric array, got dtype {getattr(matrix, 'dtype', '?')}")
    source_names = target_names = None
    names_file = path.with_suffix(".json")
    if names_file.is_file():
        meta = read_json(names_file)
        if not isinstance(meta, dict):
            raise UserError(f"{names_file}: expected {{\"source_classes\": [...], \"target_classes\": [...]}}")
        for key in ("source_classes", "target_classes"):
            value = meta.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise UserError(f"{names_file}: '{key}' must be a list of class-name strings")
        source_names, target_names = meta.get("source_classes"), meta.get("target_classes")
    return matrix, source_names, target_names


def _load_csv_matrix(path: Path) -> tuple[np.ndarray, Optional[list], Optional[list]]:
    rows = read_csv_rows(path)
    if not rows:
        raise UserError(f"cost file {path}: empty; write one row per source class")
    names_column = not is_number(rows[-1][0])
    first = rows[0][1 if names_column else 0:]
    header = bool(first) and all(not is_number(cell) for cell in first)
    target_names = rows[0][1 if names_column else 0:] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise UserError(f"cost file {path}: a header but no rows of numbers")
    source_names = [] if names_column else None
    values = []
    width = None
    for line, row in enumerate(body, start=2 if header else 1):
        cells = row[1:] if names_column else row
        if names_column:
            source_names.append(row[0])
        if width is None:
            width = len(cells)
        if len(cells) != width:
            raise UserError(f"cost file {path} line {line}: {len(cells)} values, expected {width} like the first row")
        parsed = []
        for col, cell in enumerate(cells, start=2 if names_column else 1):
            try:
                parsed.append(float(cell))
            except ValueError:
                raise UserError(f"cost file {path} line {line}, column {col}: '{cell}' is not a number") from None
        values.append(parsed)
    if target_names is not None and len(target_names) != width:
        raise UserError(f"cost file {path}: the header names {len(target_names)} target classes but rows have "
                        f"{width} values")
    return np.asarray(values, dtype=np.float64), source_names, target_names


def load_cost_file(path: str | Path, source_classes: Optional[Sequence[str]] = None,
                   target_classes: Optional[Sequence[str]] = None,
                   expected_shape: Optional[tuple[Optional[int], Optional[int]]] = None) -> Tensor:
    """A ``(Ks, Kt)`` cost matrix from ``.npy`` or ``.csv``, checked against the task.

    Args:
        path: the file (``--cost file:PATH``).
        source_classes, target_classes: the dataset's class names; when both the file and the
            caller give names, they must agree position by position.
        expected_shape: ``(Ks, Kt)``; either may be None (unknown).

    Returns:
        float32 CPU tensor, as stored (no normalisation; :func:`build_cost` does that).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"cost file not found: {path} (--cost file:PATH takes a .npy or .csv file)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        matrix, source_names, target_names = _load_npy(path)
    elif suffix == ".csv":
        matrix, source_names, target_names = _load_csv_matrix(path)
    else:
        raise UserError(f"cost file {path}: unknown format '{suffix}'; use .npy or .csv")
    if matrix.ndim != 2:
        raise UserError(f"cost file {path}: expected a 2-D (source x target) matrix, got shape {matrix.shape}")
    ks, kt = expected_shape if expected_shape is not None else (None, None)
    if (ks is not None and matrix.shape[0] != ks) or (kt is not None and matrix.shape[1] != kt):
        want = f"{ks if ks is not None else '?'} x {kt if kt is not None else '?'}"
        raise UserError(f"cost file {path}: matrix is {matrix.shape[0]} x {matrix.shape[1]} but the task needs "
                        f"{want} (rows source classes, columns target classes)")
    for kind, names, size in (("source", source_names, matrix.shape[0]), ("target", target_names, matrix.shape[1])):
        if names is not None and len(names) != size:
            raise UserError(f"cost file {path}: {len(names)} {kind} class names for {size} "
                            f"{'rows' if kind == 'source' else 'columns'}")
    _check_names("source", source_names, source_classes, path)
    _check_names("target", target_names, target_classes, path)
    matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix).all():
        raise UserError(f"cost file {path}: NaN or inf entries; a cost must be finite")
    if (matrix < 0).any():
        raise UserError(f"cost file {path}: negative entries; a cost must be >= 0")
    largest = float(matrix.max()) if matrix.size else 0.0
    if largest > COST_MAX:
        raise UserError(f"cost file {path}: entries up to {largest:.3g} exceed {COST_MAX:.0e}, beyond what "
                        f"32-bit arithmetic can normalise; rescale the matrix (only relative costs matter)")
    return torch.from_numpy(matrix.astype(np.float32))


#: The largest entry a cost file may hold: costs are used in float32 (max ~3.4e38), and a sum
#: over a row or a normalisation must not overflow to inf.
COST_MAX = 1e30


# ---------------------------------------------------------------------------- save / plot / describe
def _names(names: Optional[Sequence[str]], size: int) -> list[str]:
    return [str(n) for n in names] if names is not None else [str(i) for i in range(size)]


def plot_cost(matrix: Tensor, source_classes: Optional[Sequence[str]], target_classes: Optional[Sequence[str]],
              path: str | Path, title: str = "cost matrix (rows: source, columns: target)",
              max_labels: int = 60) -> Path:
    """A heatmap PNG of ``matrix`` (Ks, Kt) with class names on both axes (up to ``max_labels`` per
    axis; beyond that the axis shows indices only). Uses matplotlib's Agg canvas (no display)."""
    from matplotlib.figure import Figure

    values = torch.as_tensor(matrix).detach().cpu().float().numpy()
    ks, kt = values.shape
    src, tgt = _names(source_classes, ks), _names(target_classes, kt)
    longest = max([len(n) for n in (src if ks <= max_labels else [])] + [1])
    width = float(np.clip(0.22 * min(kt, max_labels) + 0.09 * longest + 3.0, 5.0, 22.0))
    height = float(np.clip(0.22 * min(ks, max_labels) + 0.09 * max(len(n) for n in tgt[:max_labels]) + 2.0,
                           4.0, 22.0))
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="cost (low = related)", shrink=0.8)
    ax.set_xlabel("target class")
    ax.set_ylabel("source class")
    ax.set_title(title, fontsize=10)
    if kt <= max_labels:
        ax.set_xticks(range(kt))
        ax.set_xticklabels(tgt, rotation=90, fontsize=max(5, min(9, 360 // max(kt, 1))))
    if ks <= max_labels:
        ax.set_yticks(range(ks))
        ax.set_yticklabels(src, fontsize=max(5, min(9, 360 // max(ks, 1))))
    path = Path(path)
    save_figure(fig, path)
    return path


def save_cost(matrix: Tensor, source_classes: Optional[Sequence[str]], target_classes: Optional[Sequence[str]],
              folder: str | Path, stem: str = "cost") -> dict[str, Path]:
    """Write ``{stem}.npy`` (the float32 matrix), ``{stem}.json`` (class names, ``null`` when not
    given) and ``{stem}.png`` (heatmap) into ``folder``; returns their paths by suffix.

    The ``.npy`` + ``.json`` pair loads back with ``--cost file:{folder}/{stem}.npy``.
    """
    values = torch.as_tensor(matrix).detach().cpu().float()
    if values.ndim != 2:
        raise ValueError(f"save_cost: matrix must be (Ks, Kt), got shape {tuple(values.shape)}")
    for kind, names, size in (("source", source_classes, values.shape[0]), ("target", target_classes, values.shape[1])):
        if names is not None and len(names) != size:
            raise ValueError(f"save_cost: {len(names)} {kind} class names for {size} {kind} classes")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"npy": folder / f"{stem}.npy", "json": folder / f"{stem}.json", "png": folder / f"{stem}.png"}
    array = values.numpy()

    meta = {"source_classes": list(map(str, source_classes)) if source_classes is not None else None,
            "target_classes": list(map(str, target_classes)) if target_classes is not None else None,
            "shape": list(array.shape), "rows": "source", "columns": "target"}
    atomic_write(paths["npy"], lambda handle: np.save(handle, array, allow_pickle=False))
    atomic_write(paths["json"], lambda handle: handle.write((json.dumps(meta, indent=1) + "\n").encode()))
    plot_cost(values, source_classes, target_classes, paths["png"])
    return paths


def nearest_sources(matrix: Tensor, n: int = 3) -> tuple[Tensor, Tensor]:
    """For each target class, its ``n`` lowest-cost source classes: ``(costs (Kt, n), ids (Kt, n))``."""
    values = torch.as_tensor(matrix).detach().cpu().float()
    n = min(n, values.shape[0])
    top = values.T.topk(n, dim=1, largest=False)
    return top.values, top.indices


def describe_cost(matrix: Tensor, source_classes: Optional[Sequence[str]] = None,
                  target_classes: Optional[Sequence[str]] = None, n: int = 3) -> str:
    """One line per target class: its ``n`` nearest source classes with their costs.

    ``Dress <- T-shirt/top 0.12, Coat 0.55, Trouser 0.81``
    """
    values = torch.as_tensor(matrix).detach().cpu().float()
    src, tgt = _names(source_classes, values.shape[0]), _names(target_classes, values.shape[1])
    costs, ids = nearest_sources(values, n)
    width = max((len(t) for t in tgt), default=0)
    lines = []
    for j, name in enumerate(tgt):
        pairs = ", ".join(f"{src[int(i)]} {float(c):.3f}" for c, i in zip(costs[j], ids[j]))
        lines.append(f"{name:<{width}} <- {pairs}")
    return "\n".join(lines)
