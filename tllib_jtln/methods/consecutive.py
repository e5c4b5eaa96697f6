"""``consecutive``: fine-tune on the source set, then on the target set, in one budget (the paper's baseline).

.. math::
    L = \\mathrm{CE}(h_s(g(x_s)), y_s) \\text{ while progress} < \\texttt{source\\_fraction},
    \\quad \\mathrm{CE}(h_t(g(x_t)), y_t) \\text{ afterwards}

``progress`` is the share of the total iterations done, so ``--source-fraction 0.5`` spends half
the budget on each stage. Each step forwards only the stage's images.
"""
from __future__ import annotations

from ..errors import UserError
from .base import Method, cross_entropy, register_method


@register_method("consecutive")
class Consecutive(Method):
    uses_source = True
    uses_target = True

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        self.require_source_data()
        if not 0.0 <= cfg.source_fraction <= 1.0:
            raise UserError(f"--source-fraction must lie in [0, 1], got {cfg.source_fraction}")

    def losses(self, model, batch, progress):
        if progress < self.cfg.source_fraction:
            source_logits, _ = model(batch.x_s)
            return {"ce_source": cross_entropy(source_logits, batch.y_s)}
        _, target_logits = model(batch.x_t)
        return {"ce_target": cross_entropy(target_logits, batch.y_t)}
