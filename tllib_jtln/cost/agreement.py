"""How close an approximate cost matrix is to the exact one (sampled source, compressed search).

Two numbers, both 1 for identical matrices:

- ``spearman``: Spearman's rank correlation of the ``Ks * Kt`` entries (ties ranked by their mean
  rank): does the approximation order the (source, target) pairs as the exact cost does?
- ``same_nearest_source``: the share of target classes ``t`` whose nearest source class
  ``argmin_s M[s, t]`` is the same in both: what the OT term moves a target class's mass to.
"""
from __future__ import annotations

from torch import Tensor


def cost_agreement(approx: Tensor, exact: Tensor) -> dict[str, float]:
    """``{"spearman", "same_nearest_source"}`` of two ``(Ks, Kt)`` costs (see the module docstring)."""
    from scipy.stats import spearmanr

    if approx.shape != exact.shape:
        raise ValueError(f"cost_agreement: shapes differ, {tuple(approx.shape)} and {tuple(exact.shape)}")
    rho = spearmanr(approx.reshape(-1).double().numpy(), exact.reshape(-1).double().numpy()).statistic
    same = (approx.argmin(0) == exact.argmin(0)).double().mean()
    return {"spearman": float(rho), "same_nearest_source": float(same)}
