r"""``bss``: Batch Spectral Shrinkage (Chen et al., NeurIPS 2019), TLlib's ``bss.py``: ``erm`` plus

.. math:: L = \mathrm{CE}(h_t(f), y_t) + \eta \sum_{i=1}^{k} \sigma_{-i}(F)^2

with :math:`F` (B_t, F) the features the target head reads for the batch's target images and
:math:`\sigma_{-i}` its ``i``-th smallest singular value
(:class:`~tllib_jtln.regularization.BatchSpectralShrinkage`). Knobs: ``bss_k`` (TLlib's ``-k``, 1)
and ``bss_trade_off`` (:math:`\eta`, TLlib's ``--trade-off`` 0.001; ``--method bss --trade-off``
sets it). As a regulariser, ``--with bss`` adds the term to ``erm``, ``joint`` or ``jtln``.

Term: ``bss`` (scalar, already weighted).
"""
from __future__ import annotations

from ..errors import UserError
from ..regularization import BatchSpectralShrinkage
from .base import register_method
from .erm import ERM
from .regularizer import Regularizer, TargetView, register_regularizer


@register_regularizer("bss")
class BSSRegularizer(Regularizer):
    knobs = ("bss_k", "bss_trade_off")

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.bss_k > cfg.batch_size:
            raise UserError(f"--bss-k {cfg.bss_k}: a batch of -b {cfg.batch_size} target images has at most "
                            f"{cfg.batch_size} singular values; lower --bss-k or raise -b")
        self.loss = BatchSpectralShrinkage(cfg.bss_k)

    def terms(self, view: TargetView):
        return {"bss": self.cfg.bss_trade_off * self.loss(view.output.features)}


@register_method("bss")
class BSS(ERM):
    built_in = ("bss",)
    trade_off_field = "bss_trade_off"
