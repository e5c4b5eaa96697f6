"""The dataset registry: TLlib's task-adaptation datasets, custom data, ImageNet, Fashion-MNIST.

Every entry of :data:`DATASETS` is a builder
``builder(root, split, *, sample_rate=100, download=False, transform=None, skip_bad_images=False)``
returning a map-style dataset with ``classes``, ``targets`` and ``subset(indices, transform)``,
whose items are ``(image_tensor (C, H, W) float, label int)`` once a transform is given.
``split`` is ``train`` or ``test``.

TLlib layout (``CUB200``, ``StanfordCars``, ``Aircraft``, ``StanfordDogs``, ``OxfordIIITPets``,
``OxfordFlowers102``, ``DTD``, ``Caltech101``, ``SUN397``, and ``ImageList`` for custom data)::

    <root>/image_list/train_{100,50,30,15}.txt   # -sr picks one; train.txt is accepted for -sr 100
    <root>/image_list/test.txt
    <root>/<the relative paths listed in them>

``DTD`` and ``SUN397`` are also found one folder down (``<root>/dtd``, ``<root>/SUN397``), as
TLlib's classes place them. ``Food101`` uses ``image_list/`` when present, else TLlib's class
folders ``<root>/{train,test}/<class>/``. ``CIFAR10``/``CIFAR100`` use ``image_list/`` when
present, else torchvision's files in ``<root>`` (downloaded only with ``--download``).
``ImageFolder``: ``<root>/train/<class>/...`` and ``<root>/test/<class>/...`` (or ``val``).
``ImageNet``: torchvision's layout ``<root>/train/<wnid>/``, ``<root>/val/<wnid>/`` (class names
from torchvision's ``meta.bin`` when present, else the wnids), meant as a source set.

Class names: embedded for Aircraft (100 variants), DTD (47), OxfordIIITPets (37),
OxfordFlowers102 (102) and Caltech101 (TLlib's 102-name list); read from the folder part of
the listed paths for CUB200, StanfordCars, StanfordDogs, SUN397, Food101 and ``ImageList``
(``train/001.Black_footed_Albatross/x.jpg`` -> ``001.Black_footed_Albatross``), falling back to
``class_<i>`` when the folders do not name the classes one to one (see
:func:`~tllib_jtln.data.list_files.class_names_from_paths`); ``ImageList`` also reads
``image_list/classes.txt`` (one name per line) when present; CIFAR from torchvision's meta file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from torch.utils.data import Dataset

from ..config import SAMPLE_RATES
from ..errors import UserError
from ..registry import Registry
from . import fashion_mnist as fmnist
from .class_names import AIRCRAFT_CLASSES, CALTECH101_CLASSES, DTD_CLASSES, FLOWERS_CLASSES, PETS_CLASSES
from .memory import ArrayImages
from .imagelist import ImageList
from .list_files import class_folders, class_names_from_paths, read_image_list, scan_image_folder, text_lines

DATASETS: Registry[Callable] = Registry("datasets")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a named dataset (also the README's source table)."""

    name: str
    num_classes: Optional[int]
    homepage: str
    classes: Optional[tuple[str, ...]] = None  # None: read from the list paths (or the source)
    subdir: Optional[str] = None  # TLlib's extra folder level (dtd, SUN397)
    native: Optional[str] = None  # fallback layout without image_list/: "folder" or "cifar10"/"cifar100"


INFO: dict[str, DatasetInfo] = {}


def _info(*args, **kwargs) -> DatasetInfo:
    info = DatasetInfo(*args, **kwargs)
    if info.classes is not None and info.num_classes is not None:
        assert len(info.classes) == info.num_classes, info.name
    INFO[info.name] = info
    return info


