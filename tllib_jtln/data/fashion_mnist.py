"""The embedded transfer task on Fashion-MNIST: no download, a real class shift.

Source classes (their training images, all or ``--source-per-class`` seeded), by default:
T-shirt/top (0), Trouser (1), Coat (4), Sandal (5), Bag (8), relabelled 0..4 in that order.
Target classes, by default: Pullover (2), Dress (3), Shirt (6), Sneaker (7), Ankle boot (9),
relabelled 0..4 in that order. ``--source-classes`` / ``--target-classes`` (comma-separated class
names, case-insensitive, relabelled in the order given) choose another split; giving one side only
makes the other side the remaining classes. ``--class-split random:S`` (or ``random:S:NS/NT``)
takes the ``S``-th seeded random split instead (:func:`random_class_split`). Target images: ``K = --num-samples-per-class``
(default 10) seeded labelled training images
per class, ``--val-per-class`` seeded validation images per class from the rest of the target
training pool (``--val-split rest``, the default; ``train`` carves it from the K images instead,
``test`` selects on the test set, ``none`` keeps the last epoch), and the official test images of
the five target classes (1000 each) as test set.

Sizes with the defaults (K = 10, 20 validation images per class): source 30000, target train
50, target val 100, target test 5000 (1000 test images per target class).

Files (idx format, gzip or not) are looked up in ``--root``, then torchvision's layout
``<root>/FashionMNIST/raw/``, then ``./data/FashionMNIST/raw/`` (where ``tllib-jtln data
prepare fashion-mnist`` puts them), then ``/usr/share/datasets/fashion-mnist/`` (Debian's
``dataset-fashion-mnist`` package). They are parsed with numpy (gzip + frombuffer) and kept as
uint8 tensors; items are ``(float tensor (1, S, S), label)`` normalised with the
Fashion-MNIST mean and std (``S = 28`` unless ``--image-size``).
"""
from __future__ import annotations

import difflib
import gzip
import itertools
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import parse_class_split
from ..errors import UserError
from .memory import TensorImages
from .sampling import STREAM_SOURCE, cap_per_class, data_seed
from .transfer_task import TransferTask
from .val_split import carve_target, resolve_val_split

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
SOURCE_LABELS = (0, 1, 4, 5, 8)
TARGET_LABELS = (2, 3, 6, 7, 9)
DEFAULT_K = 10
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60000, "test": 10000}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path("data")
HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist` (offline mirror) or run "
              "`tllib-jtln data prepare fashion-mnist --download` (torchvision download)")


def _file(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def has_files(folder: Path) -> bool:
    """True when all four idx files (gzip or plain) are in ``folder``."""
    return all(_file(folder, name) is not None for pair in FILES.values() for name in pair)


def root_dirs(root: str | Path) -> list[Path]:
    """The folders under ``--root`` where the files are looked for, in order."""
    root = Path(root).expanduser()
    return [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]


def candidate_dirs(root: Optional[str | Path]) -> list[Path]:
    """Where the files are looked for, in order: under ``root``, then the default places."""
    return (root_dirs(root) if root else []) + [DEFAULT_ROOT / "FashionMNIST" / "raw", DEBIAN_DIR]


def holds_fashion_mnist(root: str | Path) -> bool:
    """True when ``root`` itself (not a default place) holds the four files."""
    return any(has_files(folder) for folder in root_dirs(root))


def locate(root: Optional[str | Path] = None) -> Optional[Path]:
    """The first folder holding the four files, or None."""
    for folder in candidate_dirs(root):
        if has_files(folder):
            return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or plain) as a uint8 array; the header gives the shape.

    Format: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions, then one
    big-endian uint32 per dimension, then the data.
    """
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); {HOW_TO_GET}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not a uint8 idx file; {HOW_TO_GET}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - header != int(np.prod(shape)):
        raise UserError(f"{path}: truncated or corrupt (header says {shape}); {HOW_TO_GET}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` in ``folder`` (cached in memory)."""
    image_file, label_file = (_file(folder, name) for name in FILES[split])
    if image_file is None or label_file is None:
        raise UserError(f"Fashion-MNIST {split} files missing in {folder}; {HOW_TO_GET}")
    key = (str(image_file.resolve()), os.path.getmtime(image_file), str(label_file.resolve()))
    if key not in _CACHE:
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
            raise UserError(f"{image_file}: unexpected shapes {images.shape} / {labels.shape}; {HOW_TO_GET}")
        if len(images) != SIZES[split] or labels.max() > 9:
            raise UserError(f"{image_file}: expected {SIZES[split]} images with labels 0..9; {HOW_TO_GET}")
        _CACHE[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return _CACHE[key]


def _relabelled(images: torch.Tensor, labels: torch.Tensor, keep: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose label is in ``keep``, relabelled to ``keep.index(label)``."""
    mapping = torch.full((10,), -1, dtype=torch.int64)
    mapping[list(keep)] = torch.arange(len(keep))
    new = mapping[labels]
    rows = torch.nonzero(new >= 0).flatten()
    return images[rows], new[rows]


