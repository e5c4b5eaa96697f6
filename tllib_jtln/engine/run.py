"""Entry points of ``tllib-jtln train`` / ``tllib-jtln test`` and settings resolution.

Settings are resolved in this order, later ones winning:

1. ``Config`` defaults (TLlib's);
2. the embedded recipe :data:`EMBEDDED_RECIPE`, only when neither ``--config`` nor the flags name
   a dataset (the resolved ``data`` is None): the Fashion-MNIST transfer task on a 2-core CPU;
3. ``--config FILE.yaml``;
4. flags given on the command line.

With ``--resume`` the saved ``config.yaml`` of the run takes the place of 1 and 2, so
``tllib-jtln train --resume --log DIR`` is enough to continue a run; settings that would change
what the checkpoint means (method, data, architecture, seed, batch sizes, ...) must not differ.

``tllib-jtln test --log DIR`` (or ``train --phase test``) evaluates ``DIR/checkpoints/best.pt``
with the run's ``config.yaml`` (flags such as ``--device`` or ``--root`` may override it).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import COMMAND_LINE, COMMAND_LINE_ONLY, Config, resolve
from ..errors import UserError

#: The recipe of the embedded Fashion-MNIST task (also in ``configs/fashion_mnist.yaml``): a
#: from-scratch small CNN at 28 px that trains, validates every epoch and tests on a 2-core CPU
#: in a few minutes.
EMBEDDED_RECIPE: dict = {
    "arch": "smallcnn",
    "pretrained": False,
    "finetune": False,
    "image_size": 28,
    "transforms": "small",
    "workers": 0,
    "num_samples_per_class": 10,
    "val_per_class": 20,
    "source_per_class": 1000,
    "batch_size": 32,
    "source_batch_size": 64,
    "iters_per_epoch": 100,
    "epochs": 8,
    "lr": 0.05,
    "lr_decay_epochs": [6],
    "print_freq": 50,
}

#: Settings that define what a checkpoint means: ``--resume`` refuses to change them.
IDENTITY_FIELDS = ("method", "data", "source_data", "arch", "pretrained", "bottleneck_dim", "image_size",
                   "num_samples_per_class", "val_per_class", "source_per_class", "sample_rate", "seed", "data_seed",
                   "batch_size", "source_batch_size", "iters_per_epoch", "cost")

#: Hidden, for tests: stop cleanly after this many epochs (as if the run had been killed then).
STOP_AFTER_ENV = "TLLIB_JTLN_STOP_AFTER_EPOCH"


def resolve_config(given: dict) -> Config:
    """Defaults -> embedded recipe (when no dataset is named) -> ``--config`` YAML -> given flags."""
    cfg = resolve(given)
    if cfg.data is None:
        cfg = resolve(given, EMBEDDED_RECIPE)
    return cfg


def _saved_config(log_dir: str | Path) -> Config:
    from .logdir import read_config

    saved = read_config(Path(log_dir))
    for key in COMMAND_LINE_ONLY:  # older runs saved `resume: true`: a switch, not a setting
        saved.pop(key, None)
    cfg = Config()
    cfg.update(saved, f"{Path(log_dir) / 'config.yaml'}")
    return cfg


def resolve_resume_config(given: dict) -> Config:
    """``--resume``: the run's saved settings, then ``--config``, then the given flags."""
    fresh = resolve_config(given)
    log_dir = Path(fresh.log)
    if not (log_dir / "config.yaml").is_file():
        return fresh  # prepare_log_dir reports the missing checkpoint
    saved = _saved_config(log_dir)
    cfg = _saved_config(log_dir)
    if given.get("config"):
        from ..config import load_yaml

        cfg.update(load_yaml(given["config"]), f"--config {given['config']}")
    cfg.update(given, COMMAND_LINE)
    changed = [f"{k} ({getattr(saved, k)!r} -> {getattr(cfg, k)!r})" for k in IDENTITY_FIELDS
               if getattr(saved, k) != getattr(cfg, k)]
    if changed:
        raise UserError(f"--resume: settings differ from the run in {log_dir}: {', '.join(changed)}; "
                        f"resume with the run's settings or start over with --overwrite")
    cfg.resume, cfg.overwrite, cfg.config = True, False, cfg.config
    return cfg


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
    """``tllib-jtln train``: resolve settings, then train (or test, under ``--phase test``)."""
    given = dict(given)
    if given.get("phase") == "test":
        return test_from_flags(given)
    if given.get("phase") == "analysis":
        raise UserError("--phase analysis is not available; use --phase test (or `tllib-jtln test --log DIR`), "
                        "whose log folder already holds the cost and transport views")
    cfg = resolve_resume_config(given) if given.get("resume") else resolve_config(given)
    if cfg.phase == "test":
        return test_from_flags({**given, "phase": "test"})
    if cfg.phase == "analysis":
        raise UserError("phase: analysis is not available; use phase: test")
    from .trainer import train

    train(cfg, stop_after_epoch=_stop_after_from_env())
    return 0


def test_from_flags(given: dict) -> int:
    """``tllib-jtln test --log DIR``: evaluate the best checkpoint of the run in DIR on the target test set."""
    given = {k: v for k, v in given.items() if k not in ("resume", "overwrite", "phase")}
    log = given.get("log")
    if log is None:
        log = resolve_config(given).log
    if not Path(log).is_dir():
        raise UserError(f"--log {log}: no such run folder; give the --log folder of a training run")
    cfg = _saved_config(log)
    if given.get("config"):
        from ..config import load_yaml

        cfg.update(load_yaml(given["config"]), f"--config {given['config']}")
    cfg.update(given, COMMAND_LINE)
    cfg.phase = "test"
    from .trainer import evaluate_run

    evaluate_run(cfg)
    return 0
