"""The methods' regularisers as loss modules, TLlib's ``regularization/`` style.

- :class:`JTLNLoss`: JTLN's optimal-transport term between the source head's prediction and a
  target-side distribution (:mod:`tllib_jtln.regularization.jtln`);
- :class:`CoTuningLoss` and :class:`Relationship`: Co-Tuning's soft-label loss and the category
  relation it reads its soft labels from (:mod:`tllib_jtln.regularization.co_tuning`).

They import nothing from the methods, the engine or the command line: a TLlib script uses them
as it uses ``tllib.regularization``; :mod:`tllib_jtln.methods` are thin adapters over them.
"""
from .co_tuning import CoTuningLoss, Relationship, category_relation
from .jtln import OT_ON, JTLNLoss

__all__ = ["CoTuningLoss", "JTLNLoss", "OT_ON", "Relationship", "category_relation"]
