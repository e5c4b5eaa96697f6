"""``--channels-last``: the model's 4-D weights (and so its activations) in ``channels_last`` layout.

A convolution whose weight is ``channels_last`` returns a ``channels_last`` output even for a
contiguous ``(B, C, H, W)`` input, so converting the model is enough: batches take the layout at
the first convolution, without an extra copy of each batch. On the CPU, oneDNN's convolutions
are written for this (NHWC) layout and skip the reorders they otherwise do around each layer.
Numerically nothing changes beyond float reassociation.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def apply_memory_format(model: nn.Module, cfg: Any) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in ``channels_last`` when ``cfg.channels_last`` (in place)."""
    if getattr(cfg, "channels_last", False):
        model.to(memory_format=torch.channels_last)
    return model
