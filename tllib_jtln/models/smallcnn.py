"""``smallcnn``: a small convolutional trunk for 28-64 px images, trained from scratch on a CPU.

Four ``3x3 conv -> BatchNorm -> ReLU`` blocks of widths 32, 64, 128, 128; 2x2 max-pooling after
each of the first three; global average pooling. About 0.24 M parameters and 9 M multiply-adds
per 28x28 grey image, so the embedded Fashion-MNIST demo trains in minutes on a laptop CPU.

Shape:
    - input: ``(B, in_chans, H, W)``, any ``H, W >= 8``
    - output: ``(B, 128)`` pooled features (``out_features = 128``)
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from .base import Backbone, register_arch
from .weights import load_strict, load_weights_file

WIDTHS = (32, 64, 128, 128)


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(Backbone):
    """Four conv-BN-ReLU blocks and global average pooling; no pretrained weights (``pretrained_head=None``)."""

    FEATURE_LAYERS = ("blocks.0", "blocks.1", "blocks.2", "blocks.3")

    def __init__(self, in_chans: int = 1, image_size: int = 28):
        mean, std = (0.5,) * in_chans, (0.5,) * in_chans
        data_config = {"input_size": (in_chans, image_size, image_size), "interpolation": "bilinear",
                       "mean": mean, "std": std, "crop_pct": 1.0, "crop_mode": "center"}
        super().__init__("smallcnn", WIDTHS[-1], data_config)
        chans = (in_chans, *WIDTHS)
        self.blocks = nn.Sequential(*[_block(chans[i], chans[i + 1], pool=i < 3) for i in range(4)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x)).flatten(1)


@register_arch("smallcnn")
def smallcnn(*, pretrained: bool, pretrained_file: Any = None, in_chans: int = 3,
             image_size: Optional[int] = None) -> SmallCNN:
    """A fresh :class:`SmallCNN` (it has no pretrained weights), or the weights of ``pretrained_file``."""
    net = SmallCNN(in_chans=in_chans, image_size=image_size or 28)
    if pretrained_file is not None:
        load_strict(net, load_weights_file(pretrained_file), pretrained_file, "smallcnn")
    return net
