"""StochNorm (tllib_jtln.normalization): BatchNorm in eval, the two training branches against
BatchNorm and the moving statistics, the per-channel draw, and the in-place conversion."""
from __future__ import annotations

import copy
import doctest

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import tllib_jtln.normalization
from tllib_jtln.normalization import (StochNorm1d, StochNorm2d, StochNormAct2d, convert_to_stochnorm,
                                      stochnorm_layers)

SHAPES = {nn.BatchNorm1d: (6, 5), nn.BatchNorm2d: (6, 5, 3, 3)}


def _trained_bn(cls, channels=5, seed=0):
    """A BatchNorm layer with non-trivial affine weights and moving statistics."""
    gen = torch.Generator().manual_seed(seed)
    bn = cls(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
    bn.num_batches_tracked.fill_(7)
    return bn


def _input(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _pair(cls, p):
    bn = _trained_bn(cls)
    stoch = convert_to_stochnorm(nn.Sequential(copy.deepcopy(bn)), p=p)[0]
    return bn, stoch


def test_module_doctest_passes():
    assert doctest.testmod(tllib_jtln.normalization, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


@pytest.mark.parametrize("cls", [nn.BatchNorm1d, nn.BatchNorm2d])
def test_eval_is_batchnorm_eval_exactly(cls):
    bn, stoch = _pair(cls, p=0.5)
    x = _input(SHAPES[cls])
    assert torch.equal(stoch.eval()(x), bn.eval()(x))
    assert torch.equal(stoch.running_mean, bn.running_mean)  # eval touches no statistics


@pytest.mark.parametrize("cls", [nn.BatchNorm1d, nn.BatchNorm2d])
def test_p_one_in_training_is_batchnorm_training_exactly(cls):
    """p is the probability of the batch branch (TLlib's meaning): p = 1 is BatchNorm."""
    bn, stoch = _pair(cls, p=1.0)
    x = _input(SHAPES[cls])
    x_bn, x_stoch = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_bn, out_stoch = bn.train()(x_bn), stoch.train()(x_stoch)
    assert torch.equal(out_stoch, out_bn)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(stoch, name), getattr(bn, name)), name
    grad = torch.randn_like(out_bn)
    out_bn.backward(grad)
    out_stoch.backward(grad)
    assert torch.equal(x_stoch.grad, x_bn.grad) and torch.equal(stoch.weight.grad, bn.weight.grad)


@pytest.mark.parametrize("cls", [nn.BatchNorm1d, nn.BatchNorm2d])
def test_p_zero_in_training_normalises_with_the_moving_statistics_and_still_updates_them(cls):
    bn, stoch = _pair(cls, p=0.0)
    x = _input(SHAPES[cls])
    shape = (1, -1) + (1,) * (x.dim() - 2)
    expected = ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
                * bn.weight.view(shape) + bn.bias.view(shape))  # the statistics before this step
    out = stoch.train()(x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    bn.train()(x)  # the moving statistics move as BatchNorm's
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(stoch, name), getattr(bn, name)), name


def test_each_channel_takes_one_branch_with_probability_p_and_a_seed_repeats_the_draw():
    channels = 400
    bn = _trained_bn(nn.BatchNorm2d, channels)
    x = _input((8, channels, 2, 2))
    batch_branch = copy.deepcopy(bn).train()(x)
    moving_branch = copy.deepcopy(bn).eval()(x)
    stoch = convert_to_stochnorm(nn.Sequential(copy.deepcopy(bn)), p=0.3)[0].train()
    torch.manual_seed(5)
    out = stoch(x)
    is_batch = (out == batch_branch).flatten(2).all(2).all(0)
    is_moving = (out == moving_branch).flatten(2).all(2).all(0)
    assert bool((is_batch ^ is_moving).all())  # every channel is exactly one branch, whole
    assert 0.22 < is_batch.float().mean().item() < 0.38  # 400 Bernoulli(0.3) draws
    repeat = convert_to_stochnorm(nn.Sequential(copy.deepcopy(bn)), p=0.3)[0].train()
    torch.manual_seed(5)
    assert torch.equal(repeat(x), out)


def test_conversion_keeps_weights_buffers_and_predictions_and_replaces_every_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _trained_bn(nn.BatchNorm2d, 4), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(4, 5, 1), _trained_bn(nn.BatchNorm2d, 5, seed=2)),
                          nn.Flatten(), nn.LazyLinear(6), _trained_bn(nn.BatchNorm1d, 6, seed=3)).eval()
    x = _input((2, 3, 6, 6))
    before_out, before_state = model(x), copy.deepcopy(model.state_dict())
    assert convert_to_stochnorm(model, p=0.25) is model
    assert [type(m) for _, m in stochnorm_layers(model)] == [StochNorm2d, StochNorm2d, StochNorm1d]
    assert all(m.p == 0.25 for _, m in stochnorm_layers(model))
    state = model.state_dict()
    assert state.keys() == before_state.keys() and all(torch.equal(state[k], before_state[k]) for k in state)
    assert torch.equal(model(x), before_out)
    convert_to_stochnorm(model, p=0.75)  # converting again sets the new p
    assert all(m.p == 0.75 for _, m in stochnorm_layers(model))


def test_timm_batchnorm_act_keeps_its_activation():
    layer = BatchNormAct2d(5, act_layer=nn.ReLU)
    layer.load_state_dict(_trained_bn(nn.BatchNorm2d).state_dict())
    original = copy.deepcopy(layer)
    stoch = convert_to_stochnorm(nn.Sequential(layer), p=1.0)[0]
    assert isinstance(stoch, StochNormAct2d) and isinstance(stoch.act, nn.ReLU)
    x = _input(SHAPES[nn.BatchNorm2d])
    assert torch.equal(stoch.eval()(x), original.eval()(x))
    out = stoch.train()(x)
    assert torch.equal(out, original.train()(x)) and bool((out >= 0).all()) and bool((out == 0).any())


def test_a_model_without_batchnorm_is_refused_by_class_name():
    class NoNormNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU())

    with pytest.raises(ValueError, match=r"^NoNormNet has no BatchNorm layer for StochNorm to replace"):
        convert_to_stochnorm(NoNormNet())


def test_a_batchnorm_kind_without_counterpart_is_refused_by_path_and_nothing_changes():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm3d(3)))
    with pytest.raises(ValueError, match=r"1\.0 \(BatchNorm3d\) of Sequential; it replaces BatchNorm1d"):
        convert_to_stochnorm(model)
    assert type(model[0]) is nn.BatchNorm2d


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p_outside_the_unit_interval_is_refused(p):
    with pytest.raises(ValueError, match=r"^p: the probability of the batch-statistics branch must be in \[0, 1\]"):
        convert_to_stochnorm(nn.Sequential(nn.BatchNorm1d(2)), p=p)
    with pytest.raises(ValueError, match=r"^p: "):
        StochNorm2d(3, p=p)


def test_layers_built_directly_take_batchnorm_arguments_and_a_keyword_p():
    layer = StochNorm1d(4, 1e-3, 0.2, p=0.1)
    assert (layer.eps, layer.momentum, layer.p) == (1e-3, 0.2, 0.1) and "p=0.1" in repr(layer)
