"""FeatureStore: fp16 shards on disk, resumable, keyed by content; dataset_fingerprint."""
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from tllib_jtln.cost.content_key import dataset_fingerprint
from tllib_jtln.cost.feature_store import FeatureStore
from tllib_jtln.data.imagelist import ImageList


class Counting(nn.Module):
    """Counts the images it forwards; raises once ``fail_after`` images have been forwarded."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        self.images, self.fail_after = 0, fail_after

    def forward(self, x):
        if self.fail_after is not None and self.images >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.images += x.shape[0]
        return self.body(x)


DATA = TensorDataset(torch.randn(10, 3, 2, 2), torch.arange(10) % 3)


def loader_for(rows):
    return DataLoader(Subset(DATA, rows), batch_size=3)


def expected(model):
    with torch.no_grad():
        return model.body(DATA.tensors[0]).half()


def test_store_holds_fp16_features_and_labels_and_is_reused(tmp_path):
    model = Counting()
    store = FeatureStore(tmp_path, {"data": "toy"}, len(DATA), shard_rows=4)
    assert store.num_shards == 3 and store.missing() == [0, 1, 2]
    assert store.extract(model, loader_for, store.missing(), progress=False) == 10
    feats, labels = store.read()
    assert feats.dtype == torch.float16 and feats.shape == (10, 5)
    assert torch.equal(feats, expected(model)) and torch.equal(labels, DATA.tensors[1])
    again = FeatureStore(tmp_path, {"data": "toy"}, len(DATA), shard_rows=4)
    assert again.complete() and again.missing() == []  # a second run forwards nothing
    assert torch.equal(again.read()[0], feats)
    assert not FeatureStore(tmp_path, {"data": "other"}, len(DATA), shard_rows=4).complete()


def test_killed_extraction_resumes_without_redoing_finished_shards(tmp_path):
    store = FeatureStore(tmp_path, "k", len(DATA), shard_rows=4)
    killed = Counting(fail_after=6)  # batches of 3: dies in the third batch, inside shard 1
    with pytest.raises(KeyboardInterrupt):
        store.extract(killed, loader_for, store.missing(), progress=False)
    assert store.missing() == [1, 2]  # shard 0 (rows 0-3) finished before the kill
    model = Counting()
    model.load_state_dict(killed.state_dict())
    store.extract(model, loader_for, store.missing(), progress=False)
    assert model.images == 6  # rows 4-9 only
    assert torch.equal(store.read()[0], expected(model))


def test_ranks_extract_strided_shares_and_any_rank_reads_all(tmp_path):
    stores = [FeatureStore(tmp_path, "k", len(DATA), shard_rows=2) for _ in range(2)]
    assert stores[0].missing(0, 2) == [0, 2, 4] and stores[1].missing(1, 2) == [1, 3]
    models = [Counting(), Counting()]
    models[1].load_state_dict(models[0].state_dict())
    for rank in (1, 0):
        stores[rank].extract(models[rank], loader_for, stores[rank].missing(rank, 2), progress=False)
    assert [m.images for m in models] == [6, 4]
    assert torch.equal(stores[0].read()[0], expected(models[0]))


def test_an_edited_meta_or_a_symlinked_file_is_refused(tmp_path):
    from tllib_jtln.errors import UserError

    store = FeatureStore(tmp_path, "k", len(DATA), shard_rows=4)
    store.extract(Counting(), loader_for, store.missing(), progress=False)
    (store.folder / "features.f16").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", store.folder / "features.f16")
    with pytest.raises(UserError, match="not a symlink"):
        store.read()
    (store.folder / "meta.json").write_text('{"rows": 3}')
    with pytest.raises(UserError, match="does not describe these features"):
        store.read()


def test_fingerprint_changes_when_an_image_changes_in_place(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"x" * (10 + i))
        paths.append(str(path))
    dataset = ImageList([(p, i % 2) for i, p in enumerate(paths)], ["a", "b"])
    first = dataset_fingerprint(dataset)
    assert dataset_fingerprint(dataset) == first
    stat = os.stat(paths[1])
    with open(paths[1], "r+b") as handle:  # same path, same size: new bytes, new mtime
        handle.write(b"y")
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert dataset_fingerprint(dataset) != first
    relabelled = ImageList([(p, 1 - i % 2) for i, p in enumerate(paths)], ["a", "b"])
    assert dataset_fingerprint(relabelled) not in (first, dataset_fingerprint(dataset))


def test_fingerprint_of_images_in_memory_and_of_unknown_datasets():
    from tllib_jtln.data.memory import TensorImages

    images = torch.zeros(4, 2, 2, dtype=torch.uint8)
    dataset = TensorImages(images, torch.arange(4), ["a"] * 4)
    first = dataset_fingerprint(dataset)
    images[2, 0, 0] = 7  # the same object, one pixel changed
    assert dataset_fingerprint(dataset) != first
    assert dataset_fingerprint(DATA) is None  # no paths, no tensors it knows: not cached
