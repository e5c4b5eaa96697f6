"""``joint``: both heads trained together, both cross-entropies, no OT term (JTLN with ``alpha = 0``).

.. math:: L = \\mathrm{CE}(h_s(g(x_s)), y_s) + \\mathrm{CE}(h_t(g(x_t)), y_t)

Source and target images go through the network in one forward pass. It isolates what the OT
term of ``jtln`` adds.
"""
from __future__ import annotations

from .base import Method, cross_entropy, forward_joint, register_method


@register_method("joint")
class Joint(Method):
    needs_source_data = True

    def losses(self, model, batch, progress):
        (src_s, _), (_, tgt_t) = forward_joint(model, batch.x_s, batch.x_t)
        return {"ce_source": cross_entropy(src_s, batch.y_s), "ce_target": cross_entropy(tgt_t, batch.y_t)}
