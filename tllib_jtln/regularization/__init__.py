"""The methods' regularisers as loss modules, TLlib's ``regularization/`` style.

- :class:`JTLNLoss`: JTLN's optimal-transport term between the source head's prediction and a
  target-side distribution (:mod:`tllib_jtln.regularization.jtln`);
- :class:`CoTuningLoss` and :class:`Relationship`: Co-Tuning's soft-label loss and the category
  relation it reads its soft labels from (:mod:`tllib_jtln.regularization.co_tuning`);
- :class:`BatchSpectralShrinkage`: BSS, the smallest singular values of the batch features
  (:mod:`tllib_jtln.regularization.bss`);
- :class:`SPRegularization` and :class:`L2Regularization`: L2-SP, the distance to the starting
  point and the new head's L2 (:mod:`tllib_jtln.regularization.l2sp`);
- :class:`AttentionFeatureMapDistance`, :func:`filter_importance`, :func:`channel_attention`:
  DELTA's attention-weighted feature-map distance (:mod:`tllib_jtln.regularization.delta`).
- :class:`LwFLoss`: Learning without Forgetting's temperature-scaled distillation
  (:mod:`tllib_jtln.regularization.lwf`);
- :class:`BiTuningLoss`, :class:`ClassQueue` and :class:`MomentumEncoder`: Bi-Tuning's contrastive
  terms, per-class key queues and key encoder (:mod:`tllib_jtln.regularization.bi_tuning`).
StochNorm swaps layers instead of adding a term: :mod:`tllib_jtln.normalization`.

They import nothing from the methods, the engine or the command line: a TLlib script uses them
as it uses ``tllib.regularization``; :mod:`tllib_jtln.methods` are thin adapters over them.
"""
from .bi_tuning import (BiTuningLoss, ClassQueue, MomentumEncoder, class_prototypes, classifier_logits,
                        contrastive_loss, homogeneous_features, projector_logits)
from .bss import BatchSpectralShrinkage
from .co_tuning import CoTuningLoss, Relationship, category_relation
from .delta import AttentionFeatureMapDistance, channel_attention, filter_importance
from .jtln import OT_ON, JTLNLoss
from .l2sp import L2Regularization, SPRegularization
from .lwf import LwFLoss

__all__ = ["AttentionFeatureMapDistance", "BatchSpectralShrinkage", "CoTuningLoss", "JTLNLoss", "L2Regularization",
           "OT_ON", "Relationship", "SPRegularization", "category_relation", "channel_attention",
           "filter_importance"]
__all__ += ["BiTuningLoss", "ClassQueue", "LwFLoss", "MomentumEncoder", "class_prototypes", "classifier_logits",
            "contrastive_loss", "homogeneous_features", "projector_logits"]
