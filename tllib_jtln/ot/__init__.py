"""Batched entropic optimal transport and the JTLN OT loss.

``sinkhorn`` solves a batch of entropic OT problems sharing one cost matrix, with envelope-theorem
gradients; ``WassersteinLoss`` is the loss module; ``onehot_transport_cost`` the closed form for
one-hot targets. Imports nothing from the engine, methods or CLI.
"""
from .loss import REGULARIZERS, WassersteinLoss, entropy, onehot_transport_cost, smooth_histogram
from .solver import SinkhornResult, sinkhorn

__all__ = ["REGULARIZERS", "SinkhornResult", "WassersteinLoss", "entropy", "onehot_transport_cost", "sinkhorn",
           "smooth_histogram"]
