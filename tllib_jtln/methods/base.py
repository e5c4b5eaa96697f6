"""The method contract: a small object that turns a batch into named loss terms.

The engine's order of calls (it never special-cases a method)::

    method = build_method(cfg, task)          # checks the settings against the data
    model = build_model(cfg, task).to(device)
    method.prepare_model(model)               # before DDP wrapping and the optimizer (also on resume)
    optimizer = SGD(method.param_groups(model, cfg.lr), ...)   # default: model.get_parameters(lr)
    method.setup(ctx)                         # once: cost matrix, relation, ... (or load_state_dict on resume)
    for index, stage in enumerate(method.stages()):   # each stage: its own optimizer, schedule and loader
        method.on_stage_start(index, ctx)
        for epoch in ...:                          # --epochs x --iters-per-epoch steps per stage
            method.on_epoch_start(epoch, ctx)
            for step in ...:
                terms = method.losses(ddp_model, batch, progress)   # {"ce_target": ..., "ot": ...}
                sum(terms.values()).backward()
                stats = method.step_stats()        # {"ot_iters": ...}: logged, not optimised
            warnings = method.epoch_warnings(means_of_the_epoch)

``model`` in :meth:`Method.losses` is a callable returning ``(source_logits (B, Ks),
target_logits (B, Kt))``, or with ``model(x, with_features=True)`` a
:class:`~tllib_jtln.models.classifier.ForwardOutput` that adds the features the target head reads
``(B, F)``: possibly a DDP wrapper, so methods only ever call ``model(x)``, once per step.

What a method may ask for, all from its own file:

- the model itself (unwrapped, on its device, at its starting weights) in :meth:`Method.prepare_model`:
  a frozen copy (:func:`~tllib_jtln.methods.regularizer.frozen_copy`), feature-map hooks
  (:class:`~tllib_jtln.models.feature_maps.FeatureMapRecorder` on ``model.backbone.feature_layers()``);
- the features of the batch: ``model(x, with_features=True)`` (or :func:`forward_joint`);
- the optimiser's parameter groups: :meth:`Method.param_groups`;
- the data, in :meth:`Method.setup`: ``ctx.features(split)``, ``ctx.dataset(split)``;
- TLlib's regularisers (:mod:`~tllib_jtln.methods.regularizer`): a method with
  ``takes_regularizers = True`` adds ``--with`` ones (and its ``built_in`` ones) by calling
  :meth:`Method.regularizer_terms` with the :class:`~tllib_jtln.methods.regularizer.TargetView` of
  its forward pass. Subclasses that override :meth:`prepare_model`, :meth:`setup` or
  :meth:`switches` call ``super()`` (the regularisers' hooks run there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..models.classifier import ForwardOutput
from ..registry import Registry
from .regularizer import REGULARIZERS, Regularizer, TargetView, check_combination

FeatureFn = Callable[[str], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class Stage:
    """One training stage: which streams it reads and whether its epochs select the best checkpoint.

    Every stage runs the full schedule (``--epochs`` x ``--iters-per-epoch`` steps, its own SGD
    optimizer, momentum buffers and MultiStepLR), so a two-stage method (``consecutive``) sees
    as many source images as ``joint`` in its first stage and as many target images as ``erm``
    in its second. Only stages that train the target head (``selects``) are validated.

    ``idle_parameters``: some trainable parameters get no gradient in this stage's steps (a head
    whose logits its loss never reads, as the target head in :data:`SOURCE_STAGE`). Under
    DistributedDataParallel only such a stage has it search each step's graph for them
    (``find_unused_parameters``); a stage that leaves one idle without saying so stops a DDP run
    at its second step. The set of parameters with a gradient must be the same at every step.
    """

    name: str
    uses_source: bool
    uses_target: bool
    selects: bool = True
    idle_parameters: bool = False


@dataclass
class SetupContext:
    """What a method may use in :meth:`Method.setup` and :meth:`Method.on_epoch_start`.

    Attributes:
        model: the unwrapped :class:`~tllib_jtln.models.JointClassifier`.
        device: where the model lives.
        feature_fn: engine-provided ``split -> (features (N, D) float, labels (N,) int64)`` for
            ``split in {"source", "target"}`` (the training images, eval transforms, model in
            eval mode, ``model.forward_features``); :meth:`features` caches its results.
        source_classes / target_classes: class names (source: None when unknown).
        log_dir: the run's log folder (or None), is_main: rank 0 under DDP.
        dataset_fn: engine-provided ``split -> Dataset`` of ``(image (C, H, W), label)`` items, the
            training images of ``split`` through the evaluation transform (:meth:`dataset`).
    """

    model: nn.Module
    device: torch.device
    feature_fn: FeatureFn
    source_classes: Optional[list] = None
    target_classes: Optional[list] = None
    log_dir: Optional[Path] = None
    is_main: bool = True
    dataset_fn: Optional[Callable[[str], Any]] = None
    _cache: dict = field(default_factory=dict, repr=False)

    def features(self, split: str, refresh: bool = False) -> tuple[Tensor, Tensor]:
        """``(features (N, D), labels (N,))`` of the training images of ``split``; cached unless ``refresh``."""
        if split not in ("source", "target"):
            raise ValueError(f"split must be 'source' or 'target', got {split!r}")
        if refresh or split not in self._cache:
            self._cache[split] = self.feature_fn(split)
        return self._cache[split]

    def dataset(self, split: str):
        """The training images of ``split`` (``source``/``target``) as a dataset, evaluation transform."""
        if self.dataset_fn is None:
            raise RuntimeError("SetupContext.dataset: the engine gave no dataset_fn")
        return self.dataset_fn(split)


class Method:
    """Base class. Subclasses set ``uses_source`` / ``uses_target`` and implement :meth:`losses`.

    ``needs_source_data = True`` makes the constructor refuse a task without source images.
    ``takes_regularizers = True`` accepts ``cfg.regularizers`` (``--with``); ``built_in`` names
    regularisers the method always has (``bss`` is ``erm`` with ``built_in = ("bss",)``).
    ``trade_off_field`` names the ``Config`` field TLlib's ``--trade-off`` sets for this method
    (None: the method has no trade-off and ``--trade-off`` is refused); ``knobs`` the ``Config``
    fields only this method reads (given on the command line for another method: refused).

    Args:
        cfg: the run's :class:`~tllib_jtln.config.Config`.
        task: the :class:`~tllib_jtln.data.TransferTask` (``source_train`` None: no source data).
    """

    name = ""
    uses_source: bool = True
    uses_target: bool = True
    needs_source_data: bool = False
    takes_regularizers: bool = False
    built_in: tuple[str, ...] = ()
    trade_off_field: Optional[str] = None
    knobs: tuple[str, ...] = ()

    def __init__(self, cfg: Any, task: Any):
        self.cfg = cfg
        self.task = task
        self.has_source_data = getattr(task, "source_train", None) is not None
        if self.needs_source_data:
            self.require_source_data()
        added = list(getattr(cfg, "regularizers", None) or [])
        check_combination(self.name, self.takes_regularizers, self.built_in, added)
        self.regularizers: list[Regularizer] = [REGULARIZERS.get(n)(cfg) for n in (*self.built_in, *added)]

    def require_source_data(self) -> None:
        if not self.has_source_data:
            raise UserError(f"--method {self.name} needs source data: give --source-data (or use the embedded task)")

    # ------------------------------------------------------------------ hooks
    def stages(self) -> list[Stage]:
        """The training stages, in order. Default: one stage over the streams the method uses."""
        return [Stage(self.name, self.uses_source, self.uses_target)]

    def on_stage_start(self, index: int, ctx: "SetupContext") -> None:
        """At the start of stage ``index`` of :meth:`stages`, and again when a run resumes inside it (after
        :meth:`load_state_dict`): keep what the restored state already holds. Called on every rank;
        build state (:meth:`state_keys`) on the main process only (``ctx.is_main``): the engine
        broadcasts it after the hook, as after :meth:`on_epoch_start`."""

    def step_stats(self) -> dict[str, float]:
        """Diagnostics of the last :meth:`losses` call (logged as per-epoch means, never optimised)."""
        return {}

    def epoch_warnings(self, means: dict[str, float]) -> list[str]:
        """Warnings for the user from an epoch's mean :meth:`step_stats`. Default: none."""
        return []

    def switches(self) -> dict[str, Any]:
        """The method's resolved settings, as they ran (recorded in ``summary.json``): its own knobs and the
        regularisers'."""
        out: dict[str, Any] = {knob: getattr(self.cfg, knob) for knob in self.knobs}
        if not self.regularizers:
            return out
        out["regularizers"] = [r.name for r in self.regularizers]
        for reg in self.regularizers:
            out.update(reg.switches())
        return out

    def prepare_model(self, model: nn.Module) -> None:
        """Adjust the fresh model (on its device, at its starting weights) before DDP and the optimizer (e.g.
        freeze an unused head); the regularisers take what they keep of it. Runs on resume too."""
        for reg in self.regularizers:
            reg.prepare_model(model)

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict]:
        """The optimiser's parameter groups: TLlib's (``model.get_parameters(base_lr)``: backbone 0.1x
        under ``--finetune``, each group with a ``name``), reshaped by each regulariser."""
        groups = model.get_parameters(base_lr)
        for reg in self.regularizers:
            groups = reg.param_groups(groups)
        return groups

    def setup(self, ctx: SetupContext) -> None:
        """Once before training (not needed on resume after :meth:`load_state_dict`): the regularisers' setup."""
        for reg in self.regularizers:
            reg.setup(ctx)

    def regularizer_terms(self, view: TargetView) -> dict[str, Tensor]:
        """The regularisers' named, weighted terms for one step, from the target images' :class:`TargetView`."""
        terms: dict[str, Tensor] = {}
        for reg in self.regularizers:
            terms.update(reg.terms(view))
        return terms

    def on_epoch_start(self, epoch: int, ctx: SetupContext) -> None:
        """At the start of each epoch (0-based, counted over all stages; stage ``epoch // cfg.epochs``),
        on every rank (state built on ``ctx.is_main`` only, as in :meth:`on_stage_start`). Default: nothing."""

    def losses(self, model: Callable[[Tensor], tuple[Tensor, Tensor]], batch: Any,
               progress: float) -> dict[str, Tensor]:
        """Named, already-weighted scalar loss terms for one batch; ``progress`` in [0, 1]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _owners(self) -> dict[str, tuple[Any, str]]:
        """Every state key -> (the object holding it, its attribute): the method's, then ``reg.name/key``."""
        owners = {key: attribute_owner(self, key) for key in self.state_keys()}
        for reg in self.regularizers:
            owners.update({f"{reg.name}/{key}": attribute_owner(reg, key) for key in reg.state_keys()})
        return owners

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors the method and its regularisers own (:meth:`state_keys`: cost matrix, relation,
        channel attention) that are set; the engine checkpoints and broadcasts them."""
        state = {key: getattr(obj, attr, None) for key, (obj, attr) in self._owners().items()}
        return {key: value for key, value in state.items() if value is not None}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Set the state from ``state``; the tensors are copied (a method may change its state in place, as
        Bi-Tuning's queues, and must not change the caller's)."""
        owners = self._owners()
        unknown = set(state) - set(owners)
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        for key, value in state.items():
            setattr(*owners[key], value.clone())

    def state_keys(self) -> tuple[str, ...]:
        """Names of the tensor attributes the method owns, dotted for an attribute of one of its modules
        (``"loss.queue_z.keys"``: a buffer). Default: none."""
        return ()

    def artifacts(self) -> dict[str, Tensor]:
        """Tensors the engine saves and plots (``{"cost": M}``): the state, detached, on the CPU."""
        return {key: value.detach().cpu() for key, value in self.state_dict().items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uses_source={self.uses_source}, uses_target={self.uses_target})"


