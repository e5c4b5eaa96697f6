r"""``delta``: DELTA (Li et al., ICLR 2019), TLlib's ``delta.py`` (``attention_feature_map``): ``erm`` plus

.. math::
    L = \mathrm{CE}(h_t(g(x_t)), y_t)
        + \alpha\, \Omega_{\mathrm{att}}\big(FM(w, x_t), FM(w^0, x_t)\big)
        + \frac{\beta}{2} \lVert w_{\mathrm{head}} \rVert_2^2

where :math:`FM(w, x)` are the backbone's intermediate feature maps
(``model.backbone.feature_layers()``: a timm ResNet's ``layer1``-``layer4``, an EfficientNet's block
groups, ``smallcnn``'s four blocks), :math:`w^0` a frozen copy of the backbone at its starting
weights, and :math:`\Omega_{\mathrm{att}}` the channel-attention-weighted distance of
:class:`~tllib_jtln.regularization.AttentionFeatureMapDistance`.

The channel attention is computed once in ``setup`` (and checkpointed), as the paper describes:
a linear head is fitted on the frozen starting backbone's features of the target training images
(``delta_attention_epochs`` epochs of SGD at ``--lr``, decaying 10x over 6 epochs, batches of
``delta_attention_batch_size``), then each channel of each feature layer is set to zero in turn
and the rise of the target loss, averaged over ``delta_attention_iters`` batches, is the
filter's importance (:func:`~tllib_jtln.regularization.filter_importance`), turned into attention
by :func:`~tllib_jtln.regularization.channel_attention`. (TLlib's script also trains the backbone
there, as its ``backbone.requires_grad = False`` freezes nothing; here the backbone stays at
:math:`w^0`.) Knobs: ``trade_off_backbone`` (:math:`\alpha`, 0.01), ``trade_off_head``
(:math:`\beta`, 0.01), as TLlib; the penalised groups get no weight decay (TLlib's ``--wd 0``).
``--with delta`` adds it to ``erm``, ``joint`` or ``jtln``.

Terms: ``delta_backbone``, ``delta_head`` (scalars, already weighted).
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import UserError
from ..models.feature_maps import FeatureMapRecorder
from ..regularization import AttentionFeatureMapDistance, L2Regularization, channel_attention, filter_importance
from .base import register_method
from .erm import ERM
from .l2sp import new_head, without_weight_decay
from .regularizer import Regularizer, TargetView, frozen_copy, register_regularizer

#: the attention head's learning rate decays 10x over this many epochs (TLlib's --attention-lr-decay-epochs)
ATTENTION_LR_DECAY_EPOCHS = 6


def fit_linear_head(features: Tensor, labels: Tensor, num_classes: int, epochs: int, batch_size: int, lr: float,
                    momentum: float, seed: int) -> nn.Linear:
    """A linear classifier ``(D -> num_classes)`` fitted by SGD on fixed ``features`` (N, D) and ``labels`` (N,),
    seeded (initialisation and batch order), the rate decaying 10x every :data:`ATTENTION_LR_DECAY_EPOCHS`."""
    gen = torch.Generator().manual_seed(seed)
    features, labels = features.detach().float().cpu(), labels.long().cpu()
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        bound = 1 / features.shape[1] ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1 ** (1 / ATTENTION_LR_DECAY_EPOCHS))
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=gen)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            loss = F.cross_entropy(head(features[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        decay.step()
    return head.requires_grad_(False)


@register_regularizer("delta")
class DELTARegularizer(Regularizer):
    knobs = ("trade_off_backbone", "trade_off_head", "delta_attention_epochs", "delta_attention_iters",
             "delta_attention_batch_size")
    excludes = ("l2sp",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.attention: Optional[Tensor] = None        # (sum_j C_j,): the layers' attentions, concatenated
        self.attention_sizes: Optional[Tensor] = None  # (L,): C_j
        self._distance: Optional[tuple[Tensor, AttentionFeatureMapDistance]] = None

    def prepare_model(self, model) -> None:
        names = model.backbone.feature_layers()
        if not names:
            raise UserError(f"-a {self.cfg.arch}: DELTA compares intermediate feature maps and this backbone names "
                            "no feature layers; use a timm CNN, smallcnn or alexnet, or --method l2sp")
        self.reference = frozen_copy(model.backbone)  # before the hooks go on: a copy would carry them
        self.maps = FeatureMapRecorder(model.backbone, names, grad_only=True)
        self.reference_maps = FeatureMapRecorder(self.reference, names)
        self.head, self.l2 = new_head(model), L2Regularization()

    def param_groups(self, groups):
        return without_weight_decay(groups)

    # ------------------------------------------------------------------ channel attention
    def setup(self, ctx) -> None:
        per_layer = self.channel_attention(ctx)
        self.attention = torch.cat(per_layer)
        self.attention_sizes = torch.tensor([a.shape[0] for a in per_layer])

    def attention_batches(self, ctx) -> list[tuple[Tensor, Tensor]]:
        """The first ``delta_attention_iters`` shuffled (seeded) batches of the target training images."""
        cfg = self.cfg
        loader = DataLoader(ctx.dataset("target"), batch_size=cfg.delta_attention_batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed))
        return [(x.to(ctx.device), y.to(ctx.device)) for x, y in itertools.islice(loader, cfg.delta_attention_iters)]

    def channel_attention(self, ctx) -> list[Tensor]:
        """One ``(C_j,)`` attention per feature layer, from the filter importance of the starting backbone."""
        cfg = self.cfg
        features, labels = ctx.features("target")
        head = fit_linear_head(features, labels, ctx.model.num_target_classes, cfg.delta_attention_epochs,
                               cfg.delta_attention_batch_size, cfg.lr, cfg.momentum, cfg.seed)
        batches = self.attention_batches(ctx)
        self.check_maps(batches[0][0])
        layers = [self.reference.get_submodule(name) for name in self.reference_maps.names]
        network = nn.Sequential(self.reference, head.to(ctx.device)).eval()  # the reference stays in eval mode
        importance = filter_importance(network, layers, batches)
        self.reference_maps.clear()
        return [channel_attention(i) for i in importance]

    @torch.no_grad()
    def check_maps(self, images: Tensor) -> None:
        """Refuse layers whose outputs are not ``(B, C, H, W)`` maps (a ViT's tokens) in one line."""
        self.reference(images[:1])
        for name, fm in zip(self.reference_maps.names, self.reference_maps.pop()):
            if fm.ndim != 4:
                raise UserError(f"-a {self.cfg.arch}: DELTA compares convolutional feature maps (B, C, H, W); layer "
                                f"'{name}' gives {tuple(fm.shape)}; use a CNN backbone or --method l2sp")

    # ------------------------------------------------------------------ the terms
    def distance(self, device: torch.device) -> AttentionFeatureMapDistance:
        if self.attention is None:
            raise RuntimeError("delta: setup(ctx) (or load_state_dict) must run before the terms")
        if self._distance is None or self._distance[0] is not self.attention:
            per_layer = torch.split(self.attention, self.attention_sizes.tolist())
            self._distance = (self.attention, AttentionFeatureMapDistance(per_layer).to(device))
        return self._distance[1]

    def terms(self, view: TargetView):
        maps = [fm[view.rows] for fm in self.maps.pop()]
        with torch.no_grad():
            self.reference(view.images)
        reference = self.reference_maps.pop()
        return {"delta_backbone": self.cfg.trade_off_backbone * self.distance(maps[0].device)(maps, reference),
                "delta_head": self.cfg.trade_off_head * self.l2(self.head)}

    def state_keys(self) -> tuple[str, ...]:
        return ("attention", "attention_sizes")


@register_method("delta")
class DELTA(ERM):
    built_in = ("delta",)