_info("CUB200", 200, "https://www.vision.caltech.edu/datasets/cub_200_2011/")
_info("StanfordCars", 196, "https://ai.stanford.edu/~jkrause/cars/car_dataset.html")
_info("Aircraft", 100, "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/", AIRCRAFT_CLASSES)
_info("StanfordDogs", 120, "http://vision.stanford.edu/aditya86/ImageNetDogs/")
_info("OxfordIIITPets", 37, "https://www.robots.ox.ac.uk/~vgg/data/pets/", PETS_CLASSES)
_info("OxfordFlowers102", 102, "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", FLOWERS_CLASSES)
_info("DTD", 47, "https://www.robots.ox.ac.uk/~vgg/data/dtd/", DTD_CLASSES, subdir="dtd")
_info("Caltech101", len(CALTECH101_CLASSES), "https://data.caltech.edu/records/mzrjq-6wc02", CALTECH101_CLASSES)
_info("Food101", 101, "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/", native="folder")
_info("CIFAR10", 10, "https://www.cs.toronto.edu/~kriz/cifar.html", native="cifar10")
_info("CIFAR100", 100, "https://www.cs.toronto.edu/~kriz/cifar.html", native="cifar100")
_info("SUN397", 397, "https://vision.princeton.edu/projects/2010/SUN/", subdir="SUN397")

TLLIB_HINT = ("TLlib's format (images plus image_list/*.txt; TLlib's dataset classes in "
              "tllib.vision.datasets download it with download=True)")


def _how_to_get(name: str) -> str:
    info = INFO.get(name)
    if info is None:
        return "check --root"
    return f"get {name} from {info.homepage} in {TLLIB_HINT}, then pass --root"


def _require_root(name: str, root) -> Path:
    if not root:
        raise UserError(f"dataset {name} needs --root (the folder holding image_list/); {_how_to_get(name)}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"dataset {name}: root folder not found: {path}; {_how_to_get(name)}")
    return path


def _list_root(name: str, root: Path, subdir: Optional[str]) -> Optional[Path]:
    """The folder holding ``image_list/`` (``root`` or ``root/subdir``), or None."""
    for folder in ([root / subdir] if subdir else []) + [root]:
        if (folder / "image_list").is_dir():
            return folder
    return None


def list_file(name: str, list_root: Path, split: str, sample_rate: int) -> Path:
    """``image_list/train_{sr}.txt`` (or ``train.txt`` at -sr 100) / ``test.txt``; UserError if missing."""
    folder = list_root / "image_list"
    if split == "train":
        candidates = [folder / f"train_{sample_rate}.txt"] + ([folder / "train.txt"] if sample_rate == 100 else [])
    elif split == "test":
        candidates = [folder / "test.txt"]
    else:
        raise UserError(f"dataset {name}: unknown split '{split}' (train or test)")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in folder.glob("*.txt"))
    hint = f" (present: {', '.join(present)})" if present else ""
    sr_hint = "; pick another -sr/--sample-rate, or -K to draw K images per class" if split == "train" else ""
    raise UserError(f"dataset {name}: list file not found: {candidates[0]}{hint}{sr_hint}; {_how_to_get(name)}")


def _check_sample_rate(sample_rate: int) -> None:
    if sample_rate not in SAMPLE_RATES:
        raise UserError(f"-sr/--sample-rate {sample_rate} is not one of TLlib's {', '.join(map(str, SAMPLE_RATES))}")


def _from_lists(name: str, list_root: Path, split: str, sample_rate: int, classes, num_classes,
                transform, skip_bad_images) -> ImageList:
    path = list_file(name, list_root, split, sample_rate)
    samples = read_image_list(path, list_root, num_classes)
    if classes is None:
        n = num_classes if num_classes is not None else 1 + max(label for _, label in samples)
        classes = class_names_from_paths(samples, n)
    return ImageList(samples, classes, transform, skip_bad_images, origin=str(path))


