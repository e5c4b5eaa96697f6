"""Entry points of ``tllib-jtln train`` / ``tllib-jtln test``.

Settings come from :func:`tllib_jtln.settings.resolve_settings`, the one pass (defaults, the saved
run, the embedded recipe, ``--config``, flags, rules, validation); what follows reads the
resolved ``Config`` only. ``tllib-jtln train --resume --log DIR`` continues a run with its saved
settings; ``tllib-jtln test --log DIR`` (or ``train --phase test``) evaluates
``DIR/checkpoints/best.pt`` as the run was trained (``--device``, ``--root`` and the other
fields of :data:`~tllib_jtln.settings.RUN_FREE_FIELDS` may change, nothing else).
"""
from __future__ import annotations

import os

from ..config import Config
from ..data.task import is_embedded
from ..errors import UserError
from ..settings import EMBEDDED_RECIPE, resolve_settings  # noqa: F401  (EMBEDDED_RECIPE: its old home)

#: The pass, under the name scripts and tests written before it use (a fresh run, or ``--resume``).
resolve_config = resolve_settings

#: Hidden, for tests: stop cleanly after this many epochs (as if the run had been killed then).
STOP_AFTER_ENV = "TLLIB_JTLN_STOP_AFTER_EPOCH"


def describe_recipe(cfg: Config) -> str:
    """One line naming what a run resolved to: dataset, image size, backbone, pretrained or not."""
    if is_embedded(cfg):
        data = "the embedded Fashion-MNIST task (no -d given)"
    else:
        data = f"{cfg.data} from {cfg.root}" + (f" at -sr {cfg.sample_rate}" if cfg.sample_rate < 100 else "")
    if cfg.num_samples_per_class is not None or is_embedded(cfg):
        data += f", K = {cfg.num_samples_per_class or 10} per class"
    weights = (f"weights from {cfg.pretrained_file}" if cfg.pretrained_file else
               "pretrained" if cfg.pretrained else "from scratch")
    size = f"{cfg.image_size} px" if cfg.image_size else "default size"
    return (f"recipe: --method {cfg.method} on {data}; {size}; -a {cfg.arch} ({weights}"
            f"{', --finetune' if cfg.finetune else ''}); validation: --val-split {cfg.val_split}")


def _stop_after_from_env() -> int | None:
    raw = os.environ.get(STOP_AFTER_ENV)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{STOP_AFTER_ENV}={raw!r}: expected an integer number of epochs") from None
    return value if value > 0 else None


def train_from_flags(given: dict) -> int:
    """``tllib-jtln train``: resolve settings, then train (or test / analyse, under ``--phase``)."""
    cfg = resolve_settings(given, "train")
    if cfg.phase == "test":
        return _test(cfg)
    if cfg.phase == "analysis":
        from .analysis import analyse_run

        analyse_run(cfg)
        return 0
    if os.environ.get("RANK", "0") == "0":
        print(describe_recipe(cfg), flush=True)
    from .trainer import train

    train(cfg, stop_after_epoch=_stop_after_from_env())
    return 0


def test_from_flags(given: dict) -> int:
    """``tllib-jtln test --log DIR``: evaluate the best checkpoint of the run in DIR on the target test set."""
    return _test(resolve_settings(given, "test"))


def _test(cfg: Config) -> int:
    from .tester import evaluate_run

    evaluate_run(cfg)
    return 0
