"""Training methods: each turns a batch into named loss terms; the engine sums and logs them.

``METHODS`` holds ``erm``, ``consecutive``, ``joint``, ``jtln`` and ``co_tuning``; a new method is
one small module with ``@register_method("name")`` on a :class:`Method` subclass, imported here.
"""
from .base import (METHODS, Method, SetupContext, Stage, build_method, cross_entropy, forward_joint,
                   register_method, source_head_probs)
from . import erm, consecutive, joint, jtln, co_tuning  # noqa: E402,F401  (registration)

__all__ = ["METHODS", "Method", "SetupContext", "Stage", "build_method", "register_method", "forward_joint",
           "cross_entropy", "source_head_probs"]
