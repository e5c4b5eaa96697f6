r"""``lwf``: Learning without Forgetting (Li and Hoiem, ECCV 2016), TLlib's ``lwf.py``: ``erm`` plus
the distillation of the pretrained classifier's outputs on the target images,

.. math::
    L = \mathrm{CE}(h_t(g(x_t)), y_t) + \lambda\, \frac{1}{B_t} \sum_{b=1}^{B_t}
        \mathrm{KL}\big(\mathrm{softmax}(h_s^0(g^0(x_b)) / T) \,\big\|\, \mathrm{softmax}(h_s(g(x_b)) / T)\big)

with :math:`x_t` (B_t, C, H, W) the target images, :math:`h_s` the pretrained classifier kept as the
source head over the trunk features (``Ks`` outputs, e.g. ImageNet's 1000; frozen, as TLlib's
``lwf.py``, whose optimiser leaves ``head_source`` out), :math:`h_s(g(x_b))` (B_t, Ks) its logits on
the trunk being fine-tuned and :math:`h_s^0(g^0(x_b))` (B_t, Ks) those of a frozen copy of the
starting backbone and classifier (the teacher, in eval mode, no gradient)
(:class:`~tllib_jtln.regularization.LwFLoss`). Knobs: ``lwf_temperature`` (:math:`T`, TLlib's ``-T``,
3) and ``lwf_trade_off`` (:math:`\lambda`, TLlib's ``--trade-off``, 4; ``--method lwf --trade-off``
sets it). TLlib records the teacher's outputs once before training; here the frozen copy gives
them on the step's own view of each image.

Source-free: the model's source head must be the backbone's pretrained classifier, which it is
without source data (``--source-data none``) or with source data of the pretraining classes; a
backbone without a pretrained classifier (``--no-pretrained``, a headless model) or a new source
head is refused in one line. As a regulariser, ``--with lwf`` adds the term to ``erm``, and to
``jtln`` source-free (the OT term and the distillation then both read the frozen pretrained
classifier's predictions on the target images).

Term: ``lwf`` (scalar, already weighted).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from ..regularization import LwFLoss
from .base import register_method
from .erm import ERM
from .regularizer import Regularizer, TargetView, frozen_copy, register_regularizer


@register_regularizer("lwf")
class LwFRegularizer(Regularizer):
    knobs = ("lwf_temperature", "lwf_trade_off")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.loss = LwFLoss(cfg.lwf_temperature)

    def prepare_model(self, model) -> None:
        if model.source_head is None or not model.source_head_pretrained:
            if model.backbone.pretrained_head is None:
                raise UserError(f"-a {self.cfg.arch}: LwF distils the pretrained classifier and this backbone has none "
                                "(--no-pretrained, or a model without a classifier); use pretrained weights with a "
                                "classifier, or another method")
            raise UserError("lwf distils the pretrained classifier on the target images, and this run's source head "
                            "is a new head for the source data's classes; run it source-free: drop --source-data (the "
                            "embedded task: --source-data none)")
        self.teacher = nn.Sequential(frozen_copy(model.backbone), frozen_copy(model.source_head))

    def terms(self, view: TargetView):
        with torch.no_grad():
            teacher_logits = self.teacher(view.images)
        return {"lwf": self.cfg.lwf_trade_off * self.loss(view.output.source_logits, teacher_logits)}


@register_method("lwf")
class LwF(ERM):
    built_in = ("lwf",)
    trade_off_field = "lwf_trade_off"
