"""The two-head joint classifier: shared trunk, optional bottleneck, source head, target head.

.. math::
    f = g(x) \\in R^D, \\quad b = \\mathrm{bottleneck}(f), \\quad
    h_s = W_s f + c_s \\text{ (pretrained head) or } W_s b + c_s \\text{ (new head)}, \\quad
    h_t = W_t b + c_t

The bottleneck (TLlib's ``Linear -> BatchNorm1d -> ReLU``) is the identity when
``bottleneck_dim`` is None. A pretrained source head (the backbone's ImageNet classifier, deep-copied
before the reset) reads the trunk features it was trained on; a new source head shares the bottleneck.

Shape:
    - input: ``(B, C, H, W)``
    - ``forward`` output: ``(source_logits (B, Ks), target_logits (B, Kt))``, in one call so that
      DistributedDataParallel sees every parameter use; ``Ks = 0`` gives ``(B, 0)`` logits.
      ``forward(x, with_features=True)``: a :class:`ForwardOutput` ``(source_logits, target_logits,
      features (B, head_dim))``, the features being what the target head reads (TLlib's ``f``).
    - ``forward_features`` output: ``(B, D)`` pooled trunk features (pre-bottleneck).
    - ``forward_head(features)`` output: ``(source_logits (B, Ks), target_logits (B, Kt))``;
      ``forward_head(features, pre_logits=True)``: ``(B, head_dim)``, what the target head reads.

The head vocabulary is timm's: ``forward(x) = forward_head(forward_features(x))``,
``get_classifier()`` is the target head (the new task's classifier; ``source_head`` beside it).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .backbones import create_backbone
from .base import Backbone
from .input_size import check_input_size
from .memory_format import apply_memory_format


class ForwardOutput(NamedTuple):
    """What one forward pass of :class:`JointClassifier` gives a method that asks for the features.

    Shape:
        - source_logits: ``(B, Ks)``
        - target_logits: ``(B, Kt)``
        - features: ``(B, head_dim)``, the bottleneck output the target head reads (the pooled
          trunk features without a bottleneck), TLlib's ``f`` in ``y, f = classifier(x)``
        - projection: ``(B, P)``, the projector head's output on ``features`` when a method gave the
          model one (:attr:`JointClassifier.projector`, Bi-Tuning's), else None
    """

    source_logits: torch.Tensor
    target_logits: torch.Tensor
    features: torch.Tensor
    projection: Optional[torch.Tensor] = None

    def rows(self, index: slice) -> "ForwardOutput":
        """The same output for the rows ``index`` of the batch."""
        return ForwardOutput(*(None if t is None else t[index] for t in self))


class JointClassifier(nn.Module):
    """Trunk + optional bottleneck + source head + target head.

    Args:
        backbone: a :class:`Backbone` (``out_features`` = D).
        num_source_classes: ``Ks`` (0: no source head).
        num_target_classes: ``Kt``.
        bottleneck_dim: width of the optional ``Linear -> BatchNorm1d -> ReLU`` bottleneck.
        source_head: an existing head (e.g. ``backbone.pretrained_head``), ``nn.Linear(D, Ks)``;
            None: a new ``nn.Linear`` over the bottleneck output.
        finetune: backbone (and a given source head) at 0.1x the base learning rate.
        source_head_lr: learning-rate multiplier of the source head in :meth:`get_parameters`;
            0 freezes it (``requires_grad=False``; gradients still flow through it to the trunk).
        source_classes: names of the ``Ks`` source classes, if known.

    Attributes:
        projector: None, or a head over the features the target head reads that a method adds in
            ``prepare_model`` (Bi-Tuning's ``Linear(head_dim, P)``); ``forward(x, with_features=True)``
            then runs it in the same call (so DistributedDataParallel sees its parameters used) and
            returns its output as ``ForwardOutput.projection``. Its parameters are not in
            :meth:`get_parameters`: the method that adds it gives their group.
    """

    def __init__(self, backbone: Backbone, num_source_classes: int, num_target_classes: int,
                 bottleneck_dim: Optional[int] = None, source_head: Optional[nn.Module] = None,
                 finetune: bool = True, source_head_lr: float = 1.0,
                 source_classes: Optional[list[str]] = None):
        super().__init__()
        if num_target_classes < 1:
            raise ValueError(f"num_target_classes must be >= 1, got {num_target_classes}")
        self.backbone = backbone
        self.features_dim = backbone.out_features
        if bottleneck_dim:
            self.bottleneck: nn.Module = nn.Sequential(nn.Linear(self.features_dim, bottleneck_dim),
                                                       nn.BatchNorm1d(bottleneck_dim), nn.ReLU())
            head_dim = int(bottleneck_dim)
        else:
            self.bottleneck = nn.Identity()
            head_dim = self.features_dim
        self.head_dim = head_dim
        self.source_head_pretrained = source_head is not None
        if source_head is not None:
            out = getattr(source_head, "out_features", None)
            if out is not None and out != num_source_classes:
                raise ValueError(f"source_head has {out} outputs but num_source_classes is {num_source_classes}")
            self.source_head: Optional[nn.Module] = source_head
        elif num_source_classes > 0:
            self.source_head = nn.Linear(head_dim, num_source_classes)
        else:
            self.source_head = None
        self.target_head = nn.Linear(head_dim, num_target_classes)
        self.projector: Optional[nn.Module] = None
        self.num_source_classes = int(num_source_classes)
        self.num_target_classes = int(num_target_classes)
        self.source_classes = source_classes
        self.finetune = finetune
        self._freeze_bn = False
        self.source_head_lr = 1.0
        self.set_source_head_lr(source_head_lr)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, D)`` (what cost matrices are built from)."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False):
        """Both heads on trunk features ``(B, D)`` -> ``((B, Ks), (B, Kt))``; ``pre_logits``: the
        bottleneck output ``(B, head_dim)`` the target head reads, as timm's ``forward_head``."""
        b = self.bottleneck(features)
        if pre_logits:
            return b
        return self._heads(features, b)

    def _heads(self, features: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on trunk features ``(B, D)`` and their bottleneck output ``b`` ``(B, head_dim)``."""
        target_logits = self.target_head(b)
        if self.source_head is None:
            source_logits = features.new_zeros(features.shape[0], 0)
        else:
            source_logits = self.source_head(features if self.source_head_pretrained else b)
        return source_logits, target_logits

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """``(source_logits, target_logits)``; ``with_features``: a :class:`ForwardOutput` with the
        features the target head reads as well (still one call, for DistributedDataParallel)."""
        features = self.forward_features(x)
        if not with_features:
            return self.forward_head(features)
        b = self.bottleneck(features)
        return ForwardOutput(*self._heads(features, b), b, None if self.projector is None else self.projector(b))

    def get_classifier(self) -> nn.Module:
        """The target head ``nn.Linear(head_dim, Kt)`` (timm's name for a model's classifier)."""
        return self.target_head

    # ------------------------------------------------------------------ optimisation
    def set_source_head_lr(self, multiplier: float) -> None:
        """Set the source head's learning-rate multiplier; 0 freezes its parameters."""
        if multiplier < 0:
            raise ValueError(f"multiplier: the source head's learning-rate multiplier must be >= 0, got {multiplier}")
        self.source_head_lr = float(multiplier)
        if self.source_head is not None:
            self.source_head.requires_grad_(multiplier > 0)

    def get_parameters(self, base_lr: float = 1.0, source_head_lr: Optional[float] = None) -> list[dict[str, Any]]:
        """Parameter groups, TLlib style.

        backbone: ``0.1 * base_lr`` under ``finetune`` else ``base_lr``; bottleneck and target
        head: ``base_lr``; source head: ``(0.1 if finetune and pretrained else 1) * base_lr *
        source_head_lr`` (default: the multiplier set on the model), left out when 0. Each group
        has a ``name`` key.
        """
        mult = self.source_head_lr if source_head_lr is None else float(source_head_lr)
        trunk = 0.1 if self.finetune else 1.0
        groups = [("backbone", self.backbone, trunk), ("bottleneck", self.bottleneck, 1.0),
                  ("target_head", self.target_head, 1.0)]
        if self.source_head is not None and mult > 0:
            groups.append(("source_head", self.source_head, (trunk if self.source_head_pretrained else 1.0) * mult))
        out = []
        for name, module, factor in groups:
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                out.append({"params": params, "lr": factor * base_lr, "name": name})
        return out

    # ------------------------------------------------------------------ BatchNorm
    def freeze_bn(self, enable: bool = True) -> "JointClassifier":
        """Keep the trunk's BatchNorm layers in eval mode (pretrained statistics), even under ``train()``."""
        self._freeze_bn = enable
        return self.train(self.training)

    def train(self, mode: bool = True) -> "JointClassifier":
        super().train(mode)
        if self._freeze_bn and mode:
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


# ---------------------------------------------------------------------------------------------
def _same_classes(names: list[str], pretrained: Optional[list[str]]) -> bool:
    """Whether the source classes are the pretraining classes: 90% of the names agree. Unknown
    pretraining names are not a match (a head of the same size may score unrelated classes)."""
    if pretrained is None:
        return False
    norm = lambda s: str(s).strip().lower().replace("_", " ")  # noqa: E731
    agree = sum(norm(a) == norm(b) or norm(a).split(" (")[0] == norm(b).split(" (")[0]
                for a, b in zip(names, pretrained))
    return agree >= 0.9 * len(names)


def build_model(cfg: Any, task: Any) -> JointClassifier:
    """The :class:`JointClassifier` for a run.

    Source head: with source data whose classes are the pretraining classes (same count, names
    known and agreeing), or with no source data at all (source-free), the backbone's pretrained classifier;
    otherwise a new ``Linear`` over ``len(task.source_classes)`` classes (or none).
    Source-free, the pretrained source head starts frozen (learning-rate multiplier 0; a method
    may change it in ``prepare_model``). ``cfg.freeze_bn`` keeps the trunk's BatchNorm statistics; ``cfg.channels_last``
    puts the weights in ``channels_last`` layout (:func:`apply_memory_format`).
    """
    image_size = getattr(task, "image_size", None) or cfg.image_size
    backbone = create_backbone(cfg.arch, pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file,
                               in_chans=getattr(task, "in_chans", 3), image_size=image_size)
    if image_size:
        check_input_size(backbone, getattr(task, "in_chans", 3), image_size, cfg.arch)
    source_classes = getattr(task, "source_classes", None)
    source_free = getattr(task, "source_train", None) is None
    pretrained_head = backbone.pretrained_head
    head: Optional[nn.Module] = None
    if source_classes:
        num_source = len(source_classes)
        if pretrained_head is not None and pretrained_head.out_features == num_source \
                and _same_classes(list(source_classes), backbone.pretrained_classes):
            head = pretrained_head
        names: Optional[list[str]] = list(source_classes)
    elif pretrained_head is not None:
        head, num_source = pretrained_head, pretrained_head.out_features
        names = backbone.pretrained_classes or [f"class_{i}" for i in range(num_source)]
    else:
        num_source, names = 0, None
    model = JointClassifier(backbone, num_source, len(task.target_classes), bottleneck_dim=cfg.bottleneck_dim,
                            source_head=head, finetune=cfg.finetune,
                            source_head_lr=0.0 if source_free else 1.0, source_classes=names)
    if cfg.freeze_bn:
        model.freeze_bn()
    return apply_memory_format(model, cfg)
