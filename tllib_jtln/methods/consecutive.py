r"""``consecutive``: fine-tune on the source set, then on the target set (the paper's baseline).

Two stages, each with its own optimizer and the full schedule (``--epochs`` x
``--iters-per-epoch`` steps, see :class:`~tllib_jtln.methods.Stage`):

.. math::
    \text{stage 1: } L = \mathrm{CE}(h_s(g(x_s)), y_s), \qquad
    \text{stage 2: } L = \mathrm{CE}(h_t(g(x_t)), y_t).

Stage 1 sees as many source images as ``joint`` and stage 2 as many target images as ``erm``;
each step forwards only the stage's images. Only stage 2 is validated and selects the checkpoint.
Each stage leaves the other stage's head without a gradient (``Stage.idle_parameters``).
"""
from __future__ import annotations

from .base import SOURCE_STAGE, Method, Stage, cross_entropy, register_method, source_stage_losses


@register_method("consecutive")
class Consecutive(Method):
    needs_source_data = True

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        self.stage = 0

    def stages(self) -> list[Stage]:
        return [SOURCE_STAGE, Stage("target", uses_source=False, uses_target=True, idle_parameters=True)]  # source head

    def on_stage_start(self, index: int, ctx) -> None:
        self.stage = index

    def losses(self, model, batch, progress):
        if self.stage == 0:
            return source_stage_losses(model, batch)
        _, target_logits = model(batch.x_t)
        return {"ce_target": cross_entropy(target_logits, batch.y_t)}
