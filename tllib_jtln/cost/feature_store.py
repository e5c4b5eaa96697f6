"""Features of a whole dataset, extracted once into an fp16 memory map on disk, in resumable shards.

A store is one folder per content key under the cache folder (``--feature-cache DIR``)::

    DIR/features-{h}/meta.json      {"version", "rows": N, "dim": D, "shard_rows": S, "key": {...}}
    DIR/features-{h}/features.f16   N x D float16, row-major (a numpy memory map)
    DIR/features-{h}/labels.i64     N int64
    DIR/features-{h}/done/{i}       one empty file per finished shard

``h`` hashes the key (the caller's: dataset content, backbone weights, transform, image size;
see :func:`tllib_jtln.cost.content_key.dataset_fingerprint`), ``N`` and ``S``. Shard ``i`` holds
rows ``[i S, (i + 1) S)``; its marker is created only after its rows are flushed to disk, so a
killed extraction resumes at the first unfinished shard and a finished one is never redone.
Under DDP each rank extracts its share, shards ``i = rank (mod world_size)``
(:meth:`FeatureStore.missing`), and after a barrier any process reads the whole store (the
engine's side: :mod:`tllib_jtln.engine.feature_cache`).

Reading (:meth:`FeatureStore.read`) maps the file copy-on-write: a 1.28M x 512 store is 1.3 GB
on disk and nothing is read until a row is used (``build_cost`` reads it in chunks). Files are
opened without following symlinks; a store whose ``meta.json`` disagrees with its key is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .features import ModelLike, batch_features, eval_mode, model_device, progress_bar

#: Rows per shard: what a killed extraction loses at most (8192 images: seconds to a minute).
SHARD_ROWS = 8192

STORE_VERSION = 1


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise UserError(f"feature cache: cannot open {path} ({exc.strerror}); it must be a regular file, not a "
                        f"symlink: remove it or give another --feature-cache") from None


class FeatureStore:
    """The store of one dataset's features under ``cache_dir`` for ``key``.

    Args:
        cache_dir: the cache folder (created when the first shard is written).
        key: JSON-serialisable description of what the features depend on.
        num_rows: the dataset's length ``N``.
        shard_rows: rows per shard ``S`` (default: :data:`SHARD_ROWS`, read when the store is made).
    """

    def __init__(self, cache_dir: str | Path, key: Any, num_rows: int, shard_rows: Optional[int] = None):
        if num_rows < 1:
            raise ValueError(f"FeatureStore: num_rows must be >= 1, got {num_rows}")
        self.key = json.loads(json.dumps(key, sort_keys=True, default=repr))
        self.num_rows, self.shard_rows = int(num_rows), int(SHARD_ROWS if shard_rows is None else shard_rows)
        name = hashlib.blake2b(json.dumps([self.key, self.num_rows, self.shard_rows, STORE_VERSION],
                                          sort_keys=True).encode(), digest_size=12).hexdigest()
        self.folder = Path(cache_dir).expanduser() / f"features-{name}"

    # ------------------------------------------------------------------ shards
    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_rows)

    def shard_range(self, shard: int) -> range:
        """The rows of ``shard``."""
        return range(shard * self.shard_rows, min(self.num_rows, (shard + 1) * self.shard_rows))

    def _marker(self, shard: int) -> Path:
        return self.folder / "done" / f"{shard:06d}"

    def is_done(self, shard: int) -> bool:
        return self._marker(shard).is_file()

    def missing(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Unfinished shards of this rank's share (``shard % world_size == rank``)."""
        return [i for i in range(rank, self.num_shards, world_size) if not self.is_done(i)]

    def complete(self) -> bool:
        return not self.missing()

    # ------------------------------------------------------------------ files
    def _meta(self) -> Optional[dict]:
        path = self.folder / "meta.json"
        if not path.is_file():
            return None
        fd = _open_nofollow(path, os.O_RDONLY)
        with os.fdopen(fd, encoding="utf-8") as handle:
            try:
                meta = json.load(handle)
            except ValueError:
                meta = None
        expected = {"version": STORE_VERSION, "rows": self.num_rows, "shard_rows": self.shard_rows, "key": self.key}
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
            raise UserError(f"feature cache: {path} does not describe these features (edited or foreign); "
                            f"remove {self.folder} and run again")
        return meta

    def _map(self, name: str, dtype, shape: tuple[int, ...], mode: str) -> np.memmap:
        path = self.folder / name
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT if mode == "r+" else os.O_RDONLY)
        try:
            if mode == "r+" and os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size != size:
                raise UserError(f"feature cache: {path} has {os.fstat(fd).st_size} bytes, expected {size}; "
                                f"remove {self.folder} and run again")
            with os.fdopen(os.dup(fd), "r+b" if mode == "r+" else "rb") as handle:
                return np.memmap(handle, dtype=dtype, mode=mode, shape=shape)
        finally:
            os.close(fd)

    def _open_for_writing(self, dim: int) -> tuple[np.memmap, np.memmap]:
        (self.folder / "done").mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        if meta is None:  # ranks may get here together: each writes its own temporary file, then renames it
            text = json.dumps({"version": STORE_VERSION, "rows": self.num_rows, "dim": dim,
                               "shard_rows": self.shard_rows, "key": self.key}, indent=2) + "\n"
            with tempfile.NamedTemporaryFile("w", dir=self.folder, prefix="meta.", suffix=".tmp",
                                             delete=False) as handle:
                handle.write(text)
            os.replace(handle.name, self.folder / "meta.json")
        elif meta.get("dim") != dim:
            raise UserError(f"feature cache: {self.folder} holds {meta.get('dim')}-d features but the model gives "
                            f"{dim}-d; remove it and run again")
        return (self._map("features.f16", np.float16, (self.num_rows, dim), "r+"),
                self._map("labels.i64", np.int64, (self.num_rows,), "r+"))

    # ------------------------------------------------------------------ extract and read
    def extract(self, model: ModelLike, loader_for: Callable[[list[int]], Iterable], shards: list[int],
                device: str | torch.device | None = None, progress: bool = True) -> int:
        """Forward the rows of ``shards`` through ``model`` (eval mode, no gradients) into the store.

        Args:
            model: images ``(B, C, H, W)`` -> features ``(B, D)`` (a module or a bound method).
            loader_for: ``rows -> loader`` yielding ``(images, labels)`` batches of exactly those
                dataset rows, in that order.
            shards: shard indices, e.g. :meth:`missing`.

        Returns:
            the number of rows forwarded. Each shard is flushed and marked done as soon as its last
            row is written, so an exception (or a kill) loses at most the shard under way.
        """
        rows = [r for shard in sorted(shards) for r in self.shard_range(shard)]
        if not rows:
            return 0
        ends = {self.shard_range(shard)[-1]: shard for shard in shards}
        run_device = torch.device(device) if device is not None else model_device(model)
        loader = loader_for(rows)
        total = len(loader) if hasattr(loader, "__len__") else None
        feats_map = labels_map = None
        written = 0
        with eval_mode(model):
            for batch in progress_bar(loader, total, f"features ({len(shards)} shards)", progress):
                feats, labels = batch_features(model, batch, run_device)
                if feats_map is None:
                    feats_map, labels_map = self._open_for_writing(feats.shape[1])
                at = np.asarray(rows[written:written + feats.shape[0]], dtype=np.int64)
                if at.shape[0] != feats.shape[0]:
                    raise ValueError("FeatureStore.extract: the loader yielded more rows than asked for")
                feats_map[at] = feats.numpy().astype(np.float16)
                labels_map[at] = labels.numpy()
                written += feats.shape[0]
                for row in at.tolist():
                    if row in ends:
                        feats_map.flush()
                        labels_map.flush()
                        self._marker(ends[row]).touch()
        if written != len(rows):
            raise ValueError(f"FeatureStore.extract: the loader yielded {written} rows, expected {len(rows)}")
        return written

    def read(self) -> tuple[Tensor, Tensor]:
        """``(features (N, D) float16, labels (N,) int64)``: the features a copy-on-write memory map of
        the file (rows are read from disk when used), the labels in memory."""
        if not self.complete():
            raise RuntimeError(f"FeatureStore.read: {self.folder} misses shards {self.missing()[:5]}...")
        meta = self._meta()
        feats = self._map("features.f16", np.float16, (self.num_rows, int(meta["dim"])), "c")
        labels = np.array(self._map("labels.i64", np.int64, (self.num_rows,), "c"))
        return torch.from_numpy(feats), torch.from_numpy(labels)
