"""``--feature-cache DIR``: a split's features read from (or extracted once into) a
:class:`~tllib_jtln.cost.feature_store.FeatureStore`, keyed by what they depend on.

The key is the content of the split (:func:`~tllib_jtln.cost.content_key.dataset_fingerprint`:
its images' paths, labels, sizes and modification times, or its pixels, and its transform), the
hash of the trunk's weights (``model.backbone``: the heads, which differ between seeds, do not
change ``forward_features``), the architecture and the image size. Every row and seed of a suite
that starts from the same pretrained trunk on the same images reads the same store; a changed
image, list file or weight gives another store. The run says which: ``features: ... read from
the cache ...`` or ``features: extracting ...``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Subset

from ..cost.content_key import dataset_fingerprint
from ..cost.feature_store import FeatureStore
from ..cost.features import weights_fingerprint


def store_for(parts, split: str, dataset, cache_dir: Path) -> Optional[FeatureStore]:
    """The store of ``split``'s features under ``cache_dir``; None when ``dataset`` has no fingerprint."""
    content = dataset_fingerprint(dataset)
    if content is None:
        return None
    trunk = getattr(parts.model, "backbone", parts.model)
    key = {"split": split, "content": content, "weights": weights_fingerprint(trunk), "arch": parts.cfg.arch,
           "image_size": parts.task.image_size, "features": "forward_features, eval mode"}
    return FeatureStore(cache_dir, key, len(dataset))


def cached_features(parts, split: str, dataset, cache_dir: Path, loader_for: Callable, say: Callable[[str], None]
                    ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(features (N, D), labels (N,))`` of ``dataset`` through the store: source features stay an
    fp16 memory map (``build_cost`` reads them in chunks), target features (a few per class) come
    back float32 for the heads. None when the dataset has no fingerprint (the caller extracts in memory)."""
    store = store_for(parts, split, dataset, cache_dir)
    if store is None:
        say(f"features: the {split} dataset ({type(dataset).__name__}) has no content fingerprint; "
            f"--feature-cache does not cache it")
        return None
    missing = store.missing()
    if missing:
        say(f"features: extracting {split} ({len(dataset):,} images, {len(missing)} of {store.num_shards} shards "
            f"to do) into the cache {store.folder}")
        store.extract(parts.model.forward_features, lambda rows: loader_for(Subset(dataset, rows)), missing,
                      progress=parts.cfg.progress and parts.info.is_main)
    feats, labels = store.read()
    if not missing:
        say(f"features: {split} {feats.shape[0]:,} x {feats.shape[1]} read from the cache {store.folder} "
            f"(fp16, memory-mapped; no forward pass)")
    return (feats if split == "source" else feats.float()), labels
