r"""DELTA: DEep Learning Transfer using feature map with Attention (Li, Xiong, Wang, Huan, Chen, Liu
and Dou, ICLR 2019), as TLlib's ``AttentionBehavioralRegularization``.

DELTA keeps the *behaviour* of the pretrained backbone rather than its weights: the feature maps
:math:`FM_j(w, x)` of selected layers ``j`` of the network being fine-tuned stay close to those of
the frozen pretrained network :math:`w^0`, channel by channel, weighted by how much each channel
(filter) matters for the target task:

.. math::
    \Omega(w) = \frac{1}{2} \sum_j \sum_{b} \sum_{c=1}^{C_j} C_j\, a_{j,c}\,
        \frac{\lVert FM_j(w, x_b)_c - FM_j(w^0, x_b)_c \rVert_2^2}{H_j W_j}

(summed over the batch, as TLlib). The channel attention :math:`a_{j} = \mathrm{softmax}(z_j / T)`
(``T = 5``) comes from the filter importance :math:`z_j` (standardised over the channels of layer
``j``): the rise of the target loss when channel ``c`` of layer ``j`` of the pretrained network
(with a linear head trained on the target data) is set to zero, averaged over a few batches
(:func:`filter_importance`, :func:`channel_attention`). The new head gets the L2 penalty of
:class:`~tllib_jtln.regularization.L2Regularization`.

Example:
    >>> attention = [torch.tensor([0.75, 0.25])]               # one layer, C = 2 channels
    >>> maps, reference = [torch.ones(1, 2, 1, 2)], [torch.zeros(1, 2, 1, 2)]
    >>> AttentionFeatureMapDistance(attention)(maps, reference)  # 0.5 * 2 * (0.75 + 0.25) * 2 / 2
    tensor(1.)
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionFeatureMapDistance", "channel_attention", "filter_importance"]

#: the softmax temperature of DELTA's (and TLlib's) channel attention
ATTENTION_TEMPERATURE = 5.0


class AttentionFeatureMapDistance(nn.Module):
    r"""The attention-weighted feature-map distance :math:`\Omega(w)` of the module docstring.

    Args:
        attention: one ``(C_j,)`` tensor per layer, the channel attention (rows of :func:`channel_attention`).

    Shape:
        - maps: a sequence of ``(B, C_j, H_j, W_j)`` feature maps of the network being fine-tuned
          (any ``(B, C_j, *)`` layout; the spatial size is the product of the trailing dims)
        - reference_maps: the same shapes, from the frozen pretrained network (detached here)
        - output: scalar (float32)
    """

    def __init__(self, attention: Sequence[Tensor]):
        super().__init__()
        self.num_layers = len(attention)
        for j, a in enumerate(attention):
            if a.ndim != 1:
                raise ValueError(f"attention[{j}]: expected a (channels,) vector, got shape {tuple(a.shape)}")
            self.register_buffer(f"attention_{j}", a.detach().float().clone())

    @property
    def attention(self) -> list[Tensor]:
        return [getattr(self, f"attention_{j}") for j in range(self.num_layers)]

    def forward(self, maps: Sequence[Tensor], reference_maps: Sequence[Tensor]) -> Tensor:
        if len(maps) != self.num_layers or len(reference_maps) != self.num_layers:
            raise ValueError(f"maps: expected {self.num_layers} layers, got {len(maps)} and {len(reference_maps)}")
        total = maps[0].new_zeros((), dtype=torch.float32)
        for j, (fm, ref, a) in enumerate(zip(maps, reference_maps, self.attention)):
            if fm.shape != ref.shape or fm.ndim < 3 or fm.shape[1] != a.shape[0]:
                raise ValueError(f"maps[{j}]: shapes {tuple(fm.shape)} and {tuple(ref.shape)} do not fit an "
                                 f"attention over {a.shape[0]} channels")
            b, c = fm.shape[:2]
            sq = (fm.float() - ref.detach().float()).reshape(b, c, -1).pow(2)  # (B, C, HW)
            total = total + 0.5 * c * (sq.mean(2) * a).sum()
        return total


def channel_attention(importance: Tensor, temperature: float = ATTENTION_TEMPERATURE) -> Tensor:
    r""":math:`\mathrm{softmax}(z / T)` with :math:`z` the importance standardised over the channels
    (population standard deviation; equal importances give the uniform attention).

    Shape:
        - importance: ``(C,)``
        - output: ``(C,)``, summing to 1
    """
    z = importance.double()
    std = z.std(unbiased=False)
    z = (z - z.mean()) / std if std > 0 else torch.zeros_like(z)
    return torch.softmax(z / temperature, dim=0).float()


def _knock_out(channels: Sequence[int], batch: int) -> Callable:
    """A forward hook zeroing channel ``channels[g]`` in the ``g``-th block of ``batch`` rows of the output."""

    def hook(module, inputs, output: Tensor) -> Tensor:
        mask = output.new_ones(len(channels), output.shape[1])
        mask[torch.arange(len(channels)), torch.as_tensor(channels)] = 0
        mask = mask.repeat_interleave(batch, dim=0).reshape(-1, output.shape[1], *([1] * (output.ndim - 2)))
        return output * mask

    return hook


def _output_channels(network: nn.Module, layers: Sequence[nn.Module], x: Tensor) -> list[int]:
    seen: dict[int, int] = {}

    def record(j: int) -> Callable:
        def hook(module, inputs, output: Tensor) -> None:
            seen[j] = output.shape[1]
        return hook

    handles = [layer.register_forward_hook(record(j)) for j, layer in enumerate(layers)]
    try:
        network(x)
    finally:
        for h in handles:
            h.remove()
    missing = [j for j in range(len(layers)) if j not in seen]
    if missing:
        raise ValueError(f"layers: layer(s) {missing} did not run in the network's forward")
    return [seen[j] for j in range(len(layers))]


@torch.no_grad()
def filter_importance(network: nn.Module, layers: Sequence[nn.Module], batches: Iterable[tuple[Tensor, Tensor]],
                      max_images_per_pass: int = 256) -> list[Tensor]:
    r"""DELTA's filter importance: for each layer ``j`` and output channel ``c``, the mean over
    ``batches`` of :math:`\mathrm{CE}(f_{-(j,c)}(x), y) - \mathrm{CE}(f(x), y)`, where
    :math:`f_{-(j,c)}` is ``network`` with channel ``c`` of layer ``j``'s output set to zero
    (what zeroing the filter's weights does to a convolution without bias).

    Several channels are knocked out in one pass (the batch repeated, one channel per copy, up to
    ``max_images_per_pass`` images). ``network`` runs in eval mode (its mode is restored).

    Args:
        network: images ``(B, ...)`` -> logits ``(B, K)``.
        layers: submodules of ``network`` whose outputs ``(B, C_j, ...)`` are knocked out.
        batches: ``(images, labels)`` pairs.

    Returns:
        one ``(C_j,)`` float32 tensor per layer.
    """
    was_training = network.training
    network.eval()
    try:
        sums: list[Tensor] = []
        count = 0
        for x, y in batches:
            if count == 0:
                sums = [torch.zeros(c, dtype=torch.float64) for c in _output_channels(network, layers, x)]
            b = x.shape[0]
            base = F.cross_entropy(network(x).float(), y)
            group = max(1, max_images_per_pass // b)
            for j, layer in enumerate(layers):
                for start in range(0, sums[j].shape[0], group):
                    channels = list(range(start, min(start + group, sums[j].shape[0])))
                    handle = layer.register_forward_hook(_knock_out(channels, b))
                    try:
                        logits = network(x.repeat(len(channels), *([1] * (x.ndim - 1)))).float()
                    finally:
                        handle.remove()
                    loss = F.cross_entropy(logits, y.repeat(len(channels)), reduction="none")
                    sums[j][start:start + len(channels)] += (loss.reshape(len(channels), b).mean(1) - base).double().cpu()
            count += 1
        if count == 0:
            raise ValueError("batches: no batch to measure the filter importance on")
        return [(s / count).float() for s in sums]
    finally:
        network.train(was_training)
