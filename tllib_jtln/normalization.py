r"""Stochastic Normalization (Kou, You, Long and Wang, NeurIPS 2020), as TLlib's
``tllib.normalization.stochnorm``: a drop-in for the BatchNorm layers of a pretrained network.

In training, every channel ``c`` of a StochNorm layer draws :math:`s_c \sim \mathrm{Bernoulli}(p)`
and is normalised either with the statistics of the mini-batch or with the moving statistics:

.. math::
    \hat{x}_{c,1} = \frac{x_c - \mu_c}{\sqrt{\sigma^2_c + \epsilon}}, \qquad
    \hat{x}_{c,0} = \frac{x_c - \tilde{\mu}_c}{\sqrt{\tilde{\sigma}^2_c + \epsilon}}, \qquad
    y_c = \gamma_c \, \big(s_c \, \hat{x}_{c,1} + (1 - s_c) \, \hat{x}_{c,0}\big) + \beta_c,

with :math:`\mu, \sigma^2` the batch mean and (biased) variance, :math:`\tilde{\mu}, \tilde{\sigma}^2`
the moving statistics *before* this step's update. ``p`` is the probability of the batch branch
(TLlib's meaning and default, ``p = 0.5``): ``p = 1`` is BatchNorm in training, ``p = 0``
normalises with the moving statistics only. The moving statistics are updated exactly as
BatchNorm updates them, whichever branch a channel took. In evaluation a StochNorm layer *is*
BatchNorm (moving statistics), so a converted model predicts as the original until it trains.
The draw uses torch's generator on the input's device (seeded runs repeat); TLlib draws with
NumPy's. A layer without moving statistics (``track_running_stats=False``) has only the batch
branch and behaves as BatchNorm.

:func:`convert_to_stochnorm` turns every ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` and timm's
``BatchNormAct2d`` (EfficientNet's BatchNorm + activation) of a model into its StochNorm
counterpart in place, keeping weights, buffers, hooks and the activation.

Example:
    >>> bn = nn.BatchNorm2d(3).eval()
    >>> bn.running_mean.fill_(1.0)
    tensor([1., 1., 1.])
    >>> x = torch.randn(4, 3, 5, 5)
    >>> stoch = convert_to_stochnorm(nn.Sequential(bn), p=0.5)[0]
    >>> type(stoch).__name__, stoch.p, torch.equal(stoch(x), nn.functional.batch_norm(x, bn.running_mean,
    ...     bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
    ('StochNorm2d', 0.5, True)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import BatchNormAct2d
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["StochNorm1d", "StochNorm2d", "StochNormAct2d", "convert_to_stochnorm", "stochnorm_layers"]


def _check_p(p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: the probability of the batch-statistics branch must be in [0, 1], got {p}")
    return float(p)


class _StochNorm:
    """StochNorm's training step, mixed in before a BatchNorm class (whose arguments ``__init__``
    passes on; ``p`` is keyword-only)."""

    def __init__(self, *args, p: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.p = _check_p(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.running_mean is not None:
            return self._after_norm(self._stochastic_normalize(x))
        return super().forward(x)

    def _stochastic_normalize(self, x: Tensor) -> Tensor:
        """``s * BN_batch(x) + (1 - s) * BN_moving(x)``, ``s`` (C,) Bernoulli(p); BN's running update."""
        self._check_input_dim(x)
        moving = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        batch = _BatchNorm.forward(self, x)  # BatchNorm's own training step: batch statistics and the update
        take_batch = torch.rand(self.num_features, device=x.device) < self.p
        return torch.where(take_batch.view(1, -1, *([1] * (x.dim() - 2))), batch, moving)

    def _after_norm(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class StochNorm1d(_StochNorm, nn.BatchNorm1d):
    """StochNorm over ``(B, C)`` or ``(B, C, L)`` inputs (module docstring for the math).

    Args:
        num_features: ``C``.
        eps, momentum, affine, track_running_stats, device, dtype: as ``nn.BatchNorm1d``.
        p: (keyword) probability that a channel uses the batch statistics in training. Default: 0.5.

    Shape:
        - Input: ``(B, C)`` or ``(B, C, L)``
        - Output: same shape as the input
    """


class StochNorm2d(_StochNorm, nn.BatchNorm2d):
    """StochNorm over ``(B, C, H, W)`` inputs (module docstring for the math).

    Args:
        num_features: ``C``.
        eps, momentum, affine, track_running_stats, device, dtype: as ``nn.BatchNorm2d``.
        p: (keyword) probability that a channel uses the batch statistics in training. Default: 0.5.

    Shape:
        - Input: ``(B, C, H, W)``
        - Output: ``(B, C, H, W)``
    """


class StochNormAct2d(_StochNorm, BatchNormAct2d):
    """timm's ``BatchNormAct2d`` (BatchNorm, then its ``drop`` and ``act``: EfficientNet's layers)
    with StochNorm's normalisation in training; arguments as ``BatchNormAct2d`` plus ``p``.

    Shape:
        - Input: ``(B, C, H, W)``
        - Output: ``(B, C, H, W)``
    """

    def _after_norm(self, x: Tensor) -> Tensor:
        return self.act(self.drop(x))


#: exact BatchNorm class -> its StochNorm class (subclasses are refused: their forward may differ)
STOCHNORM_OF: dict[type, type] = {nn.BatchNorm1d: StochNorm1d, nn.BatchNorm2d: StochNorm2d,
                                  BatchNormAct2d: StochNormAct2d}


def stochnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every StochNorm layer of ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _StochNorm)]


def convert_to_stochnorm(model: nn.Module, p: float = 0.5) -> nn.Module:
    """Turn every BatchNorm layer of ``model`` into StochNorm with probability ``p``, in place.

    Each layer keeps its parameters, buffers (moving statistics, ``num_batches_tracked``), hooks
    and, for timm's ``BatchNormAct2d``, its activation: only its class changes (to
    :class:`StochNorm1d`, :class:`StochNorm2d` or :class:`StochNormAct2d`), so the state dict's keys
    and values are the same and the model predicts as before in eval mode. Layers already
    converted get the new ``p``.

    Args:
        model: any module, e.g. a timm backbone.
        p: probability that a channel uses the batch statistics in training (TLlib's default 0.5).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``; ``model`` has no BatchNorm layer (the message names
            its class); or it has a BatchNorm kind without a StochNorm counterpart (BatchNorm3d,
            SyncBatchNorm, other subclasses), named with its path. Nothing is changed then.
    """
    p = _check_p(p)
    found, unknown = [], []
    for name, module in model.named_modules():
        if isinstance(module, _StochNorm) or type(module) in STOCHNORM_OF:
            found.append(module)
        elif isinstance(module, _BatchNorm):
            unknown.append(f"{name or '(the model)'} ({type(module).__name__})")
    if unknown:
        known = ", ".join(cls.__name__ for cls in STOCHNORM_OF)
        raise ValueError(f"StochNorm cannot replace the normalisation layer(s) {', '.join(unknown[:3])}"
                         f"{' ...' if len(unknown) > 3 else ''} of {type(model).__name__}; it replaces {known}")
    if not found:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer for StochNorm to replace; "
                         f"StochNorm needs a backbone with BatchNorm (e.g. a ResNet or an EfficientNet)")
    for module in found:
        if not isinstance(module, _StochNorm):
            module.__class__ = STOCHNORM_OF[type(module)]
        module.p = p
    return model
