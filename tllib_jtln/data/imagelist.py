"""Image datasets read from TLlib list files or from class folders: :class:`ImageList`.

Which images and labels a dataset holds comes from :mod:`tllib_jtln.data.list_files` (TLlib's
``image_list/*.txt`` files, class folders, paths kept inside the dataset root).

Items are ``(image, label)``: the image is decoded with PIL, converted to RGB and passed through
the dataset's ``transform`` (a float tensor ``(3, H, W)`` with the package's transforms).

Bad images are found when they are loaded (no pre-scan: a pre-scan of ImageNet costs minutes):
a file that is missing, not a regular file (a FIFO or device would hang the run), not decodable,
or larger than :data:`MAX_IMAGE_PIXELS` (a decompression bomb).
Without ``skip_bad_images`` an unreadable or corrupt file is a :class:`UserError` naming it. With
it, the file is marked in a mask shared between the data-loader workers (shared memory), a
:class:`BadImageWarning` names it once, the next good sample (index + 1, wrapping) is
returned in its place, and :attr:`ImageList.bad_images` lists every file skipped so far.
"""
from __future__ import annotations

import os
import stat
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import UserError


class BadImageWarning(UserWarning):
    """An unreadable or corrupt image was skipped (``--skip-bad-images``)."""


#: The largest image decoded, in pixels (16384 x 16384, 268 megapixels; PIL's own default warns
#: above 89 MP and refuses above 179 MP). A larger image counts as a bad image (a decompression
#: bomb: a small file that would take gigabytes of memory); below it PIL never warns.
MAX_IMAGE_PIXELS = 16384 * 16384


class ImageTooLarge(ValueError):
    """An image over :data:`MAX_IMAGE_PIXELS`."""


class NotRegularFile(OSError):
    """A listed image that is a folder, FIFO, socket or device."""


def load_rgb(path: str):
    """Decode an image file with PIL and convert it to RGB.

    Raises OSError/ValueError if the file is bad: :class:`NotRegularFile` (a FIFO or a device
    would block or never end), a PIL decoding error, or :class:`ImageTooLarge` (over
    :data:`MAX_IMAGE_PIXELS`, checked from the header before any pixel is decoded).
    """
    from PIL import Image

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFile(f"not a regular file: {path}")
    # PIL warns above its limit and refuses above twice it: the warning is replaced by our check
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # set here, so every worker process has it too
    with open(path, "rb") as handle:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(handle)
            except Image.DecompressionBombError:
                raise ImageTooLarge(f"over {2 * MAX_IMAGE_PIXELS // 10**6} megapixels") from None
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageTooLarge(f"{image.width} x {image.height} pixels")
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
        except NotRegularFile:
            reason = "not a regular file (a folder, FIFO or device)"
        except ImageTooLarge as exc:
            reason = (f"image too large ({exc}; the limit is {MAX_IMAGE_PIXELS // 10**6} megapixels, "
                      f"a decompression bomb?)")
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for corrupt data
            reason = f"unreadable or corrupt image ({type(exc).__name__})"
        else:
            return image, label
        if not self.skip_bad_images:
            origin = f" (listed in {self.origin})" if self.origin else ""
            raise UserError(f"{path}: {reason}{origin}; fix or remove it, or pass --skip-bad-images")
        self._bad[index] = 1  # shared: no worker, now or in a later epoch, loads (or names) it again
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
