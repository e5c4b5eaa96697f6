"""The cost-matrix entry point: ``COSTS`` (the registry behind ``--cost``), ``build_cost`` and
``cost_options``.

A cost matrix ``M`` has shape ``(Ks, Kt)``: rows are source classes, columns target classes,
``M >= 0``, normalised by ``normalize`` (``global``: ``max(M) = 1``; ``column``: each target
column mapped onto ``[0, 1]``; ``none``: the builder's scale). Small cost means "related".

A builder is a function ``builder(inputs: CostInputs) -> Tensor (Ks, Kt)``
(:mod:`tllib_jtln.cost.inputs`) registered with ``@register_cost(name, reads=...)``, which says
which training splits' features it reads (:func:`features_read`: a caller extracts those and no
others); it returns a non-negative float matrix and :func:`build_cost` does the checking and the
normalisation.
``file:PATH`` and ``taxonomy:FILE`` are parsed by :func:`build_cost` itself; the registry holds
``file:PATH`` and ``taxonomy:FILE`` entries only so that ``tllib-jtln list costs`` and the "did you
mean" suggestions show them.
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry
from .inputs import CostInputs, as_features, as_labels, check_inputs, check_source_per_class
from .paging import gather_rows
from .subsample import sample_per_class
from .taxonomy import TAXONOMY_PREFIX, taxonomy_cost

COSTS: Registry[Callable[["CostInputs"], Tensor]] = Registry("costs")

FILE_PREFIX = "file:"

#: The training splits whose features (with labels) a builder may read.
SPLITS = ("source", "target")


def register_cost(name: str, reads: tuple[str, ...] = SPLITS) -> Callable:
    """Decorator: register a builder in :data:`COSTS` as ``name``, reading the features of the
    training splits ``reads`` (a subset of :data:`SPLITS`; ``()``: class names and counts only)."""
    unknown = set(reads) - set(SPLITS)
    if unknown:
        raise ValueError(f"register_cost: reads must be a subset of {SPLITS}, got {reads!r}")

    def decorate(builder: Callable) -> Callable:
        builder.reads = tuple(reads)
        return COSTS.register(name)(builder)

    return decorate


def features_read(name: str, base: str = "knn") -> tuple[str, ...]:
    """The training splits (``"source"``, ``"target"``) whose features ``build_cost(name, ...)`` reads.

    ``shuffled`` reads what its ``base`` reads; ``file:PATH``, ``semantic`` and ``uniform`` read
    none, so a caller runs no feature pass for them. An unknown name is a :class:`UserError`.
    """
    if name == "shuffled" and base != "shuffled":
        name = base
    if name.startswith((FILE_PREFIX, TAXONOMY_PREFIX)):
        return ()
    return COSTS.get(name).reads


_OPTION_NAMES = [f.name for f in dataclasses.fields(CostInputs)
                 if f.name not in ("source_features", "source_labels", "target_features", "target_labels", "name")]


def cost_options(cfg: Any) -> dict:
    """The ``build_cost`` options held by a :class:`~tllib_jtln.config.Config`.

    Class names, counts and ``source_probs`` come from the data and the model, not the config:
    the caller adds them. ``metric`` and ``seed`` keep their library defaults (cosine; the
    ``shuffled`` permutation of seed 0, the same for every run of a suite).
    """
    return {
        "k": cfg.cost_k,
        "index": cfg.cost_index,
        "nprobe": cfg.cost_nprobe,
        "base": cfg.cost_base,
        "semantic_file": cfg.semantic_file,
        "normalize": cfg.cost_normalize,
        "source_per_class": cfg.cost_source_per_class,
    }


def build_cost(name: str, source_features: Optional[Tensor] = None, source_labels: Optional[Tensor] = None,
               target_features: Optional[Tensor] = None, target_labels: Optional[Tensor] = None,
               **options: Any) -> Tensor:
    """Build the ``(Ks, Kt)`` cost matrix named ``name`` (a ``--cost`` value).

    Args:
        name: a registered builder (``knn``, ``centroid``, ``source-head``, ``semantic``,
            ``uniform``, ``shuffled``), ``file:PATH`` (``.npy`` or ``.csv``) or ``taxonomy:FILE``
            (a class hierarchy, :mod:`tllib_jtln.cost.taxonomy`).
        source_features: ``(N_s, D)`` float, pooled pre-logit features of the source images
            (float16, e.g. a memory map, is read in chunks and never copied whole).
        source_labels: ``(N_s,)`` int in ``[0, Ks)``.
        target_features: ``(N_t, D)`` float.
        target_labels: ``(N_t,)`` int in ``[0, Kt)``.
        **options: ``num_source_classes``, ``num_target_classes`` (default: from the class names,
            else ``labels.max() + 1``), ``k`` (10), ``index`` (``auto``, ``flat``, ``ivfsq``, ``ivfpq``:
            :func:`~tllib_jtln.cost.index_choice.choose_index`; ``torch``: the matmul reference),
            ``nprobe`` (IVF lists visited), ``metric`` (``cosine`` or ``euclidean``), ``seed`` (0), ``base``
            (``knn``, for ``shuffled``), ``source_probs`` ((N_t, Ks) source-head softmax on the
            target images, for ``source-head``), ``source_classes`` / ``target_classes`` (names),
            ``semantic_file``, ``normalize`` (:data:`NORMALIZATIONS`, see :func:`normalize_cost`),
            ``source_per_class`` (None: every source row; N: a seeded draw of N rows per source
            class, :func:`~tllib_jtln.cost.subsample.sample_per_class` with ``seed``), ``log``
            (a ``str -> None`` callable told what was chosen: the search, the sample).

    Returns:
        ``(Ks, Kt)`` float32 CPU tensor, ``>= 0``, normalised as ``normalize`` says.

    Raises:
        UserError: an unknown name, a missing input the builder needs, inconsistent shapes or
            labels, or a bad file.
        TypeError: an unknown option.
    """
    unknown = [key for key in options if key not in _OPTION_NAMES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _OPTION_NAMES, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TypeError(f"build_cost: unknown option '{unknown[0]}'{hint} (options: {', '.join(_OPTION_NAMES)})")
    source_labels = as_labels(source_labels, "source_labels")
    per_class = options.get("source_per_class")
    check_source_per_class(per_class)
    if per_class is not None and source_features is not None and source_labels is not None:
        source_features, source_labels = _sample_source(source_features, source_labels, per_class,
                                                        options.get("seed", 0), options.get("log"))
    inputs = CostInputs(
        source_features=as_features(source_features, "source_features"),
        source_labels=source_labels,
        target_features=as_features(target_features, "target_features"),
        target_labels=as_labels(target_labels, "target_labels"),
        **options,
    )
    check_inputs(inputs)
    return build_from_inputs(str(name), inputs)


def _sample_source(features, labels: Tensor, per_class: int, seed: int, log) -> tuple[Tensor, Tensor]:
    """The rows :func:`sample_per_class` keeps, gathered (only they are read from a memory map)."""
    features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise UserError(f"build_cost: source_features has shape {tuple(features.shape)} but source_labels "
                        f"has {labels.shape[0]} rows")
    rows = sample_per_class(labels, per_class, seed)
    if log is not None:
        log(f"cost: source side sampled to at most {per_class} images per class: {rows.numel():,} of "
            f"{labels.shape[0]:,} rows (seed {seed})")
    return gather_rows(features, rows), labels[rows]


def build_from_inputs(name: str, inputs: CostInputs) -> Tensor:
    """Dispatch on ``name`` with already-checked inputs (``shuffled`` uses it for its base)."""
    inputs = dataclasses.replace(inputs, name=name)
    if name.startswith(FILE_PREFIX):
        from .io import load_cost_file

        path = name[len(FILE_PREFIX):]
        if not path:
            raise UserError("--cost file:PATH needs a path, e.g. --cost file:cost.npy")
        matrix = load_cost_file(path, inputs.source_classes, inputs.target_classes,
                                expected_shape=(inputs.num_source_classes, inputs.num_target_classes))
    elif name.startswith(TAXONOMY_PREFIX):
        matrix = _taxonomy(name[len(TAXONOMY_PREFIX):], inputs)
    else:
        builder = COSTS.get(name)
        matrix = builder(inputs)
    return _finish(matrix, name, inputs)


def _finish(matrix: Tensor, name: str, inputs: CostInputs) -> Tensor:
    matrix = torch.as_tensor(matrix).detach().to("cpu", torch.float32)
    expected = (inputs.num_source_classes, inputs.num_target_classes)
    if matrix.ndim != 2 or any(e is not None and e != s for e, s in zip(expected, matrix.shape)):
        raise AssertionError(f"cost '{name}' built a {tuple(matrix.shape)} matrix, expected {expected}")
    if not torch.isfinite(matrix).all():
        raise UserError(f"cost '{name}': the matrix has NaN or inf entries (check the features for NaN)")
    return normalize_cost(matrix.clamp_min(0.0), inputs.normalize, name).contiguous()


#: ``--cost-normalize`` values.
NORMALIZATIONS = ("global", "column", "none")


def normalize_cost(matrix: Tensor, mode: str = "global", name: str = "cost") -> Tensor:
    r"""Normalise a non-negative ``(Ks, Kt)`` cost.

    - ``global``: :math:`M / \max M`, so ``max = 1``; the columns keep their floors
      :math:`c_j = \min_i M_{ij}`.
    - ``column``: :math:`(M_{:,j} - c_j) / (\max_i M_{ij} - c_j)`, every target column onto
      ``[0, 1]`` with minimum 0. Since :math:`W(p, q; M + \mathbf 1 c^\top) = W(p, q; M) +
      \langle c, q\rangle`, a column floor acts as a prior against predicting class ``j``
      whenever ``q`` learns; this removes it.
    - ``none``: unchanged.

    A matrix (or, under ``column``, a column) with no spread becomes all ones: the uniform cost.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize: must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    if mode == "none" or matrix.numel() == 0:
        return matrix
    if mode == "global":
        top = matrix.max()
        if top > 0:
            return matrix / top
        warnings.warn(f"cost '{name}' is zero everywhere; using the uniform cost (all ones)", stacklevel=4)
        return torch.ones_like(matrix)
    floor = matrix.min(0, keepdim=True).values
    spread = matrix.max(0, keepdim=True).values - floor
    flat = spread <= 0
    return torch.where(flat, torch.ones_like(matrix), (matrix - floor) / spread.masked_fill(flat, 1.0))


