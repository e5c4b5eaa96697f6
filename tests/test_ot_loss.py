"""WassersteinLoss and the one-hot closed form."""
import pytest
import torch

from tllib_jtln.config import Config
from tllib_jtln.ot import WassersteinLoss, entropy, onehot_transport_cost, sinkhorn, smooth_histogram


pytestmark = pytest.mark.usefixtures("one_thread")


def setup(B=4, Ks=6, Kt=5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(Ks, Kt, generator=gen, dtype=dtype)
    logits = 2 * torch.randn(B, Ks, generator=gen, dtype=dtype)
    q = torch.softmax(torch.randn(B, Kt, generator=gen, dtype=dtype), 1)
    return logits, q, cost / cost.max()


def test_loss_is_the_mean_entropic_ot_of_smoothed_histograms():
    logits, q, cost = setup()
    loss_fn = WassersteinLoss(eps=0.1, max_iter=2000, tol=1e-12, smooth=0.01)
    loss = loss_fn(logits, q, cost)
    p = 0.99 * torch.softmax(logits, 1) + 0.01 / 6
    ref = sinkhorn(p, 0.99 * q + 0.01 / 5, cost, 0.1, max_iter=2000, tol=1e-12).value
    assert loss.shape == () and torch.isclose(loss, ref.mean(), rtol=1e-12)
    assert loss_fn.last_result.converged
    per_sample = WassersteinLoss(eps=0.1, max_iter=2000, tol=1e-12, smooth=0.01, reduction="none")(logits, q, cost)
    torch.testing.assert_close(per_sample, ref)
    total = WassersteinLoss(eps=0.1, max_iter=2000, tol=1e-12, smooth=0.01, reduction="sum")(logits, q, cost)
    assert torch.isclose(total, ref.sum(), rtol=1e-12)


def test_smoothing_removes_zero_masses():
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    y = smooth_histogram(x, 0.1)
    torch.testing.assert_close(y, torch.tensor([[0.925, 0.025, 0.025, 0.025]]))
    assert smooth_histogram(x, 0.0) is x


def test_gradient_flows_only_where_the_caller_allows():
    logits, q, cost = setup()
    logits.requires_grad_(True)
    target_logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = WassersteinLoss(eps=0.1)(logits, torch.softmax(target_logits, 1).detach(), cost)
    loss.backward()
    assert target_logits.grad is None
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the other way round: the target side learns, the source side does not
    logits.grad = None
    WassersteinLoss(eps=0.1)(logits.detach(), torch.softmax(target_logits, 1), cost).backward()
    assert logits.grad is None and target_logits.grad.abs().sum() > 0


def test_extreme_logits_small_eps_float32_give_finite_gradients():
    logits = torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    loss = WassersteinLoss(eps=1e-3, max_iter=500, smooth=1e-3)(logits, q, cost)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_onehot_closed_form_matches_sinkhorn():
    logits, _, cost = setup(seed=1)
    p = torch.softmax(logits, 1)
    labels = torch.tensor([0, 4, 2, 2])
    q = torch.nn.functional.one_hot(labels, 5).double()
    res = sinkhorn(p, q, cost, 0.1, max_iter=100, tol=1e-12)
    closed = onehot_transport_cost(p, labels, cost)
    torch.testing.assert_close(closed, torch.stack([p[b] @ cost[:, labels[b]] for b in range(4)]))
    torch.testing.assert_close(res.transport_cost, closed, rtol=1e-10, atol=1e-12)
    # the loss takes labels: with smooth=0 it uses the closed form (value = <p, M_j> - eps H(p))
    loss_fn = WassersteinLoss(eps=0.1, smooth=0.0, reduction="none")
    lg = logits.clone().requires_grad_(True)
    values = loss_fn(lg, labels, cost)
    assert loss_fn.last_result is None
    torch.testing.assert_close(values, res.value.detach(), rtol=1e-9, atol=1e-12)
    # and its gradient equals the envelope gradient of the full solver, through the softmax
    values.sum().backward()
    lg2 = logits.clone().requires_grad_(True)
    sinkhorn(torch.softmax(lg2, 1), q, cost, 0.1, max_iter=100, tol=1e-12).value.sum().backward()
    torch.testing.assert_close(lg.grad, lg2.grad, rtol=1e-7, atol=1e-9)


def test_labels_with_smoothing_equal_smoothed_onehot_distribution():
    logits, _, cost = setup(seed=2)
    labels = torch.tensor([1, 0, 3, 4])
    loss_fn = WassersteinLoss(eps=0.1, max_iter=500, tol=1e-12, smooth=0.05)
    from_labels = loss_fn(logits, labels, cost)
    from_dist = loss_fn(logits, torch.nn.functional.one_hot(labels, 5).double(), cost)
    assert loss_fn.last_result is not None
    torch.testing.assert_close(from_labels, from_dist)


def test_minimising_the_loss_moves_mass_to_cheap_source_classes():
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8]])
    logits = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=2.0)
    loss_fn = WassersteinLoss(eps=0.05)
    target = torch.tensor([[1.0, 0.0]])
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, target, cost)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.3
    assert torch.softmax(logits, 1)[0].argmax().item() == 0


