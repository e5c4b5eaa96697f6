r"""``bi_tuning``: Bi-Tuning of pre-trained representations (Zhong et al., arXiv 2011.06182, 2020),
TLlib's ``bi_tuning.py``: the target head's cross-entropy plus two contrastive terms over per-class
queues of keys from a momentum encoder,

.. math::
    L = \mathrm{CE}(h_t(b_q), y_t) + \lambda \big(L^z(z_q, z_k, y_t; Q^z) + L^y(b_q, b_k, y_t, W_t; Q^h)\big),

with, for the target images :math:`x_t` (B_t, C, H, W): :math:`b_q = \mathrm{bottleneck}(g(x_t))`
(B_t, F) the features the target head :math:`h_t = (W_t, c_t)` (Kt, F) reads,
:math:`z_q = \phi(b_q)` (B_t, D) the projector head's output (``model.projector``, a new
``Linear(F, D)``, run in the model's one forward call), and :math:`b_k, z_k` the same from the key
encoder (a momentum copy of trunk, bottleneck and projector, :class:`~tllib_jtln.regularization.MomentumEncoder`,
moved once per step before it encodes, as TLlib's) on a second view of each image. :math:`Q^h`
(Kt, K, F+1) and :math:`Q^z` (Kt, K, D) hold the last ``K`` keys of each class; :math:`L^z`,
:math:`L^y` are :class:`~tllib_jtln.regularization.BiTuningLoss`'s (its docstring has the math).
Knobs (TLlib's defaults): ``bi_tuning_k`` (K, 40), ``bi_tuning_momentum`` (m, 0.999),
``bi_tuning_temperature`` (T, 0.07), ``bi_tuning_projection_dim`` (D, 128), ``bi_tuning_trade_off``
(:math:`\lambda`, 1; ``--method bi_tuning --trade-off`` sets it). TLlib's script trains without
``--finetune`` (the trunk at the full rate): give ``--no-finetune`` for its recipe. The projector
trains at the trunk's rate (0.1x under ``--finetune``), and the target head starts from
:math:`W_t \sim N(0, 0.01^2)`, :math:`c_t = 0`, as TLlib's.

The second view: the loader gives one augmented view per image, so the key view is drawn from it
on the device (:func:`key_view`: a random resized crop, area 20-100%, aspect 3/4-4/3, and a
horizontal flip with probability 1/2, per image, TLlib's training augmentation) where TLlib's
loader draws two views of the original image.

Target images only (the source head is frozen and source data is not drawn, as ``erm``). The
projector and the key encoder are kept on the model (``model.projector``, ``model.key_encoder``),
so they are checkpointed with it; the queues are the method's state (checkpointed, per process
under DDP as TLlib's).

Terms: ``ce_target``, ``bi_tuning_z``, ``bi_tuning_y`` (scalars, the latter two already weighted).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..regularization import BiTuningLoss, MomentumEncoder
from .base import cross_entropy, register_method
from .erm import ERM

#: the key view's random resized crop: area fraction and aspect ratio ranges (TLlib's training crop)
KEY_VIEW_SCALE = (0.2, 1.0)
KEY_VIEW_RATIO = (3 / 4, 4 / 3)


def key_view(x: Tensor, scale: tuple[float, float] = KEY_VIEW_SCALE,
             ratio: tuple[float, float] = KEY_VIEW_RATIO) -> Tensor:
    r"""A second random view of each image of ``x`` (B, C, H, W): a crop of area fraction
    :math:`s \sim U(\text{scale})` and aspect ratio :math:`r`, :math:`\log r \sim U(\log \text{ratio})`
    (sides :math:`\sqrt{s r}` and :math:`\sqrt{s / r}` of the image's, at most 1), at a uniform position
    inside the image, resized back to (H, W) bilinearly, flipped horizontally with probability 1/2.
    Draws from torch's generator on ``x``'s device. Returns (B, C, H, W)."""
    n = x.shape[0]
    rand = torch.rand(n, 5, device=x.device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand[:, 1]
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)   # fractions of the image's sides
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (1 - width) * (2 * rand[:, 2] - 1)              # in [-1, 1]: the crop stays inside
    centre_y = (1 - height) * (2 * rand[:, 3] - 1)
    flip = torch.where(rand[:, 4] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(width)
    theta = torch.stack([torch.stack([width * flip, zero, centre_x], 1),
                         torch.stack([zero, height, centre_y], 1)], 1)  # (B, 2, 3): output -> input coordinates
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FeatureProjector(nn.Module):
    """The query encoder: ``x`` (B, C, H, W) -> ``(b (B, F), z (B, D))``, the features the target head
    reads and the projector's output (the model's own modules, shared, not copied)."""

    def __init__(self, backbone: nn.Module, bottleneck: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.bottleneck, self.projector = backbone, bottleneck, projector

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.bottleneck(self.backbone(x))
        return features, self.projector(features)


def mirror_modes(replica: nn.Module, original: nn.Module) -> None:
    """Put every submodule of ``replica`` in the train/eval mode of its counterpart in ``original``
    (``--freeze-bn`` keeps the trunk's BatchNorm in eval mode: the key encoder's too)."""
    for mine, theirs in zip(replica.modules(), original.modules()):
        mine.training = theirs.training


@register_method("bi_tuning")
class BiTuning(ERM):
    takes_regularizers = False
    trade_off_field = "bi_tuning_trade_off"
    knobs = ("bi_tuning_k", "bi_tuning_momentum", "bi_tuning_temperature", "bi_tuning_projection_dim",
             "bi_tuning_trade_off")

    def prepare_model(self, model) -> None:
        super().prepare_model(model)  # the source head is frozen, as erm's
        cfg = self.cfg
        nn.init.normal_(model.target_head.weight, 0.0, 0.01)  # TLlib's Bi-Tuning head: N(0, 0.01), no bias
        nn.init.zeros_(model.target_head.bias)
        device = model.target_head.weight.device
        model.projector = nn.Linear(model.head_dim, cfg.bi_tuning_projection_dim).to(device)
        self.query = FeatureProjector(model.backbone, model.bottleneck, model.projector)
        model.key_encoder = MomentumEncoder(self.query, m=cfg.bi_tuning_momentum)
        self.key_encoder, self.target_head = model.key_encoder, model.target_head
        self.loss = BiTuningLoss(model.num_target_classes, model.head_dim, cfg.bi_tuning_projection_dim,
                                 K=cfg.bi_tuning_k, T=cfg.bi_tuning_temperature).to(device)

    def param_groups(self, model, base_lr):
        """TLlib's groups plus the projector's, at the trunk's rate (0.1x under ``--finetune``)."""
        trunk = 0.1 if model.finetune else 1.0
        return [*super().param_groups(model, base_lr),
                {"params": list(model.projector.parameters()), "lr": trunk * base_lr, "name": "projector"}]

    def losses(self, model, batch, progress):
        out = model(batch.x_t, with_features=True)
        self.key_encoder.update(self.query)
        mirror_modes(self.key_encoder.encoder, self.query)
        features_k, projection_k = self.key_encoder(key_view(batch.x_t))
        term_z, term_y = self.loss(out.features, out.projection, features_k, projection_k, batch.y_t,
                                   self.target_head.weight, self.target_head.bias)
        weight = self.cfg.bi_tuning_trade_off
        return {"ce_target": cross_entropy(out.target_logits, batch.y_t),
                "bi_tuning_z": weight * term_z, "bi_tuning_y": weight * term_y}

    def state_keys(self) -> tuple[str, ...]:
        return ("loss.queue_h.keys", "loss.queue_h.ptr", "loss.queue_z.keys", "loss.queue_z.ptr")
