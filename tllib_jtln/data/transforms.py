"""Image transforms: TLlib's defaults, timm's data config, and a small-image path.

``--transforms``:

- ``tllib``: TLlib's ``get_train_transform``/``get_val_transform``: by default train
  ``RandomResizedCrop(S, scale=(0.2, 1)) + RandomHorizontalFlip + ToTensor + Normalize``; eval
  ``Resize(round(S * 256 / 224)) + CenterCrop(S) + ToTensor + Normalize`` with ImageNet's mean
  and std; ``S = --image-size`` (224 by default, TLlib's 256/224 ratio); ``--train-resizing``,
  ``--val-resizing``, ``--no-hflip``, ``--color-jitter`` as TLlib's (see :func:`tllib_transforms`).
- ``timm``: ``timm.data.create_transform(**data_config, is_training=...)`` with the backbone's
  resolved data config (input size, interpolation, crop_pct, mean, std); ``--image-size``
  overrides the input size.
- ``small``: for small images: ``Resize(S) + RandomCrop(S, padding=S // 14) + flip`` (train),
  ``Resize(S) + CenterCrop(S)`` (eval).
- ``auto``: ``small`` for the embedded Fashion-MNIST task, ``tllib`` otherwise.

The embedded Fashion-MNIST task keeps its images as uint8 tensors and uses the tensor
transforms :class:`GrayTrain` / :class:`GrayEval` below (no PIL round trip): every choice keeps
1 channel, normalised with Fashion-MNIST's mean and std; ``tllib``/``timm`` there only change
the default size (``timm``: the backbone's input size).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = 0.2860  # training-set pixel mean of Fashion-MNIST in [0, 1]
FASHION_MNIST_STD = 0.3530


TRAIN_RESIZING = ("default", "res.", "res.|crop", "res.sma|crop", "inc.crop", "cif.crop")
VAL_RESIZING = ("default", "res.", "res.|crop")


def tllib_transforms(image_size: int = 224, train_resizing: str = "default", val_resizing: str = "default",
                     hflip: bool = True, color_jitter: bool = False) -> tuple[Callable, Callable]:
    """TLlib's fine-tuning transforms (``get_train_transform`` / ``get_val_transform`` of its
    task-adaptation examples) at crop size ``S = image_size`` -> (train, eval).

    With ``L = round(S * 256 / 224)`` (256 at S = 224) and ``P = round(S * 28 / 224)``, train
    resizing: ``default`` RandomResizedCrop(S, scale=(0.2, 1)); ``res.`` Resize((S, S));
    ``res.|crop`` Resize((L, L)) + RandomCrop(S); ``res.sma|crop`` Resize(L) + RandomCrop(S);
    ``inc.crop`` RandomResizedCrop(S); ``cif.crop`` Resize((S, S)) + Pad(P) + RandomCrop(S); then
    RandomHorizontalFlip (``hflip``), ColorJitter(0.5, 0.5, 0.5, 0.5) (``color_jitter``). Eval
    resizing: ``default`` Resize(L) + CenterCrop(S); ``res.`` Resize((S, S)); ``res.|crop``
    Resize((L, L)) + CenterCrop(S). Both end in ToTensor + ImageNet Normalize.
    """
    import torchvision.transforms as T

    s, large, pad = image_size, int(round(image_size * 256 / 224)), max(1, int(round(image_size * 28 / 224)))
    train_steps = {
        "default": [T.RandomResizedCrop(s, scale=(0.2, 1.0))],
        "res.": [T.Resize((s, s))],
        "res.|crop": [T.Resize((large, large)), T.RandomCrop(s)],
        "res.sma|crop": [T.Resize(large), T.RandomCrop(s)],
        "inc.crop": [T.RandomResizedCrop(s)],
        "cif.crop": [T.Resize((s, s)), T.Pad(pad), T.RandomCrop(s)],
    }
    eval_steps = {
        "default": [T.Resize(large), T.CenterCrop(s)],
        "res.": [T.Resize((s, s))],
        "res.|crop": [T.Resize((large, large)), T.CenterCrop(s)],
    }
    if train_resizing not in train_steps:
        raise UserError(f"--train-resizing must be one of {', '.join(TRAIN_RESIZING)}, got {train_resizing!r}")
    if val_resizing not in eval_steps:
        raise UserError(f"--val-resizing must be one of {', '.join(VAL_RESIZING)}, got {val_resizing!r}")
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = list(train_steps[train_resizing])
    if hflip:
        train.append(T.RandomHorizontalFlip())
    if color_jitter:
        train.append(T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5))
    return T.Compose(train + normalize), T.Compose(eval_steps[val_resizing] + normalize)


def tllib_options(cfg) -> dict:
    """The ``tllib_transforms`` keywords of ``cfg`` (``--train-resizing``, ``--val-resizing``,
    ``--hflip``, ``--color-jitter``)."""
    return {"train_resizing": cfg.train_resizing, "val_resizing": cfg.val_resizing, "hflip": cfg.hflip,
            "color_jitter": cfg.color_jitter}


def check_tllib_options(options: dict, kind: str) -> None:
    """TLlib's transform options mean something only under ``--transforms tllib`` (one-line UserError)."""
    changed = [name for name, default in (("train_resizing", "default"), ("val_resizing", "default"),
                                          ("hflip", True), ("color_jitter", False))
               if options.get(name, default) != default]
    if changed and kind != "tllib":
        flags = ", ".join("--no-hflip" if n == "hflip" else "--" + n.replace("_", "-") for n in changed)
        raise UserError(f"{flags}: TLlib's transform options apply to --transforms tllib (RGB datasets given "
                        f"with -d), not to --transforms {kind}; drop them or use --transforms tllib")


