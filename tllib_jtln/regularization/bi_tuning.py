r"""Bi-Tuning (Zhong, Wang, Kou, Wang and Long, arXiv 2011.06182, 2020), as TLlib's
``tllib.regularization.bi_tuning``: two contrastive terms over per-class queues of keys from a
momentum encoder, beside the cross-entropy of the classifier.

The query encoder (trained) has a trunk :math:`g`, a classifier head :math:`(W, b)` over
:math:`C` classes and a projector :math:`\phi`; on image :math:`x_b` of class :math:`c = y_b`,
:math:`h_b = g(x_b) \in \mathbb{R}^F` and :math:`z_b = \phi(h_b) / \|\phi(h_b)\| \in \mathbb{R}^D`.
The key encoder is a momentum copy (:class:`MomentumEncoder`,
:math:`\theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q`) fed a second augmented view; its keys
:math:`h^k_b, z^k_b` carry no gradient. Each class keeps its last :math:`K` keys
(:class:`ClassQueue`): :math:`Q^h \in \mathbb{R}^{C \times K \times (F+1)}` of
:math:`\hat h = [h, 1] / \|[h, 1]\|` and :math:`Q^z \in \mathbb{R}^{C \times K \times D}`.

*Projector term* (unsupervised and supervised contrast): the current key, the :math:`K` queued
keys of class :math:`c`, then the :math:`(C-1)K` keys of the other classes, against :math:`z_b`:

.. math::
    \ell^z_b = \big[\, z_b \cdot z^k_b,\; (z_b \cdot Q^z_{c,k})_{k=1}^{K},\;
    (z_b \cdot Q^z_{c',k})_{c' \ne c,\, k} \,\big] \in \mathbb{R}^{1 + CK}.

*Classifier term* (supervised contrast): the prototype :math:`w_c = [W_c, b_c] / \|[W_c, b_c]\|`
(no gradient, as TLlib's ``head.weight.data``) against the same arrangement of features:

.. math::
    \ell^y_b = \big[\, \hat h_b \cdot w_c,\; (Q^h_{c,k} \cdot w_c)_{k=1}^{K},\;
    (Q^h_{c',k} \cdot w_c)_{c' \ne c,\, k} \,\big].

Each term is the KL divergence from the uniform distribution :math:`u` over the first
:math:`K + 1` entries (the positives) to :math:`\mathrm{softmax}(\ell_b / T)`, averaged over the
batch (TLlib's ``KLDivLoss(reduction='batchmean')``):

.. math::
    L = \frac{1}{B} \sum_b \mathrm{KL}\big(u \,\|\, \mathrm{softmax}(\ell_b / T)\big)
      = -\log(K + 1) - \frac{1}{B} \sum_b \frac{1}{K + 1} \sum_{j=0}^{K} \log \mathrm{softmax}(\ell_b / T)_j .

The training loss is ``cross_entropy(y, labels) + trade_off * (L^z + L^y)``. TLlib's defaults:
``K = 40``, ``m = 0.999``, ``T = 0.07``, ``D = 128``, ``trade_off = 1``; its recipe trains the
trunk and projector at the full learning rate (no ``--finetune``).

Differences from TLlib: both terms read the queues as they were before this batch, then the
batch's keys are queued (TLlib queues each key while it builds the projector logits, so its
classifier term already sees this batch's keys); the queues are per process under DDP, as TLlib's.

Example:
    >>> loss = BiTuningLoss(num_classes=3, feature_dim=4, projection_dim=2, K=2)
    >>> h, z, labels = torch.randn(5, 4), torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 0])
    >>> term_z, term_y = loss(h, z, h, z, labels, torch.randn(3, 4), torch.zeros(3))
    >>> term_z.shape, bool(term_z >= 0), bool(term_y >= 0), loss.queue_z.ptr.tolist()
    (torch.Size([]), True, True, [1, 1, 1])
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def homogeneous_features(h: Tensor) -> Tensor:
    """``[h, 1] / ||[h, 1]||``: features ``(B, F)`` -> ``(B, F + 1)`` on the unit sphere."""
    return F.normalize(torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1), dim=1)


def class_prototypes(weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``w_c = [W_c, b_c] / ||[W_c, b_c]||`` of a linear head, detached: ``(C, F)``, ``(C,)`` -> ``(C, F + 1)``."""
    bias = weight.new_zeros(weight.shape[0]) if bias is None else bias
    return F.normalize(torch.cat([weight.detach(), bias.detach()[:, None]], dim=1), dim=1)


