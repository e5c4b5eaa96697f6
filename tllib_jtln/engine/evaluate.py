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
from typing import Optional

import torch
import torch.nn as nn

from .distributed import all_reduce_sum


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


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, *,
             source_mass: int = 0, amp: bool = False, keep_outputs: bool = False) -> EvalResult:
    """Evaluate the target head of ``model`` on ``loader`` (see the module docstring for the math).

    ``keep_outputs``: also return this process's logits and labels (``EvalResult.outputs``), so
    that other views of the same images need no second forward pass.
    """
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
            with torch.autocast(device_type="cuda", enabled=amp and device.type == "cuda"):
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
