r"""Co-Tuning's regulariser (You, Kou, Jiang, Wang and Long, NeurIPS 2020), as TLlib's
``tllib.regularization.co_tuning``.

The category relation translates each target label into a soft label over the source classes:

.. math::
    R[j, :] = \frac{1}{|\{i: y_i = j\}|} \sum_{i: y_i = j} \mathrm{softmax}(h_s(g(x_i))),
    \qquad R \in [0, 1]^{K_t \times K_s},

the mean source-head prediction over the target images of class ``j`` (:class:`Relationship`;
a class without images gets the uniform row), and the loss is the cross-entropy of the source
head against those soft labels (:class:`CoTuningLoss`):

.. math::
    L_{\mathrm{co}} = -\,\mathrm{mean}_{b} \sum_s R[y_b, s] \log \mathrm{softmax}(h_s(g(x_b)))_s .

Example:
    >>> probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])  # source-head softmax (N, Ks)
    >>> relation = Relationship(probs, torch.tensor([0, 0, 1]), num_target_classes=2)
    >>> relation.matrix
    tensor([[0.8000, 0.2000],
            [0.2000, 0.8000]])
    >>> round(CoTuningLoss()(torch.zeros(2, 2), relation[torch.tensor([0, 1])]).item(), 4)  # log 2
    0.6931
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def category_relation(source_probs: Tensor, target_labels: Tensor, num_target_classes: int) -> Tensor:
    """``R`` (Kt, Ks): mean of ``source_probs`` (N, Ks) over each target class; uniform rows for absent classes."""
    ks = source_probs.shape[1]
    labels = target_labels.long().to(source_probs.device)
    sums = torch.zeros(num_target_classes, ks, dtype=torch.float32, device=source_probs.device)
    sums.index_add_(0, labels, source_probs.float())
    counts = torch.bincount(labels, minlength=num_target_classes).float().unsqueeze(1)
    relation = sums / counts.clamp_min(1)
    relation[counts.squeeze(1) == 0] = 1.0 / ks
    return relation


class Relationship:
    """The category relation ``R`` (Kt, Ks) of Co-Tuning; ``relation[labels]`` gives soft labels.

    Args:
        source_probs: ``(N, Ks)`` source-head softmax over the target training images.
        target_labels: ``(N,)`` their target labels in ``[0, Kt)``.
        num_target_classes: ``Kt``.

    Shape:
        - ``matrix``: ``(Kt, Ks)``, rows summing to 1
        - ``relation[labels]``: ``(B,)`` integer labels -> ``(B, Ks)`` soft labels
    """

    def __init__(self, source_probs: Tensor, target_labels: Tensor, num_target_classes: int):
        self.matrix = category_relation(source_probs, target_labels, num_target_classes)

    def __getitem__(self, labels: Tensor) -> Tensor:
        return self.matrix[labels]


class CoTuningLoss(nn.Module):
    r"""Cross-entropy of the source head against soft labels: :math:`-\mathrm{mean}_b \sum_s t_{bs} \log
    \mathrm{softmax}(z_b)_s`, computed in float32 (safe under autocast).

    Shape:
        - input: ``(B, Ks)`` source-head logits
        - target: ``(B, Ks)`` soft labels (rows of :class:`Relationship`)
        - output: scalar
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return -(target * torch.log_softmax(input.float(), dim=1)).sum(1).mean()
