"""``--feature-cache DIR``: a split's features read from (or extracted once into) a
:class:`~tllib_jtln.cost.feature_store.FeatureStore`, keyed by what they depend on.

The key is the content of the split (:func:`~tllib_jtln.cost.content_key.dataset_fingerprint`:
its images' paths, labels, sizes and modification times, or its pixels, and its transform), the
hash of the trunk's weights (``model.backbone``: the heads, which differ between seeds, do not
change ``forward_features``), the architecture and the image size. Every row and seed of a suite
that starts from the same pretrained trunk on the same images reads the same store; a changed
image, list file or weight gives another store. The run says which: ``features: ... read from
the cache ...`` or ``features: extracting ...``.

Under DDP (world size ``W > 1``) a method builds its state on rank 0, inside a hook, and the
engine broadcasts it after; the features it reads are forwarded by every rank. Rank 0, finding
shards missing, sends the store to the other ranks (:func:`cached_features`), which wait for it
once their own hook has returned (:func:`serve_feature_requests`, run by every rank right after
each hook); rank ``r`` forwards the missing shards ``i = r (mod W)``, each rank logs which, and
after a barrier rank 0 reads the complete store. Rank 0 ends the requests when its hook returns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Subset

from ..cost.content_key import dataset_fingerprint
from ..cost.feature_store import FeatureStore
from ..cost.features import weights_fingerprint
from . import distributed as D


def store_for(parts, split: str, dataset, cache_dir: Path) -> Optional[FeatureStore]:
    """The store of ``split``'s features under ``cache_dir``; None when ``dataset`` has no fingerprint."""
    content = dataset_fingerprint(dataset)
    if content is None:
        return None
    trunk = getattr(parts.model, "backbone", parts.model)
    key = {"split": split, "content": content, "weights": weights_fingerprint(trunk), "arch": parts.cfg.arch,
           "image_size": parts.task.image_size, "features": "forward_features, eval mode"}
    return FeatureStore(cache_dir, key, len(dataset))


def extract_share(parts, split: str, store: FeatureStore, dataset, loader_for: Callable, info: D.DistInfo) -> None:
    """Forward the missing shards ``i = info.rank (mod info.world_size)`` of ``store`` (every missing
    shard for ``DistInfo()``) through the model, the loader over those shards' rows only; under
    DDP the rank logs the shards it forwarded."""
    shards = store.missing(info.rank, info.world_size)
    if shards:
        store.extract(parts.model.forward_features, lambda rows: loader_for(Subset(dataset, rows)), shards,
                      progress=parts.cfg.progress and info.is_main)
    if info.enabled:
        print(f"features: rank {info.rank} of {info.world_size} forwarded {split} shards "
              f"{', '.join(map(str, shards)) or 'none'} ({sum(len(store.shard_range(i)) for i in shards):,} images)",
              flush=True)


def cached_features(parts, split: str, dataset, cache_dir: Path, loader_for: Callable, say: Callable[[str], None]
                    ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(features (N, D), labels (N,))`` of ``dataset`` through the store: source features stay an
    fp16 memory map (``build_cost`` reads them in chunks), target features (a few per class) come
    back float32 for the heads. None when the dataset has no fingerprint (the caller extracts in memory).

    Under DDP, rank 0 calls it inside a method's hook only: the other ranks forward their shares
    meanwhile (:func:`serve_feature_requests`)."""
    store = store_for(parts, split, dataset, cache_dir)
    if store is None:
        say(f"features: the {split} dataset ({type(dataset).__name__}) has no content fingerprint; "
            f"--feature-cache does not cache it")
        return None
    missing = store.missing()
    if missing:
        info = parts.info
        shared = info.enabled and info.is_main  # the other ranks wait in serve_feature_requests
        ranks = f"; rank r of {info.world_size} forwards shards i = r (mod {info.world_size})" if shared else ""
        say(f"features: extracting {split} ({len(dataset):,} images, {len(missing)} of {store.num_shards} shards "
            f"to do{ranks}) into the cache {store.folder}")
        if shared:
            D.broadcast_object((split, store))
        extract_share(parts, split, store, dataset, loader_for, info if shared else D.DistInfo())
        if shared:
            D.barrier()
    feats, labels = store.read()
    if not missing:
        say(f"features: {split} {feats.shape[0]:,} x {feats.shape[1]} read from the cache {store.folder} "
            f"(fp16, memory-mapped; no forward pass)")
    return (feats if split == "source" else feats.float()), labels


def serve_feature_requests(parts, loader_for: Callable) -> None:
    """Every rank, right after a method's hook, under DDP with ``--feature-cache``: rank 0 (its hook
    done) ends the requests; every other rank forwards its share of each store rank 0 sent meanwhile
    (:func:`cached_features`), then meets it at the barrier. Outside DDP or without a cache: nothing."""
    info = parts.info
    if not (parts.cfg.feature_cache and info.enabled):
        return
    if info.is_main:
        D.broadcast_object(None)
        return
    while (request := D.broadcast_object(None)) is not None:
        split, store = request
        extract_share(parts, split, store, parts.task.eval_view(split), loader_for, info)
        D.barrier()
