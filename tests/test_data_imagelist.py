"""TLlib-format datasets: a miniature dataset in TLlib's exact layout reads back; bad data is named."""
import os
import warnings
from pathlib import Path

import pytest
import torch

from tllib_jtln.config import Config
from tllib_jtln.data import DATASETS, BadImageWarning, build_task, prepare_dataset, read_image_list
from tllib_jtln.data.imagelist import ImageList
from tllib_jtln.data.list_files import class_names_from_paths
from tllib_jtln.errors import UserError

RATES = (100, 50, 30, 15)
PER_CLASS = {100: 6, 50: 3, 30: 2, 15: 1}  # train images per class in train_{sr}.txt
TEST_PER_CLASS = 2

# (dataset, the folder of each label, the class names the reader must report)
CUB_FOLDERS = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
PETS_NAMES = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier"]


def write_jpeg(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value % 256, (3 * value) % 256, 90)).save(path, "JPEG")


def make_tllib_dataset(root: Path, folders, subdir: str | None = None, label_offset: int = 0) -> Path:
    """TLlib's layout: train/<folder>/*.jpg, test/<folder>/*.jpg, image_list/train_{sr}.txt, test.txt."""
    base = root / subdir if subdir else root
    lists = {f"train_{sr}.txt": [] for sr in RATES}
    lists["test.txt"] = []
    for label, folder in enumerate(folders):
        label += label_offset
        for i in range(PER_CLASS[100]):
            rel = f"train/{folder}/img_{i}.jpg"
            write_jpeg(base / rel, 10 * label + i)
            for sr in RATES:
                if i < PER_CLASS[sr]:
                    lists[f"train_{sr}.txt"].append(f"{rel} {label}")
        for i in range(TEST_PER_CLASS):
            rel = f"test/{folder}/img_{i}.jpg"
            write_jpeg(base / rel, 100 + 10 * label + i)
            lists["test.txt"].append(f"{rel} {label}")
    (base / "image_list").mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (base / "image_list" / name).write_text("\n".join(lines) + "\n")
    return base


def cfg_for(data, root, **kw):
    values = dict(data=data, root=str(root), transforms="small", image_size=16, val_per_class=0, workers=0)
    values.update(kw)
    return Config(**values)


@pytest.mark.parametrize("name, folders, names", [
    ("CUB200", CUB_FOLDERS, CUB_FOLDERS),  # names read from the list paths
    ("OxfordIIITPets", PETS_NAMES, PETS_NAMES),  # embedded names
])
def test_tllib_layout_reads_back_for_every_sample_rate(tmp_path, name, folders, names):
    make_tllib_dataset(tmp_path, folders)
    for sr in RATES:
        task = build_task(cfg_for(name, tmp_path, sample_rate=sr))
        assert len(task.target_train) == PER_CLASS[sr] * len(folders)
        assert len(task.target_test) == TEST_PER_CLASS * len(folders)
        assert sorted(task.target_train.targets) == sorted(list(range(len(folders))) * PER_CLASS[sr])
        assert task.target_classes[:3] == names
        assert len(task.target_classes) == DATASETS.get(name).info.num_classes
        assert task.target_val is None and task.source_train is None and task.in_chans == 3
    image, label = task.target_test[TEST_PER_CLASS * 2]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 2


def test_labels_match_their_files(tmp_path):
    make_tllib_dataset(tmp_path, CUB_FOLDERS)
    dataset = DATASETS.get("CUB200")(tmp_path, "test")
    for path, label in dataset.samples:
        assert Path(path).parent.name == CUB_FOLDERS[label]


def test_dtd_is_found_in_its_subfolder_with_tllib_train_txt(tmp_path):
    base = make_tllib_dataset(tmp_path, ["banded", "blotchy"], subdir="dtd")
    (base / "image_list" / "train_100.txt").rename(base / "image_list" / "train.txt")
    task = build_task(cfg_for("DTD", tmp_path))
    assert len(task.target_train) == 12 and task.target_classes[:2] == ["banded", "blotchy"]
    assert len(task.target_classes) == 47


