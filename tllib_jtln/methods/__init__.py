"""Training methods: each turns a batch into named loss terms; the engine sums and logs them.

``METHODS`` holds ``erm``, ``consecutive``, ``joint``, ``jtln``, ``co_tuning`` and TLlib's
fine-tuning family (``l2sp``, ``bss``, ``delta``, ``stochnorm``, ``lwf``, ``bi_tuning``);
``REGULARIZERS`` the TLlib regularisers that ``--with`` adds to ``erm``, ``joint`` and ``jtln``
(``bss``, ``l2sp``, ``delta``, ``stochnorm``, ``lwf``). A new method is one small module with
``@register_method("name")`` on a :class:`Method` subclass, imported here.
"""
from .base import (METHODS, Method, SetupContext, Stage, build_method, cross_entropy, forward_joint,
                   register_method, source_head_probs, target_rows)
from .regularizer import REGULARIZERS, Regularizer, TargetView, register_regularizer
from . import erm, consecutive, joint, jtln, co_tuning  # noqa: E402,F401  (registration)
from . import l2sp, bss, delta  # noqa: E402,F401  (registration: TLlib's regularisers, methods and --with)
from . import stochnorm, lwf  # noqa: E402,F401  (registration: methods and --with)
from . import bi_tuning  # noqa: E402,F401  (registration: a method only)

__all__ = ["METHODS", "REGULARIZERS", "Method", "Regularizer", "SetupContext", "Stage", "TargetView",
           "build_method", "register_method", "register_regularizer", "forward_joint", "target_rows",
           "cross_entropy", "source_head_probs"]