# ---------------------------------------------------------------------------------------------
def attribute_owner(obj: Any, path: str) -> tuple[Any, str]:
    """``(holder, name)`` of the dotted attribute ``path`` of ``obj`` (``"loss.queue_z.keys"`` ->
    ``(obj.loss.queue_z, "keys")``), so that ``getattr``/``setattr`` on the pair reads or replaces it."""
    *parents, name = path.split(".")
    for parent in parents:
        obj = getattr(obj, parent)
    return obj, name


def forward_joint(model: Callable[..., ForwardOutput], x_s: Optional[Tensor],
                  x_t: Optional[Tensor]) -> tuple[Optional[ForwardOutput], Optional[ForwardOutput]]:
    """One forward pass over ``cat(x_s, x_t)``; returns the :class:`ForwardOutput` rows of each side
    ``(source_logits, target_logits, features)``, None for a missing side. The target side sits at
    rows ``target_rows(x_s)`` of the pass."""
    xs = [x for x in (x_s, x_t) if x is not None]
    if not xs:
        raise ValueError("forward_joint: the batch has neither source nor target images")
    out = model(torch.cat(xs) if len(xs) > 1 else xs[0], with_features=True)
    n_s = 0 if x_s is None else x_s.shape[0]
    out_s = out.rows(slice(None, n_s)) if x_s is not None else None
    out_t = out.rows(target_rows(x_s)) if x_t is not None else None
    return out_s, out_t


