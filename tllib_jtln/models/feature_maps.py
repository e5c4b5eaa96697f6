"""Intermediate feature maps of a backbone, by forward hooks: what DELTA compares.

:meth:`Backbone.feature_layers <tllib_jtln.models.Backbone.feature_layers>` names the layers
(timm's ``feature_info`` stages for timm models, the conv blocks of ``smallcnn`` and ``alexnet``);
a :class:`FeatureMapRecorder` keeps the output of each of them from the module's last forward, so
a method reads them after the one forward call of its step (through a DistributedDataParallel
wrapper too: the hooks sit on the wrapped module's layers).

Example:
    >>> from tllib_jtln.models import create_backbone
    >>> backbone = create_backbone("smallcnn", pretrained=False, in_chans=1, image_size=16)
    >>> recorder = FeatureMapRecorder(backbone, backbone.feature_layers())
    >>> _ = backbone(torch.randn(2, 1, 16, 16))
    >>> [tuple(m.shape) for m in recorder.pop()]
    [(2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2), (2, 128, 2, 2)]
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import UserError

__all__ = ["FeatureMapRecorder", "get_submodule"]


def get_submodule(module: nn.Module, name: str) -> nn.Module:
    """``module``'s submodule ``name`` (dotted); a UserError naming the layer when there is none."""
    try:
        return module.get_submodule(name)
    except AttributeError:
        raise UserError(f"feature layer '{name}': no such module in {type(module).__name__}") from None


class FeatureMapRecorder:
    """Forward hooks keeping the outputs of ``names`` (submodules of ``module``) from its last forward.

    Args:
        module: the network (e.g. ``model.backbone``).
        names: dotted submodule names, in the order :meth:`pop` returns them.
        grad_only: record only forwards run under autograd (training steps), not evaluation or
            feature passes under ``torch.no_grad()``, whose maps nobody reads.

    Shape:
        - :meth:`pop`: one tensor per name, ``(B, C_j, H_j, W_j)`` for convolutional layers
    """

    def __init__(self, module: nn.Module, names: Sequence[str], grad_only: bool = False):
        if not names:
            raise UserError(f"{type(module).__name__}: no feature layers to record")
        self.names = list(names)
        self.grad_only = grad_only
        self._maps: dict[str, torch.Tensor] = {}
        self._handles = [get_submodule(module, name).register_forward_hook(self._hook(name)) for name in self.names]

    def _hook(self, name: str):
        def keep(module, inputs, output) -> None:
            if torch.is_grad_enabled() or not self.grad_only:
                self._maps[name] = output

        return keep

    def pop(self) -> list[torch.Tensor]:
        """The maps of the last forward, in the order of ``names``; forgets them."""
        missing = [n for n in self.names if n not in self._maps]
        if missing:
            raise RuntimeError(f"FeatureMapRecorder: layer(s) {missing} did not run since the last pop()")
        maps = [self._maps[n] for n in self.names]
        self._maps.clear()
        return maps

    def clear(self) -> None:
        """Forget the maps kept so far."""
        self._maps.clear()

    def remove(self) -> None:
        """Take the hooks off the module."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._maps.clear()
