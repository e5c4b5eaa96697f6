"""--val-split: where validation images come from, on a TLlib-layout root and the embedded task."""
import json

import numpy as np
import pytest

from tiny_images import SIZE, TLLIB_RATES, make_tllib_root
from tllib_jtln.config import Config
from tllib_jtln.data import build_task
from tllib_jtln.data.val_split import resolve_val_split, split_pool
from tllib_jtln.errors import UserError

CLASSES = 3


def _cfg(root, **kw) -> Config:
    base = dict(data="CUB200", root=str(root), transforms="small", image_size=SIZE, val_per_class=5)
    base.update(kw)
    return Config(**base)


def _paths(dataset) -> set:
    return {p for p, _ in dataset.samples}


@pytest.mark.parametrize("sr", [15, 30, 50])
def test_rest_trains_on_tllib_list_and_validates_outside_it(tmp_path, sr):
    # CUB200's ImageList builder checks 200 classes; use the generic ImageList for the miniature root
    root = make_tllib_root(tmp_path / "cub")
    task = build_task(_cfg(root, data="ImageList", sample_rate=sr))
    n = TLLIB_RATES[sr]
    assert len(task.target_train) == CLASSES * n  # exactly TLlib's training list
    assert len(task.target_val) == CLASSES * min(5, TLLIB_RATES[100] - n)
    assert not _paths(task.target_train) & _paths(task.target_val)
    assert not _paths(task.target_val) & _paths(task.target_test)


@pytest.mark.parametrize("sr", [15, 30, 50, 100])
def test_sizes_of_each_choice(tmp_path, sr):
    root = make_tllib_root(tmp_path / "cub")
    n = TLLIB_RATES[sr]
    sizes = {}
    for choice in ("rest", "train", "test", "none"):
        cfg = _cfg(root, data="ImageList", sample_rate=sr, val_split=choice)
        if choice == "rest" and sr == 100:
            with pytest.raises(UserError, match="--val-split rest at -sr 100"):
                build_task(cfg)
            continue
        task = build_task(cfg)
        sizes[choice] = (len(task.target_train), 0 if task.target_val is None else len(task.target_val))
    carve = min(5, n // 2)
    assert sizes["train"] == (CLASSES * (n - carve), CLASSES * carve)
    assert sizes["test"] == (CLASSES * n, CLASSES * 4)  # the test set selects
    assert sizes["none"] == (CLASSES * n, 0)
    if sr < 100:
        assert sizes["rest"] == (CLASSES * n, CLASSES * min(5, TLLIB_RATES[100] - n))


def test_auto_resolves_like_the_issue_says():
    assert resolve_val_split(Config(sample_rate=15)) == "rest"
    assert resolve_val_split(Config(sample_rate=100)) == "train"
    assert resolve_val_split(Config(sample_rate=100, num_samples_per_class=4)) == "rest"
    assert resolve_val_split(Config(), embedded=True) == "rest"
    assert resolve_val_split(Config(val_split="test", sample_rate=15)) == "test"


def test_k_shot_draw_is_the_same_for_every_choice():
    targets = np.repeat(np.arange(4), 12)
    trains = {c: split_pool(targets, c, 3, 4, seed=0)[0] for c in ("rest", "test", "none")}
    assert all(np.array_equal(trains["rest"], t) for t in trains.values())
    train, val = split_pool(targets, "train", 3, 4, seed=0)  # carve from the 3 drawn: 1 val, 2 train
    assert len(train) == 8 and len(val) == 4 and not set(train) & set(val)
    assert set(train) | set(val) == set(trains["rest"])


def test_k_rest_on_tllib_root(tmp_path):
    root = make_tllib_root(tmp_path / "cub")
    task = build_task(_cfg(root, data="ImageList", num_samples_per_class=4))
    assert len(task.target_train) == CLASSES * 4 and len(task.target_val) == CLASSES * 5


@pytest.fixture(scope="module")
def fmnist_available():
    from tllib_jtln.data.fashion_mnist import locate

    if locate(None) is None:
        pytest.skip("Fashion-MNIST files not installed")


@pytest.mark.parametrize("choice,train,val", [("rest", 50, 100), ("train", 25, 25), ("test", 50, 5000),
                                              ("none", 50, 0)])
def test_embedded_task_choices(fmnist_available, choice, train, val):
    from tllib_jtln.engine.run import resolve_config

    task = build_task(resolve_config({"val_split": choice}))
    assert len(task.target_train) == train
    assert (0 if task.target_val is None else len(task.target_val)) == val


def test_none_trains_and_keeps_the_last_epoch(tmp_path):
    from tllib_jtln.engine.run import train_from_flags

    root = make_tllib_root(tmp_path / "cub")
    log = tmp_path / "run"
    flags = dict(data="ImageList", root=str(root), sample_rate=15, val_split="none", method="erm", arch="smallcnn",
                 pretrained=False, finetune=False, image_size=SIZE, transforms="small", workers=0, batch_size=4,
                 iters_per_epoch=2, epochs=2, lr_decay_epochs=[1], progress=False, device="cpu", log=str(log))
    assert train_from_flags(flags) == 0
    summary = json.loads((log / "summary.json").read_text())
    assert summary["selected_on"] == "last" and summary["best_epoch"] == 2
    assert summary["target_train_size"] == 9 and summary["target_val_size"] == 0
    assert summary["val_top1"] is None