class _TLlibDataset:
    """Builder for a named dataset in TLlib's layout (with a native fallback for some)."""

    def __init__(self, info: DatasetInfo):
        self.info = info
        self.__doc__ = f"{info.name} ({info.num_classes} classes, {info.homepage}) in TLlib's layout."

    def __call__(self, root, split: str = "train", *, sample_rate: int = 100, download: bool = False,
                 transform: Optional[Callable] = None, skip_bad_images: bool = False) -> Dataset:
        info = self.info
        _check_sample_rate(sample_rate)
        if info.native in ("cifar10", "cifar100") and root and not _list_root(info.name, Path(root), None):
            if sample_rate != 100 and split == "train":
                raise UserError(f"dataset {info.name}: torchvision's files have no -sr {sample_rate} lists; "
                                f"use -K to draw K images per class")
            return cifar(info.native, root, split, download, transform)
        if download and info.native not in ("cifar10", "cifar100"):
            raise UserError(f"dataset {info.name}: --download is not available for it here; "
                            f"{_how_to_get(info.name)}")
        path = _require_root(info.name, root)
        list_root = _list_root(info.name, path, info.subdir)
        if list_root is None:
            if info.native == "folder":
                if sample_rate != 100 and split == "train":
                    raise UserError(f"dataset {info.name}: no image_list/ in {path}, so no -sr {sample_rate} "
                                    f"lists; use -K to draw K images per class")
                return _folder_dataset(info.name, path / split, transform, skip_bad_images, info.num_classes,
                                       _training_classes(path / "train", split))
            raise UserError(f"dataset {info.name}: no image_list/ folder in {path}"
                            f"{' or ' + str(path / info.subdir) if info.subdir else ''}; {_how_to_get(info.name)}")
        classes = list(info.classes) if info.classes is not None else None
        return _from_lists(info.name, list_root, split, sample_rate, classes, info.num_classes, transform,
                           skip_bad_images)


for _name in INFO:
    DATASETS.register(_name)(_TLlibDataset(INFO[_name]))


def _training_classes(folder: Path, split: str) -> Optional[list[str]]:
    """For a test split, the class folders of the training split ``folder`` (labels map by name); None
    for the training split itself or when it has no folder."""
    return class_folders(folder) if split != "train" and folder.is_dir() else None


def _folder_dataset(name: str, folder: Path, transform, skip_bad_images, num_classes=None,
                    classes: Optional[list[str]] = None) -> ImageList:
    if not folder.is_dir():
        raise UserError(f"dataset {name}: folder not found: {folder}; {_how_to_get(name)}")
    samples, classes = scan_image_folder(folder, classes)
    if num_classes is not None and len(classes) != num_classes:
        raise UserError(f"dataset {name}: {folder} has {len(classes)} class folders, expected {num_classes}")
    return ImageList(samples, classes, transform, skip_bad_images, origin=str(folder))


@DATASETS.register("ImageList")
def image_list_dataset(root, split: str = "train", *, sample_rate: int = 100, download: bool = False,
                       transform: Optional[Callable] = None, skip_bad_images: bool = False) -> ImageList:
    """Custom data in TLlib's layout: ``<root>/image_list/{train_<sr>|train,test}.txt``.

    Class names from ``image_list/classes.txt`` (one per line, line i = label i) when present,
    else from the folder part of the paths, else ``class_<i>``.
    """
    _check_sample_rate(sample_rate)
    path = _require_root("ImageList", root)
    if not (path / "image_list").is_dir():
        raise UserError(f"dataset ImageList: no image_list/ folder in {path} (expected image_list/train.txt and "
                        f"image_list/test.txt with 'relative/path label' lines)")
    names_file = path / "image_list" / "classes.txt"
    classes = None
    if names_file.is_file():
        classes = [text for _, text in text_lines(names_file) if text]
    return _from_lists("ImageList", path, split, sample_rate, classes, len(classes) if classes else None,
                       transform, skip_bad_images)


@DATASETS.register("ImageFolder")
def image_folder_dataset(root, split: str = "train", *, sample_rate: int = 100, download: bool = False,
                         transform: Optional[Callable] = None, skip_bad_images: bool = False) -> ImageList:
    """Custom data as class folders: ``<root>/train/<class>/...``, ``<root>/test/<class>/...`` (or ``val``).

    Test labels follow the class *names* of ``<root>/train`` (see :func:`scan_image_folder`)."""
    path = _require_root("ImageFolder", root)
    if sample_rate != 100 and split == "train":
        raise UserError("dataset ImageFolder has no -sr lists; use -K to draw K images per class")
    folders = [path / "train"] if split == "train" else [path / "test", path / "val"]
    for folder in folders:
        if folder.is_dir():
            return _folder_dataset("ImageFolder", folder, transform, skip_bad_images,
                                   classes=_training_classes(path / "train", split))
    raise UserError(f"dataset ImageFolder: folder not found: {folders[0]} (expected {path}/train/<class>/<image> "
                    f"and {path}/test/<class>/<image>)")


