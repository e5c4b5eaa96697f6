"""``erm``: fine-tune on the target set alone (TLlib's ``erm.py``), the plain baseline.

.. math:: L = \\mathrm{CE}(h_t(g(x_t)), y_t)

Source data is never drawn; an existing source head is frozen (it receives no gradient, and
DistributedDataParallel must not wait for one).
"""
from __future__ import annotations

from .base import Method, cross_entropy, register_method


@register_method("erm")
class ERM(Method):
    uses_source = False
    uses_target = True

    def prepare_model(self, model) -> None:
        if getattr(model, "source_head", None) is not None:
            model.set_source_head_lr(0.0)

    def losses(self, model, batch, progress):
        _, target_logits = model(batch.x_t)
        return {"ce_target": cross_entropy(target_logits, batch.y_t)}
