"""The registered cost builders (``--cost NAME``). Each maps :class:`CostInputs` to a raw
non-negative ``(Ks, Kt)`` matrix; :func:`~tllib_jtln.cost.build_cost` normalises it.

- ``knn``: ``M = 1 - A / max(A)`` with ``A`` the k-NN affinity of :func:`knn.knn_affinity`
  (column ``t`` = similarity-weighted share of source labels among the ``k`` nearest source images
  of the class-``t`` target images, cosine similarity, FAISS; exact or IVF search as
  :func:`~tllib_jtln.cost.index_choice.choose_index` decides, the decision told to ``log``). A target class with no neighbour
  mass falls back to its centroid-distance column, rescaled to ``[0, 1]``, with a warning.
- ``centroid``: ``M[s, t] = d(mu_s, mu_t)`` between class-mean features, ``d`` = cosine distance
  ``1 - cos`` or Euclidean distance.
- ``source-head``: ``R[s, t]`` = mean source-head softmax probability of source class ``s`` over
  the class-``t`` target images (Co-Tuning's relation); ``M = 1 - R / max(R)``.
- ``semantic``: cosine distance ``1 - cos`` between the class-name embeddings of a user file.
- ``uniform``: ``M = 1``.
- ``shuffled``: the ``base`` matrix with its source rows permuted by a seeded derangement (no row
  stays in place when ``Ks > 1``): same values, relations destroyed.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from ..errors import UserError
from .build import build_from_inputs, register_cost
from .inputs import CostInputs
from .embeddings import load_embeddings, lookup_embeddings
from .index_choice import choose_index
from .paging import chunk_rows, row_chunks
from .knn import knn_affinity, knn_search, knn_search_torch, l2_normalize


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(means (K, D) float64, counts (K,) int64)``; classes without samples have a zero mean.

    Sums are taken in float64 over half a :func:`~tllib_jtln.cost.paging.chunk_rows` at a time
    (64 MB; a float16 memory map is never copied whole, nor kept resident)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    for start, rows in row_chunks(features, chunk_rows(features.shape[1]) // 2):
        sums.index_add_(0, labels[start:start + rows.shape[0]], rows.double())
    counts = torch.bincount(labels, minlength=num_classes)
    return sums / counts.clamp_min(1).unsqueeze(1), counts


def pairwise_distance(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """``(Na, Nb)`` float64: ``1 - cos(a_i, b_j)`` in ``[0, 2]`` or the Euclidean distance."""
    a, b = a.double(), b.double()
    if metric == "cosine":
        an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
        bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (1.0 - an @ bn.T).clamp(0.0, 2.0)
    return torch.cdist(a, b)


def seeded_derangement(n: int, seed: int) -> Tensor:
    """A permutation of ``range(n)`` with no fixed point (``n > 1``), determined by ``seed``.

    Rejection sampling of ``torch.randperm`` with a seeded ``torch.Generator`` (about e = 2.7 draws
    on average); ``n = 1`` gives the identity.
    """
    gen = torch.Generator().manual_seed(int(seed))
    identity = torch.arange(n)
    if n < 2:
        return identity
    for _ in range(1000):
        perm = torch.randperm(n, generator=gen)
        if not (perm == identity).any():
            return perm
    return identity.roll(1)  # pragma: no cover - probability ~ exp(-1000)


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def _list_classes(inputs: CostInputs, ids: list[int], side: str) -> str:
    namer = inputs.target_name if side == "target" else inputs.source_name
    shown = [namer(i) for i in ids[:10]]
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return ", ".join(shown) + more


def _centroid_columns(inputs: CostInputs, columns: list[int]) -> Tensor:
    """Centroid-distance columns ``(Ks, len(columns))`` rescaled per column to ``[0, 1]`` (min 0,
    max 1; a constant column becomes 1, or 0 when ``Ks = 1``); a target class without images
    gets a column of ones."""
    sf, sl, tf, tl = inputs.require_features()
    ks, kt = inputs.ks, inputs.kt
    source_means, source_counts = class_means(sf, sl, ks)
    target_means, target_counts = class_means(tf, tl, kt)
    dist = pairwise_distance(source_means, target_means[columns], inputs.metric)
    out = torch.ones(ks, len(columns), dtype=torch.float64)
    present = source_counts > 0
    for c, t in enumerate(columns):
        if target_counts[t] == 0 or not present.any():
            continue
        col = dist[:, c]
        lo, hi = col[present].min(), col[present].max()
        if hi > lo:
            out[:, c] = torch.where(present, (col - lo) / (hi - lo), torch.ones((), dtype=torch.float64))
        elif ks == 1:
            out[:, c] = 0.0
    return out


@register_cost("knn")
def knn_cost(inputs: CostInputs) -> Tensor:
    """``1 - A / max(A)``, ``A`` the similarity-weighted k-NN share of source labels per target class."""
    sf, sl, tf, tl = inputs.require_features()
    ks, kt = inputs.ks, inputs.kt
    if sf.shape[0] == 0:
        raise UserError("cost 'knn': no source features (the source set is empty)")
    k = min(inputs.k, sf.shape[0])
    if inputs.index == "torch":
        scores, ids = knn_search_torch(l2_normalize(sf), l2_normalize(tf), k)
    else:
        plan = choose_index(sf.shape[0], tf.shape[0], sf.shape[1], k, inputs.index, inputs.nprobe)
        inputs.say(plan.describe())
        scores, ids = knn_search(sf, tf, k, plan, seed=inputs.seed, cosine=True)
    affinity, mass = knn_affinity(scores, ids, sl, tl, ks, kt)
    top = affinity.max()
    cost = 1.0 - affinity / top if top > 0 else torch.ones(ks, kt, dtype=torch.float64)
    empty = [t for t in range(kt) if mass[t] <= 0]
    if empty:
        no_images = [t for t in empty if not (tl == t).any()]
        _warn(f"cost 'knn': no neighbour mass for {_list_classes(inputs, empty, 'target')} "
              f"({len(no_images)} of them without target images); using centroid distance for "
              f"{'it' if len(empty) == 1 else 'them'}")
        cost[:, empty] = _centroid_columns(inputs, empty)
    return cost


@register_cost("centroid")
def centroid_cost(inputs: CostInputs) -> Tensor:
    """``d(mu_s, mu_t)`` between class means (``metric``: cosine or Euclidean); classes without
    samples get the largest distance, with a warning."""
    sf, sl, tf, tl = inputs.require_features()
    ks, kt = inputs.ks, inputs.kt
    source_means, source_counts = class_means(sf, sl, ks)
    target_means, target_counts = class_means(tf, tl, kt)
    dist = pairwise_distance(source_means, target_means, inputs.metric)
    missing_s = torch.nonzero(source_counts == 0).flatten().tolist()
    missing_t = torch.nonzero(target_counts == 0).flatten().tolist()
    if missing_s or missing_t:
        ok = dist[source_counts > 0][:, target_counts > 0]
        fill = ok.max() if ok.numel() else torch.tensor(1.0, dtype=torch.float64)
        dist[missing_s, :] = fill
        dist[:, missing_t] = fill
        names = ([_list_classes(inputs, missing_s, "source")] if missing_s else []) + \
                ([_list_classes(inputs, missing_t, "target")] if missing_t else [])
        _warn(f"cost 'centroid': no features for {'; '.join(names)}; giving them the largest distance")
    return dist


@register_cost("source-head", reads=("target",))
def source_head_cost(inputs: CostInputs) -> Tensor:
    """``1 - R / max(R)`` with ``R[s, t]`` the mean source-head softmax over class-``t`` target images."""
    probs = inputs.source_probs
    if probs is None:
        raise UserError("cost 'source-head' needs the source head's softmax on the target images (source_probs): "
                        "the model has no pretrained source head; use a backbone with a pretrained classifier "
                        "or --cost knn")
    tl = inputs.target_labels
    if tl is None:
        raise UserError("cost 'source-head' needs target_labels (the class of each target image)")
    probs = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    ks, kt = inputs.ks, inputs.kt
    if probs.ndim != 2 or probs.shape != (tl.shape[0], ks):
        raise UserError(f"cost 'source-head': source_probs must be (N_t, Ks) = ({tl.shape[0]}, {ks}), got "
                        f"{tuple(probs.shape)}")
    if not torch.isfinite(probs).all() or (probs < 0).any() or \
            not torch.allclose(probs.sum(1), torch.ones(probs.shape[0], dtype=torch.float64), atol=1e-3):
        raise UserError("cost 'source-head': source_probs must be probabilities (rows >= 0 summing to 1); "
                        "pass softmax(source_logits), not the logits")
    relation, counts = class_means(probs, tl, kt)  # (Kt, Ks)
    relation = relation.T.contiguous()
    empty = torch.nonzero(counts == 0).flatten().tolist()
    top = relation.max()
    cost = 1.0 - relation / top if top > 0 else torch.ones(ks, kt, dtype=torch.float64)
    if empty:
        _warn(f"cost 'source-head': no target images for {_list_classes(inputs, empty, 'target')}; "
              f"giving {'it' if len(empty) == 1 else 'them'} cost 1 to every source class")
        cost[:, empty] = 1.0
    return cost


@register_cost("semantic", reads=())
def semantic_cost(inputs: CostInputs) -> Tensor:
    """``1 - cos(e_s, e_t)`` between class-name embeddings read from ``semantic_file``."""
    if not inputs.semantic_file:
        raise UserError("cost 'semantic' needs --semantic-file: a .json {\"class name\": [numbers]} or a .csv "
                        "of rows 'class name,v1,v2,...' (WordNet is not installed)")
    if inputs.source_classes is None or inputs.target_classes is None:
        raise UserError("cost 'semantic' needs the class names of both datasets (source_classes, target_classes)")
    table = load_embeddings(inputs.semantic_file)
    source = lookup_embeddings(table, inputs.source_classes, "source", inputs.semantic_file)
    target = lookup_embeddings(table, inputs.target_classes, "target", inputs.semantic_file)
    return pairwise_distance(torch.from_numpy(source), torch.from_numpy(target), "cosine")


@register_cost("uniform", reads=())
def uniform_cost(inputs: CostInputs) -> Tensor:
    """The constant cost ``M = 1`` (not neutral: it still penalises confident predictions)."""
    return torch.ones(inputs.ks, inputs.kt)


@register_cost("shuffled")
def shuffled_cost(inputs: CostInputs) -> Tensor:
    """``base`` (default ``knn``) with source rows permuted by :func:`seeded_derangement` (``seed``)."""
    base: Optional[str] = inputs.base
    if not base or base == "shuffled":
        raise UserError("cost 'shuffled' permutes another cost: set --cost-base to knn, centroid, source-head, "
                        "semantic or file:PATH")
    matrix = build_from_inputs(base, inputs)
    perm = seeded_derangement(matrix.shape[0], inputs.seed)
    return matrix[perm]
