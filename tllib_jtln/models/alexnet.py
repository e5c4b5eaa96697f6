"""``alexnet``: torchvision's AlexNet up to fc7, the paper's network.

``features -> avgpool(6x6) -> flatten -> classifier[:-1]``: 4096-d fc7 features after ReLU, the
layer the paper's heads read. Pretrained weights: torchvision's ImageNet file (torch hub), or a
``pretrained_file``; a grey input (``in_chans=1``) adapts the first convolution (timm's
``adapt_input_conv``).

Shape:
    - input: ``(B, in_chans, H, W)``, ``H = W = image_size`` (224 by default)
    - output: ``(B, 4096)`` (``out_features = 4096``)
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, channel_stats, register_arch
from .weights import as_linear, imagenet_class_names, load_strict, load_weights_file


class AlexNetBackbone(Backbone):
    """torchvision AlexNet up to fc7: ``features -> avgpool(6x6) -> flatten -> classifier[:-1]`` (4096-d)."""

    #: the outputs of the five conv layers' ReLUs
    FEATURE_LAYERS = ("features.1", "features.4", "features.7", "features.9", "features.11")

    def __init__(self, net: nn.Module, data_config: dict, pretrained_head: Optional[nn.Linear] = None,
                 pretrained_classes: Optional[list[str]] = None):
        super().__init__("alexnet", net.classifier[4].out_features, data_config, pretrained_head, pretrained_classes)
        self.features = net.features
        self.avgpool = net.avgpool
        self.fc = net.classifier[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


@register_arch("alexnet")
def alexnet(*, pretrained: bool, pretrained_file: Any = None, in_chans: int = 3,
            image_size: Optional[int] = None) -> AlexNetBackbone:
    """AlexNet with torchvision's ImageNet weights (or ``pretrained_file``), or random ones."""
    import torchvision

    net = torchvision.models.alexnet(weights=None)
    if pretrained:
        _load_pretrained(net, _pretrained_state(pretrained_file), pretrained_file, in_chans)
    elif in_chans != 3:
        net.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
    head = as_linear(net.classifier[-1]) if pretrained else None
    classes = imagenet_class_names(head.out_features) if head is not None else None
    size = image_size or 224
    data_config = {"input_size": (in_chans, size, size), "interpolation": "bilinear",
                   "mean": channel_stats(IMAGENET_MEAN, in_chans), "std": channel_stats(IMAGENET_STD, in_chans),
                   "crop_pct": 0.875, "crop_mode": "center"}
    return AlexNetBackbone(net, data_config, head, classes)


def _pretrained_state(pretrained_file: Any) -> dict:
    """The weights: ``pretrained_file``, or torchvision's ImageNet file (torch hub; downloaded when missing)."""
    if pretrained_file is not None:
        return load_weights_file(pretrained_file)
    import torchvision

    try:
        return torchvision.models.AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - URLError/OSError/HTTP errors
        raise UserError(f"-a alexnet: could not fetch pretrained weights ({type(exc).__name__}: offline?); "
                        "pass --pretrained-file PATH, or --no-pretrained to start from random weights") from None


def _load_pretrained(net: nn.Module, state: dict, pretrained_file: Any, in_chans: int) -> None:
    """Fit the classifier to the file's head (none: Identity) and the first conv to ``in_chans``; load strictly."""
    from timm.models import adapt_input_conv

    num_classes = int(state["classifier.6.weight"].shape[0]) if "classifier.6.weight" in state else 0
    if num_classes and num_classes != net.classifier[6].out_features:
        net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
    if num_classes == 0:
        net.classifier[6] = nn.Identity()
    conv = state.get("features.0.weight")
    if conv is not None and conv.shape[1] != in_chans:
        state = dict(state)
        state["features.0.weight"] = adapt_input_conv(in_chans, conv)
    if in_chans != 3:
        net.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
    load_strict(net, state, pretrained_file or "(torchvision ImageNet weights)", "alexnet")
