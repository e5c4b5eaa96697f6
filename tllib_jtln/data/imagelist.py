"""Image datasets read from TLlib list files or from class folders.

TLlib's on-disk format: a dataset root holding the images and ``image_list/*.txt`` files, one
sample per line::

    train/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg 0

The label is the last whitespace-separated token, the path is everything before it (so paths
may contain spaces), relative to the root. A path that is absolute, contains ``..`` or resolves
(through symlinks) outside the root is rejected with a :class:`UserError` naming the list file,
the line number and the path: list files from strangers never make us read elsewhere.

Items are ``(image, label)``: the image is decoded with PIL, converted to RGB and passed through
the dataset's ``transform`` (a float tensor ``(3, H, W)`` with the package's transforms).

Bad images are found when they are loaded (no pre-scan: a pre-scan of ImageNet costs minutes).
Without ``skip_bad_images`` an unreadable or corrupt file is a :class:`UserError` naming it. With
it, the file is marked in a mask shared between the data-loader workers (shared memory), a
:class:`BadImageWarning` names it once per process, the next good sample (index + 1, wrapping) is
returned in its place, and :attr:`ImageList.bad_images` lists every file skipped so far.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageWarning(UserWarning):
    """An unreadable or corrupt image was skipped (``--skip-bad-images``)."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_relative_path(rel: str, root: str | Path, where: str) -> str:
    """The real path of ``root / rel``; a UserError if ``rel`` is absolute or leaves the root.

    ``where`` names the origin (``list.txt line 12``) for the message.
    """
    root_real = os.path.realpath(root)
    if os.path.isabs(rel) or rel.startswith("~") or (len(rel) > 1 and rel[1] == ":"):
        raise UserError(f"{where}: absolute path '{rel}' is not allowed; paths must be relative to the "
                        f"dataset root {root}")
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        raise UserError(f"{where}: path '{rel}' climbs out of the dataset root with '..'; "
                        f"paths must stay inside {root}")
    real = os.path.realpath(os.path.join(root_real, rel))
    if not _inside(real, root_real):
        raise UserError(f"{where}: path '{rel}' resolves to {real}, outside the dataset root {root} "
                        f"(a symlink leaves the root); copy or bind-mount the files under the root")
    return real


def read_image_list(list_file: str | Path, root: str | Path,
                    num_classes: Optional[int] = None) -> list[tuple[str, int]]:
    """Parse a TLlib list file into ``[(real_path, label), ...]``.

    Blank lines and lines starting with ``#`` are ignored. Errors (a line without a label, a
    non-integer or out-of-range label, an unsafe path) name the file and the line number.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise UserError(f"list file not found: {list_file}")
    samples: list[tuple[str, int]] = []
    root_real = os.path.realpath(root)
    with open(list_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{list_file} line {number}"
            tokens = text.split()
            if len(tokens) < 2:
                raise UserError(f"{where}: expected 'relative/path label', got '{text}'")
            rel, label_text = " ".join(tokens[:-1]), tokens[-1]
            try:
                label = int(label_text)
            except ValueError:
                raise UserError(f"{where}: label '{label_text}' is not an integer") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
                raise UserError(f"{where}: label {label} out of range ({bound})")
            samples.append((check_relative_path(rel, root_real, where), label))
    if not samples:
        raise UserError(f"list file {list_file} holds no samples")
    return samples


def scan_image_folder(folder: str | Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``folder/<class>/**/<image>`` -> (samples, classes); classes sorted by name (torchvision's rule).

    Files that are not images by extension are ignored; symlinks leaving ``folder`` are rejected.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    root_real = os.path.realpath(folder)
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise UserError(f"image folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMG_EXTENSIONS):
                    real = os.path.realpath(os.path.join(dirpath, filename))
                    if not _inside(real, root_real):
                        raise UserError(f"{os.path.join(dirpath, filename)} resolves to {real}, outside "
                                        f"the dataset folder {folder}; copy the file under the folder")
                    samples.append((real, label))
    if not samples:
        raise UserError(f"image folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return samples, classes


def class_names_from_paths(samples: Sequence[tuple[str, int]], num_classes: int) -> list[str]:
    """Class names read from the folder part of the sample paths.

    Each label's name is its images' parent folder, relative to the longest folder prefix that
    the labels' folders share (``train/001.Black_footed_Albatross/x.jpg`` ->
    ``001.Black_footed_Albatross``); a label with no image in ``samples`` is ``class_<i>``.
    Every class is ``class_<i>`` when the folders do not name the labels one to one (a label's
    images in several folders, or two labels in one folder).
    """
    fallback = [f"class_{i}" for i in range(num_classes)]
    parents: dict[int, set[str]] = {}
    for path, label in samples:
        parents.setdefault(label, set()).add(os.path.dirname(path))
    if not parents or any(len(v) != 1 for v in parents.values()):
        return fallback
    folders = {label: next(iter(v)) for label, v in parents.items()}
    if len(set(folders.values())) != len(folders):
        return fallback
    values = list(folders.values())
    common = os.path.commonpath(values) if len(values) > 1 else os.path.dirname(values[0])
    if common in values:  # one label's folder holds the others': names would be ambiguous
        return fallback
    names = list(fallback)
    for label, folder in folders.items():
        if 0 <= label < num_classes:
            names[label] = os.path.relpath(folder, common).replace(os.sep, "/")
    return names


def load_rgb(path: str):
    """Decode an image file with PIL and convert it to RGB (raises OSError/ValueError if bad)."""
    from PIL import Image

    with open(path, "rb") as handle:
        image = Image.open(handle)
        image.load()
    return image.convert("RGB")


class ImageList(Dataset):
    """Images listed as ``(path, label)`` pairs, with class names.

    Args:
        samples: ``[(path, label), ...]`` (paths already checked, e.g. by :func:`read_image_list`).
        classes: class names, ``classes[label]``.
        transform: PIL image -> tensor ``(C, H, W)``; None returns the PIL image.
        skip_bad_images: skip unreadable files (see the module docstring) instead of raising.
        origin: where the samples came from, for messages (a list file or folder).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Optional[Callable] = None, skip_bad_images: bool = False, origin: str = ""):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.origin = origin
        self._bad = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()
        self._warned: set[int] = set()

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int], transform: Optional[Callable] = None) -> "ImageList":
        """A new ImageList of ``samples[indices]`` with its own transform (same classes)."""
        return ImageList([self.samples[int(i)] for i in indices], self.classes, transform,
                         self.skip_bad_images, self.origin)

    @property
    def bad_images(self) -> list[str]:
        """Files found unreadable so far (in any worker)."""
        return [self.samples[i][0] for i in torch.nonzero(self._bad).flatten().tolist()]

    def _load(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except FileNotFoundError:
            reason = "file not found"
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for corrupt data
            reason = f"unreadable or corrupt image ({type(exc).__name__})"
        else:
            return image, label
        if not self.skip_bad_images:
            origin = f" (listed in {self.origin})" if self.origin else ""
            raise UserError(f"{path}: {reason}{origin}; fix or remove it, or pass --skip-bad-images")
        self._bad[index] = 1
        if index not in self._warned:
            self._warned.add(index)
            warnings.warn(f"skipping bad image {path}: {reason}", BadImageWarning, stacklevel=3)
        return None

    def __getitem__(self, index: int):
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            if self._bad[i]:
                continue
            loaded = self._load(i)
            if loaded is not None:
                image, label = loaded
                if self.transform is not None:
                    image = self.transform(image)
                return image, label
        raise UserError(f"every image in {self.origin or 'the dataset'} is unreadable "
                        f"({n} files); check the dataset root")
