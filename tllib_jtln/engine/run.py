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

import copy
import os
from pathlib import Path

from ..config import COMMAND_LINE, COMMAND_LINE_ONLY, Config, load_yaml, resolve
from ..errors import UserError
from ..data.task import is_embedded
from ..data.val_split import resolve_val_split
from ..flag_rules import apply_method_flags
from .logdir import read_config

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
                   "num_samples_per_class", "val_per_class", "val_split", "source_per_class", "sample_rate", "seed",
                   "data_seed",
                   "batch_size", "source_batch_size", "iters_per_epoch", "cost",
                   "regularizers")

#: Hidden, for tests: stop cleanly after this many epochs (as if the run had been killed then).
STOP_AFTER_ENV = "TLLIB_JTLN_STOP_AFTER_EPOCH"


def resolve_config(given: dict) -> Config:
    """Defaults -> embedded recipe (when no dataset is named) -> ``--config`` YAML -> given flags.

    With the embedded task, an explicit ``-a NAME`` (other than ``smallcnn``) or ``--pretrained``
    starts from the backbone's pretrained weights (and ``--finetune``) unless ``--no-pretrained``
    or ``--no-finetune`` says otherwise; weights that cannot be loaded offline are a one-line error.
    Then :func:`~tllib_jtln.flag_rules.apply_method_flags` maps ``--trade-off`` and refuses flags the
    method ignores.
    """
    cfg = resolve(given)
    explicit = explicit_fields(given)
    if cfg.data is None:
        cfg = resolve(given, EMBEDDED_RECIPE)
        _embedded_backbone(cfg, explicit)
    cfg.val_split = resolve_val_split(cfg, embedded=is_embedded(cfg))
    return apply_method_flags(cfg, explicit, set(given))


def explicit_fields(given: dict) -> set:
    """Field names set on the command line or by ``--config FILE.yaml``."""
    names = set(given)
    if given.get("config"):
        names |= {str(k).replace("-", "_") for k in load_yaml(given["config"])}
    return names


def _embedded_backbone(cfg: Config, explicit: set) -> None:
    """The embedded task with an explicit backbone: its pretrained weights, when offline (see resolve_config)."""
    wants = ("arch" in explicit and cfg.arch != "smallcnn") or ("pretrained" in explicit and cfg.pretrained)
    if not wants:
        return
    if "pretrained" not in explicit:
        cfg.pretrained = True
    if "finetune" not in explicit:
        cfg.finetune = cfg.pretrained
    if cfg.pretrained and cfg.pretrained_file is None:
        from ..models.offline import pretrained_offline

        if not pretrained_offline(cfg.arch):
            raise UserError(f"-a {cfg.arch}: no pretrained weights available offline (tf_efficientnet_lite0 has "
                            f"them); give --pretrained PATH (a weights file) or --no-pretrained (random init)")


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


def _saved_config(log_dir: str | Path) -> Config:
    """The settings a run saved in ``LOG/config.yaml``."""
    saved = read_config(Path(log_dir))
    for key in COMMAND_LINE_ONLY:  # older runs saved `resume: true`: a switch, not a setting
        saved.pop(key, None)
    cfg = Config()
    cfg.update(saved, f"{Path(log_dir) / 'config.yaml'}")
    return cfg


def _over_saved(saved: Config, given: dict) -> Config:
    """A copy of a run's saved settings with ``--config`` and then the given flags on top."""
    cfg = copy.deepcopy(saved)
    if given.get("config"):
        cfg.update(load_yaml(given["config"]), f"--config {given['config']}")
    return cfg.update(given, COMMAND_LINE)


def resolve_resume_config(given: dict) -> Config:
    """``--resume``: the run's saved settings, then ``--config``, then the given flags."""
    fresh = resolve_config(given)
    log_dir = Path(fresh.log)
    if not (log_dir / "config.yaml").is_file():
        return fresh  # prepare_log_dir reports the missing checkpoint
    saved = _saved_config(log_dir)
    cfg = _over_saved(saved, given)
    apply_method_flags(cfg, explicit_fields(given), set(given))
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
        return analysis_from_flags(given)
    cfg = resolve_resume_config(given) if given.get("resume") else resolve_config(given)
    if cfg.phase == "test":
        return test_from_flags({**given, "phase": "test"})
    if cfg.phase == "analysis":
        return analysis_from_flags({**given, "phase": "analysis"})
    if os.environ.get("RANK", "0") == "0":
        print(describe_recipe(cfg), flush=True)
    from .trainer import train

    train(cfg, stop_after_epoch=_stop_after_from_env())
    return 0


def test_from_flags(given: dict) -> int:
    """``tllib-jtln test --log DIR``: evaluate the best checkpoint of the run in DIR on the target test set."""
    from .tester import evaluate_run

    evaluate_run(saved_run_config(given))
    return 0


def analysis_from_flags(given: dict) -> int:
    """``--phase analysis --log DIR``: the t-SNE picture (and A-distance) of the run's best checkpoint."""
    from .analysis import analyse_run

    analyse_run(saved_run_config(given))
    return 0


def saved_run_config(given: dict) -> Config:
    """The settings of the finished run in ``--log DIR`` (``--config`` and given flags may override)."""
    given = {k: v for k, v in given.items() if k not in ("resume", "overwrite", "phase")}
    log = given.get("log")
    if log is None:
        log = resolve_config(given).log
    if not Path(log).is_dir():
        raise UserError(f"--log {log}: no such run folder; give the --log folder of a training run")
    cfg = _over_saved(_saved_config(log), given)
    cfg.phase = "test"
    return cfg
