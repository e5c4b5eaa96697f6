r"""Batch Spectral Shrinkage (Chen, Wang, Fu, Long and Wang, NeurIPS 2019), as TLlib's
``tllib.regularization.bss``.

Fine-tuning transfers the small singular directions of the pretrained features along with the
large ones, and the small ones carry what does not transfer. BSS shrinks the ``k`` smallest
singular values of the batch feature matrix :math:`F \in R^{b \times d}`:

.. math::
    L_{\mathrm{bss}}(F) = \sum_{i=1}^{k} \sigma_{-i}^2, \qquad F = U \Sigma V^\top,\;
    \sigma_1 \ge \dots \ge \sigma_{\min(b, d)},

where :math:`\sigma_{-i}` is the :math:`i`-th smallest singular value.

Example:
    >>> features = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # singular values 3 and 2
    >>> BatchSpectralShrinkage(k=1)(features)
    tensor(4.)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchSpectralShrinkage"]


class BatchSpectralShrinkage(nn.Module):
    r"""The sum of the ``k`` smallest squared singular values of a batch of features, computed in float32.

    Args:
        k: how many singular values are penalised (TLlib's default 1); at most ``min(b, d)``.

    Shape:
        - input: ``(b, d)`` features of a batch (TLlib: what the classifier head reads)
        - output: scalar
    """

    def __init__(self, k: int = 1):
        super().__init__()
        if k < 1:
            raise ValueError(f"k: the number of singular values must be >= 1, got {k}")
        self.k = int(k)

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 2:
            raise ValueError(f"features: expected a (batch, dim) matrix, got shape {tuple(features.shape)}")
        singular = torch.linalg.svdvals(features.float())  # descending
        if self.k > singular.shape[0]:
            raise ValueError(f"k: {self.k} singular values asked of a {tuple(features.shape)} matrix, which has "
                             f"{singular.shape[0]}")
        return singular[-self.k:].pow(2).sum()

    def extra_repr(self) -> str:
        return f"k={self.k}"
