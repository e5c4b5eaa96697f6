"""TLlib's list files and class folders: which images a dataset holds, and with which labels.

TLlib's on-disk format: a dataset root holding the images and ``image_list/*.txt`` files, one
sample per line::

    train/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg 0

The label is the last whitespace-separated token, the path is everything before it (so paths
may contain spaces), relative to the root. A path that is absolute, contains ``..`` or resolves
(through symlinks) outside the root is rejected with a :class:`UserError` naming the list file,
the line number and the path: list files from strangers never make us read elsewhere. Class
folders (``<folder>/<class>/<image>``) are scanned with the same rule.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


#: The most classes a list file may define (labels 0 .. MAX_CLASSES - 1); ImageNet-21k has 21,841.
#: A larger label is a typo (a class count is allocated per label), refused with its line.
MAX_CLASSES = 100_000


def text_lines(text_file: str | Path):
    """``(line number, stripped text)`` of every line of a text file (a list file, ``classes.txt``).

    The file is read as bytes and decoded line by line, so a byte that is not UTF-8, or a NUL
    byte, is a :class:`UserError` naming the line.
    """
    with open(text_file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{text_file} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{where}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8; "
                                f"save the file as UTF-8") from None
            if "\x00" in line:
                raise UserError(f"{where}: NUL byte in the line (a binary file?); this file is text, "
                                f"one entry per line")
            yield number, line.strip()


def _sample_lines(list_file: Path):
    """``(line number, text)`` of every sample line (blank lines and ``#`` comments skipped)."""
    for number, text in text_lines(list_file):
        if text and not text.startswith("#"):
            yield number, text


def read_image_list(list_file: str | Path, root: str | Path,
                    num_classes: Optional[int] = None) -> list[tuple[str, int]]:
    """Parse a TLlib list file into ``[(real_path, label), ...]``.

    Blank lines and lines starting with ``#`` are ignored. Errors (text that is not UTF-8, a NUL
    byte, a line without a label, a non-integer label, a label outside ``0 .. num_classes - 1``
    or at least :data:`MAX_CLASSES`, an unsafe path) name the file and the line number.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise UserError(f"list file not found: {list_file}")
    samples: list[tuple[str, int]] = []
    root_real = os.path.realpath(root)
    bound = num_classes if num_classes is not None else MAX_CLASSES
    for number, text in _sample_lines(list_file):
        where = f"{list_file} line {number}"
        tokens = text.split()
        if len(tokens) < 2:
            raise UserError(f"{where}: expected 'relative/path label', got '{text}'")
        rel, label_text = " ".join(tokens[:-1]), tokens[-1]
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(f"{where}: label '{label_text}' is not an integer") from None
        if label < 0 or label >= bound:
            why = (f"0..{num_classes - 1}, the classes of the dataset" if num_classes is not None else
                   f"0..{MAX_CLASSES - 1}: at most {MAX_CLASSES} classes")
            raise UserError(f"{where}: label {label} out of range ({why})")
        samples.append((check_relative_path(rel, root_real, where), label))
    if not samples:
        raise UserError(f"list file {list_file} holds no samples")
    return samples


def list_line(list_file: str | Path, sample_index: int) -> str:
    """``'<list_file> line N'`` of sample ``sample_index`` of a list file read by :func:`read_image_list`."""
    for index, (number, _) in enumerate(_sample_lines(Path(list_file))):
        if index == sample_index:
            return f"{list_file} line {number}"
    return str(list_file)


def check_labels(dataset, num_classes: int, role: str) -> None:
    """Every label of ``dataset`` must be a class of the training set (``0 .. num_classes - 1``).

    ``role`` names the split (``test``) in the message. A label beyond them would be dropped by
    the evaluation without a word; it is a :class:`UserError` naming the list file and line.
    """
    targets = list(getattr(dataset, "targets", []))
    bad = next((i for i, label in enumerate(targets) if not 0 <= int(label) < num_classes), None)
    if bad is None:
        return
    origin = str(getattr(dataset, "origin", "") or "")
    where = list_line(origin, bad) if origin.endswith(".txt") and Path(origin).is_file() else (origin or role)
    raise UserError(f"{where}: {role} label {int(targets[bad])} is not one of the {num_classes} classes of the "
                    f"training list (0..{num_classes - 1}); fix the label or the list")


class UntestedClassWarning(UserWarning):
    """Training classes without test images: their accuracy is not measured."""


def class_folders(folder: str | Path) -> list[str]:
    """The class sub-folder names of ``folder``, sorted (torchvision's rule)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def scan_image_folder(folder: str | Path, classes: Optional[Sequence[str]] = None
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """``folder/<class>/**/<image>`` -> (samples, classes).

    ``classes``: None for a training folder (its class folders, sorted by name, are the classes);
    for a test folder, the training classes: labels are given by class *name* (a test folder
    missing a class shifts nothing), a class folder unknown to training is a :class:`UserError`,
    and training classes without test images are named in an :class:`UntestedClassWarning`.
    Files that are not images by extension are ignored; symlinks leaving ``folder`` are rejected,
    and so is a folder reached twice (a symlink loop, or a second path to a folder): it would
    repeat images, some under the wrong class.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    root_real = os.path.realpath(folder)
    found = class_folders(folder)
    if not found:
        raise UserError(f"image folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    if classes is None:
        classes = found
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise UserError(f"{folder}: class folder '{unknown[0]}' is not one of the {len(classes)} training classes "
                        f"(the training folder's sub-folders); rename or remove it")
    samples: list[tuple[str, int]] = []
    visited: dict[tuple[int, int], str] = {}
    for name in found:
        label = classes.index(name)
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            info = os.stat(dirpath)
            first = visited.setdefault((info.st_dev, info.st_ino), dirpath)
            if first != dirpath:
                raise UserError(f"{dirpath}: the folder {first} reached a second time through a symlink (a loop "
                                f"or a second path to it); remove the link, images are listed once")
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
    if list(classes) != found:
        tested = {label for _, label in samples}
        untested = [name for label, name in enumerate(classes) if label not in tested]
        if untested:
            warnings.warn(f"{folder}: no test images for training classes {', '.join(untested)}; their "
                          f"accuracy is not measured", UntestedClassWarning, stacklevel=2)
    return samples, list(classes)


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
