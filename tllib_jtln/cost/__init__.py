"""Cost matrices between source and target classes (``--cost``), and the features they are built from.

``M`` has shape ``(Ks, Kt)`` (rows source classes, columns target classes), ``M >= 0`` and
normalised by ``normalize`` (``global``: ``max(M) = 1``, the default; ``column``; ``none``). Build one with::

    from tllib_jtln.cost import build_cost, save_cost
    M = build_cost("knn", source_feats, source_labels, target_feats, target_labels, k=10)
    save_cost(M, source_classes, target_classes, "logs/run")   # cost.npy, cost.json, cost.png

Registered names (``COSTS.names()``): ``knn``, ``centroid``, ``source-head``, ``semantic``,
``uniform``, ``shuffled``, and ``file:PATH`` and ``taxonomy:FILE``, which :func:`build_cost` parses
itself (the registry entries exist so that ``tllib-jtln list costs`` shows them).
"""
from . import builders as _builders  # noqa: F401  (registers the builders)
from .build import (COSTS, FILE_PREFIX, NORMALIZATIONS, CostInputs, build_cost, cost_options, features_read,
                    normalize_cost, register_cost)
from .builders import class_means, pairwise_distance, seeded_derangement
from .embeddings import load_embeddings
from .features import collect_features, weights_fingerprint
from .io import describe_cost, load_cost_file, nearest_sources, plot_cost, save_cost
from .knn import knn_affinity, knn_search, knn_search_torch, l2_normalize
from .taxonomy import TAXONOMY_PREFIX, load_taxonomy, taxonomy_cost, tree_distance

__all__ = [
    "COSTS", "FILE_PREFIX", "NORMALIZATIONS", "CostInputs", "build_cost", "cost_options", "normalize_cost",
    "features_read", "register_cost",
    "TAXONOMY_PREFIX", "load_taxonomy", "taxonomy_cost", "tree_distance",
    "collect_features", "weights_fingerprint",
    "save_cost", "load_cost_file", "load_embeddings", "plot_cost", "describe_cost", "nearest_sources",
    "knn_search", "knn_search_torch", "knn_affinity", "l2_normalize",
    "class_means", "pairwise_distance", "seeded_derangement",
]
