"""Building a :class:`~tllib_jtln.data.transfer_task.TransferTask` from a run's settings.

:func:`build_task` turns a :class:`~tllib_jtln.config.Config` into a :class:`TransferTask`:

- no ``-d`` (or ``-d FashionMNIST``): the embedded Fashion-MNIST task
  (:mod:`tllib_jtln.data.fashion_mnist`), which brings its own source set
  (``--source-data none``: its target classes alone, for source-free runs with a pretrained head);
- ``-d NAME --root DIR``: target train = ``image_list/train_{sr}.txt`` (or, with ``-K``, ``K``
  seeded images per class of it), target test = ``image_list/test.txt`` (or the dataset's native
  files). The validation split follows ``--val-split`` (:mod:`tllib_jtln.data.val_split`): by
  default (``rest``) ``--val-per-class`` seeded images per class from the training pool outside
  the training set, or, at ``-sr 100`` without ``-K`` (``train``), carved from the list itself
  (at most half of each class).
- ``--source-data NAME --source-root DIR``: the source set (its training split at -sr 100),
  capped at ``--source-per-class`` seeded images per class when given.

``target_val`` is None under ``--val-split none``, with ``--val-per-class 0`` or when no class has
images to spare; under ``--val-split test`` it is the test set.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..errors import UserError
from .datasets import DATASETS, canonical_name
from .fashion_mnist import build_fashion_mnist_task
from .list_files import check_labels
from .sampling import STREAM_SOURCE, cap_per_class, data_seed
from .transfer_task import TransferTask
from .transforms import build_transforms, check_tllib_options, embedded_transforms, tllib_options
from .val_split import carve_target, outside_list, resolve_val_split

__all__ = ["TransferTask", "build_task", "is_embedded"]


def is_embedded(cfg) -> bool:
    """True when the run uses the embedded Fashion-MNIST task."""
    return cfg.data is None or str(cfg.data).replace("-", "").replace("_", "").lower() == "fashionmnist"


def build_task(cfg, data_config: Optional[dict] = None) -> TransferTask:
    """The :class:`TransferTask` of ``cfg`` (``data_config``: timm's, for ``--transforms timm``)."""
    if cfg.transforms == "timm" and not data_config:
        raise UserError("--transforms timm needs the backbone's data config (timm backbones provide it); "
                        "use --transforms tllib or small for this backbone")
    if is_embedded(cfg):
        return _embedded_task(cfg, data_config)

    chosen = [flag for flag, value in (("--source-classes", cfg.source_classes),
                                       ("--target-classes", cfg.target_classes), ("--invert", cfg.invert),
                                       ("--class-split", cfg.class_split)) if value]
    if chosen:
        raise UserError(f"{', '.join(chosen)}: options of the embedded Fashion-MNIST task, not of -d {cfg.data}; "
                        f"drop them (a dataset's classes come from its folders or list files)")
    name = canonical_name(cfg.data)
    builder = DATASETS.get(name)
    kind = "tllib" if cfg.transforms == "auto" else cfg.transforms
    train_tf, eval_tf, size = build_transforms(kind, cfg.image_size, data_config, tllib_options(cfg))
    common = dict(download=cfg.download, skip_bad_images=cfg.skip_bad_images)
    pool = builder(cfg.root, "train", sample_rate=cfg.sample_rate, **common)
    test = builder(cfg.root, "test", sample_rate=100, transform=eval_tf, **common)
    check_labels(test, len(pool.classes), "test")
    choice = resolve_val_split(cfg)
    target_train, target_val = carve_target(pool, pool.targets, choice, cfg.num_samples_per_class,
                                            cfg.val_per_class, data_seed(cfg), (train_tf, eval_tf), test, name)
    if choice == "rest" and cfg.num_samples_per_class is None:
        target_val = _outside_sampled_list(builder, cfg, pool, common, eval_tf, name)
    source, source_classes = _source_set(cfg, train_tf, common)
    return TransferTask(name=name, target_train=target_train, target_val=target_val, target_test=test,
                        target_classes=list(pool.classes), source_train=source, source_classes=source_classes,
                        in_chans=3, image_size=size, eval_transform=eval_tf)


def _embedded_task(cfg, data_config: Optional[dict]) -> TransferTask:
    """The embedded Fashion-MNIST task (``--source-data none``: without its source set)."""
    no_source = cfg.source_data is not None and cfg.source_data.lower() == "none"
    if cfg.source_data is not None and not no_source:
        raise UserError("--source-data: the embedded Fashion-MNIST task brings its own source classes; "
                        "give -d/--data with --root to use another source set, or --source-data none "
                        "for its target classes alone (source-free, with a pretrained head)")
    check_tllib_options(tllib_options(cfg), "embedded (1-channel Fashion-MNIST)")
    train_tf, eval_tf, size = embedded_transforms(cfg.transforms, cfg.image_size, data_config, cfg.invert)
    task = build_fashion_mnist_task(cfg, train_tf, eval_tf, size)
    return dataclasses.replace(task, source_train=None, source_classes=None) if no_source else task


def _source_set(cfg, train_tf, common: dict):
    """``(source training set, its class names)`` of ``--source-data`` (``(None, None)`` without one)."""
    if cfg.source_data is None:
        return None, None
    source_name = canonical_name(cfg.source_data)
    if source_name == "FashionMNIST":
        raise UserError("--source-data FashionMNIST is single-channel; use it through the embedded task "
                        "(no -d) or convert it to an ImageFolder")
    if cfg.source_root is None:
        raise UserError(f"--source-data {source_name} needs --source-root (its dataset folder)")
    full = DATASETS.get(source_name)(cfg.source_root, "train", sample_rate=100, **common)
    keep = cap_per_class(full.targets, cfg.source_per_class, data_seed(cfg), STREAM_SOURCE)
    return full.subset(keep, train_tf), list(full.classes)


def _outside_sampled_list(builder, cfg, sampled, common: dict, eval_tf, name: str):
    """``--val-split rest`` at ``-sr < 100``: ``--val-per-class`` seeded images per class from
    ``train_100.txt`` minus ``train_{sr}.txt`` (None when ``--val-per-class 0``)."""
    if cfg.sample_rate >= 100:
        raise UserError("--val-split rest at -sr 100 leaves no training images outside the list; use "
                        "--val-split train (carve from it), test (TLlib's protocol) or none, or -K")
    if not hasattr(sampled, "samples"):
        raise UserError(f"--val-split rest: dataset {name} has no list files to take the rest from; "
                        f"use --val-split train")
    try:
        full = builder(cfg.root, "train", sample_rate=100, **common)
    except UserError as exc:
        raise UserError(f"--val-split rest takes validation images from train_100.txt outside "
                        f"train_{cfg.sample_rate}.txt, which failed ({exc}); use --val-split train") from None
    keep = outside_list([path for path, _ in full.samples], full.targets, [path for path, _ in sampled.samples],
                        cfg.val_per_class, data_seed(cfg))
    return full.subset(keep, eval_tf) if len(keep) else None
