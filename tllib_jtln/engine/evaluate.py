"""Target-head evaluation: top-1 and mean per-class accuracy, summed over ranks.

For a loader of ``(images (B, C, H, W), labels (B,))`` over the Kt target classes and a
:class:`~tllib_jtln.models.JointClassifier` whose ``forward(x)`` returns
``(source_logits (B, Ks), target_logits (B, Kt))``:

- ``correct[c]`` = number of images of class ``c`` whose target-head argmax is ``c``,
  ``count[c]`` = number of images of class ``c``; both summed over DDP ranks;
- ``top1 = sum(correct) / sum(count)``,
  ``mean_class_acc = mean over classes with count[c] > 0 of correct[c] / count[c]``.
  Both are fractions in [0, 1].

With ``source_mass=Ks`` (the number of source classes) it also returns, for each target class ``j``, the mean source-head
posterior over its images: ``mass[:, j] = mean_{x in class j} softmax(h_s(g(x)))`` (Ks, Kt).
With a one-hot target ``q = e_j`` the only transport plan with marginals ``(p, e_j)`` is
``P[:, j] = p``, so this is the mean OT plan of each target class under label targets: how much
mass each target class draws from each source class (the transport view).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from .distributed import all_reduce_sum
from .precision import autocast_for

#: Pixels (per channel) of one evaluation batch: 256 images of 64x64 on the CPU, of 224x224 on CUDA.
EVAL_PIXEL_BUDGET = {"cpu": 256 * 64 * 64, "cuda": 256 * 224 * 224}
MAX_EVAL_BATCH = 256


@dataclass
class EvalResult:
    top1: float
    mean_class_acc: float
    per_class: list = field(default_factory=list)  # accuracy per target class (NaN: no images)
    count: int = 0
    source_mass: Optional[torch.Tensor] = None  # (Ks, Kt)
    outputs: Optional[tuple] = None  # keep_outputs: (source_logits (N, Ks), target_logits (N, Kt), labels (N,)), CPU

    def as_dict(self, prefix: str, class_names: list[str] | None = None) -> dict:
        out = {f"{prefix}_top1": self.top1, f"{prefix}_mean_class_acc": self.mean_class_acc}
        if class_names is not None:
            out[f"{prefix}_per_class"] = {name: (None if acc != acc else acc)
                                         for name, acc in zip(class_names, self.per_class)}
        return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _split_batch(batch):
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


def eval_batch_size(cfg: Any, image_size: Optional[int] = None, device: Optional[torch.device] = None) -> int:
    """Images per evaluation batch, chosen for throughput.

    Without gradients a forward pass's memory is a few activations per image, and larger batches
    amortise the per-batch overhead (Python, kernel launches, data loading) until the compute
    saturates, which happens at a roughly fixed number of pixels per batch. So:
    ``n = min(256, budget // image_size**2)`` with a budget of 256 images of 64x64 px on the CPU
    and of 224x224 px on CUDA, rounded down to a multiple of 8, and never below the training
    batch size (which fits in memory together with its gradients). ``image_size`` defaults to
    ``cfg.image_size`` (else 224); ``device`` to ``cfg.device`` (``cuda...`` or the CPU).
    """
    size = int(image_size or getattr(cfg, "image_size", None) or 224)
    kind = device.type if device is not None else ("cuda" if str(cfg.device).startswith("cuda") else "cpu")
    by_pixels = EVAL_PIXEL_BUDGET.get(kind, EVAL_PIXEL_BUDGET["cpu"]) // (size * size)
    n = max(8, min(MAX_EVAL_BATCH, by_pixels) // 8 * 8)
    return max(n, min(int(cfg.batch_size), MAX_EVAL_BATCH))


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, *,
             source_mass: int = 0, amp: bool = False, cpu_bf16: bool = False,
             keep_outputs: bool = False) -> EvalResult:
    """Evaluate the target head of ``model`` on ``loader`` (see the module docstring for the math).

    Runs under ``torch.inference_mode`` (no autograd records, no version counters) and the
    autocast of :func:`~tllib_jtln.engine.precision.autocast_for` (``amp`` on CUDA, ``cpu_bf16``
    on the CPU); logits are compared in float32. ``keep_outputs``: also return this process's
    logits and labels (``EvalResult.outputs``), so that other views of the same images need no
    second forward pass."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    count = torch.zeros(num_classes, dtype=torch.float64, device=device)
    mass = (torch.zeros(source_mass, num_classes, dtype=torch.float64, device=device)
            if source_mass else None)
    kept: list[tuple] = []
    try:
        for batch in loader:
            images, labels = _split_batch(batch)
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels).to(device, non_blocking=True).long()
            with autocast_for(device, amp, cpu_bf16):
                source_logits, target_logits = net(images)
            pred = target_logits.float().argmax(dim=1)
            count += torch.bincount(labels, minlength=num_classes).to(count.dtype)[:num_classes]
            hit = labels[pred == labels]
            correct += torch.bincount(hit, minlength=num_classes).to(correct.dtype)[:num_classes]
            if keep_outputs:
                kept.append((source_logits.float().cpu(), target_logits.float().cpu(), labels.cpu()))
            if mass is not None:
                probs = source_logits.float().softmax(dim=1).double()  # (B, Ks)
                onehot = torch.nn.functional.one_hot(labels, num_classes).double()  # (B, Kt)
                mass += probs.T @ onehot
    finally:
        net.train(was_training)
    all_reduce_sum(correct)
    all_reduce_sum(count)
    if mass is not None:
        all_reduce_sum(mass)
    total = float(count.sum())
    top1 = float(correct.sum()) / total if total > 0 else float("nan")
    seen = count > 0
    per_class = torch.where(seen, correct / count.clamp_min(1), torch.full_like(count, float("nan")))
    mean_class = float(per_class[seen].mean()) if bool(seen.any()) else float("nan")
    if mass is not None:
        mass = (mass / count.clamp_min(1)).float().cpu()
    outputs = tuple(torch.cat(part) for part in zip(*kept)) if kept else None
    return EvalResult(top1=top1, mean_class_acc=mean_class, per_class=per_class.cpu().tolist(),
                      count=int(total), source_mass=mass, outputs=outputs)
