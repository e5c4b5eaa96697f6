"""Pictures and text views of a run: training curves, the transport view, the cost heatmap.

All figures are drawn with matplotlib's object API on an Agg canvas (no display, no global
backend switch), so they work on a headless machine and inside DDP rank 0.

Transport view. For each target class ``j`` it lists the source classes ``i`` that ``j`` draws
the most mass from, in up to three (Ks, Kt) views, each titled for what it is:

- ``plan``: the mean target-side OT plan over the validation images (``JTLN.transport_plan``:
  the problem the loss solves under ``--ot-on target``; under ``--ot-on source``, which solves on
  source images, the same target-side problem as a view), column ``j`` being the mass target
  class ``j`` receives from each source class;
- ``posterior``: the mean source-head posterior over the test images of each target class ``j``
  (what the source head predicts on them; no OT involved);
- ``cost``: the cost matrix ``M``; its view ranks the source classes of column ``j`` by
  increasing cost (the cheapest source classes to draw mass from).

``plan`` and ``posterior`` columns are normalised to sum to 1.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..fileio import save_figure, write_text
from .logdir import loss_keys


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _as_numpy(matrix) -> Optional[np.ndarray]:
    if matrix is None:
        return None
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().float().cpu().numpy()
    return np.asarray(matrix, dtype=np.float64)


# ----------------------------------------------------------------------------- curves
def plot_curves(records: Sequence[dict], path: str | Path) -> Path:
    """``curves.png``: training loss terms (left) and validation accuracy (right) per epoch.

    ``records`` are the ``metrics.jsonl`` lines: ``epoch``, ``train_loss``, ``train_<term>``,
    ``val_top1``, ``val_mean_class_acc`` (missing keys are skipped).
    """
    path = Path(path)
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r.get("epoch") for r in records]
    keys = sorted({k for r in records for k in loss_keys(r)})
    for key in keys:
        xs = [e for e, r in zip(epochs, records) if isinstance(r.get(key), (int, float))]
        ys = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        if xs:
            style = "-" if key == "train_loss" else "--"
            ax_loss.plot(xs, ys, style, marker="o", markersize=3, label=key.removeprefix("train_"))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean loss per step")
    ax_loss.set_title("training loss terms")
    if keys:
        ax_loss.legend(fontsize=8)
    for key, label in (("val_top1", "val top-1"), ("val_mean_class_acc", "val mean class acc")):
        xs = [e for e, r in zip(epochs, records) if isinstance(r.get(key), (int, float))]
        ys = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        if xs:
            ax_acc.plot(xs, ys, marker="o", markersize=3, label=label)
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("target validation")
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path


# ----------------------------------------------------------------------------- transport
def top_sources(column: np.ndarray, source_classes: Sequence[str], top: int, ascending: bool) -> list:
    """``[(source class, value)]`` of the ``top`` largest (or smallest) entries of ``column``."""
    order = np.argsort(column, kind="stable")
    if not ascending:
        order = np.argsort(-column, kind="stable")
    return [(source_classes[i], float(column[i])) for i in order[:top]]


#: the views of the transport picture: (keyword, title, lower is better)
TRANSPORT_VIEWS = (("plan", "mean OT plan (validation images)", False),
                   ("posterior", "mean source-head posterior (test images)", False),
                   ("cost", "cost M (lower = cheaper)", True))


def _transport_views(source_classes: Sequence[str], target_classes: Sequence[str],
                     given: dict) -> list[tuple[str, str, np.ndarray, bool]]:
    """``[(keyword, title, matrix, ascending)]`` of the given views, mass views column-normalised."""
    ks, kt = len(source_classes), len(target_classes)
    views = []
    for key, title, ascending in TRANSPORT_VIEWS:
        m = _as_numpy(given.get(key))
        if m is None:
            continue
        if m.shape != (ks, kt):
            raise ValueError(f"transport view: {key} has shape {m.shape}, expected ({ks}, {kt}) "
                             f"(source classes x target classes)")
        if not ascending:
            m = m / np.clip(m.sum(axis=0, keepdims=True), 1e-12, None)
        views.append((key, title, m, ascending))
    if not views:
        raise ValueError("transport view: give plan, posterior or cost")
    return views


def transport_lines(source_classes: Sequence[str], target_classes: Sequence[str], *, plan=None, posterior=None,
                    cost=None, top: int = 3) -> list[str]:
    """The lines of ``transport.txt`` (see the module docstring)."""
    views = _transport_views(source_classes, target_classes, {"plan": plan, "posterior": posterior, "cost": cost})
    return _lines(views, source_classes, target_classes, top)


def _lines(views: list, source_classes: Sequence[str], target_classes: Sequence[str], top: int) -> list[str]:
    top = max(1, min(top, len(source_classes)))
    lines = ["# transport view: for each target class, the source classes it draws the most mass from"]
    lines += [f"# {key}: {title}" + (", cheapest first" if ascending else ", share of the column, largest first")
              for key, title, _, ascending in views]
    width = max(len(str(t)) for t in target_classes)
    for j, target in enumerate(target_classes):
        parts = [f"{key}: " + ", ".join(f"{s} {v:.3f}" for s, v in top_sources(m[:, j], source_classes, top, ascending))
                 for key, _, m, ascending in views]
        lines.append(f"{str(target):<{width}} <- " + "  |  ".join(parts))
    return lines


def save_transport(folder: str | Path, source_classes: Sequence[str], target_classes: Sequence[str], *,
                   plan=None, posterior=None, cost=None, top: int = 3, max_rows: int = 40) -> tuple[Path, Path]:
    """Write ``transport.txt`` and ``transport.png`` into ``folder``; returns both paths.

    The PNG shows each given view as a source x target heatmap titled for what it is, with each
    target column's first choice outlined. With more than ``max_rows`` source classes only the
    rows in some column's top ``top`` are drawn.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    views = _transport_views(source_classes, target_classes, {"plan": plan, "posterior": posterior, "cost": cost})
    txt = write_text("\n".join(_lines(views, source_classes, target_classes, top)) + "\n", folder / "transport.txt")
    panels = [(title, m, "magma" if ascending else "viridis", ascending) for _, title, m, ascending in views]
    ks_all, kt = len(source_classes), len(target_classes)
    k = max(1, min(top, ks_all))
    rows = np.arange(ks_all)
    if ks_all > max_rows:  # many source classes (e.g. ImageNet): show only those in some top-k
        chosen: set[int] = set()
        for _, data, _, ascending in panels:
            for j in range(kt):
                col = data[:, j]
                chosen.update(np.argsort(col if ascending else -col, kind="stable")[:k].tolist())
        rows = np.array(sorted(chosen))
    names = [str(source_classes[i]) for i in rows]
    ks = len(rows)
    cell = 0.45 if max(ks, kt) <= 30 else 0.12
    width = max(4.5, kt * cell + 2.5) * len(panels)
    height = max(3.5, ks * cell + 2.0)
    fig = _figure(min(width, 40), min(height, 40))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    annotate = ks * kt <= 400
    for ax, (title, full, cmap, ascending) in zip(axes, panels):
        data = full[rows]
        im = ax.imshow(data, cmap=cmap, aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        position = {int(r): i for i, r in enumerate(rows)}
        for j in range(kt):  # outline each column's first choice (the text file lists the top k)
            col = full[:, j]
            best = int(np.argsort(col if ascending else -col, kind="stable")[0])
            if best in position:
                ax.add_patch(_rectangle(j, position[best]))
        if annotate:
            lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
            for i in range(ks):
                for j in range(kt):
                    v = data[i, j]
                    if math.isfinite(v):
                        bright = (v - lo) / (hi - lo) > 0.6 if hi > lo else False
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="black" if bright else "white")
        if max(ks, kt) <= 80:
            ax.set_xticks(range(kt), [str(t) for t in target_classes], rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(ks), names, fontsize=7)
        ax.set_xlabel("target class")
        ax.set_ylabel("source class" + (f" (the {ks} of {ks_all} in some top {k})" if ks < ks_all else ""))
        ax.set_title(f"{title}; first choice outlined", fontsize=9)
    fig.tight_layout()
    png = save_figure(fig, folder / "transport.png")
    return txt, png


def _rectangle(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2)


def save_cost_files(matrix, source_classes: Sequence[str], target_classes: Sequence[str],
                    folder: str | Path) -> None:
    """``cost.npy``, ``cost.json`` and the ``cost.png`` heatmap through :func:`tllib_jtln.cost.save_cost`."""
    from ..cost import save_cost

    save_cost(matrix, list(source_classes), list(target_classes), folder)