def _class_labels(text: str, flag: str) -> tuple[int, ...]:
    """Comma-separated class names (case-insensitive) -> their Fashion-MNIST labels, in the order given."""
    by_name = {name.lower(): label for label, name in enumerate(CLASSES)}
    labels: list[int] = []
    for raw in str(text).split(","):
        name = raw.strip()
        if not name:
            continue
        if name.lower() not in by_name:
            close = difflib.get_close_matches(name, CLASSES, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"{flag}: unknown Fashion-MNIST class '{name}'; {hint}classes: {', '.join(CLASSES)}")
        if by_name[name.lower()] in labels:
            raise UserError(f"{flag}: class '{name}' is given twice")
        labels.append(by_name[name.lower()])
    if not labels:
        raise UserError(f"{flag}: no class names given; classes: {', '.join(CLASSES)}")
    return tuple(labels)


#: the seed of the fixed order in which ``--class-split random:S`` lists the partitions
SPLIT_ORDER_SEED = 24


def random_class_split(index: int, num_source: int = 5, num_target: int = 5
                       ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``--class-split random:S``: the ``index``-th (``S``) of all ways to pick ``num_source`` source and
    ``num_target`` target classes (disjoint) from the ten, in one fixed seeded random order.

    Every partition is listed once (``C(10, NS) * C(10 - NS, NT)`` of them, 252 for 5/5; the
    classes left over, when ``NS + NT < 10``, are unused), then shuffled by ``random.Random``
    seeded with :data:`SPLIT_ORDER_SEED` (reproducible across Python versions). So a given ``S``
    is the same split on every machine, and different ``S`` are different splits: splits drawn for
    selection and for evaluation do not overlap when their ``S`` differ. Each side is in label order.
    """
    num = len(CLASSES)
    if num_source + num_target > num:
        raise UserError(f"--class-split random:{index}:{num_source}/{num_target}: {num_source} + {num_target} "
                        f"classes, but Fashion-MNIST has {num}")
    partitions = [(source, target) for source in itertools.combinations(range(num), num_source)
                  for target in itertools.combinations([c for c in range(num) if c not in source], num_target)]
    random.Random(SPLIT_ORDER_SEED).shuffle(partitions)
    if index >= len(partitions):
        raise UserError(f"--class-split random:{index}:{num_source}/{num_target}: there are {len(partitions)} "
                        f"such splits, numbered 0 to {len(partitions) - 1}")
    return partitions[index]


def class_split(source_classes: Optional[str] = None, target_classes: Optional[str] = None,
                split: Optional[str] = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(source labels, target labels) of the embedded task: ``split`` (``--class-split random:S``,
    :func:`random_class_split`), or ``--source-classes`` / ``--target-classes``: the default split
    when none is given; one side given, the other is the remaining classes in label order.
    Overlapping sides are a :class:`UserError` naming the classes."""
    if split is not None:
        return random_class_split(*parse_class_split(split))
    if source_classes is None and target_classes is None:
        return SOURCE_LABELS, TARGET_LABELS
    source = _class_labels(source_classes, "--source-classes") if source_classes is not None else None
    target = _class_labels(target_classes, "--target-classes") if target_classes is not None else None
    if source is None:
        source = tuple(label for label in range(len(CLASSES)) if label not in target)
    if target is None:
        target = tuple(label for label in range(len(CLASSES)) if label not in source)
    shared = [CLASSES[label] for label in source if label in target]
    if shared:
        raise UserError(f"--source-classes and --target-classes overlap in {', '.join(shared)}; "
                        f"a class belongs to one side only")
    if len(target) < 2:
        raise UserError(f"--target-classes: a classifier needs at least 2 target classes, got "
                        f"{', '.join(CLASSES[t] for t in target) or 'none'}")
    if not source:
        raise UserError("--source-classes: no source class left; leave at least one class to the source side")
    return source, target


def require_folder(root: Optional[str | Path], download: bool = False) -> Path:
    """The folder with the files; with ``download``, fetch them first if missing."""
    folder = locate(root)
    if folder is None and download:
        folder = prepare_fashion_mnist(root, download=True)
    if folder is None:
        where = ", ".join(str(d) for d in candidate_dirs(root))
        raise UserError(f"Fashion-MNIST not found (looked in {where}); {HOW_TO_GET}")
    return folder


def fashion_mnist(root: Optional[str | Path], split: str = "train", *, download: bool = False,
                  transform: Optional[Callable] = None, **_: object) -> TensorImages:
    """All ten Fashion-MNIST classes of ``split`` (``train`` or ``test``), original labels."""
    if split not in FILES:
        raise UserError(f"Fashion-MNIST split '{split}' unknown (train or test)")
    images, labels = load_split(require_folder(root, download), split)
    return TensorImages(images, labels, list(CLASSES), transform)


def build_fashion_mnist_task(cfg, train_transform: Callable, eval_transform: Callable, image_size: int):
    """The embedded task as a :class:`~tllib_jtln.data.transfer_task.TransferTask` (see the module docstring)."""
    if cfg.sample_rate != 100:
        raise UserError(f"-sr/--sample-rate {cfg.sample_rate}: the embedded Fashion-MNIST task has no list files "
                        f"to pick from; use -K to draw K images per class")
    folder = require_folder(cfg.root, cfg.download)
    train_images, train_labels = load_split(folder, "train")
    test_images, test_labels = load_split(folder, "test")
    k = cfg.num_samples_per_class if cfg.num_samples_per_class is not None else DEFAULT_K
    if k < 1:
        raise UserError(f"--num-samples-per-class must be >= 1, got {k}")
    source_labels, target_labels = class_split(cfg.source_classes, cfg.target_classes, cfg.class_split)
    source_classes = [CLASSES[i] for i in source_labels]
    target_classes = [CLASSES[i] for i in target_labels]

    s_images, s_labels = _relabelled(train_images, train_labels, source_labels)
    keep = cap_per_class(s_labels.numpy(), cfg.source_per_class, data_seed(cfg), STREAM_SOURCE)
    source = TensorImages(s_images, s_labels, source_classes).subset(keep, train_transform)

    t_images, t_labels = _relabelled(train_images, train_labels, target_labels)
    pool = TensorImages(t_images, t_labels, target_classes)
    x_test, y_test = _relabelled(test_images, test_labels, target_labels)
    target_test = TensorImages(x_test, y_test, target_classes, eval_transform)
    target_train, target_val = carve_target(pool, t_labels.numpy(), resolve_val_split(cfg, embedded=True), k,
                                            cfg.val_per_class, data_seed(cfg), (train_transform, eval_transform),
                                            target_test)
    return TransferTask(name="FashionMNIST", target_train=target_train, target_val=target_val,
                        target_test=target_test, target_classes=target_classes, source_train=source,
                        source_classes=source_classes, in_chans=1, image_size=image_size,
                        eval_transform=eval_transform)


def _link_or_copy(src: Path, folder: Path) -> None:
    """``folder/src.name`` as a symlink to ``src`` (a copy where links fail); whatever is already
    at that name (a file, a link, a folder) is the user's and is left as it is."""
    dst = folder / src.name
    try:
        dst.symlink_to(src)
    except FileExistsError:
        return
    except OSError:
        with open(src, "rb") as source, open(dst, "xb") as copy:  # "x": never over an existing entry
            shutil.copyfileobj(source, copy)


def prepare_fashion_mnist(root: Optional[str | Path] = None, download: bool = False) -> Path:
    """Put the files in torchvision's layout ``<root>/FashionMNIST/raw`` and return that folder.

    Already there (or found in ``root``): nothing to do. Otherwise the files of Debian's
    ``dataset-fashion-mnist`` package that are missing are symlinked (copied if links fail) into
    place; a file of the user's already there is never deleted or replaced; with
    ``download``, torchvision downloads them when the Debian files are absent. Without
    ``root`` and with the Debian files present, their folder is returned as is.
    """
    target_root = Path(root).expanduser() if root else DEFAULT_ROOT
    raw = target_root / "FashionMNIST" / "raw"
    for folder in ([target_root, raw, target_root / "fashion-mnist"] if root else [raw]):
        if has_files(folder):
            return folder
    if has_files(DEBIAN_DIR):
        if not root:
            return DEBIAN_DIR
        raw.mkdir(parents=True, exist_ok=True)
        for name in (name for pair in FILES.values() for name in pair):
            if _file(raw, name) is None:
                _link_or_copy(_file(DEBIAN_DIR, name), raw)
        if not has_files(raw):
            raise UserError(f"{raw}: holds files in the place of Fashion-MNIST's that are not its files (they "
                            f"are the user's and stay untouched); move them away or choose another --root")
        return raw
    if download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(target_root), train=True, download=True)
            FashionMNIST(str(target_root), train=False, download=True)
        except Exception as exc:  # network errors come in many types
            raise UserError(f"Fashion-MNIST download into {target_root} failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); install it with "
                            f"`apt-get install dataset-fashion-mnist` instead") from None
        if has_files(raw):
            return raw
    raise UserError(f"Fashion-MNIST not found in {target_root} or {DEBIAN_DIR}; {HOW_TO_GET}")
