"""The cost-matrix entry point: ``COSTS`` (the registry behind ``--cost``), ``build_cost`` and
``cost_options``.

A cost matrix ``M`` has shape ``(Ks, Kt)``: rows are source classes, columns target classes,
``M >= 0``, normalised by ``normalize`` (``global``: ``max(M) = 1``; ``column``: each target
column mapped onto ``[0, 1]``; ``none``: the builder's scale). Small cost means "related".

A builder is a function ``builder(inputs: CostInputs) -> Tensor (Ks, Kt)`` registered with
``@COSTS.register(name)``; it returns a non-negative float matrix and :func:`build_cost` does the
checking and the normalisation. ``file:PATH`` is parsed by :func:`build_cost` itself; the
registry holds a ``file:PATH`` entry only so that ``tllib-jtln list costs`` and the "did you
mean" suggestions show it.
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry

COSTS: Registry[Callable[["CostInputs"], Tensor]] = Registry("costs")

FILE_PREFIX = "file:"


@dataclass
class CostInputs:
    """Everything a builder may read: the features, the labels and the options of ``build_cost``.

    Feature tensors are ``(N, D)`` float on the CPU, labels ``(N,)`` int64; any of them may be
    ``None`` when the chosen builder does not need them (``uniform``, ``semantic``, ``file:``,
    ``source-head`` without source data). ``num_source_classes`` / ``num_target_classes`` are the
    resolved counts, or ``None`` when nothing told them.
    """

    source_features: Optional[Tensor] = None
    source_labels: Optional[Tensor] = None
    target_features: Optional[Tensor] = None
    target_labels: Optional[Tensor] = None
    num_source_classes: Optional[int] = None
    num_target_classes: Optional[int] = None
    k: int = 10
    index: str = "flat"
    nprobe: Optional[int] = None
    metric: str = "cosine"
    seed: int = 0
    base: str = "knn"
    source_probs: Optional[Tensor] = None
    source_classes: Optional[Sequence[str]] = None
    target_classes: Optional[Sequence[str]] = None
    semantic_file: Optional[str] = None
    normalize: str = "global"
    # the cost being built, for messages (set by build_cost)
    name: str = field(default="", repr=False)

    # ------------------------------------------------------------------ helpers for builders
    @property
    def ks(self) -> int:
        """The number of source classes; a UserError naming the fix when unknown."""
        return self._known(self.num_source_classes, "source")

    @property
    def kt(self) -> int:
        """The number of target classes; a UserError naming the fix when unknown."""
        return self._known(self.num_target_classes, "target")

    def _known(self, count: Optional[int], side: str) -> int:
        if count is None:
            raise UserError(f"cost '{self.name}': the number of {side} classes is unknown; pass "
                            f"num_{side}_classes, {side}_classes or {side}_labels")
        return count

    def require_features(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(source_features, source_labels, target_features, target_labels)``, all present."""
        missing = [n for n in ("source_features", "source_labels", "target_features", "target_labels")
                   if getattr(self, n) is None]
        if missing:
            raise UserError(f"cost '{self.name}' is built from features: {', '.join(missing)} missing "
                            f"(a source-free run has no source features; use --cost source-head, "
                            f"semantic, uniform or file:PATH)")
        return self.source_features, self.source_labels, self.target_features, self.target_labels  # type: ignore

    def source_name(self, i: int) -> str:
        if self.source_classes is not None and i < len(self.source_classes):
            return f"source class {i} '{self.source_classes[i]}'"
        return f"source class {i}"

    def target_name(self, j: int) -> str:
        if self.target_classes is not None and j < len(self.target_classes):
            return f"target class {j} '{self.target_classes[j]}'"
        return f"target class {j}"


_OPTION_NAMES = [f.name for f in dataclasses.fields(CostInputs)
                 if f.name not in ("source_features", "source_labels", "target_features", "target_labels", "name")]


def cost_options(cfg: Any) -> dict:
    """The ``build_cost`` options held by a :class:`~tllib_jtln.config.Config`.

    Class names, counts and ``source_probs`` come from the data and the model, not the config:
    the caller adds them.
    """
    return {
        "k": cfg.cost_k,
        "index": cfg.cost_index,
        "nprobe": cfg.cost_nprobe,
        "metric": cfg.cost_metric,
        "seed": cfg.cost_seed,
        "base": cfg.cost_base,
        "semantic_file": cfg.semantic_file,
        "normalize": cfg.cost_normalize,
    }


