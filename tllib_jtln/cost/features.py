"""Pooled features of a whole dataset, in memory (:func:`collect_features`), and the pieces the
on-disk store (:mod:`tllib_jtln.cost.feature_store`) shares with it: the model's eval mode for a
pass (:func:`eval_mode`), one batch's features (:func:`batch_features`), the weights' hash
(:func:`weights_fingerprint`) and the progress bar (:func:`progress_bar`, drawn on a terminal only).
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

ModelLike = Union[nn.Module, Callable[[Tensor], Tensor]]


def owner_module(model: ModelLike) -> Optional[nn.Module]:
    """The module behind ``model``: itself, or the module of a bound method such as
    ``classifier.forward_features``."""
    if isinstance(model, nn.Module):
        return model
    owner = getattr(model, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def hash_tensor(digest, tensor: Tensor) -> None:
    """Feed ``tensor``'s dtype, shape and bytes to a ``hashlib`` ``digest``."""
    t = tensor.detach()
    digest.update(f"{t.dtype}:{tuple(t.shape)};".encode())
    if t.numel():
        digest.update(memoryview(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))


def weights_fingerprint(module: nn.Module) -> str:
    """A BLAKE2b hex digest of ``module.state_dict()``: every entry's name, dtype, shape and bytes
    (parameters and buffers such as BatchNorm statistics). About 1 GB/s on a CPU core."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, Tensor):
            digest.update(f"{name}={tensor!r};".encode())
            continue
        digest.update(f"{name}:".encode())
        hash_tensor(digest, tensor)
    return digest.hexdigest()


def model_device(model: ModelLike) -> torch.device:
    """Where ``model``'s module lives (CPU for a plain function)."""
    owner = owner_module(model)
    if owner is not None:
        for tensor in list(owner.parameters()) + list(owner.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: ModelLike) -> Iterator[None]:
    """``model``'s module in eval mode and gradients off inside; every submodule's previous mode
    restored on the way out (a model with frozen BatchNorm has mixed modes)."""
    owner = owner_module(model)
    modes = [(m, m.training) for m in owner.modules()] if owner is not None else []
    if owner is not None:
        owner.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of a loader's batch: a tuple/list or a dict with ``image``/``label``."""
    if isinstance(batch, dict):
        images = batch.get("image", batch.get("images", batch.get("x")))
        labels = batch.get("label", batch.get("labels", batch.get("y")))
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise ValueError("collect_features: the loader must yield (images, labels) batches")
    if images is None or labels is None:
        raise ValueError("collect_features: batch dicts need 'image' and 'label' keys")
    return images, torch.as_tensor(labels)


def batch_features(model: ModelLike, batch: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(features (B, D) float32, labels (B,) int64)`` on the CPU for one batch (call inside :func:`eval_mode`)."""
    images, labels = split_batch(batch)
    out = model(images.to(device, non_blocking=True))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim != 2:
        out = out.flatten(1)
    return out.detach().to("cpu", torch.float32), labels.detach().to("cpu", torch.int64).reshape(-1)


def progress_bar(iterable: Iterable, total: Optional[int], desc: str, progress: bool):
    """A tqdm bar over ``iterable`` when ``progress`` and stderr is a terminal (a log file gets none)."""
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread (a daemon thread alive at interpreter exit), even when disabled
    shown = progress and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit="batch", disable=not shown, leave=False)


def collect_features(model: ModelLike, loader: Iterable, device: str | torch.device | None = None,
                     progress: bool = True) -> tuple[Tensor, Tensor]:
    """Features of every image in ``loader``: ``(features (N, D) float32, labels (N,) int64)`` on the CPU.

    Args:
        model: maps an image batch ``(B, C, H, W)`` to pooled features ``(B, D)``: an ``nn.Module``
            or a bound method of one (``classifier.forward_features``). The module is put in eval
            mode for the pass and every submodule's previous mode restored; gradients are off.
        loader: yields ``(images, labels)`` batches (or dicts with ``image``/``label``).
        device: where to run; default: the module's device (CPU for a plain function).
        progress: show a tqdm bar (on a terminal only).

    For a dataset too large to hold (or to extract twice), see
    :class:`~tllib_jtln.cost.feature_store.FeatureStore`.
    """
    run_device = torch.device(device) if device is not None else model_device(model)
    feats, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    with eval_mode(model):
        for batch in progress_bar(loader, total, "features", progress):
            f, y = batch_features(model, batch, run_device)
            feats.append(f)
            labels.append(y)
    if not feats:
        raise ValueError("collect_features: the loader yielded no batch (empty dataset?)")
    return torch.cat(feats), torch.cat(labels)
