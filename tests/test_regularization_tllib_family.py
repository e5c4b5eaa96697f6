"""Oracles for TLlib's fine-tuning regularisers: BSS against numpy's SVD, L2-SP against a hand-written
sum over parameters, DELTA's filter importance, attention and distance against direct computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tllib_jtln.regularization import (AttentionFeatureMapDistance, BatchSpectralShrinkage, L2Regularization,
                                       SPRegularization, channel_attention, filter_importance)


# ----------------------------------------------------------------------------- BSS
@pytest.mark.parametrize("shape,k", [((8, 5), 1), ((8, 5), 3), ((4, 10), 2)])
def test_bss_is_the_sum_of_the_k_smallest_squared_singular_values(shape, k):
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    singular = np.linalg.svd(features.numpy(), compute_uv=False)  # descending, min(b, d) values
    expected = float(np.sum(np.sort(singular)[:k] ** 2))
    assert BatchSpectralShrinkage(k)(features).item() == pytest.approx(expected, rel=1e-5)


def test_bss_gradient_shrinks_the_smallest_direction():
    features = torch.diag(torch.tensor([3.0, 2.0, 0.5])).requires_grad_()
    BatchSpectralShrinkage(1)(features).backward()
    torch.testing.assert_close(features.grad, torch.diag(torch.tensor([0.0, 0.0, 1.0])))  # d(s^2)/dF = 2 s u v^T


def test_bss_refuses_more_singular_values_than_the_matrix_has():
    with pytest.raises(ValueError, match="k: 4 singular values"):
        BatchSpectralShrinkage(4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="k: "):
        BatchSpectralShrinkage(0)


# ----------------------------------------------------------------------------- L2-SP
def _tiny_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


def test_l2sp_is_half_the_squared_distance_to_the_starting_point_summed_by_hand():
    net = _tiny_net()
    start = {name: p.detach().clone() for name, p in net.named_parameters()}
    sp = SPRegularization(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    expected = sum(0.5 * float(((p.detach() - start[name]) ** 2).sum()) for name, p in net.named_parameters())
    assert sp(net).item() == pytest.approx(expected, rel=1e-6)
    # the running statistics are buffers, not parameters: they are not pulled back
    assert len(sp.names) == len(list(net.parameters()))


def test_l2_of_the_head_is_half_the_squared_norm_summed_by_hand():
    head, bottleneck = nn.Linear(4, 3), nn.Linear(5, 4)
    expected = sum(0.5 * float((p.detach() ** 2).sum()) for m in (bottleneck, head) for p in m.parameters())
    assert L2Regularization()([bottleneck, head]).item() == pytest.approx(expected, rel=1e-6)


def test_l2sp_is_zero_at_the_start_and_its_gradient_points_back():
    net = _tiny_net()
    sp = SPRegularization(net)
    assert sp(net).item() == 0.0
    with torch.no_grad():
        net[0].weight.add_(1.0)
    sp(net).backward()
    torch.testing.assert_close(net[0].weight.grad, torch.ones_like(net[0].weight))


# ----------------------------------------------------------------------------- DELTA
class TinyNet(nn.Module):
    """conv (no bias) -> ReLU -> conv (no bias) -> ReLU -> mean pool -> linear: two hooked layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, bias=False), nn.Conv2d(4, 3, 3, bias=False)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


def _importance_by_zeroing_filters(net: TinyNet, batches) -> list[np.ndarray]:
    """TLlib's recipe, literally: zero each filter's weights, measure the loss rise, restore."""
    out = []
    for conv in (net.conv1, net.conv2):
        rises = np.zeros(conv.out_channels)
        for x, y in batches:
            base = F.cross_entropy(net(x), y).item()
            for c in range(conv.out_channels):
                saved = conv.weight.data[c].clone()
                conv.weight.data[c] = 0
                rises[c] += F.cross_entropy(net(x), y).item() - base
                conv.weight.data[c] = saved
        out.append(rises / len(batches))
    return out


@pytest.mark.parametrize("per_pass", [1, 8, 256])  # one channel per pass, a few, all at once
def test_delta_filter_importance_equals_zeroing_each_filter(per_pass):
    net = TinyNet()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 2, (4,), generator=gen)) for _ in range(2)]
    with torch.no_grad():
        expected = _importance_by_zeroing_filters(net, batches)
    got = filter_importance(net, [net.conv1, net.conv2], batches, max_images_per_pass=per_pass)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-6)


def test_delta_channel_attention_is_the_softmax_of_the_standardised_importance():
    importance = torch.tensor([0.3, -0.1, 0.05, 0.6])
    w = importance.numpy().astype(np.float64)
    z = (w - w.mean()) / w.std()
    expected = np.exp(z / 5) / np.exp(z / 5).sum()
    np.testing.assert_allclose(channel_attention(importance).numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(channel_attention(torch.full((3,), 0.2)), torch.full((3,), 1 / 3))


def test_delta_distance_equals_a_direct_sum_over_layers_batch_and_channels():
    gen = torch.Generator().manual_seed(2)
    shapes = [(2, 3, 4, 5), (2, 2, 3, 3)]
    maps = [torch.randn(*s, generator=gen) for s in shapes]
    refs = [torch.randn(*s, generator=gen) for s in shapes]
    attention = [torch.rand(s[1], generator=gen) for s in shapes]
    expected = 0.0
    for fm, ref, a in zip(maps, refs, attention):
        b, c, h, w = fm.shape
        for i in range(b):
            for ch in range(c):
                expected += 0.5 * c * float(a[ch]) * float(((fm[i, ch] - ref[i, ch]) ** 2).sum()) / (h * w)
    assert AttentionFeatureMapDistance(attention)(maps, refs).item() == pytest.approx(expected, rel=1e-5)


def test_delta_distance_pulls_the_fine_tuned_maps_only():
    fm, ref = torch.randn(1, 2, 2, 2, requires_grad=True), torch.randn(1, 2, 2, 2, requires_grad=True)
    AttentionFeatureMapDistance([torch.tensor([0.5, 0.5])])([fm], [ref]).backward()
    assert fm.grad is not None and ref.grad is None
    with pytest.raises(ValueError, match="attention over 3 channels"):
        AttentionFeatureMapDistance([torch.ones(3)])([fm], [ref])
