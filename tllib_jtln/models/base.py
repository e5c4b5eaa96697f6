"""What every backbone is, and the registry of the architectures built here.

A :class:`Backbone` maps images ``(B, C, H, W)`` to pooled pre-logit features ``(B, out_features)``.
:data:`ARCHS` holds the architectures this package builds itself (``smallcnn``, ``alexnet``),
each a builder ``builder(*, pretrained, pretrained_file, in_chans, image_size) -> Backbone``;
every other name is looked up in timm's namespace (:func:`tllib_jtln.models.create_backbone`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from ..registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: architectures built here (timm's are found by name): ``name -> builder``
ARCHS: Registry[Callable[..., "Backbone"]] = Registry("archs")


class Backbone(nn.Module):
    """Images ``(B, C, H, W)`` -> pooled pre-logit features ``(B, out_features)``.

    Attributes:
        out_features: feature width ``D``.
        pretrained_head: ``nn.Linear(D, K)`` copied from the pretrained classifier before it was
            reset, or ``None`` (random init, headless weights, or a classifier that is not linear).
        pretrained_classes: class names of ``pretrained_head`` (ImageNet: timm's metadata), or None.
        data_config: timm-style data config (``input_size``, ``mean``, ``std``, ``interpolation``,
            ``crop_pct``, ``crop_mode``) for ``--transforms timm``.
        arch: the name the backbone was created from.

    :meth:`feature_layers` names the submodules whose outputs are the backbone's intermediate
    feature maps (DELTA's layers); subclasses set :attr:`FEATURE_LAYERS` or override it.
    """

    #: dotted names of the submodules giving the intermediate feature maps, shallow to deep
    FEATURE_LAYERS: tuple[str, ...] = ()

    def __init__(self, arch: str, out_features: int, data_config: dict,
                 pretrained_head: Optional[nn.Linear] = None, pretrained_classes: Optional[list[str]] = None):
        super().__init__()
        self.arch = arch
        self.out_features = int(out_features)
        self.data_config = data_config
        # kept outside the module tree: the head is handed to JointClassifier, not trained here
        self.__dict__["pretrained_head"] = pretrained_head
        self.pretrained_classes = pretrained_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def feature_layers(self) -> list[str]:
        """Dotted names of the submodules whose outputs are the intermediate feature maps, shallow to deep."""
        return list(self.FEATURE_LAYERS)


def channel_stats(values: tuple, in_chans: int) -> tuple:
    """Per-channel ``mean``/``std`` for ``in_chans`` channels (their average, repeated, when the count differs)."""
    values = tuple(values)
    if len(values) == in_chans:
        return values
    return (sum(values) / len(values),) * in_chans


def register_arch(name: str) -> Callable:
    """Decorator: ``@register_arch("smallcnn")`` adds a builder to :data:`ARCHS`."""
    return ARCHS.register(name)
