r"""``stochnorm``: Stochastic Normalization (Kou, You, Long and Wang, NeurIPS 2020), TLlib's
``stochnorm.py``: ``erm`` with every BatchNorm layer of the backbone replaced by StochNorm.

The loss is ``erm``'s,

.. math:: L = \mathrm{CE}(h_t(g_{\mathrm{SN}}(x_t)), y_t),

with :math:`x_t` (B_t, C, H, W), :math:`g_{\mathrm{SN}}` the backbone whose BatchNorm layers
normalise each channel ``c`` of their input ``(B, C, ...)`` in training with the batch statistics
(probability ``p``) or the moving ones (:math:`1 - p`), drawn per channel and step
(:mod:`tllib_jtln.normalization`: :func:`~tllib_jtln.normalization.convert_to_stochnorm`). In
evaluation a StochNorm layer is BatchNorm. Knob: ``stochnorm_p`` (:math:`p`, TLlib's ``--prob``,
0.5). Only the backbone is converted, as TLlib's script (the bottleneck, if any, keeps BatchNorm).

The swap is a :class:`~tllib_jtln.methods.regularizer.Regularizer` without a term (it only
prepares the model), so ``--with stochnorm`` gives ``jtln``, ``joint`` or ``erm`` the same layers:
``--method jtln --with stochnorm``. Refused in one line: a backbone without BatchNorm (``-a NAME``
named), and ``--freeze-bn`` (frozen BatchNorm layers normalise with the moving statistics only,
where StochNorm changes nothing).

Terms: ``ce_target`` (scalar) and those of the method it is added to; StochNorm adds none.
"""
from __future__ import annotations

from ..errors import UserError
from ..normalization import convert_to_stochnorm
from .base import register_method
from .erm import ERM
from .regularizer import Regularizer, TargetView, register_regularizer


@register_regularizer("stochnorm")
class StochNormRegularizer(Regularizer):
    knobs = ("stochnorm_p",)

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.freeze_bn:
            raise UserError("--freeze-bn keeps BatchNorm in eval mode, where StochNorm is BatchNorm with the moving "
                            "statistics: it would change nothing; drop --freeze-bn (or stochnorm)")

    def prepare_model(self, model) -> None:
        try:
            convert_to_stochnorm(model.backbone, p=self.cfg.stochnorm_p)
        except ValueError:
            raise UserError(f"-a {self.cfg.arch}: StochNorm replaces BatchNorm layers and this backbone has none "
                            "(or a kind it cannot replace); use a backbone with BatchNorm (a ResNet, an "
                            "EfficientNet, smallcnn) or another method") from None

    def terms(self, view: TargetView):
        return {}


@register_method("stochnorm")
class StochNorm(ERM):
    built_in = ("stochnorm",)