def test_validation_carve_and_k_shot_are_seeded(tmp_path):
    make_tllib_dataset(tmp_path, CUB_FOLDERS)

    def picks(seed, **kw):
        task = build_task(cfg_for("CUB200", tmp_path, seed=seed, **kw))
        return ([p for p, _ in task.target_train.samples],
                [p for p, _ in task.target_val.samples] if task.target_val is not None else [])

    train, val = picks(0, num_samples_per_class=2, val_per_class=3)
    assert len(train) == 6 and len(val) == 9 and not set(train) & set(val)
    assert picks(0, num_samples_per_class=2, val_per_class=3) == (train, val)
    assert picks(0, num_samples_per_class=2, val_per_class=1)[0] == train  # K-shot set ignores the carve
    assert any(picks(s, num_samples_per_class=2, val_per_class=3)[0] != train for s in (1, 2))
    train, val = picks(0, val_per_class=2)  # no -K: the carve takes at most half a class
    assert len(val) == 6 and len(train) == 12


def test_bad_list_paths_are_rejected_with_file_and_line(tmp_path):
    root = tmp_path / "root"
    make_tllib_dataset(root, CUB_FOLDERS)
    write_jpeg(tmp_path / "outside.jpg", 1)
    bad = root / "image_list" / "bad.txt"
    for line, needle in [("../outside.jpg 0", "'..'"), (f"{tmp_path / 'outside.jpg'} 0", "absolute"),
                         ("train/x.jpg seven", "not an integer"), ("train/001.Black_footed_Albatross/img_0.jpg 300",
                                                                   "out of range")]:
        bad.write_text(f"train/001.Black_footed_Albatross/img_0.jpg 0\n{line}\n")
        with pytest.raises(UserError, match=needle) as info:
            read_image_list(bad, root, num_classes=200)
        assert f"{bad} line 2" in str(info.value)
    os.symlink(tmp_path / "outside.jpg", root / "train" / "link.jpg")
    bad.write_text("train/link.jpg 0\n")
    with pytest.raises(UserError, match="outside the dataset root") as info:
        read_image_list(bad, root)
    assert f"{bad} line 1" in str(info.value) and "train/link.jpg" in str(info.value)


def test_missing_root_and_list_file_name_the_path(tmp_path):
    with pytest.raises(UserError, match="root folder not found: .*nowhere.*vision.caltech.edu"):
        build_task(cfg_for("CUB200", tmp_path / "nowhere"))
    with pytest.raises(UserError, match="needs --root"):
        build_task(Config(data="Aircraft"))
    make_tllib_dataset(tmp_path, CUB_FOLDERS)
    (tmp_path / "image_list" / "train_30.txt").unlink()
    with pytest.raises(UserError, match=r"train_30\.txt.*present: test\.txt, train_100\.txt"):
        build_task(cfg_for("CUB200", tmp_path, sample_rate=30))
    with pytest.raises(UserError, match="sample-rate 20"):
        build_task(cfg_for("CUB200", tmp_path, sample_rate=20))
    with pytest.raises(UserError, match="did you mean 'CUB200'"):
        build_task(cfg_for("CUB2000", tmp_path))


