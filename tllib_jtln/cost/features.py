"""Pooled features of a whole dataset, with an on-disk cache keyed by what produced them.

The cache file is ``{cache_dir}/features-{h}.pt`` where ``h`` hashes the caller's ``cache_key``
(backbone name, dataset, split, transform: anything JSON-serialisable, or a string) together
with :func:`weights_fingerprint` of the model: a change of either gives another file, so a stale
cache is never read. Files hold tensors only, are written atomically, and are read with
``torch.load(weights_only=True)``; an unreadable file is rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ..fileio import atomic_write

ModelLike = Union[nn.Module, Callable[[Tensor], Tensor]]


def _owner(model: ModelLike) -> Optional[nn.Module]:
    """The module behind ``model``: itself, or the module of a bound method such as
    ``classifier.forward_features``."""
    if isinstance(model, nn.Module):
        return model
    owner = getattr(model, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def weights_fingerprint(module: nn.Module) -> str:
    """A BLAKE2b hex digest of ``module.state_dict()``: every entry's name, dtype, shape and bytes
    (parameters and buffers such as BatchNorm statistics). About 1 GB/s on a CPU core."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, Tensor):
            digest.update(f"{name}={tensor!r};".encode())
            continue
        t = tensor.detach()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            data = t.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, cache_key: Any, fingerprint: str) -> Path:
    """The cache file for ``cache_key`` (JSON-serialisable or str) and a weights fingerprint."""
    key = cache_key if isinstance(cache_key, str) else json.dumps(cache_key, sort_keys=True, default=repr)
    name = hashlib.blake2b(f"{key}\n{fingerprint}".encode(), digest_size=12).hexdigest()
    return Path(cache_dir) / f"features-{name}.pt"


def _model_device(owner: Optional[nn.Module]) -> torch.device:
    if owner is not None:
        for tensor in list(owner.parameters()) + list(owner.buffers()):
            return tensor.device
    return torch.device("cpu")


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
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


def _load(path: Path) -> Optional[tuple[Tensor, Tensor]]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        feats, labels = data["features"], data["labels"]
        if not (isinstance(feats, Tensor) and isinstance(labels, Tensor) and feats.ndim == 2
                and labels.ndim == 1 and feats.shape[0] == labels.shape[0]):
            raise ValueError("unexpected content")
        return feats, labels
    except Exception as exc:  # a truncated or foreign file: rebuild it
        warnings.warn(f"feature cache {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                      stacklevel=3)
        return None


def _save(path: Path, feats: Tensor, labels: Tensor) -> None:
    atomic_write(path, lambda handle: torch.save({"features": feats, "labels": labels}, handle))


@torch.no_grad()
def _extract(model: ModelLike, loader: Iterable, device: torch.device,
             progress: bool) -> tuple[Tensor, Tensor]:
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread (a daemon thread alive at interpreter exit), even when disabled
    feats, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc="features", unit="batch", disable=not progress, leave=False):
        images, y = _split_batch(batch)
        out = model(images.to(device, non_blocking=True))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim != 2:
            out = out.flatten(1)
        feats.append(out.detach().to("cpu", torch.float32))
        labels.append(y.detach().to("cpu", torch.int64).reshape(-1))
    if not feats:
        raise ValueError("collect_features: the loader yielded no batch (empty dataset?)")
    return torch.cat(feats), torch.cat(labels)


def collect_features(model: ModelLike, loader: Iterable, cache_dir: str | Path | None = None,
                     cache_key: Any = None, device: str | torch.device | None = None,
                     progress: bool = True) -> tuple[Tensor, Tensor]:
    """Features of every image in ``loader``: ``(features (N, D) float32, labels (N,) int64)`` on the CPU.

    Args:
        model: maps an image batch ``(B, C, H, W)`` to pooled features ``(B, D)``: an ``nn.Module``
            or a bound method of one (``classifier.forward_features``). The module is put in eval
            mode for the pass and every submodule's previous mode restored; gradients are off.
        loader: yields ``(images, labels)`` batches (or dicts with ``image``/``label``).
        cache_dir: folder of the on-disk cache; None: no cache.
        cache_key: what identifies the data and the backbone (e.g. ``{"arch": ..., "dataset": ...,
            "split": ..., "transform": repr(transform)}``); the weights are hashed in by this
            function. The cache is used only when both ``cache_dir`` and ``cache_key`` are given.
            A plain function (not a module) has no weights to hash: its key must identify it.
        device: where to run; default: the module's device (CPU for a plain function).
        progress: show a tqdm bar.
    """
    owner = _owner(model)
    path = None
    if cache_dir is not None:
        if cache_key is None:
            warnings.warn("collect_features: cache_dir given without cache_key; not caching", stacklevel=2)
        else:
            fingerprint = weights_fingerprint(owner) if owner is not None else f"fn:{getattr(model, '__qualname__', '')}"
            path = cache_path(cache_dir, cache_key, fingerprint)
            if path.is_file():
                cached = _load(path)
                if cached is not None:
                    return cached
    run_device = torch.device(device) if device is not None else _model_device(owner)
    # remember every submodule's mode: a model with frozen BatchNorm has mixed modes
    modes = [(m, m.training) for m in owner.modules()] if owner is not None else []
    if owner is not None:
        owner.eval()
    try:
        feats, labels = _extract(model, loader, run_device, progress)
    finally:
        for module, mode in modes:
            module.training = mode
    if path is not None:
        _save(path, feats, labels)
    return feats, labels
