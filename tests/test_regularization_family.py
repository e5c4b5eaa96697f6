"""LwF's distillation and Bi-Tuning's contrastive terms, queues and momentum encoder against direct
computations (tllib_jtln.regularization.lwf and .bi_tuning)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tllib_jtln.regularization import (BiTuningLoss, ClassQueue, LwFLoss, MomentumEncoder, classifier_logits,
                                       projector_logits)


# ----------------------------------------------------------------------------- LwF
def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_lwf_is_the_batch_mean_of_the_tempered_kl_without_a_t_squared_factor(T):
    student = np.array([[1.0, 2.0, 3.0, -1.0], [0.5, 0.0, -2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    teacher = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 4.0, 0.0, -1.0], [1.0, -1.0, 2.0, 0.5]])
    p_t, p_s = _softmax(teacher / T), _softmax(student / T)
    expected = float((p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean())  # no T^2 (TLlib's KD loss)
    got = LwFLoss(T=T)(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.05  # a case where a T^2 factor (9 at T = 3) would show


def test_lwf_defaults_gradient_and_precision():
    loss = LwFLoss()
    assert loss.T == 3.0  # TLlib's lwf.py default
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    value = loss(student.half(), teacher)
    assert value.dtype == torch.float32
    value.backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is a target
    assert loss(teacher.detach(), teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_lwf_refuses_bad_arguments():
    with pytest.raises(ValueError, match="^T: the distillation temperature must be > 0"):
        LwFLoss(T=0)
    with pytest.raises(ValueError, match="^input and target: "):
        LwFLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------------- Bi-Tuning
def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _direct_kl(rows, K, T):
    """(1/B) sum_b KL(u || softmax(row_b / T)), u uniform on the first K + 1 entries."""
    total = 0.0
    for row in rows:
        log_p = row / T - np.log(np.exp(row / T).sum())
        total += sum((1 / (K + 1)) * (math.log(1 / (K + 1)) - log_p[j]) for j in range(K + 1))
    return total / len(rows)


def _direct_terms(h_q, z_q, z_k, labels, weight, bias, queue_h, queue_z, T):
    """Bi-Tuning's two terms written straight from the definition, one image at a time."""
    C, K = queue_z.shape[:2]
    rows_z, rows_y = [], []
    for b, c in enumerate(labels):
        z = _unit(z_q[b])
        hn = _unit(np.append(h_q[b], 1.0))
        w_c = _unit(np.append(weight[c], bias[c]))
        others = [o for o in range(C) if o != c]
        rows_z.append(np.array([z @ _unit(z_k[b])] + [z @ queue_z[c, k] for k in range(K)]
                               + [z @ queue_z[o, k] for o in others for k in range(K)]))
        rows_y.append(np.array([hn @ w_c] + [queue_h[c, k] @ w_c for k in range(K)]
                               + [queue_h[o, k] @ w_c for o in others for k in range(K)]))
    return _direct_kl(rows_z, K, T), _direct_kl(rows_y, K, T)


@pytest.fixture
def hand_built():
    """C = 3 classes, K = 2 keys per class, F = 2, D = 2; labels with a repeated class."""
    rng = np.random.default_rng(0)
    return dict(
        h_q=np.array([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0], [0.0, -3.0]]),
        z_q=np.array([[1.0, 1.0], [0.0, 2.0], [-1.0, 0.5], [3.0, -1.0]]),
        h_k=np.array([[0.8, 0.2], [0.4, 1.5], [-1.2, 0.9], [0.1, -2.0]]),
        z_k=np.array([[1.0, 0.8], [0.3, 2.0], [-1.0, 0.2], [2.0, -1.5]]),
        labels=[1, 0, 2, 1],
        weight=np.array([[1.0, -1.0], [0.5, 0.5], [-2.0, 1.0]]), bias=np.array([0.1, -0.3, 0.0]),
        queue_h=_unit(rng.normal(size=(3, 2, 3))), queue_z=_unit(rng.normal(size=(3, 2, 2))))


def _module_with_queues(case, T=0.5):
    loss = BiTuningLoss(num_classes=3, feature_dim=2, projection_dim=2, K=2, T=T)
    loss.queue_h.keys.copy_(torch.tensor(case["queue_h"]))
    loss.queue_z.keys.copy_(torch.tensor(case["queue_z"]))
    return loss


def _t(x, **kw):
    return torch.tensor(np.asarray(x), dtype=torch.float32, **kw)


def test_logits_put_the_current_key_then_the_class_positives_then_the_other_classes():
    queue = torch.arange(3 * 2 * 1, dtype=torch.float32).view(3, 2, 1)  # key value = 2 * class + slot
    z = torch.ones(2, 1)
    logits = projector_logits(z, 10 * z, queue, torch.tensor([1, 2]))
    assert logits.tolist() == [[10, 2, 3, 0, 1, 4, 5], [10, 4, 5, 0, 1, 2, 3]]
    prototypes = torch.tensor([[1.0], [2.0], [3.0]])
    logits = classifier_logits(torch.ones(1, 1), prototypes, queue, torch.tensor([2]))
    assert logits.tolist() == [[3, 12, 15, 0, 3, 6, 9]]  # every key scored against class 2's prototype