def test_from_config():
    cfg = Config()
    cfg.ot_eps, cfg.ot_iters, cfg.ot_tol, cfg.ot_smooth, cfg.ot_reg = 0.2, 33, 1e-4, 0.01, "kl"
    loss_fn = WassersteinLoss.from_config(cfg)
    assert (loss_fn.eps, loss_fn.max_iter, loss_fn.tol, loss_fn.smooth, loss_fn.reg) == (0.2, 33, 1e-4, 0.01, "kl")
    assert "eps=0.2" in repr(loss_fn)


@pytest.mark.parametrize("kwargs,match", [
    (dict(reduction="avg"), "reduction"),
    (dict(smooth=1.0), "smooth"),
    (dict(smooth=-0.1), "smooth"),
    (dict(eps=0.0), "eps"),
    (dict(reg="l2"), "reg: must be one of entropy, kl"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WassersteinLoss(**kwargs)


@pytest.mark.parametrize("case,match", [
    ("labels_range", "target_dist: class indices"),
    ("labels_batch", "target_dist: batch size"),
    ("logits_1d", "source_logits"),
    ("cost_shape", "cost: shape"),
    ("q_unnormalised", "q: every row must sum to 1"),
])
def test_bad_inputs(case, match):
    logits, q, cost = setup()
    args = {
        "labels_range": (logits, torch.tensor([0, 1, 2, 5]), cost),
        "labels_batch": (logits, torch.tensor([0, 1]), cost),
        "logits_1d": (logits[0], q, cost),
        "cost_shape": (logits, torch.tensor([0, 1, 2, 3]), cost[:4]),
        "q_unnormalised": (logits, 2 * q, cost),
    }[case]
    with pytest.raises(ValueError, match=match):
        WassersteinLoss()(*args)
    if case == "labels_range":
        with pytest.raises(ValueError, match="labels: class indices"):
            onehot_transport_cost(torch.softmax(logits, 1), args[1], cost)


# ---------------------------------------------------------------------------------------------- --ot-reg kl
def test_kl_value_is_entropic_value_plus_both_entropies_and_bounded_below_by_the_cheapest_cost():
    torch.manual_seed(0)
    logits, q, cost = torch.randn(6, 5, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64), \
        torch.rand(5, 3, dtype=torch.float64) + 0.2
    q = q / q.sum(1, keepdim=True)
    kl = WassersteinLoss(eps=0.3, smooth=0.0, reg="kl", reduction="none", tol=1e-12, max_iter=2000)
    ent = WassersteinLoss(eps=0.3, smooth=0.0, reduction="none", tol=1e-12, max_iter=2000)
    p = logits.softmax(1)
    torch.testing.assert_close(kl(logits, q, cost), ent(logits, q, cost) + 0.3 * (entropy(p) + entropy(q)))
    assert bool((kl(logits, q, cost) >= cost.min() - 1e-9).all())  # KL >= 0: never below min M
    assert bool((ent(logits, q, cost) < cost.min()).any())  # the entropic value can go below it
    # one-hot labels, closed form: the two entropies cancel, leaving p^T M[:, j]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(kl(logits, labels, cost), onehot_transport_cost(p, labels, cost))


def test_kl_constant_cost_is_an_exact_no_op_on_every_parameter_of_a_real_model():
    from tllib_jtln.models import JointClassifier, create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1, image_size=16)
    model = JointClassifier(backbone, 5, 4).train()
    x = torch.randn(8, 1, 16, 16)
    source_logits, target_logits = model(x)
    cost = torch.full((5, 4), 0.7)
    for reg, expect_zero in (("kl", True), ("entropy", False)):
        model.zero_grad()
        loss = WassersteinLoss(eps=0.3, reg=reg)
        source_logits, target_logits = model(x)
        # both sides learn: the constant cost must give neither a gradient under kl
        loss(source_logits, target_logits.softmax(1), cost).backward()
        grads = [p.grad.abs().max().item() for p in model.parameters() if p.grad is not None]
        assert grads, reg
        if expect_zero:
            assert max(grads) < 1e-6, (reg, max(grads))
        else:
            assert max(grads) > 1e-4, (reg, max(grads))  # the entropic value rewards spreading p


def test_kl_keeps_mass_on_related_classes_among_a_thousand():
    """Ks = 1000 source classes, three related to the target class (cost 0), the rest cost 1, eps 0.3:
    minimising the entropic value alone spreads the source head from 90% on the related classes to
    about 8%; the kl value keeps (and raises) it."""
    ks, related = 1000, [0, 1, 2]
    cost = torch.ones(ks, 1)
    cost[related] = 0.0
    start = torch.full((1, ks), -10.0)
    start[0, related] = torch.log(torch.tensor(0.9 / 3)) - torch.log(torch.tensor(0.1 / 997)) - 10.0
    shares = {}
    for reg in ("entropy", "kl"):
        logits = start.clone().requires_grad_(True)
        assert float(logits.detach().softmax(1)[0, related].sum()) == pytest.approx(0.9, abs=1e-3)
        optimizer = torch.optim.SGD([logits], lr=20.0)
        loss = WassersteinLoss(eps=0.3, smooth=0.0, reg=reg)
        for _ in range(300):
            optimizer.zero_grad()
            loss(logits, torch.zeros(1, dtype=torch.long), cost).backward()
            optimizer.step()
        shares[reg] = float(logits.detach().softmax(1)[0, related].sum())
    assert shares["entropy"] < 0.2, shares
    assert shares["kl"] > 0.9, shares


@pytest.mark.parametrize("reg", ["entropy", "kl"])
def test_jtln_loss_parts_are_the_transport_and_the_regulariser_and_sum_to_it(reg):
    """``last_parts`` splits alpha * mean W into alpha * mean <P, M> and alpha * mean of -eps H(P)
    (entropy) or eps KL(P || p q^T) (kl), each computed here from the plan itself."""
    from tllib_jtln.regularization import JTLNLoss

    logits, q, cost = setup(B=4, Ks=6, Kt=5)
    eps, weight, smooth = 0.1, 2.5, 0.01
    loss_fn = JTLNLoss(weight=weight, eps=eps, max_iter=2000, tol=1e-12, smooth=smooth, reg=reg)
    loss = loss_fn(cost, (logits, torch.log(q), torch.zeros(4, dtype=torch.long)))
    parts = loss_fn.last_parts
    torch.testing.assert_close(parts["ot_transport"] + parts["ot_reg_term"], loss.detach(), rtol=1e-12, atol=1e-12)
    plan = loss_fn.last_results[0].plan()  # (B, Ks, Kt)
    p, qs = smooth_histogram(torch.softmax(logits, 1), smooth), smooth_histogram(q, smooth)
    transport = (plan * cost).sum((1, 2))
    plan_entropy = -(plan * plan.log()).sum((1, 2))
    kl = (plan * (plan.log() - torch.log(p[:, :, None] * qs[:, None, :]))).sum((1, 2))
    reg_part = -eps * plan_entropy if reg == "entropy" else eps * kl
    torch.testing.assert_close(parts["ot_transport"], weight * transport.mean(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(parts["ot_reg_term"], weight * reg_part.mean(), rtol=1e-6, atol=1e-8)
    if reg == "kl":
        assert float(parts["ot_reg_term"]) >= 0.0
    else:
        assert float(parts["ot_reg_term"]) < 0.0



def test_jtln_loss_parts_of_the_closed_form_label_target():
    """One-hot labels without smoothing take the closed form: the transport part is p^T M[:, y] and,
    under entropy, the regulariser part is -eps H(p) (P = p e_y^T)."""
    from tllib_jtln.regularization import JTLNLoss

    logits, _, cost = setup(B=3, Ks=6, Kt=5)
    labels = torch.tensor([0, 4, 2])
    loss_fn = JTLNLoss(weight=1.0, eps=0.2, smooth=0.0, target_dist="label")
    loss = loss_fn(cost, (logits, torch.zeros(3, 5, dtype=torch.float64), labels))
    p = torch.softmax(logits, 1)
    assert loss_fn.last_results == []  # nothing solved iteratively
    torch.testing.assert_close(loss_fn.last_parts["ot_transport"], onehot_transport_cost(p, labels, cost).mean())
    torch.testing.assert_close(loss_fn.last_parts["ot_reg_term"], -0.2 * entropy(p).mean())
    torch.testing.assert_close(loss_fn.last_parts["ot_transport"] + loss_fn.last_parts["ot_reg_term"], loss.detach())
