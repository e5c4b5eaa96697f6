"""Settings that were removed, each with the one behaviour this version keeps.

A run folder written before a removal saves them in its ``config.yaml``; reading that file back
(``--resume``, ``test --log``, ``--phase analysis``) drops each one that holds the kept behaviour
and refuses one that does not (this version cannot reproduce that run). Why each was removed:
``docs/method.md`` (Switches).
"""
from __future__ import annotations

from .errors import UserError

#: setting -> the value whose behaviour is now fixed
RETIRED = {
    "ot_detach": True,        # q is always detached on target images (the paper's constraint on the source head)
    "ot_source": "label",     # under --ot-on source, the target head learns against the source label
    "cost_metric": "cosine",  # the centroid cost's distance
    "cost_seed": 0,           # the shuffled control's permutation
    "source_head_lr": 0.0,    # source-free jtln: the pretrained source head is frozen
}


def drop_retired(saved: dict, where: str) -> dict:
    """``saved`` (a run's settings) without the retired settings; a :class:`UserError` naming ``where``
    for one whose value asks for a behaviour this version no longer has."""
    kept = {}
    for key, value in saved.items():
        name = str(key).replace("-", "_")
        if name not in RETIRED:
            kept[key] = value
        elif value != RETIRED[name]:
            raise UserError(f"{where}: '{key}: {value}' was removed (only {RETIRED[name]!r} is left); this run "
                            f"needs the version that made it")
    return kept