def test_bi_tuning_terms_equal_the_direct_formula_on_a_hand_built_batch_and_queue(hand_built):
    case = hand_built
    loss = _module_with_queues(case)
    term_z, term_y = loss(_t(case["h_q"]), _t(case["z_q"]), _t(case["h_k"]), _t(case["z_k"]),
                          torch.tensor(case["labels"]), _t(case["weight"]), _t(case["bias"]))
    expected_z, expected_y = _direct_terms(case["h_q"], case["z_q"], case["z_k"], case["labels"], case["weight"],
                                           case["bias"], case["queue_h"], case["queue_z"], T=0.5)
    assert term_z.item() == pytest.approx(expected_z, rel=1e-5)
    assert term_y.item() == pytest.approx(expected_y, rel=1e-5)
    assert min(expected_z, expected_y) > 0.1


def test_bi_tuning_reads_the_queues_before_queueing_the_batch_and_queues_normalised_keys(hand_built):
    case = hand_built
    loss = _module_with_queues(case)
    h_q = _t(case["h_q"], requires_grad=True)
    z_q = _t(case["z_q"], requires_grad=True)
    weight = _t(case["weight"], requires_grad=True)
    term_z, term_y = loss(h_q, z_q, _t(case["h_k"]), _t(case["z_k"]), torch.tensor(case["labels"]), weight,
                          _t(case["bias"]))
    (term_z + term_y).backward()  # the queues changed in place after the terms were computed
    assert h_q.grad.abs().sum() > 0 and z_q.grad.abs().sum() > 0 and weight.grad is None
    # labels [1, 0, 2, 1]: class 1 got keys 0 and 3 in slots 0, 1; classes 0 and 2 one key in slot 0
    z_keys = _unit(case["z_k"])
    h_keys = _unit(np.concatenate([case["h_k"], np.ones((4, 1))], axis=1))
    np.testing.assert_allclose(loss.queue_z.keys[1].numpy(), z_keys[[0, 3]], rtol=1e-6)
    np.testing.assert_allclose(loss.queue_z.keys[0, 0].numpy(), z_keys[1], rtol=1e-6)
    np.testing.assert_allclose(loss.queue_h.keys[2, 0].numpy(), h_keys[2], rtol=1e-6)
    np.testing.assert_allclose(loss.queue_z.keys[0, 1].numpy(), case["queue_z"][0, 1], rtol=1e-6)  # untouched
    assert loss.queue_z.ptr.tolist() == [1, 0, 1]


def _sequential_queue(keys, ptr, new, labels):
    """The ring buffer one key at a time (TLlib's loop)."""
    keys, ptr = keys.clone(), ptr.clone()
    for key, c in zip(new, labels.tolist()):
        keys[c, ptr[c]] = key
        ptr[c] = (ptr[c] + 1) % keys.shape[1]
    return keys, ptr


def test_class_queue_enqueue_is_the_sequential_ring_buffer_even_past_its_size():
    torch.manual_seed(0)
    queue = ClassQueue(num_classes=4, size=3, dim=2)
    assert torch.allclose(queue.keys.norm(dim=2), torch.ones(4, 3)) and queue.ptr.tolist() == [0, 0, 0, 0]
    batches = [torch.tensor([0, 0, 2]), torch.tensor([1, 0, 0, 0, 0, 2, 0]), torch.tensor([3]), torch.tensor([0, 2])]
    for labels in batches:  # class 0 gets 5 keys in the second batch: more than the queue holds
        new = torch.randn(len(labels), 2)
        expected_keys, expected_ptr = _sequential_queue(queue.keys, queue.ptr, new, labels)
        queue.enqueue(new, labels)
        assert torch.equal(queue.keys, expected_keys) and torch.equal(queue.ptr, expected_ptr)
    assert queue.ptr.tolist() == [(2 + 5 + 1) % 3, 1, 3 % 3, 1]


def test_momentum_encoder_moves_each_parameter_by_the_direct_formula_and_has_no_gradient():
    torch.manual_seed(0)
    query = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    key = MomentumEncoder(query, m=0.9)
    assert key.m == 0.9 and MomentumEncoder(query).m == 0.999  # TLlib's default
    assert all(not p.requires_grad for p in key.parameters())
    start = [p.detach().clone() for p in key.encoder.parameters()]
    with torch.no_grad():
        for p in query.parameters():
            p.add_(torch.randn_like(p))
    key.update(query)
    for before, after, q in zip(start, key.encoder.parameters(), query.parameters()):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * q.detach(), rtol=1e-6, atol=1e-7)
    out = key(torch.randn(5, 3))
    assert out.shape == (5, 2) and not out.requires_grad
    with pytest.raises(ValueError, match="^query: parameters do not match the key encoder's"):
        key.update(nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"^m: the momentum must be in \[0, 1\]"):
        MomentumEncoder(query, m=1.5)


def test_bi_tuning_defaults_are_tllibs():
    loss = BiTuningLoss(num_classes=5, feature_dim=8)
    assert (loss.K, loss.T) == (40, 0.07)
    assert loss.queue_h.keys.shape == (5, 40, 9) and loss.queue_z.keys.shape == (5, 40, 128)
