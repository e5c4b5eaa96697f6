"""Data: TLlib-format datasets, the embedded Fashion-MNIST task, joint source + target batches.

- :data:`DATASETS`: registry of dataset builders (TLlib's names, ``ImageList``, ``ImageFolder``,
  ``ImageNet``, ``FashionMNIST``); items are ``(image (C, H, W) float, label int)``.
- :func:`build_task` -> :class:`TransferTask`: target train/val/test, optional source set,
  class names, ``in_chans``, ``image_size``.
- :class:`JointLoader`: endless, seeded, DDP-sharded, exactly resumable joint batches
  (:class:`JointBatch`); :func:`eval_loader`: sequential per-rank loaders.
- :func:`prepare_dataset`: ``tllib-jtln data prepare NAME``.
"""
from .datasets import DATASETS, INFO, canonical_name, prepare_dataset
from .imagelist import BadImageWarning, ImageList
from .list_files import read_image_list
from .joint import JointBatch, JointLoader, eval_loader
from .sampling import cap_per_class, split_per_class
from .task import build_task
from .transfer_task import TransferTask

__all__ = [
    "DATASETS", "INFO", "BadImageWarning", "ImageList", "JointBatch", "JointLoader", "TransferTask",
    "build_task", "canonical_name", "cap_per_class", "eval_loader", "prepare_dataset", "read_image_list",
    "split_per_class",
]
