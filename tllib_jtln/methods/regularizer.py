"""Regularisers a method adds to its loss (``--with bss,l2sp``): TLlib's fine-tuning penalties as
pieces that combine with ``erm``, ``joint`` and ``jtln``.

A :class:`Regularizer` is an adapter over a loss module of :mod:`tllib_jtln.regularization`, with
the same hooks as a method, each optional::

    reg.prepare_model(model)        # the model on its device at its starting weights: keep w0, a
                                    # frozen copy, feature-map hooks
    reg.param_groups(groups)        # shape the optimiser's groups (e.g. no weight decay where an
                                    # explicit penalty stands in for it)
    reg.setup(ctx)                  # once before training (DELTA's channel attention)
    reg.terms(view) -> {name: term} # each step, already weighted, from the target images' TargetView
    reg.state_keys()                # tensors it owns (checkpointed, broadcast under DDP)

The method that takes regularisers calls :meth:`Method.regularizer_terms
<tllib_jtln.methods.Method.regularizer_terms>` once per step with the :class:`TargetView` of its one
forward pass; the engine never sees them apart from the method. ``REGULARIZERS`` holds them by
name (``tllib-jtln list regularizers``); a new one is a class with
``@register_regularizer("name")`` in its method file, and its knobs are ``Config`` fields named in
:attr:`Regularizer.knobs`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn
from torch import Tensor

from ..errors import UserError
from ..models.classifier import ForwardOutput
from ..registry import Registry

__all__ = ["REGULARIZERS", "Regularizer", "TargetView", "frozen_copy", "register_regularizer"]


@dataclass(frozen=True)
class TargetView:
    """The labelled target images of one step and what the step's forward pass made of them.

    Attributes:
        images: ``(B_t, C, H, W)`` the target images.
        labels: ``(B_t,)`` their labels.
        output: the :class:`~tllib_jtln.models.classifier.ForwardOutput` rows of these images:
            ``source_logits (B_t, Ks)``, ``target_logits (B_t, Kt)``, ``features (B_t, F)``.
        rows: where these images sit in the batch of the forward pass (``cat(x_s, x_t)`` for
            ``joint``/``jtln``): the rows of anything recorded by hooks during it.
    """

    images: Tensor
    labels: Tensor
    output: ForwardOutput
    rows: slice = field(default_factory=lambda: slice(None))


class Regularizer:
    """Base class: a named penalty with optional hooks (see the module docstring).

    Attributes:
        name: the registry name (``--with NAME``), set by :func:`register_regularizer`.
        knobs: the ``Config`` fields it reads (a knob given while the regulariser is not in the run
            is refused by :func:`tllib_jtln.flag_rules.apply_regularizer_flags`).
        excludes: regularisers it cannot be combined with (they penalise the same thing).
    """

    name = ""
    knobs: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def prepare_model(self, model: nn.Module) -> None:
        """The fresh model, on its device, at its starting weights (before DDP and the optimiser)."""

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """The optimiser's parameter groups (each with a ``name``), reshaped. Default: unchanged."""
        return groups

    def setup(self, ctx: Any) -> None:
        """Once before training (not on resume: :meth:`state_keys` come back with the checkpoint)."""

    def terms(self, view: TargetView) -> dict[str, Tensor]:
        """Named, already weighted scalar terms for one step."""
        raise NotImplementedError

    def state_keys(self) -> tuple[str, ...]:
        return ()

    def switches(self) -> dict[str, Any]:
        """Its resolved settings, as they ran (``summary.json``): its knobs' values."""
        return {knob: getattr(self.cfg, knob) for knob in self.knobs}


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizers")


def register_regularizer(name: str) -> Callable[[type[Regularizer]], type[Regularizer]]:
    """Class decorator: ``@register_regularizer("bss")`` registers a :class:`Regularizer` and sets its ``name``."""
    register = REGULARIZERS.register(name)

    def decorate(cls: type[Regularizer]) -> type[Regularizer]:
        cls.name = name
        return register(cls)

    return decorate


def check_combination(method: str, takes_regularizers: bool, built_in: tuple[str, ...], added: list[str]) -> None:
    """Refuse, in one line, a ``--with`` list that does not fit ``method`` (unknown names included)."""
    for name in added:
        REGULARIZERS.get(name)  # unknown: a UserError with close names
    if added and not takes_regularizers:
        raise UserError(f"--with {','.join(added)}: --method {method} does not take TLlib regularisers (erm, joint "
                        f"and jtln do, and the methods built on them); drop --with or change --method")
    names = list(built_in) + list(added)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        where = f"--method {method} has it already" if set(twice) & set(built_in) else "named twice"
        raise UserError(f"--with {','.join(added)}: {', '.join(twice)} {where}; give each regulariser once")
    for name in names:
        clash = sorted(set(REGULARIZERS.get(name).excludes) & set(names))
        if clash:
            raise UserError(f"--with: {name} and {clash[0]} both penalise the backbone and the new head; "
                            f"use one of them")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode with every parameter frozen: the starting point to compare with."""
    reference = copy.deepcopy(module)
    reference.requires_grad_(False)
    return reference.eval()
