"""``erm``: fine-tune on the target set alone (TLlib's ``erm.py``), the plain baseline.

.. math:: L = \\mathrm{CE}(h_t(g(x_t)), y_t) \\; [+ \\text{the ``--with`` regularisers}]

Source data is never drawn; an existing source head is frozen (it receives no gradient, and
DistributedDataParallel must not wait for one). TLlib's regularisers (``--with bss,l2sp``) add
their terms; ``bss``, ``l2sp`` and ``delta`` are this method with one built in.
"""
from __future__ import annotations

from .base import Method, cross_entropy, register_method
from .regularizer import TargetView


@register_method("erm")
class ERM(Method):
    uses_source = False
    uses_target = True
    takes_regularizers = True

    def prepare_model(self, model) -> None:
        if getattr(model, "source_head", None) is not None:
            model.set_source_head_lr(0.0)
        super().prepare_model(model)

    def losses(self, model, batch, progress):
        out = model(batch.x_t, with_features=True)
        terms = {"ce_target": cross_entropy(out.target_logits, batch.y_t)}
        terms.update(self.regularizer_terms(TargetView(batch.x_t, batch.y_t, out)))
        return terms
