"""The embedded Fashion-MNIST task: documented classes and sizes, seeded K-shot draws, lookup order."""
import collections
import gzip

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

