"""Assembling a run: the task, the method, the model and the loaders, built once, the same way for
``train``, ``test``, ``--phase analysis`` and the bare benchmark step.

:func:`assemble` seeds (``--seed``), refuses an unknown method before any data is read, builds
``task -> method (checks the settings against the data) -> model -> method.prepare_model(model)``
and moves the model to the device: :class:`Parts`. The rest of this module is what the engine
hands a method (:func:`make_context`: the :class:`~tllib_jtln.methods.SetupContext` and its feature
function) and the evaluation loaders of the run (:func:`eval_loader_of`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..config import Config
from ..cost import collect_features
from ..data import build_task, eval_loader
from ..errors import UserError
from ..methods import METHODS, SetupContext, build_method
from ..models import build_model, create_backbone
from . import distributed as D
from .evaluate import eval_batch_size
from .feature_cache import cached_features, serve_feature_requests
from .reporter import bars_wanted
from .seeding import seed_everything

@dataclass
class Parts:
    """Everything a run is made of, built the same way for training and testing."""

    cfg: Config
    task: Any
    model: nn.Module          # the unwrapped JointClassifier, on the device
    device: torch.device
    info: D.DistInfo
    log_dir: Path
    eval_batch_size: int = 64
    method: Any = None


def assemble(cfg: Config, device: torch.device, info: D.DistInfo, log_dir: str | Path) -> Parts:
    """Seed, then task, method, model on ``device`` and ``method.prepare_model`` (before the optimizer and
    DDP; what it copies of the model, e.g. the starting weights, is on the device too; layers it swaps
    in are moved there after)."""
    seed_everything(cfg.seed)
    METHODS.get(cfg.method)  # an unknown method fails before any data is read
    task = build_run_task(cfg)
    method = build_method(cfg, task)  # checks the settings against the data
    model = build_model(cfg, task).to(device)
    method.prepare_model(model)
    return Parts(cfg=cfg, task=task, model=model.to(device), device=device, info=info, log_dir=Path(log_dir),
                 eval_batch_size=eval_batch_size(cfg, task.image_size, device), method=method)


def build_run_task(cfg: Config):
    """``build_task(cfg, data_config)``.

    ``--transforms timm`` needs the backbone's data config before the task exists; it is read
    from a weight-less instance of the backbone (``pretrained=False``), which has the same config.
    """
    data_config = None
    if cfg.transforms == "timm":
        probe = create_backbone(cfg.arch, pretrained=False, image_size=cfg.image_size)
        data_config = getattr(probe, "data_config", None)
        del probe
    return build_task(cfg, data_config=data_config)


def build_task_and_model(cfg: Config) -> tuple[Any, nn.Module]:
    """The task, then ``build_model(cfg, task)`` (no method, no seeding: for tests and tools)."""
    task = build_run_task(cfg)
    return task, build_model(cfg, task)


def eval_loader_of(parts: Parts, dataset, shard: bool = True):
    """A sequential evaluation loader over ``dataset`` (this rank's shard under DDP unless ``shard=False``)."""
    info = parts.info
    if shard and info.enabled:
        return eval_loader(dataset, parts.eval_batch_size, parts.cfg.workers, rank=info.rank,
                           world_size=info.world_size)
    return eval_loader(dataset, parts.eval_batch_size, parts.cfg.workers)


def source_class_names(model: nn.Module, task) -> Optional[list]:
    """Names of the model's source-head classes: the task's source classes, or, source-free, the
    pretraining classes of the backbone's head (``JointClassifier.source_classes``); None without a head."""
    ks = int(getattr(model, "num_source_classes", 0) or 0)
    if ks == 0:
        return None
    names = getattr(model, "source_classes", None) or getattr(task, "source_classes", None)
    if not names or len(names) != ks:
        names = [f"class_{i}" for i in range(ks)]
    return list(names)


# ----------------------------------------------------------------------------- setup context
def make_feature_fn(parts: Parts, state: dict):
    """``features(split) -> (features (N, D), labels (N,))`` for the method's :class:`SetupContext`.

    ``split`` is ``"source"`` (the source training set) or ``"target"`` (the labelled target
    training set), seen through the evaluation transform (``TransferTask.eval_view``: never an
    augmented view, so two passes over the same weights give the same features). Features are
    the pooled pre-logits ``model.forward_features(x)`` of the current
    model in eval mode over the whole split (called on the main process: methods build their
    state there and the engine broadcasts it), memoised per epoch
    (``state["epoch"]``) and, with ``--feature-cache DIR``, stored on disk in fp16 by
    :func:`~tllib_jtln.engine.feature_cache.cached_features` under a key naming the images'
    content and a hash of the trunk's weights (so runs that start from the same weights on the
    same images share the store, and a second run forwards no image). Under DDP every rank
    forwards its share of the store's shards (:func:`serve_feature_shares`).

    A pass leaves torch's global RNG (CPU and the run's CUDA device) as it found it: the evaluation
    loader draws its base seed from it, and a refresh (or a cache hit instead of a pass) must not
    change the dropout masks of the steps after it, so a run and its control stay paired.
    """
    memo: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    cfg = parts.cfg

    def features(split: str):
        if split not in ("source", "target"):
            raise ValueError(f"features(split): split must be 'source' or 'target', got {split!r}")
        if (parts.task.source_train if split == "source" else parts.task.target_train) is None:
            raise UserError(f"method '{cfg.method}' asked for {split} features, but the task has no "
                            f"{split} training set; give --source-data/--source-root")
        dataset = parts.task.eval_view(split)
        epoch = int(state.get("epoch", 0))
        key = (split, epoch)
        if key not in memo:
            loader_for = whole_loader(parts)
            with rng_untouched(parts):
                cached = None
                if cfg.feature_cache:
                    cached = cached_features(parts, split, dataset, Path(cfg.feature_cache).expanduser(), loader_for,
                                             say=print if parts.info.is_main else lambda message: None)
                feats, labels = cached or collect_features(parts.model.forward_features, loader_for(dataset),
                                                           progress=bars_wanted(cfg.progress, parts.info.is_main))
            for old in [k for k in memo if k[1] != epoch]:  # keep the current epoch's features only
                del memo[old]
            memo[key] = (feats, labels)
        return memo[key]

    return features


def whole_loader(parts: Parts):
    """``dataset -> loader`` over the whole of ``dataset`` on every rank (a feature pass: no DDP sharding)."""
    return lambda data: eval_loader_of(parts, data, shard=False)


def rng_untouched(parts: Parts):
    """A context in which a feature pass leaves torch's global RNG (CPU and the run's CUDA device) as it was."""
    return torch.random.fork_rng(devices=[parts.device] if parts.device.type == "cuda" else [])


def serve_feature_shares(parts: Parts) -> None:
    """Every rank, right after each method hook (:func:`~tllib_jtln.engine.state.share_method_state`):
    under DDP with ``--feature-cache``, the ranks other than 0 forward their shards of the stores
    rank 0 read in the hook (:func:`~tllib_jtln.engine.feature_cache.serve_feature_requests`)."""
    with rng_untouched(parts):
        serve_feature_requests(parts, whole_loader(parts))


def make_context(parts: Parts, state: dict):
    """The method's :class:`~tllib_jtln.methods.SetupContext` (``state``: the live ``{"epoch": ...}``)."""
    task = parts.task
    return SetupContext(model=parts.model, device=parts.device, feature_fn=make_feature_fn(parts, state),
                        source_classes=source_class_names(parts.model, task),
                        target_classes=task.target_classes, log_dir=parts.log_dir,
                        is_main=parts.info.is_main, dataset_fn=task.eval_view)