def target_rows(x_s: Optional[Tensor]) -> slice:
    """Where the target images sit in :func:`forward_joint`'s pass: after the ``B_s`` source images."""
    return slice(0 if x_s is None else x_s.shape[0], None)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy in float32 (safe under autocast)."""
    return F.cross_entropy(logits.float(), labels)


#: The first stage of the two-stage methods (``consecutive``, ``co_tuning``, ``jtln --source-stage``):
#: the source set alone, not validated; the target head is idle.
SOURCE_STAGE = Stage("source", uses_source=True, uses_target=False, selects=False, idle_parameters=True)


def source_stage_losses(model: Callable[[Tensor], tuple[Tensor, Tensor]], batch: Any) -> dict[str, Tensor]:
    """The loss of :data:`SOURCE_STAGE`: ``{"ce_source": CE(h_s(g(x_s)), y_s)}`` on the source images
    ``x_s`` (B_s, C, H, W) alone."""
    source_logits, _ = model(batch.x_s)
    return {"ce_source": cross_entropy(source_logits, batch.y_s)}


METHODS: Registry[type[Method]] = Registry("methods")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("jtln")`` registers a :class:`Method` subclass and sets its ``name``."""
    register = METHODS.register(name)

    def decorate(cls: type[Method]) -> type[Method]:
        cls.name = name
        return register(cls)

    return decorate


def build_method(cfg: Any, task: Any) -> Method:
    """The method named ``cfg.method`` (UserError with close names when unknown)."""
    return METHODS.get(cfg.method)(cfg, task)


@torch.no_grad()
def source_head_probs(model: nn.Module, features: Tensor, device: torch.device | str | None = None,
                      chunk: int = 4096) -> Tensor:
    """Source-head softmax ``(N, Ks)`` on trunk features ``(N, D)``, the model in eval mode, on the CPU.

    ``model`` is the unwrapped :class:`~tllib_jtln.models.JointClassifier` (its ``forward_head``).
    """
    was_training = model.training
    model.eval()
    try:
        device = device if device is not None else next(model.parameters()).device
        out = [torch.softmax(model.forward_head(features[i:i + chunk].to(device))[0].float(), dim=1).cpu()
               for i in range(0, features.shape[0], chunk)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else features.new_zeros(0, getattr(model, "num_source_classes", 0))
