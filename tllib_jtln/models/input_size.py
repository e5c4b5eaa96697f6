"""The input sizes a backbone can take, found by dry forwards (a too-small image is one line, not a traceback).

Strided convolutions and poolings shrink the image: below some size an intermediate map is empty
and the first training step would end in ``RuntimeError: Output size is too small``.
:func:`check_input_size` forwards one black image ``(1, C, S, S)`` in eval mode without gradients
before anything is trained; when that fails, :func:`smallest_input_size` finds the smallest size
``S' > S`` that works (doubling up to :data:`LARGEST`, then bisecting, as every size above a
working one works for a convolutional network) and the error names it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..errors import UserError

#: Sizes from here on are what backbones are built for (224 px): not dry-forwarded, nor searched beyond it 4x.
CHECKED_BELOW = 224
LARGEST = 4 * CHECKED_BELOW


def forward_error(backbone: nn.Module, in_chans: int, size: int) -> Optional[str]:
    """The first line of the error a ``(1, in_chans, size, size)`` forward raises, or None if it works."""
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, in_chans, size, size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        backbone.train(training)
    return None


def smallest_input_size(backbone: nn.Module, in_chans: int, failing: int) -> Optional[int]:
    """The smallest size above ``failing`` a forward takes (None when none up to :data:`LARGEST` does)."""
    low, high = failing, failing
    while forward_error(backbone, in_chans, high) is not None:
        low, high = high, high * 2
        if high > LARGEST:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if forward_error(backbone, in_chans, middle) is None else (middle, high)
    return high


def check_input_size(backbone: nn.Module, in_chans: int, size: int, arch: str) -> None:
    """A :class:`UserError` naming the smallest size that works when ``backbone`` cannot take ``size``."""
    if size >= CHECKED_BELOW:
        return
    error = forward_error(backbone, in_chans, size)
    if error is None:
        return
    smallest = smallest_input_size(backbone, in_chans, size)
    fix = (f"the smallest it takes is {smallest}: give --image-size {smallest} or more" if smallest else
           f"give the size it was built for (--image-size {CHECKED_BELOW})")
    raise UserError(f"-a {arch} cannot take --image-size {size} ({error[:120]}); {fix}")
