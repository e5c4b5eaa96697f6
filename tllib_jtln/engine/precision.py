"""Which autocast context a forward pass runs under: CUDA mixed precision, CPU bfloat16, or none.

``--amp`` asks for float16 autocast on CUDA (with a gradient scaler, see the trainer); on the
CPU it has no effect. ``--cpu-bf16`` asks for bfloat16 autocast on the CPU (no scaler needed:
bfloat16 has float32's exponent range); on CUDA it has no effect. Matmuls and convolutions run in
the low-precision type, reductions and losses stay float32 (PyTorch's autocast op lists), so the
loss terms a method returns are float32 either way.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast_dtype(device: torch.device, amp: bool = False, cpu_bf16: bool = False) -> torch.dtype | None:
    """``float16`` for ``amp`` on CUDA, ``bfloat16`` for ``cpu_bf16`` on the CPU, else None."""
    if device.type == "cuda" and amp:
        return torch.float16
    if device.type == "cpu" and cpu_bf16:
        return torch.bfloat16
    return None


def autocast_for(device: torch.device, amp: bool = False, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, dtype)`` for the dtype of :func:`autocast_dtype`, or a no-op context."""
    dtype = autocast_dtype(device, amp, cpu_bf16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def autocast_context(device: torch.device, cfg: Any) -> contextlib.AbstractContextManager:
    """The autocast context of a run: :func:`autocast_for` with ``cfg.amp`` and ``cfg.cpu_bf16``."""
    return autocast_for(device, bool(getattr(cfg, "amp", False)), bool(getattr(cfg, "cpu_bf16", False)))