def timm_transforms(data_config: Optional[dict], image_size: Optional[int] = None) -> tuple[Callable, Callable]:
    """timm's transforms for a backbone's resolved data config -> (train, eval)."""
    if not data_config:
        raise UserError("--transforms timm needs the backbone's data config (timm backbones provide it); "
                        "use --transforms tllib for this backbone")
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    config = {k: data_config[k] for k in keys if k in data_config}
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    return create_transform(**config, is_training=True), create_transform(**config, is_training=False)


def small_transforms(image_size: int) -> tuple[Callable, Callable]:
    """Pad-and-crop + flip for small RGB images (CIFAR-sized) -> (train, eval)."""
    import torchvision.transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    pad = max(1, image_size // 14)
    train = T.Compose([T.Resize(image_size), T.RandomCrop(image_size, padding=pad), T.RandomHorizontalFlip(),
                       T.ToTensor(), normalize])
    test = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), normalize])
    return train, test


def build_transforms(kind: str, image_size: Optional[int], data_config: Optional[dict] = None,
                     tllib: Optional[dict] = None) -> tuple[Callable, Callable, int]:
    """Resolve ``--transforms`` for an RGB image dataset -> (train, eval, image_size).

    ``tllib``: keywords of :func:`tllib_transforms` (see :func:`tllib_options`)."""
    if kind == "auto":
        kind = "tllib"
    tllib = tllib or {}
    check_tllib_options(tllib, kind)
    if kind == "timm":
        train, test = timm_transforms(data_config, image_size)
        size = image_size or int(data_config["input_size"][-1])
        return train, test, int(size)
    size = int(image_size or 224)
    if kind == "tllib":
        return (*tllib_transforms(size, **tllib), size)
    if kind == "small":
        return (*small_transforms(size), size)
    raise UserError(f"--transforms: unknown choice '{kind}' (auto, tllib, timm, small)")