def _class_first(current: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
    """``[current_b, scores_b[c], scores_b[c'] for c' != c in class order]``: ``(B,)``, ``(B, C, K)`` -> ``(B, 1 + CK)``."""
    num_classes = scores.shape[1]
    others = torch.arange(num_classes, device=scores.device)[None, :] != labels[:, None]  # (B, C)
    order = torch.argsort(others.long(), dim=1, stable=True)  # class c first, then the others in order
    arranged = scores.gather(1, order[:, :, None].expand_as(scores))
    return torch.cat([current[:, None], arranged.flatten(1)], dim=1)


def projector_logits(z_q: Tensor, z_k: Tensor, queue: Tensor, labels: Tensor) -> Tensor:
    r""":math:`\ell^z` (module docstring): ``z_q``, ``z_k`` ``(B, D)``, ``queue`` ``(C, K, D)``,
    ``labels`` ``(B,)`` -> ``(B, 1 + CK)``: the current key, the ``K`` positives, the negatives."""
    return _class_first((z_q * z_k).sum(1), torch.einsum("bd,ckd->bck", z_q, queue), labels)


def classifier_logits(h_q: Tensor, prototypes: Tensor, queue: Tensor, labels: Tensor) -> Tensor:
    r""":math:`\ell^y` (module docstring): ``h_q`` ``(B, F+1)`` homogeneous features, ``prototypes``
    ``(C, F+1)``, ``queue`` ``(C, K, F+1)``, ``labels`` ``(B,)`` -> ``(B, 1 + CK)``."""
    own = prototypes[labels]  # (B, F+1): the prototype of each image's class
    return _class_first((h_q * own).sum(1), torch.einsum("ckf,bf->bck", queue, own), labels)


def contrastive_loss(logits: Tensor, num_positives: int, T: float) -> Tensor:
    r""":math:`\frac{1}{B}\sum_b \mathrm{KL}(u \,\|\, \mathrm{softmax}(\ell_b / T))`, ``u`` uniform over
    the first ``num_positives`` entries: ``(B, N)`` -> scalar."""
    log_p = torch.log_softmax(logits.float() / T, dim=1)
    return -log_p[:, :num_positives].mean(1).mean() - math.log(num_positives)


class ClassQueue(nn.Module):
    r"""The last ``size`` keys of every class, one ring buffer per class (TLlib's per-class queue).

    The buffer starts as random unit vectors (TLlib's start). :meth:`enqueue` writes each key into
    its class's next slot in batch order, overwriting the oldest; a class with more than ``size``
    keys in one batch keeps its last ``size``.

    Args:
        num_classes: ``C``.
        size: ``K``, keys per class.
        dim: ``D``, key width.

    Shape:
        - ``keys``: ``(C, K, D)`` buffer
        - ``ptr``: ``(C,)`` buffer, the slot each class writes next
    """

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if min(num_classes, size, dim) < 1:
            raise ValueError(f"num_classes, size and dim must be >= 1, got {num_classes}, {size}, {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(num_classes, size, dim), dim=2))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Queue ``keys`` ``(B, D)`` under ``labels`` ``(B,)``."""
        num_classes, size = self.keys.shape[:2]
        labels = labels.long()
        onehot = F.one_hot(labels, num_classes)  # (B, C)
        rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # earlier keys of the same class
        count = onehot.sum(0)  # (C,)
        keep = rank >= count[labels] - size  # the last `size` keys of each class
        slot = (self.ptr[labels] + rank) % size
        self.keys[labels[keep], slot[keep]] = keys[keep].to(self.keys.dtype)
        self.ptr.copy_((self.ptr + count) % size)


class BiTuningLoss(nn.Module):
    r"""Bi-Tuning's projector and classifier contrastive terms :math:`(L^z, L^y)` (module
    docstring), with their two :class:`ClassQueue` s; each call queues the batch's keys after
    computing the terms. Computed in float32 (safe under autocast); move the module to the
    features' device.

    Args:
        num_classes: ``C``, target classes.
        feature_dim: ``F``, width of the trunk features ``h``.
        projection_dim: ``D``, width of the projector output ``z``. Default: 128.
        K: keys queued per class. Default: 40.
        T: temperature. Default: 0.07.

    Shape:
        - h_q, h_k: ``(B, F)`` trunk features of the query view (with gradient) and of the key view
          (momentum encoder; detached here)
        - z_q, z_k: ``(B, D)`` projector outputs of the two views (L2-normalised here)
        - labels: ``(B,)`` classes in ``[0, C)``
        - weight, bias: ``(C, F)``, ``(C,)`` or None: the query's classifier head (no gradient flows
          into it from this term)
        - output: ``(L^z, L^y)``, two scalars
    """

    def __init__(self, num_classes: int, feature_dim: int, projection_dim: int = 128, K: int = 40,
                 T: float = 0.07):
        super().__init__()
        if not T > 0:
            raise ValueError(f"T: the temperature must be > 0, got {T}")
        self.K, self.T = int(K), float(T)
        self.queue_h = ClassQueue(num_classes, self.K, feature_dim + 1)
        self.queue_z = ClassQueue(num_classes, self.K, projection_dim)

    def forward(self, h_q: Tensor, z_q: Tensor, h_k: Tensor, z_k: Tensor, labels: Tensor, weight: Tensor,
                bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        labels = labels.long()
        h_q, h_k = homogeneous_features(h_q.float()), homogeneous_features(h_k.detach().float())
        z_q, z_k = F.normalize(z_q.float(), dim=1), F.normalize(z_k.detach().float(), dim=1)
        logits_z = projector_logits(z_q, z_k, self.queue_z.keys.clone(), labels)
        logits_y = classifier_logits(h_q, class_prototypes(weight.float(), None if bias is None else bias.float()),
                                     self.queue_h.keys.clone(), labels)
        self.queue_h.enqueue(h_k, labels)
        self.queue_z.enqueue(z_k, labels)
        return contrastive_loss(logits_z, self.K + 1, self.T), contrastive_loss(logits_y, self.K + 1, self.T)

    def extra_repr(self) -> str:
        return f"K={self.K}, T={self.T}"


class MomentumEncoder(nn.Module):
    r"""The key encoder: a copy of a query module without gradients, moved towards it by
    :meth:`update`, :math:`\theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q` for every parameter
    (buffers, e.g. BatchNorm statistics, follow the key encoder's own forward passes, as TLlib's).

    Args:
        query: the module to copy (deep copy, same device).
        m: momentum in ``[0, 1]``. Default: 0.999 (TLlib's).

    Shape:
        - forward: whatever the copied module takes and returns, computed without gradient
    """

    def __init__(self, query: nn.Module, m: float = 0.999):
        super().__init__()
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"m: the momentum must be in [0, 1], got {m}")
        self.m = float(m)
        self.encoder = copy.deepcopy(query).requires_grad_(False)

    @torch.no_grad()
    def update(self, query: nn.Module) -> None:
        """One momentum step towards ``query``'s current parameters."""
        keys, queries = list(self.encoder.parameters()), list(query.parameters())
        if len(keys) != len(queries) or any(k.shape != q.shape for k, q in zip(keys, queries)):
            raise ValueError(f"query: parameters do not match the key encoder's ({len(queries)} vs {len(keys)} "
                             f"tensors); pass the module the encoder was copied from")
        for key, value in zip(keys, queries):
            key.mul_(self.m).add_(value.detach(), alpha=1.0 - self.m)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.encoder(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"m={self.m}"
