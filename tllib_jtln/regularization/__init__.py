"""The methods' regularisers as loss modules, TLlib's ``regularization/`` style.

- :class:`JTLNLoss`: JTLN's optimal-transport term between the source head's prediction and a
  target-side distribution (:mod:`tllib_jtln.regularization.jtln`);
- :class:`CoTuningLoss` and :class:`Relationship`: Co-Tuning's soft-label loss and the category
  relation it reads its soft labels from (:mod:`tllib_jtln.regularization.co_tuning`);
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
from .co_tuning import CoTuningLoss, Relationship, category_relation
from .jtln import OT_ON, JTLNLoss
from .lwf import LwFLoss

__all__ = ["CoTuningLoss", "JTLNLoss", "OT_ON", "Relationship", "category_relation"]
__all__ += ["BiTuningLoss", "ClassQueue", "LwFLoss", "MomentumEncoder", "class_prototypes", "classifier_logits",
            "contrastive_loss", "homogeneous_features", "projector_logits"]