def test_corrupt_image_is_named_and_skip_bad_images_counts_it(tmp_path):
    make_tllib_dataset(tmp_path, CUB_FOLDERS)
    corrupt = tmp_path / "test" / CUB_FOLDERS[1] / "img_0.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    task = build_task(cfg_for("CUB200", tmp_path))
    with pytest.raises(UserError, match=f"{corrupt}: unreadable or corrupt image.*--skip-bad-images"):
        [task.target_test[i] for i in range(len(task.target_test))]

    task = build_task(cfg_for("CUB200", tmp_path, skip_bad_images=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = [task.target_test[i][1] for i in range(len(task.target_test))]
    assert task.target_test.bad_images == task.bad_images() == [os.path.realpath(corrupt)]
    assert labels == [0, 0, 1, 1, 2, 2]  # the bad item (index 2) is replaced by the next good one
    assert torch.equal(task.target_test[2][0], task.target_test[3][0])
    assert [str(w.message) for w in caught if w.category is BadImageWarning] == [
        f"skipping bad image {os.path.realpath(corrupt)}: unreadable or corrupt image (UnidentifiedImageError)"]


def test_missing_image_file_is_named(tmp_path):
    make_tllib_dataset(tmp_path, CUB_FOLDERS)
    gone = tmp_path / "train" / CUB_FOLDERS[0] / "img_0.jpg"
    gone.unlink()
    dataset = DATASETS.get("CUB200")(tmp_path, "train")
    with pytest.raises(UserError, match=f"{gone}: file not found"):
        dataset[0]


def test_custom_image_list_and_image_folder(tmp_path):
    make_tllib_dataset(tmp_path, ["cats", "dogs"])
    (tmp_path / "image_list" / "classes.txt").write_text("cat\ndog\n")
    task = build_task(cfg_for("ImageList", tmp_path))
    assert task.target_classes == ["cat", "dog"] and len(task.target_train) == 12
    task = build_task(cfg_for("ImageFolder", tmp_path, source_data="ImageFolder", source_root=str(tmp_path),
                              source_per_class=2))
    assert task.target_classes == ["cats", "dogs"] and len(task.target_test) == 4
    assert task.source_classes == ["cats", "dogs"] and sorted(task.source_train.targets) == [0, 0, 1, 1]
    assert task.source_train[0][0].shape == (3, 16, 16)


def test_imagenet_folder_layout_as_source(tmp_path):
    target = tmp_path / "cub"
    make_tllib_dataset(target, CUB_FOLDERS)
    for wnid in ("n01440764", "n01443537"):
        for i in range(3):
            write_jpeg(tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{i}.JPEG", i)
    task = build_task(cfg_for("CUB200", target, source_data="ImageNet", source_root=str(tmp_path / "imagenet")))
    assert task.source_classes == ["n01440764", "n01443537"] and len(task.source_train) == 6


def test_class_names_fall_back_when_folders_do_not_name_classes():
    mixed = [("/d/a/1.jpg", 0), ("/d/b/2.jpg", 0), ("/d/c/3.jpg", 1)]
    assert class_names_from_paths(mixed, 2) == ["class_0", "class_1"]
    assert class_names_from_paths([("/d/x/1.jpg", 1)], 3) == ["class_0", "x", "class_2"]


def test_prepare_checks_tllib_layout(tmp_path):
    make_tllib_dataset(tmp_path, PETS_NAMES)
    assert prepare_dataset("oxfordiiitpets", tmp_path) == tmp_path
    with pytest.raises(UserError, match="--download is not available.*vision.caltech.edu"):
        prepare_dataset("CUB200", tmp_path / "none", download=True)


def test_image_list_subset_keeps_classes(tmp_path):
    make_tllib_dataset(tmp_path, CUB_FOLDERS)
    dataset = DATASETS.get("CUB200")(tmp_path, "train")
    assert isinstance(dataset, ImageList)
    part = dataset.subset([0, 7])
    assert part.targets == [0, 1] and part.classes == dataset.classes and len(part) == 2


@pytest.mark.parametrize("kind, size", [("tllib", 24), ("timm", None), ("auto", None)])
def test_transform_choices_give_tensors_of_the_resolved_size(tmp_path, kind, size):
    make_tllib_dataset(tmp_path, PETS_NAMES)
    data_config = {"input_size": (3, 20, 20), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                   "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}
    task = build_task(cfg_for("OxfordIIITPets", tmp_path, transforms=kind, image_size=size), data_config)
    expected = {"tllib": 24, "timm": 20, "auto": 224}[kind]
    assert task.image_size == expected
    assert task.target_train[0][0].shape == task.target_test[0][0].shape == (3, expected, expected)


def test_cifar_without_files_names_download(tmp_path):
    with pytest.raises(UserError, match="CIFAR10.*--download"):
        build_task(cfg_for("CIFAR10", tmp_path))
