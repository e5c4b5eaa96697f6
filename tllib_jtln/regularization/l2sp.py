r"""L2-SP (Li, Grandvalet and Davoine, "Explicit inductive bias for transfer learning with
convolutional networks", ICML 2018), as TLlib's ``SPRegularization`` and ``L2Regularization``.

Fine-tuning is pulled back towards the starting point :math:`w^0` (the pretrained weights) rather
than towards zero, and the new head, which has no starting point, gets the usual L2 penalty:

.. math::
    \Omega(w) = \frac{\alpha}{2} \lVert w_{\mathrm{backbone}} - w^0_{\mathrm{backbone}} \rVert_2^2
              + \frac{\beta}{2} \lVert w_{\mathrm{head}} \rVert_2^2

(:class:`SPRegularization` is the first norm, :class:`L2Regularization` the second, each with the
:math:`\frac{1}{2}`; the caller multiplies by :math:`\alpha` and :math:`\beta`). Since both are
explicit, the parameters they penalise should have no weight decay in the optimiser (TLlib's
L2-SP runs with ``--wd 0``).

Example:
    >>> layer = nn.Linear(2, 1, bias=False)
    >>> sp = SPRegularization(layer)                 # w0: the weights now
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(torch.tensor([[3.0, 4.0]]))
    >>> sp(layer)                                    # 0.5 * (3^2 + 4^2)
    tensor(12.5000, grad_fn=<MulBackward0>)
"""
from __future__ import annotations

from typing import Iterable, Union

import torch
from torch import Tensor, nn

__all__ = ["L2Regularization", "SPRegularization"]

Parameters = Union[nn.Module, Iterable[nn.Module]]


def _named_parameters(modules: Parameters) -> list[tuple[str, Tensor]]:
    if isinstance(modules, nn.Module):
        return list(modules.named_parameters())
    return [(f"{i}.{name}", p) for i, module in enumerate(modules) for name, p in module.named_parameters()]


def _half_sum_of_squares(tensors: Iterable[Tensor], like: Tensor) -> Tensor:
    total = like.new_zeros((), dtype=torch.float32)
    for t in tensors:
        total = total + t.float().pow(2).sum()
    return 0.5 * total


class L2Regularization(nn.Module):
    r""":math:`\frac{1}{2} \sum_w \lVert w \rVert_2^2` over the parameters of the given module(s).

    Shape:
        - input: a module, or an iterable of modules (e.g. ``[bottleneck, head]``)
        - output: scalar (float32)
    """

    def forward(self, modules: Parameters) -> Tensor:
        params = [p for _, p in _named_parameters(modules)]
        if not params:
            raise ValueError("modules: no parameters to penalise")
        return _half_sum_of_squares(params, params[0])


class SPRegularization(nn.Module):
    r""":math:`\frac{1}{2} \sum_w \lVert w - w^0 \rVert_2^2`, the distance to the starting point.

    Args:
        starting_point: the module at its starting weights; a detached copy of its parameters is
            kept as buffers (so ``.to(device)`` moves them), ``w^0``.

    Shape:
        - input: the module being fine-tuned (same parameter names and shapes as ``starting_point``)
        - output: scalar (float32)
    """

    def __init__(self, starting_point: nn.Module):
        super().__init__()
        self.names = [name for name, _ in starting_point.named_parameters()]
        if not self.names:
            raise ValueError("starting_point: the module has no parameters")
        for i, (_, p) in enumerate(starting_point.named_parameters()):
            self.register_buffer(f"w0_{i}", p.detach().clone())

    def forward(self, module: nn.Module) -> Tensor:
        params = dict(module.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing or len(params) != len(self.names):
            raise ValueError(f"module: parameters differ from the starting point's ({len(params)} vs "
                             f"{len(self.names)}; missing {missing[:3]})")
        diffs = (params[name] - getattr(self, f"w0_{i}") for i, name in enumerate(self.names))
        return _half_sum_of_squares(diffs, params[self.names[0]])