# --------------------------------------------------------------------- embedded (uint8 tensors)
class GrayEval:
    """uint8 ``(H, W)`` -> normalised float ``(1, S, S)``: ``(resize(x / 255) - mean) / std``.

    ``invert``: ``x -> 1 - x`` first (dark objects on a light ground, as in product photos), with
    the mean mirrored to ``1 - mean`` so that the normalised images keep zero mean.
    """

    def __init__(self, image_size: int = 28, mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD,
                 invert: bool = False):
        self.image_size, self.std, self.invert = int(image_size), std, bool(invert)
        self.mean = 1.0 - mean if invert else mean

    def _grey_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W)`` -> float ``(B, 1, S, S)`` in [0, 1]: ``x / 255``, bilinearly resized when
        the size differs (antialiased when shrinking), then inverted with ``invert``."""
        x = images.to(torch.float32).div_(255.0).unsqueeze(1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=self.image_size < images.shape[-1])
        return 1.0 - x if self.invert else x

    def _grey(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(H, W)`` -> float ``(1, S, S)``: :meth:`_grey_batch` of a batch of one."""
        return self._grey_batch(image.unsqueeze(0))[0]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (self._grey(image) - self.mean) / self.std

    def apply_batch(self, images: torch.Tensor, seeds: Optional[list[int]] = None) -> torch.Tensor:
        """The transform of a whole batch, uint8 ``(B, H, W)`` -> ``(B, 1, S, S)``, equal to stacking
        ``self(image)`` per image (``seeds`` is unused: nothing is random here)."""
        return (self._grey_batch(images) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}{', invert=True' if self.invert else ''})"


class GrayTrain(GrayEval):
    """:class:`GrayEval` + random crop after zero padding by ``S // 14`` (2 px at 28) + horizontal flip.

    Randomness comes from torch's global generator (the joint loader seeds it per sample).
    """

    @property
    def padding(self) -> int:
        """Zero-padding (pixels per side) before the random crop: ``S // 14``, at least 1."""
        return max(1, self.image_size // 14)

    def _draw(self, generator: Optional[torch.Generator] = None) -> tuple[int, int, bool]:
        """(top, left, flip) of one image: two ``randint(0, 2 * pad + 1)`` then one ``rand() < 0.5``."""
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=generator).tolist()
        return top, left, bool(torch.rand((), generator=generator) < 0.5)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.padding
        return F.pad(x, (pad, pad, pad, pad), value=1.0 if self.invert else 0.0)  # the ground's grey level

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        padded = self._pad(self._grey(image))
        top, left, flip = self._draw()
        x = padded[:, top:top + size, left:left + size]
        if flip:
            x = x.flip(-1)
        return (x - self.mean) / self.std

    def apply_batch(self, images: torch.Tensor, seeds: Optional[list[int]] = None) -> torch.Tensor:
        """A whole batch, uint8 ``(B, H, W)`` -> ``(B, 1, S, S)``, equal to stacking ``self(image)``
        per image where image ``i`` draws its crop and flip from a generator seeded with ``seeds[i]``
        (``None``: from torch's global generator, image after image, as calling ``self`` in turn)."""
        size = self.image_size
        padded = self._pad(self._grey_batch(images))
        out = torch.empty(padded.shape[0], 1, size, size, dtype=padded.dtype)
        for i in range(padded.shape[0]):
            generator = torch.Generator().manual_seed(int(seeds[i])) if seeds is not None else None
            top, left, flip = self._draw(generator)
            crop = padded[i, :, top:top + size, left:left + size]
            out[i] = crop.flip(-1) if flip else crop
        return (out - self.mean) / self.std


def embedded_transforms(kind: str, image_size: Optional[int], data_config: Optional[dict] = None,
                        invert: bool = False) -> tuple[Callable, Callable, int]:
    """Transforms for the embedded Fashion-MNIST task -> (train, eval, image_size); 1 channel.

    Default size: 28 (``auto``/``small``/``tllib``), the backbone's input size (``timm``);
    ``invert``: grey levels inverted (``--invert``).
    """
    if kind not in ("auto", "small", "tllib", "timm"):
        raise UserError(f"--transforms: unknown choice '{kind}' (auto, tllib, timm, small)")
    size = image_size
    if size is None and kind == "timm" and data_config and "input_size" in data_config:
        size = int(data_config["input_size"][-1])
    size = int(size or 28)
    if size < 8:
        raise UserError(f"--image-size {size} is too small (at least 8)")
    return GrayTrain(size, invert=invert), GrayEval(size, invert=invert), size
