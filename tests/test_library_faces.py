"""The faces a TLlib or timm user expects: the regularisers as loss modules, sinkhorn(method=...),
the architecture table, timm's head vocabulary on JointClassifier, and the doctests of the library."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch
import torch.nn as nn

import tllib_jtln.ot
import tllib_jtln.regularization
from tllib_jtln.config import Config
from tllib_jtln.models import ARCHS, JointClassifier, create_backbone, list_archs
from tllib_jtln.ot import WassersteinLoss, sinkhorn
from tllib_jtln.regularization import CoTuningLoss, JTLNLoss, Relationship, category_relation


def _modules(package):
    yield package
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"{package.__name__}.{info.name}")


@pytest.mark.parametrize("package", [tllib_jtln.ot, tllib_jtln.regularization], ids=["ot", "regularization"])
def test_doctests_of_the_library_pass(package):
    attempted = 0
    for module in _modules(package):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted > 0


# ----------------------------------------------------------------------------- sinkhorn(method=...)
def _problem(b=3, ks=6, kt=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(b, ks, generator=gen, dtype=torch.float64).softmax(1)
    q = torch.rand(b, kt, generator=gen, dtype=torch.float64).softmax(1)
    return p, q, torch.rand(ks, kt, generator=gen, dtype=torch.float64)


def test_sinkhorn_method_is_explicit_and_the_regimes_agree():
    p, q, cost = _problem()
    results = {m: sinkhorn(p, q, cost, 0.1, max_iter=5000, tol=1e-12, method=m) for m in ("auto", "scaling", "log")}
    assert results["auto"].method == "scaling" and results["scaling"].method == "scaling"
    assert results["log"].method == "log"
    for m in ("scaling", "log"):
        torch.testing.assert_close(results[m].transport_cost, results["auto"].transport_cost, rtol=1e-9, atol=0)
        torch.testing.assert_close(results[m].value, results["auto"].value, rtol=1e-9, atol=0)


def test_sinkhorn_auto_is_the_default_and_bad_methods_are_named():
    p, q, cost = _problem()
    default, auto = sinkhorn(p, q, cost, 0.1), sinkhorn(p, q, cost, 0.1, method="auto")
    assert torch.equal(default.value, auto.value) and default.method == auto.method
    with pytest.raises(ValueError, match="method: must be one of auto, scaling, log"):
        sinkhorn(p, q, cost, 0.1, method="sinkhorn_log")
    with pytest.raises(ValueError, match="eps: .*method='log'"):  # the scaling iterations underflow
        sinkhorn(p.float(), q.float(), cost.float() * 1000, 1e-3, method="scaling")
    assert sinkhorn(p.float(), q.float(), cost.float() * 1000, 1e-3, method="auto").method == "log"


# ----------------------------------------------------------------------------- regularisers
def test_jtln_loss_shapes_and_gradients():
    torch.manual_seed(0)
    cost = torch.rand(5, 3)
    z_s = torch.randn(4, 5, requires_grad=True)
    z_t = torch.randn(4, 3, requires_grad=True)
    loss_fn = JTLNLoss(weight=0.5, eps=0.3)
    loss = loss_fn(cost, (z_s, z_t, torch.tensor([0, 1, 2, 0])))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert z_s.grad.abs().sum() > 0 and z_t.grad is None  # the target prediction is detached
    assert len(loss_fn.last_results) == 1 and loss_fn.last_results[0].plan().shape == (4, 5, 3)
    # the term is weight x the Wasserstein loss on target images
    ref = 0.5 * WassersteinLoss(eps=0.3)(z_s.detach(), torch.softmax(z_t.detach(), 1), cost)
    torch.testing.assert_close(loss_fn(cost, (z_s.detach(), z_t.detach(), torch.zeros(4, dtype=torch.long))), ref)
    assert loss_fn.mean_plan(cost, z_s.detach(), z_t.detach(), torch.zeros(4, dtype=torch.long)).shape == (5, 3)


def test_jtln_loss_on_source_images_is_the_transposed_problem_against_the_source_label():
    torch.manual_seed(1)
    cost = torch.rand(5, 3)
    target = (torch.randn(4, 5), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    source = (torch.randn(2, 5), torch.randn(2, 3, requires_grad=True), torch.tensor([4, 1]))
    on_source = JTLNLoss(on="source", eps=0.3)(cost, target, source)
    torch.testing.assert_close(on_source, WassersteinLoss(eps=0.3)(source[1], source[2], cost.t()))
    on_source.backward()
    assert source[1].grad.abs().sum() > 0  # the target head learns on source images
    # source side asked for, none given (a source-free batch): a zero tensor, not a Python number
    empty = JTLNLoss(on="source")(cost, target)
    assert isinstance(empty, torch.Tensor) and empty.shape == () and empty.item() == 0.0
    bad = (target[0] * float("inf"), target[1], target[2])
    assert torch.isnan(JTLNLoss()(cost, bad))
    with pytest.raises(ValueError, match="on: must be one of target, source"):
        JTLNLoss(on="both")


def test_jtln_loss_target_dist_label_solves_against_the_label_not_the_target_head():
    torch.manual_seed(3)
    cost, labels = torch.rand(5, 3), torch.tensor([0, 1, 2, 0])
    z_s, z_t = torch.randn(4, 5), torch.randn(4, 3)
    on_label = JTLNLoss(target_dist="label", eps=0.3)(cost, (z_s, z_t, labels))
    torch.testing.assert_close(on_label, WassersteinLoss(eps=0.3)(z_s, labels, cost))
    assert JTLNLoss(target_dist="label", eps=0.3)(cost, (z_s, z_t * 5, labels)) == on_label  # z_t is not read
    assert not torch.allclose(JTLNLoss(eps=0.3)(cost, (z_s, z_t, labels)), on_label)


def test_jtln_loss_defaults_are_the_command_lines():
    """One default, one place: JTLNLoss() is the term `tllib-jtln train --method jtln` optimises."""
    cfg, loss_fn = Config(), JTLNLoss()
    assert (loss_fn.weight, loss_fn.on, loss_fn.target_dist) == (cfg.ot_weight, cfg.ot_on, cfg.ot_target)
    ot = loss_fn.ot
    assert (ot.eps, ot.max_iter, ot.tol, ot.smooth, ot.reg) == (cfg.ot_eps, cfg.ot_iters, cfg.ot_tol, cfg.ot_smooth,
                                                               cfg.ot_reg)


def test_column_normalisation_changes_the_gradient_only_where_q_learns():
    """``--cost-normalize column`` removes each target column's floor ``c_j``; since
    ``W(p, q; M + 1 c^T) = W(p, q; M) + <c, q>``, a floor is a constant of the default term (q
    detached: the source head's gradient is unchanged) and a prior against target class j where q
    learns (``--ot-on source``: the target head's gradient changes)."""
    from tllib_jtln.cost import normalize_cost

    torch.manual_seed(2)
    floorless = normalize_cost(torch.rand(5, 3), "column")  # every column on [0, 1], minimum 0
    floors = torch.tensor([0.1, 0.6, 0.3])
    floored = floorless + floors  # the same spreads: column normalisation gives floorless back
    torch.testing.assert_close(normalize_cost(floored, "column"), floorless)
    target = (torch.randn(4, 5, requires_grad=True), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    source = (torch.randn(6, 5), torch.randn(6, 3, requires_grad=True), torch.tensor([4, 1, 0, 2, 3, 1]))

    def grad(on, cost):
        loss = JTLNLoss(on=on, eps=0.3, tol=1e-9, max_iter=1000)(cost, target, source)
        leaf = target[0] if on == "target" else source[1]
        return torch.autograd.grad(loss, leaf)[0]

    torch.testing.assert_close(grad("target", floored), grad("target", floorless), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(grad("source", floored), grad("source", floorless), atol=1e-3)


def test_co_tuning_loss_and_relationship_shapes():
    probs = torch.softmax(torch.randn(10, 6), 1)
    labels = torch.tensor([0, 1, 2] * 3 + [0])
    relation = Relationship(probs, labels, num_target_classes=4)
    assert relation.matrix.shape == (4, 6)
    torch.testing.assert_close(relation.matrix, category_relation(probs, labels, 4))
    torch.testing.assert_close(relation.matrix[3], torch.full((6,), 1 / 6))  # no images: uniform
    soft = relation[torch.tensor([0, 3])]
    assert soft.shape == (2, 6)
    logits = torch.randn(2, 6, requires_grad=True)
    loss = CoTuningLoss()(logits, soft)
    assert loss.shape == () and loss > 0
    loss.backward()
    torch.testing.assert_close(loss.detach(), -(soft * torch.log_softmax(logits.detach(), 1)).sum(1).mean())


# ----------------------------------------------------------------------------- models
def test_architectures_are_one_table_read_by_the_factory_and_the_list():
    assert {"alexnet", "smallcnn"} <= set(ARCHS.names())
    assert set(ARCHS.names()) <= set(list_archs())
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1)
    assert backbone.arch == "smallcnn" and backbone.out_features == 128


def test_joint_classifier_speaks_timms_head_vocabulary():
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1)
    model = JointClassifier(backbone, 5, 3, bottleneck_dim=16).eval()
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    source_logits, target_logits = model.forward_head(features)
    assert features.shape == (2, 128) and source_logits.shape == (2, 5) and target_logits.shape == (2, 3)
    assert model.forward_head(features, pre_logits=True).shape == (2, 16)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier() is model.target_head
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1], target_logits)
    with pytest.raises(ValueError, match="multiplier"):
        model.set_source_head_lr(-1.0)
