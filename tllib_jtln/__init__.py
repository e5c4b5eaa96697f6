"""tllib-jtln: Joint Transfer Learning Network (Lu, Chen and Saidi, arXiv:1709.02995) for PyTorch.

The pieces a TLlib user takes into their own script stand alone and import nothing from
the engine or the command line: :mod:`tllib_jtln.ot` (batched entropic OT, the Wasserstein
loss), :mod:`tllib_jtln.regularization` (the JTLN and Co-Tuning losses), :mod:`tllib_jtln.cost`
(cost matrices between source and target classes) and :mod:`tllib_jtln.models` (backbones and the
two-head classifier).
"""

__version__ = "0.1.0"