@DATASETS.register("ImageNet")
def imagenet_dataset(root, split: str = "train", *, sample_rate: int = 100, download: bool = False,
                     transform: Optional[Callable] = None, skip_bad_images: bool = False) -> ImageList:
    """ImageNet in torchvision's folder layout (``<root>/train/<wnid>/``, ``<root>/val/<wnid>/``).

    Class names: the first name of each wnid in torchvision's ``<root>/meta.bin`` when present,
    else the wnids. Not downloadable (licence): get it from https://image-net.org/.
    """
    if download:
        raise UserError("dataset ImageNet cannot be downloaded here; get it from https://image-net.org/ and "
                        "lay it out as torchvision does (<root>/train/<wnid>/, <root>/val/<wnid>/)")
    path = _require_root("ImageNet", root)
    folder = path / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise UserError(f"dataset ImageNet: folder not found: {folder} (torchvision's layout: "
                        f"<root>/train/<wnid>/, <root>/val/<wnid>/; https://image-net.org/)")
    samples, wnids = scan_image_folder(folder, _training_classes(path / "train", split))
    names = list(wnids)
    meta = path / "meta.bin"
    if meta.is_file():
        import torch
        try:
            wnid_to_classes = torch.load(meta, weights_only=True)[0]
            names = [wnid_to_classes[w][0] if w in wnid_to_classes else w for w in wnids]
        except Exception:  # an unexpected meta.bin: keep the wnids
            names = list(wnids)
    return ImageList(samples, names, transform, skip_bad_images, origin=str(folder))


@DATASETS.register("FashionMNIST")
def fashion_mnist_dataset(root, split: str = "train", *, sample_rate: int = 100, download: bool = False,
                          transform: Optional[Callable] = None, skip_bad_images: bool = False):
    """All ten Fashion-MNIST classes (``-d FashionMNIST`` or no ``-d`` builds the embedded task instead)."""
    return fmnist.fashion_mnist(root, split, download=download, transform=transform)


def cifar(kind: str, root, split: str, download: bool, transform) -> ArrayImages:
    """CIFAR-10/100 from torchvision's files in ``root`` (downloaded there only with ``download``)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    name = "CIFAR10" if kind == "cifar10" else "CIFAR100"
    if not root:
        raise UserError(f"dataset {name} needs --root (a folder for torchvision's {name} files); "
                        f"add --download to fetch them")
    try:
        dataset = cls(str(Path(root).expanduser()), train=split == "train", download=download)
    except RuntimeError as exc:
        raise UserError(f"dataset {name}: torchvision's files not found or corrupt in {root} ({exc}); "
                        f"add --download, or get them from {INFO[name].homepage}") from None
    except OSError as exc:
        raise UserError(f"dataset {name}: download into {root} failed ({exc}); get the files from "
                        f"{INFO[name].homepage}") from None
    return ArrayImages(dataset.data, dataset.targets, dataset.classes, transform)


def canonical_name(name: str) -> str:
    """A registered dataset name, matched case-insensitively (``fashion-mnist`` -> ``FashionMNIST``)."""
    return DATASETS.canonical(name)


def prepare_dataset(name: str, root: Optional[str | os.PathLike] = None, download: bool = False) -> Path:
    """Put dataset ``name`` in place (or check it is) and return its folder.

    ``fashion-mnist``: see :func:`~tllib_jtln.data.fashion_mnist.prepare_fashion_mnist` (Debian
    package offline, torchvision download with ``download``). ``CIFAR10``/``CIFAR100``:
    torchvision's files in ``root`` (downloaded with ``download``). Others: checks the TLlib
    layout under ``root`` (both list files at -sr 100 readable) and names where to get it if
    not; they are never downloaded here.
    """
    canonical = canonical_name(name)
    if canonical == "FashionMNIST":
        return fmnist.prepare_fashion_mnist(root, download)
    builder = DATASETS.get(canonical)
    for split in ("train", "test"):
        builder(root, split, download=download)
    return Path(root).expanduser()
