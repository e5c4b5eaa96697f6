"""``joint``: both heads trained together, both cross-entropies, no OT term (JTLN with ``alpha = 0``).

.. math:: L = \\mathrm{CE}(h_s(g(x_s)), y_s) + \\mathrm{CE}(h_t(g(x_t)), y_t) \\; [+ \\text{the ``--with`` regularisers}]

Source and target images go through the network in one forward pass. It isolates what the OT
term of ``jtln`` adds. TLlib's regularisers (``--with``) see the target images.
"""
from __future__ import annotations

from .base import Method, cross_entropy, forward_joint, register_method, target_rows
from .regularizer import TargetView


@register_method("joint")
class Joint(Method):
    needs_source_data = True
    takes_regularizers = True

    def losses(self, model, batch, progress):
        out_s, out_t = forward_joint(model, batch.x_s, batch.x_t)
        terms = {"ce_source": cross_entropy(out_s.source_logits, batch.y_s),
                 "ce_target": cross_entropy(out_t.target_logits, batch.y_t)}
        terms.update(self.regularizer_terms(TargetView(batch.x_t, batch.y_t, out_t, target_rows(batch.x_s))))
        return terms
