"""Training methods: each turns a batch into named loss terms; the engine sums and logs them.

``METHODS`` holds ``erm``, ``consecutive``, ``joint``, ``jtln``, ``co_tuning`` and TLlib's
fine-tuning family (``l2sp``, ``bss``, ``delta``); ``REGULARIZERS`` the TLlib regularisers that
``--with`` adds to ``erm``, ``joint`` and ``jtln``. A new method is one small module with
``@register_method("name")`` on a :class:`Method` subclass, imported here.
"""
from .base import (METHODS, Method, SetupContext, Stage, build_method, cross_entropy, forward_joint,
                   register_method, source_head_probs, target_rows)
from .regularizer import REGULARIZERS, Regularizer, TargetView, register_regularizer
from . import erm, consecutive, joint, jtln, co_tuning  # noqa: E402,F401  (registration)
from . import l2sp, bss, delta  # noqa: E402,F401  (registration: TLlib's regularisers, methods and --with)
# stochnorm, lwf, bi_tuning: their method files are imported on this line once written

__all__ = ["METHODS", "REGULARIZERS", "Method", "Regularizer", "SetupContext", "Stage", "TargetView",
           "build_method", "register_method", "register_regularizer", "forward_joint", "target_rows",
           "cross_entropy", "source_head_probs"]
