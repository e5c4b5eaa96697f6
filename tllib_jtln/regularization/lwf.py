r"""Learning without Forgetting (Li and Hoiem, ECCV 2016), as TLlib's ``lwf.py`` example.

While the target head learns the new task, the source head (the pretrained classifier, kept on
the fine-tuned trunk) is held to what the *frozen* pretrained network predicted on the same
target images, by knowledge distillation at temperature :math:`T`:

.. math::
    L_{\mathrm{LwF}} = \frac{1}{B} \sum_{b=1}^{B} \mathrm{KL}\big(\mathrm{softmax}(t_b / T) \,\big\|\,
    \mathrm{softmax}(s_b / T)\big)
    = \frac{1}{B} \sum_{b} \sum_{k} \pi^t_{bk} \big(\log \pi^t_{bk} - \log \pi^s_{bk}\big),

with :math:`s_b` the source-head logits of the model being trained and :math:`t_b` the frozen
pretrained classifier's logits on image :math:`b`. As TLlib's ``KnowledgeDistillationLoss``
(``nn.KLDivLoss(reduction='batchmean')``), there is **no** :math:`T^2` factor (Hinton et al.'s
gradient-scale correction): the trade-off absorbs it. The training loss is
``cross_entropy(target head, y) + trade_off * L_LwF``; TLlib's defaults are ``T = 3`` and
``trade_off = 4`` (its ``lwf.py``; learning rates per dataset in its ``lwf.sh``).

TLlib records the teacher logits once, before training, on one augmented view of each training
image; computing them on the fly with a frozen copy of the starting model sees the same view
as the student. Either way the loss is this one.

Example:
    >>> teacher = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(LwFLoss(T=1.0)(teacher, teacher).item(), 6)  # the student agrees: no loss
    0.0
    >>> round(LwFLoss(T=1.0)(torch.zeros(1, 3), teacher).item(), 4)  # KL(softmax(t) || uniform)
    0.433
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class LwFLoss(nn.Module):
    r"""Temperature-scaled distillation :math:`\frac{1}{B}\sum_b \mathrm{KL}(\mathrm{softmax}(t_b/T)
    \,\|\, \mathrm{softmax}(s_b/T))` (module docstring), in float32 (safe under autocast).

    TLlib spells it ``KnowledgeDistillationLoss(T)`` (``tllib.regularization.knowledge_distillation``).

    Args:
        T: temperature, ``> 0``. Default: 3 (TLlib's ``lwf.py``).

    Shape:
        - input: ``(B, Ks)`` source-head logits of the model being trained (the student)
        - target: ``(B, Ks)`` logits of the frozen pretrained classifier (the teacher; no gradient)
        - output: scalar
    """

    def __init__(self, T: float = 3.0):
        super().__init__()
        if not T > 0:
            raise ValueError(f"T: the distillation temperature must be > 0, got {T}")
        self.T = float(T)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape != target.shape or input.dim() != 2:
            raise ValueError(f"input and target: (B, Ks) logits of the same shape, got {tuple(input.shape)} "
                             f"and {tuple(target.shape)}")
        log_student = torch.log_softmax(input.float() / self.T, dim=1)
        log_teacher = torch.log_softmax(target.detach().float() / self.T, dim=1)
        return (log_teacher.exp() * (log_teacher - log_student)).sum(1).mean()

    def extra_repr(self) -> str:
        return f"T={self.T}"
