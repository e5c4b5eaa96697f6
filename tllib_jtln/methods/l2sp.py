r"""``l2sp``: L2-SP (Li, Grandvalet and Davoine, ICML 2018), TLlib's ``delta.py --regularization-type
l2_sp``: ``erm`` plus

.. math::
    L = \mathrm{CE}(h_t(g(x_t)), y_t) + \frac{\alpha}{2} \lVert w_g - w_g^0 \rVert_2^2
        + \frac{\beta}{2} \lVert w_{\mathrm{head}} \rVert_2^2

with :math:`w_g^0` the backbone's starting weights (kept when the model is prepared, before any
step) and the head the new bottleneck and target head
(:class:`~tllib_jtln.regularization.SPRegularization`,
:class:`~tllib_jtln.regularization.L2Regularization`). Knobs: ``trade_off_backbone`` (:math:`\alpha`,
0.01) and ``trade_off_head`` (:math:`\beta`, 0.01), TLlib's. The penalised groups (backbone,
bottleneck, target head) get no weight decay in the optimiser, as TLlib's ``--wd 0``: the penalties
stand in for it. ``--with l2sp`` adds it to ``erm``, ``joint`` or ``jtln``.

Terms: ``l2sp_backbone``, ``l2sp_head`` (scalars, already weighted).
"""
from __future__ import annotations

from ..regularization import L2Regularization, SPRegularization
from .base import register_method
from .erm import ERM
from .regularizer import Regularizer, TargetView, register_regularizer

#: the parameter groups (``JointClassifier.get_parameters``) an explicit penalty covers
PENALISED_GROUPS = ("backbone", "bottleneck", "target_head")


def without_weight_decay(groups: list[dict], names=PENALISED_GROUPS) -> list[dict]:
    """``groups`` with ``weight_decay = 0`` on those named ``names`` (their penalty is a loss term)."""
    return [{**g, "weight_decay": 0.0} if g.get("name") in names else g for g in groups]


def new_head(model) -> list:
    """The modules trained from scratch on the target task: the bottleneck and the target head."""
    return [model.bottleneck, model.target_head]


@register_regularizer("l2sp")
class L2SPRegularizer(Regularizer):
    knobs = ("trade_off_backbone", "trade_off_head")
    excludes = ("delta",)

    def prepare_model(self, model) -> None:
        self.backbone, self.head = model.backbone, new_head(model)
        self.starting_point = SPRegularization(model.backbone)
        self.l2 = L2Regularization()

    def param_groups(self, groups):
        return without_weight_decay(groups)

    def terms(self, view: TargetView):
        return {"l2sp_backbone": self.cfg.trade_off_backbone * self.starting_point(self.backbone),
                "l2sp_head": self.cfg.trade_off_head * self.l2(self.head)}


@register_method("l2sp")
class L2SP(ERM):
    built_in = ("l2sp",)
