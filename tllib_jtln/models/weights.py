"""Pretrained weights: reading a weights file without running code, loading it strictly, keeping the head.

Weights files (``--pretrained-file``) are read without running code: ``.safetensors`` with
``safetensors.torch.load_file``, anything else with ``torch.load(weights_only=True)``. The
pretrained classifier is deep-copied (:func:`as_linear`) BEFORE a backbone's classifier is reset,
and its class names, when the weights are ImageNet ones, come from timm's own metadata
(:func:`imagenet_class_names`).
"""
from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from ..fileio import load_tensors


def short(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def mismatch(exc: BaseException) -> str:
    """A ``load_state_dict`` error as one line (at most 300 characters)."""
    text = " ".join(str(exc).split())
    text = text.replace("Error(s) in loading state_dict for ", "")
    return text[:300] + ("..." if len(text) > 300 else "")


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file, never running code.

    Checkpoint containers (``state_dict``, ``model``, ``state_dict_ema``, ``model_ema``) are
    unwrapped and a DDP ``module.`` prefix is stripped. Bad files raise :class:`UserError`
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pretrained-file: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
            raise UserError(f"--pretrained-file {path}: not a valid safetensors file ({short(exc)})") from None
    else:
        try:
            state = load_tensors(path)
        except pickle.UnpicklingError:
            raise UserError(f"--pretrained-file {path}: needs full unpickling (it stores Python objects, which can "
                            "run code); re-save it as a plain state_dict or as .safetensors") from None
        except Exception as exc:  # noqa: BLE001 - not a zip/pickle file at all
            raise UserError(f"--pretrained-file {path}: not a PyTorch weights file ({short(exc)})") from None
    if isinstance(state, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--pretrained-file {path}: expected a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_strict(module: nn.Module, state: dict, path: Any, name: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch is a UserError naming the file and arch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"--pretrained-file {path} does not fit -a {name}: {mismatch(exc)}") from None


def imagenet_class_names(num_classes: int) -> Optional[list[str]]:
    """ImageNet class names for a head of ``num_classes`` outputs (1k, 12k, 21k, 22k), or None.

    The first WordNet lemma of each synset (``'military uniform'``); the two names ImageNet-1k
    repeats (``crane``, ``maillot``) get their synset id appended so that names are unique.
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    synsets = info.label_names()
    names = [d.split(",")[0].strip() for d in info.label_descriptions()]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({s})" if counts[n] > 1 else n for n, s in zip(names, synsets)]


def as_linear(head: Any) -> Optional[nn.Linear]:
    """A deep copy of a classifier as ``nn.Linear``; 1x1 convolutions are converted; others -> None."""
    if isinstance(head, nn.Linear):
        return copy.deepcopy(head)
    if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.groups == 1:
        linear = nn.Linear(head.in_channels, head.out_channels, bias=head.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(head.weight.flatten(1))
            if head.bias is not None:
                linear.bias.copy_(head.bias)
        return linear
    return None