def build_cost(name: str, source_features: Optional[Tensor] = None, source_labels: Optional[Tensor] = None,
               target_features: Optional[Tensor] = None, target_labels: Optional[Tensor] = None,
               **options: Any) -> Tensor:
    """Build the ``(Ks, Kt)`` cost matrix named ``name`` (a ``--cost`` value).

    Args:
        name: a registered builder (``knn``, ``centroid``, ``source-head``, ``semantic``,
            ``uniform``, ``shuffled``) or ``file:PATH`` (``.npy`` or ``.csv``).
        source_features: ``(N_s, D)`` float, pooled pre-logit features of the source images.
        source_labels: ``(N_s,)`` int in ``[0, Ks)``.
        target_features: ``(N_t, D)`` float.
        target_labels: ``(N_t,)`` int in ``[0, Kt)``.
        **options: ``num_source_classes``, ``num_target_classes`` (default: from the class names,
            else ``labels.max() + 1``), ``k`` (10), ``index`` (``flat``, ``ivf``, ``hnsw``, or
            ``torch`` for the matmul reference), ``nprobe`` (IVF lists visited; default about
            ``sqrt(nlist)``), ``metric`` (``cosine`` or ``euclidean``), ``seed`` (0), ``base``
            (``knn``, for ``shuffled``), ``source_probs`` ((N_t, Ks) source-head softmax on the
            target images, for ``source-head``), ``source_classes`` / ``target_classes`` (names),
            ``semantic_file``, ``normalize`` (:data:`NORMALIZATIONS`, see :func:`normalize_cost`).

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
    inputs = CostInputs(
        source_features=_features(source_features, "source_features"),
        source_labels=_labels(source_labels, "source_labels"),
        target_features=_features(target_features, "target_features"),
        target_labels=_labels(target_labels, "target_labels"),
        **options,
    )
    _check_inputs(inputs)
    return build_from_inputs(str(name), inputs)


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


# ---------------------------------------------------------------------------- input checks
def _features(x: Optional[Tensor], what: str) -> Optional[Tensor]:
    if x is None:
        return None
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2 or not x.is_floating_point():
        raise UserError(f"build_cost: {what} must be an (N, D) float tensor, got shape {tuple(x.shape)} "
                        f"dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise UserError(f"build_cost: {what} has NaN or inf entries (the model diverged or an image is broken)")
    return x


def _labels(y: Optional[Tensor], what: str) -> Optional[Tensor]:
    if y is None:
        return None
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise UserError(f"build_cost: {what} must be an (N,) integer tensor, got shape {tuple(y.shape)} "
                        f"dtype {y.dtype}")
    y = y.detach().to("cpu", torch.int64)
    if y.numel() and int(y.min()) < 0:
        raise UserError(f"build_cost: {what} has negative labels; labels are class indices 0..K-1")
    return y


def _count(given: Optional[int], names: Optional[Sequence[str]], labels: Optional[Tensor],
           probs_width: Optional[int], side: str) -> Optional[int]:
    """Resolve K from (in order) the explicit count, the class names, the labels, ``source_probs``."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise UserError(f"build_cost: num_{side}_classes must be a positive integer, got {given!r}")
        k = given
    elif names is not None:
        k = len(names)
    elif labels is not None and labels.numel():
        k = int(labels.max()) + 1
    else:
        k = probs_width
    if k is not None and names is not None and len(names) != k:
        raise UserError(f"build_cost: {len(names)} {side} class names for {k} {side} classes; "
                        f"pass one name per class")
    if k is not None and labels is not None and labels.numel() and int(labels.max()) >= k:
        raise UserError(f"build_cost: {side} label {int(labels.max())} is out of range for {k} {side} classes")
    return k


def _check_inputs(inp: CostInputs) -> None:
    for side in ("source", "target"):
        feats, labels = getattr(inp, f"{side}_features"), getattr(inp, f"{side}_labels")
        if feats is not None and labels is not None and feats.shape[0] != labels.shape[0]:
            raise UserError(f"build_cost: {side}_features has {feats.shape[0]} rows but {side}_labels "
                            f"has {labels.shape[0]}")
        names = getattr(inp, f"{side}_classes")
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise UserError(f"build_cost: {side}_classes must be a list of class-name strings")
            setattr(inp, f"{side}_classes", list(names))
    if (inp.source_features is not None and inp.target_features is not None
            and inp.source_features.shape[1] != inp.target_features.shape[1]):
        raise UserError(f"build_cost: source features have dimension {inp.source_features.shape[1]} but "
                        f"target features {inp.target_features.shape[1]}; extract both with the same model")
    probs_width = None
    if inp.source_probs is not None:
        if not isinstance(inp.source_probs, Tensor):
            inp.source_probs = torch.as_tensor(inp.source_probs)
        if inp.source_probs.ndim == 2:
            probs_width = int(inp.source_probs.shape[1])
    inp.num_source_classes = _count(inp.num_source_classes, inp.source_classes, inp.source_labels,
                                    probs_width, "source")
    inp.num_target_classes = _count(inp.num_target_classes, inp.target_classes, inp.target_labels,
                                    None, "target")
    if isinstance(inp.k, bool) or not isinstance(inp.k, int) or inp.k < 1:
        raise UserError(f"build_cost: k (--cost-k) must be a positive integer, got {inp.k!r}")
    if inp.index not in ("flat", "ivf", "hnsw", "torch"):
        raise UserError(f"build_cost: index (--cost-index) must be flat, ivf or hnsw, got {inp.index!r}")
    if inp.metric not in ("cosine", "euclidean"):
        raise UserError(f"build_cost: metric (--cost-metric) must be cosine or euclidean, got {inp.metric!r}")
    if inp.nprobe is not None and (isinstance(inp.nprobe, bool) or not isinstance(inp.nprobe, int)
                                   or inp.nprobe < 1):
        raise UserError(f"build_cost: nprobe must be a positive integer, got {inp.nprobe!r}")


def _file_entry(inputs: CostInputs) -> Tensor:
    """``file:PATH``: a matrix read from ``PATH`` (``.npy`` or ``.csv``); see ``io.load_cost_file``."""
    raise UserError("cost 'file:PATH' names a file: use e.g. --cost file:cost.npy")


COSTS.register("file:PATH")(_file_entry)
