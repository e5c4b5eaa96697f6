"""The embedded Fashion-MNIST task: documented classes and sizes, seeded K-shot draws, lookup order."""
import collections
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tllib_jtln.cli import main
from tllib_jtln.config import Config
from tllib_jtln.data import build_task, prepare_dataset
from tllib_jtln.data import fashion_mnist as fm
from tllib_jtln.errors import UserError

needs_debian = pytest.mark.skipif(not fm.has_files(fm.DEBIAN_DIR),
                                  reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")


@pytest.fixture(scope="module")
def task():
    return build_task(Config())


@needs_debian
def test_embedded_task_has_documented_classes_and_sizes(task):
    assert task.name == "FashionMNIST" and task.in_chans == 1 and task.image_size == 28
    assert task.source_classes == ["T-shirt/top", "Trouser", "Coat", "Sandal", "Bag"]
    assert task.target_classes == ["Pullover", "Dress", "Shirt", "Sneaker", "Ankle boot"]
    assert len(task.source_train) == 30000 and len(task.target_train) == 50
    assert len(task.target_val) == 100 and len(task.target_test) == 5000
    assert collections.Counter(task.target_test.targets) == {c: 1000 for c in range(5)}
    assert collections.Counter(task.target_train.targets) == {c: 10 for c in range(5)}
    assert collections.Counter(task.source_train.targets) == {c: 6000 for c in range(5)}
    image, label = task.target_test[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label < 5
    # relabelling keeps the classes: Pullover (2) -> 0, Dress (3) -> 1, Shirt (6) -> 2, Sneaker (7) -> 3, Ankle boot (9) -> 4
    raw_images, raw_labels = fm.load_split(fm.DEBIAN_DIR, "test")
    for new, original in enumerate((2, 3, 6, 7, 9)):
        first = int(torch.nonzero(raw_labels == original)[0])
        position = int(torch.nonzero(task.target_test.labels == new)[0])
        assert torch.equal(task.target_test.images[position], raw_images[first])


@needs_debian
def test_k_shot_and_validation_are_seeded_and_disjoint(task):
    same = build_task(Config())
    assert torch.equal(same.target_train.images, task.target_train.images)
    other = build_task(Config(seed=1, num_samples_per_class=3, val_per_class=4, source_per_class=7))
    assert not torch.equal(other.target_train.images, task.target_train.images[:15])
    assert len(other.target_train) == 15 and len(other.target_val) == 20 and len(other.source_train) == 35
    train = {bytes(x.numpy()) for x in task.target_train.images}
    assert not train & {bytes(x.numpy()) for x in task.target_val.images}


@needs_debian
def test_eval_view_drops_augmentation(task):
    view = task.eval_view("target")
    assert len(view) == len(task.target_train) and view.targets == task.target_train.targets
    assert torch.equal(view[3][0], view[3][0]) and torch.equal(view[3][0], task.target_val.transform(view.images[3]))
    assert not all(torch.equal(task.target_train[3][0], task.target_train[3][0]) for _ in range(8))


@needs_debian
def test_image_size_resizes_one_channel(task):
    bigger = build_task(Config(image_size=64, num_samples_per_class=1, val_per_class=0, source_per_class=1))
    assert bigger.image_size == 64 and bigger.in_chans == 1 and bigger.target_val is None
    assert bigger.target_train[0][0].shape == (1, 64, 64) and bigger.source_train[0][0].shape == (1, 64, 64)


@needs_debian
def test_prepare_links_into_torchvision_layout_and_root_is_searched_first(tmp_path, capsys):
    assert main(["data", "prepare", "fashion-mnist", "--root", str(tmp_path)]) == 0
    raw = tmp_path / "FashionMNIST" / "raw"
    assert f"ready in {raw}" in capsys.readouterr().out
    assert fm.locate(tmp_path) == raw and prepare_dataset("FashionMNIST", tmp_path) == raw


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_corrupt_files(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(fm.read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "b.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(UserError, match="b.gz: truncated or corrupt"):
        fm.read_idx(tmp_path / "b.gz")


def test_missing_files_name_both_routes(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fm, "DEFAULT_ROOT", tmp_path / "data")
    with pytest.raises(UserError) as info:
        build_task(Config(root=str(tmp_path / "empty")))
    message = str(info.value)
    assert "\n" not in message and "empty" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*--download"):
        prepare_dataset("fashion-mnist", tmp_path / "empty")


def test_source_data_none_keeps_only_the_target_classes():
    from tllib_jtln.config import Config
    from tllib_jtln.data import build_task

    task = build_task(Config(source_data="none", num_samples_per_class=2, val_per_class=3, image_size=28,
                             transforms="small", workers=0))
    assert task.source_train is None and task.source_classes is None
    assert task.target_classes == ["Pullover", "Dress", "Shirt", "Sneaker", "Ankle boot"]
    assert len(task.target_train) == 10 and len(task.target_val) == 15


def test_data_seed_fixes_the_draws_while_seed_changes():
    from tllib_jtln.config import Config
    from tllib_jtln.data import build_task

    def draw(**kw):
        task = build_task(Config(num_samples_per_class=2, val_per_class=3, transforms="small", workers=0, **kw))
        return task.target_train.images, task.target_val.images

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    assert same(draw(seed=1, data_seed=0), draw(seed=0)) and same(draw(seed=2, data_seed=0), draw(seed=0))
    assert not same(draw(seed=1), draw(seed=0))


def test_class_split_by_name_default_one_side_and_errors():
    assert fm.class_split() == (fm.SOURCE_LABELS, fm.TARGET_LABELS)
    # names are case-insensitive and keep the order given; the other side is the rest, in label order
    source, target = fm.class_split(target_classes="ankle boot, T-shirt/top")
    assert target == (9, 0) and source == (1, 2, 3, 4, 5, 6, 7, 8)
    assert fm.class_split(source_classes="Bag,Coat") == ((8, 4), (0, 1, 2, 3, 5, 6, 7, 9))
    with pytest.raises(UserError, match=r"--source-classes and --target-classes overlap in Coat"):
        fm.class_split("Coat,Bag", "Coat,Dress")
    with pytest.raises(UserError, match=r"--target-classes: unknown Fashion-MNIST class 'Sneakers'; did you mean 'Sneaker'"):
        fm.class_split(target_classes="Sneakers,Dress")
    with pytest.raises(UserError, match="given twice"):
        fm.class_split(source_classes="Bag,bag")
    with pytest.raises(UserError, match="at least 2 target classes"):
        fm.class_split("Bag", "Dress")


def test_random_class_split_is_a_seeded_draw_of_distinct_disjoint_partitions():
    """random:S is the S-th of all partitions in one fixed seeded order: the same on every call,
    disjoint and complete (5/5), different for different S, other sizes on request."""
    draws = [fm.random_class_split(index) for index in range(252)]
    assert draws[3] == fm.random_class_split(3) == fm.class_split(split="random:3") == fm.class_split(split="random:3:5/5")
    for source, target in draws:
        assert len(source) == len(target) == 5 and sorted(source + target) == list(range(10))
        assert list(source) == sorted(source) and list(target) == sorted(target)
    assert len(set(draws)) == 252  # every 5/5 partition once: different S, different splits
    assert draws[0] != (fm.SOURCE_LABELS, fm.TARGET_LABELS) or draws[1] != (fm.SOURCE_LABELS, fm.TARGET_LABELS)
    source, target = fm.class_split(split="random:7:6/3")
    assert len(source) == 6 and len(target) == 3 and not set(source) & set(target)
    with pytest.raises(UserError, match=r"there are 252 such splits, numbered 0 to 251"):
        fm.random_class_split(252)
    with pytest.raises(UserError, match=r"7 \+ 4 classes, but Fashion-MNIST has 10"):
        fm.class_split(split="random:0:7/4")


def test_class_split_flag_form_and_refusals():
    from tllib_jtln.config import parse_class_split

    assert parse_class_split("random:12") == (12, 5, 5) and parse_class_split("random:0:6/4") == (0, 6, 4)
    for bad in ("random", "random:", "random:-1", "random:x", "rand:3", "random:1:6", "random:1:6/4/1", "random:1:2:3"):
        with pytest.raises(UserError, match="--class-split .*: expected random:S or random:S:NS/NT"):
            parse_class_split(bad)
    with pytest.raises(UserError, match="at least 1 source and 2 target classes"):
        parse_class_split("random:1:5/1")
    for named in ({"source_classes": "Bag"}, {"target_classes": "Dress,Bag"}):
        with pytest.raises(UserError, match=r"--class-split random:1 and --(source|target)-classes both choose") as info:
            Config(class_split="random:1", **named).validate()
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"--class-split: options of the embedded Fashion-MNIST task"):
        build_task(Config(data="DTD", root="x", class_split="random:1"))


TAXONOMY = Path(__file__).resolve().parents[1] / "configs" / "taxonomy" / "fashion_mnist.yaml"


@needs_debian
def test_random_class_split_task_and_its_summary_record_the_classes_by_name(tmp_path):
    """A run on random:4 with the taxonomy cost and --skip-test: the classes by name, validation only."""
    from tllib_jtln.engine.run import train_from_flags
    import json

    source, target = fm.random_class_split(4)
    task = build_task(Config(class_split="random:4", num_samples_per_class=1, val_per_class=2, source_per_class=3))
    assert task.source_classes == [fm.CLASSES[i] for i in source]
    assert task.target_classes == [fm.CLASSES[i] for i in target]
    assert collections.Counter(task.target_test.targets) == {c: 1000 for c in range(5)}
    log = tmp_path / "run"
    train_from_flags({"method": "jtln", "class_split": "random:4", "num_samples_per_class": 1, "val_per_class": 2,
                      "source_per_class": 3, "epochs": 1, "iters_per_epoch": 2, "batch_size": 4, "workers": 0,
                      "cost": f"taxonomy:{TAXONOMY}", "skip_test": True, "log": str(log), "progress": False})
    summary = json.loads((log / "summary.json").read_text())
    assert summary["class_split"] == "random:4"
    assert summary["source_classes"] == task.source_classes and summary["target_classes"] == task.target_classes
    assert summary["test_skipped"] is True and summary["test_top1"] is None and summary["test_images"] is None
    assert 0.0 <= summary["val_top1"] <= 1.0 and summary["target_val_size"] == 10
    records = [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]
    assert "ot_transport" in records[0] and "ot_reg_term" in records[0]


@needs_debian
def test_a_second_split_relabels_in_the_order_given():
    task = build_task(Config(source_classes="Trouser,Pullover,Dress,Sneaker,Bag",
                             target_classes="T-shirt/top,Coat,Sandal,Shirt,Ankle boot", num_samples_per_class=2,
                             val_per_class=3, source_per_class=10, workers=0))
    assert task.source_classes == ["Trouser", "Pullover", "Dress", "Sneaker", "Bag"]
    assert task.target_classes == ["T-shirt/top", "Coat", "Sandal", "Shirt", "Ankle boot"]
    raw_images, raw_labels = fm.load_split(fm.DEBIAN_DIR, "test")
    for new, original in enumerate((0, 4, 5, 6, 9)):
        first = int(torch.nonzero(raw_labels == original)[0])
        position = int(torch.nonzero(task.target_test.labels == new)[0])
        assert torch.equal(task.target_test.images[position], raw_images[first])
    assert collections.Counter(task.source_train.targets) == {c: 10 for c in range(5)}


def test_class_options_belong_to_the_embedded_task(tmp_path):
    with pytest.raises(UserError, match=r"--target-classes, --invert: options of the embedded Fashion-MNIST task"):
        build_task(Config(data="DTD", root=str(tmp_path), target_classes="Dress,Bag", invert=True))


def test_invert_mirrors_grey_levels_and_keeps_the_normalisation():
    from tllib_jtln.data.transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD, GrayEval, GrayTrain

    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[10:18, 10:18] = 255
    plain, inverted = GrayEval(28)(image), GrayEval(28, invert=True)(image)
    assert torch.allclose(inverted, -plain)  # x -> 1 - x with mean -> 1 - mean flips the sign exactly
    assert inverted[0, 0, 0] == pytest.approx(FASHION_MNIST_MEAN / FASHION_MNIST_STD)  # ground: 1 - (1 - mean)
    torch.manual_seed(0)
    crop = GrayTrain(28, invert=True)(torch.zeros(28, 28, dtype=torch.uint8))
    assert torch.allclose(crop, inverted[:, :1, :1].expand_as(crop))  # the padding is the (light) ground too

