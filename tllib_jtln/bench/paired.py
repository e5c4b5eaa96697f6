r"""Paired comparisons of a suite: the mean difference with its 95% t-interval and a paired test,
and the forest plot that shows them (``paired_<suite>.png``).

For a pair of rows ``(a, b)`` in one setting, the paired units are the (class split, seed) runs
both rows finished, on the same data; with differences :math:`d_i = a_i - b_i` (points) over
:math:`n` units, mean :math:`\bar d` and sample standard deviation :math:`s` (ddof 1):

.. math::
    \bar d \pm t_{0.975,\,n-1}\, \frac{s}{\sqrt n}

is the 95% confidence interval of the mean difference (Student's t, ``scipy.stats.t``), and the
p-value is the two-sided paired t-test of :math:`\bar d = 0` (what ``scipy.stats.ttest_rel`` gives:
:math:`2\,P(T_{n-1} > |\bar d| \sqrt n / s)`), which assumes the differences roughly normal;
``wins`` counts the units with :math:`d_i > 0`. With one unit, or differences all equal (up to the
float noise of subtracting fractions, :data:`SPREAD_NOISE`), there is no interval width to estimate:
the interval is the mean itself and the p-value is None.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..fileio import save_figure

#: the confidence level of the intervals
CONFIDENCE = 0.95
#: a spread of the differences at or below this many points (relative to max(1, |mean|)) is float
#: noise: accuracies are counts over a test set, so real differences differ by >= 1e-4 points
SPREAD_NOISE = 1e-9


@dataclass(frozen=True)
class PairedStats:
    """A pair's differences over its paired units, in points."""

    mean: float
    low: float          # the interval's ends
    high: float
    p_value: Optional[float]  # two-sided paired t-test; None with one unit or no spread
    wins: int
    n: int

    def cell(self) -> str:
        """``+1.2 [-0.3, +2.7] p=0.11 (7/10 wins)``."""
        p = "p n/a" if self.p_value is None else f"p={self.p_value:.2g}"
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}] {p} ({self.wins}/{self.n} wins)"


def paired_stats(a: Sequence[float], b: Sequence[float]) -> PairedStats:
    """Statistics of ``a - b`` over paired units; ``a`` and ``b`` are fractions (as ``summary.json``
    holds them), the result is in percentage points (see the module docstring)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: need the same number (>= 1) of paired values, got {len(a)} and {len(b)}")
    diffs = [100.0 * (x - y) for x, y in zip(a, b)]
    n, mean = len(diffs), statistics.fmean(diffs)
    wins = sum(d > 0 for d in diffs)
    spread = statistics.stdev(diffs) if n > 1 else 0.0
    if spread <= SPREAD_NOISE * max(1.0, abs(mean)):
        return PairedStats(mean, mean, mean, None, wins, n)
    from scipy import stats

    standard_error = spread / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * standard_error
    p_value = float(2.0 * stats.t.sf(abs(mean) / standard_error, n - 1))
    return PairedStats(mean, mean - half, mean + half, p_value, wins, n)


def plot_paired(panels: dict[str, list[tuple[str, PairedStats]]], path: Path, title: str,
                metric_label: str) -> Optional[Path]:
    """The forest plot: one panel per setting (``{panel title: [(pair label, stats), ...]}``, in
    order), each pair's mean difference as a point with its 95% interval as a bar, a line at 0.
    Returns ``path``, or None when no panel has a pair to draw."""
    panels = {name: rows for name, rows in panels.items() if rows}
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for rows in panels.values() for label, _ in rows))
    height = 1.2 + 0.32 * len(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 3.0 * len(panels), height), sharey=True, squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels.items()):
        for label, st in rows:
            y = len(labels) - 1 - labels.index(label)
            colour = "C2" if st.low > 0 else "C3" if st.high < 0 else "C0"  # above zero, below zero, or spanning it
            ax.errorbar([st.mean], [y], xerr=[[st.mean - st.low], [st.high - st.mean]], fmt="o", color=colour,
                        capsize=3, markersize=4)
        ax.axvline(0.0, color="0.4", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{metric_label} difference (points)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)))
    axes[0][0].set_yticklabels(list(reversed(labels)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, metadata={"Panels": "; ".join(panels)})  # what the picture holds, readable
    plt.close(fig)
    return path