def _taxonomy(path: str, inputs: CostInputs) -> Tensor:
    """``taxonomy:FILE``: tree distances between the named classes (:mod:`tllib_jtln.cost.taxonomy`)."""
    if not path:
        raise UserError("--cost taxonomy:FILE needs a hierarchy file, e.g. --cost taxonomy:configs/taxonomy/"
                        "fashion_mnist.yaml")
    if inputs.source_classes is None or inputs.target_classes is None:
        raise UserError(f"cost 'taxonomy:{path}' needs the class names of both sides (source_classes, target_classes)")
    return taxonomy_cost(path, inputs.source_classes, inputs.target_classes)


def _file_entry(inputs: CostInputs) -> Tensor:
    """``file:PATH``: a matrix read from ``PATH`` (``.npy`` or ``.csv``); see ``io.load_cost_file``."""
    raise UserError("cost 'file:PATH' names a file: use e.g. --cost file:cost.npy")


def _taxonomy_entry(inputs: CostInputs) -> Tensor:
    """``taxonomy:FILE``: tree distances between classes in a hierarchy file; see :mod:`tllib_jtln.cost.taxonomy`."""
    raise UserError("cost 'taxonomy:FILE' names a file: use e.g. --cost taxonomy:configs/taxonomy/fashion_mnist.yaml")


register_cost("file:PATH", reads=())(_file_entry)
register_cost("taxonomy:FILE", reads=())(_taxonomy_entry)
