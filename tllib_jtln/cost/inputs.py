"""What a cost builder reads: :class:`CostInputs` (features, labels, class counts and names,
options), and the checks :func:`~tllib_jtln.cost.build_cost` runs on it before any builder.

Features are ``(N, D)`` float tensors and labels ``(N,)`` integer class indices; the class
counts ``Ks``/``Kt`` come from (in order) the explicit count, the class names, the labels,
``source_probs``. Every problem is a one-line :class:`UserError` naming the argument.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .index_choice import INDEX_KINDS
from .paging import chunk_rows, row_chunks


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
    index: str = "auto"
    nprobe: Optional[int] = None
    metric: str = "cosine"
    seed: int = 0
    base: str = "knn"
    source_probs: Optional[Tensor] = None
    source_classes: Optional[Sequence[str]] = None
    target_classes: Optional[Sequence[str]] = None
    semantic_file: Optional[str] = None
    normalize: str = "global"
    source_per_class: Optional[int] = None
    log: Optional[Callable[[str], None]] = None
    # the cost being built, for messages (set by build_cost)
    name: str = field(default="", repr=False)

    # ------------------------------------------------------------------ helpers for builders
    def say(self, message: str) -> None:
        """Tell the caller what a builder chose (index, sampling): ``log(message)`` when given."""
        if self.log is not None:
            self.log(message)

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



#: Feature dtypes kept as they are (a float16 memory map is read in chunks, never copied whole).
FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

def as_features(x: Optional[Tensor], what: str) -> Optional[Tensor]:
    """``x`` as an ``(N, D)`` CPU float tensor: float16, bfloat16 and float32 kept (no copy of a
    memory-mapped tensor), other floats made float32; NaN or inf (checked in chunks of
    :func:`~tllib_jtln.cost.paging.chunk_rows` rows) is a UserError."""
    if x is None:
        return None
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2 or not x.is_floating_point():
        raise UserError(f"build_cost: {what} must be an (N, D) float tensor, got shape {tuple(x.shape)} "
                        f"dtype {x.dtype}")
    x = x.detach().to("cpu")
    if x.dtype not in FEATURE_DTYPES:
        x = x.float()
    if not all(torch.isfinite(chunk).all() for _, chunk in row_chunks(x, chunk_rows(x.shape[1]))):
        raise UserError(f"build_cost: {what} has NaN or inf entries (the model diverged or an image is broken)")
    return x


def as_labels(y: Optional[Tensor], what: str) -> Optional[Tensor]:
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


def check_inputs(inp: CostInputs) -> None:
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
    if inp.index not in (*INDEX_KINDS, "torch"):
        raise UserError(f"build_cost: index (--cost-index) must be {', '.join(INDEX_KINDS)}, got {inp.index!r}")
    if inp.metric not in ("cosine", "euclidean"):
        raise UserError(f"build_cost: metric must be cosine or euclidean, got {inp.metric!r}")
    if inp.nprobe is not None and (isinstance(inp.nprobe, bool) or not isinstance(inp.nprobe, int)
                                   or inp.nprobe < 1):
        raise UserError(f"build_cost: nprobe must be a positive integer, got {inp.nprobe!r}")
    check_source_per_class(inp.source_per_class)


def check_source_per_class(value) -> None:
    """``source_per_class`` is None or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"build_cost: source_per_class (--cost-source-per-class) must be a positive integer, "
                        f"got {value!r}")
