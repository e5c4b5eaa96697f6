"""The one settings pass: what the user gave -> the resolved :class:`~tllib_jtln.config.Config` of a run.

:func:`resolve_settings` runs these stages once, in this order, later layers winning::

    1. Config defaults                  TLlib's (config.py)
    2. the saved run's config.yaml      --resume, test --log, --phase test|analysis
    3. the embedded recipe              a fresh run that names no dataset (EMBEDDED_RECIPE)
    4. --config FILE.yaml               read once
    5. command-line flags
    6. rules                            the method's registered name; --trade-off -> jtln's OT weight and
                                        flags the method ignores (flag_rules); the embedded task's
                                        explicit backbone -> its pretrained weights; --val-split auto
    7. Config.validate()                ranges, choices, NUL bytes, in flag words
    8. checks against the machine       offline weights of that backbone; a root with no -d
    9. the saved run, field by field    a run-shaping field that differs is refused (RUN_FREE_FIELDS)

Every later stage (``engine.trainer``, ``assembly``, ``tester``, ``analysis``, ``bench``) reads the
returned ``Config`` and never resolves again.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from .config import COMMAND_LINE, COMMAND_LINE_ONLY, Config, flag_of, load_yaml, refuse_nul
from .errors import UserError

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

#: Fields ``--resume`` and ``test --log`` may change: they say where and how a run executes, not
#: what it computes. Every other field is compared with the run's ``config.yaml``.
RUN_FREE_FIELDS: dict[str, str] = {
    "phase": "what to do with the run (train, test, analysis)",
    "config": "the recipe file's path; the settings it holds are compared one by one",
    "resume": "a command-line switch, not a setting",
    "overwrite": "a command-line switch, not a setting",
    "log": "the run folder itself, which may have been moved",
    "device": "the machine (a run may continue on another one)",
    "workers": "loading processes; the seeded loaders give the same batches",
    "print_freq": "what is printed",
    "progress": "what is printed",
    "feature_cache": "a cache folder keyed by the data and the weights",
    "root": "where the same target images are now",
    "source_root": "where the same source images are now",
    "pretrained_file": "where the same initial weights are now (the checkpoint holds the trained ones)",
    "semantic_file": "where the same class-name embeddings are now",
    "download": "permission to fetch a missing dataset",
    "skip_bad_images": "what to do on an unreadable image; without it the run stops there",
    "skip_nonfinite": "what to do on a NaN/inf loss; without it the run stops there",
    "channels_last": "a memory layout, not the arithmetic",
    "skip_test": "whether the final test pass runs (a selection run may be tested later)",
}

#: Also free under ``--resume``: more epochs continue a run that has finished training.
RESUME_FREE_FIELDS: dict[str, str] = {"epochs": "raise it to train a finished run for longer"}

#: Also free under ``test --log`` / ``--phase test|analysis``: the precision of the evaluation pass.
TEST_FREE_FIELDS: dict[str, str] = {"amp": "evaluation precision on CUDA", "cpu_bf16": "evaluation precision on the CPU"}

#: Free fields not worth naming to ``test --log``: what the command itself sets, and the switches.
_NOT_FLAGS_OF_TEST = ("phase", "config", "log", "resume", "overwrite", "skip_nonfinite")

#: Phases that read a finished run's saved settings.
SAVED_RUN_PHASES = ("test", "analysis")


def resolve_settings(given: dict, command: str = "train") -> Config:
    """The resolved settings of one ``train`` or ``test`` command line (see the module docstring).

    Args:
        given: the fields the user set (flag destinations, as ``cli._given`` returns them, or a
            mapping written by a program: a bench run, a test).
        command: ``train`` (a fresh run, ``--resume`` or ``--phase test|analysis``) or ``test``
            (the finished run in ``--log``).

    Returns:
        The validated ``Config``; ``phase`` says what to do with it (``train``, ``test``,
        ``analysis``) and ``resume`` whether a run continues.
    """
    given = {str(k).replace("-", "_"): v for k, v in given.items()}
    config_path = given.get("config")
    file_settings = {str(k).replace("-", "_"): v for k, v in load_yaml(config_path).items()} if config_path else {}
    phase = "test" if command == "test" else given.get("phase", file_settings.get("phase", "train"))
    if phase in SAVED_RUN_PHASES:
        given = {k: v for k, v in given.items() if k not in (*COMMAND_LINE_ONLY, "phase")}
    saved_dir = _saved_run_dir(given, file_settings, phase)

    saved = _saved_config(saved_dir) if saved_dir is not None else None  # 1, 2
    cfg = copy.deepcopy(saved) if saved is not None else Config()
    embedded = saved is None and given.get("data", file_settings.get("data")) is None
    if embedded:  # 3
        cfg.update(EMBEDDED_RECIPE, "embedded recipe")
    if config_path:  # 4
        cfg.update(file_settings, f"--config {config_path}")
    cfg.update(given, COMMAND_LINE)  # 5
    if phase in SAVED_RUN_PHASES:
        cfg.phase = phase
    _apply_rules(cfg, given, file_settings, embedded)  # 6
    cfg.validate()  # 7
    _check_machine(cfg, embedded, fresh=saved is None)  # 8
    if saved is not None:  # 9
        _refuse_changes(saved, cfg, saved_dir, phase)
    return cfg


# ----------------------------------------------------------------------------- 2: the saved run
def _saved_run_dir(given: dict, file_settings: dict, phase: str) -> Optional[Path]:
    """The run folder whose ``config.yaml`` is stage 2, or None for a fresh run.

    ``--resume`` without a ``config.yaml`` resolves as a fresh run: the log folder check then
    names what is missing."""
    if phase not in SAVED_RUN_PHASES and not given.get("resume"):
        return None
    log = given.get("log", file_settings.get("log", Config.log))
    refuse_nul("log", log)
    if phase in SAVED_RUN_PHASES:
        if not Path(log).is_dir():
            raise UserError(f"--log {log}: no such run folder; give the --log folder of a training run")
        return Path(log)
    return Path(log) if (Path(log) / "config.yaml").is_file() else None


def _saved_config(log_dir: Path) -> Config:
    """The settings a run saved in ``LOG/config.yaml`` (``--val-split auto`` of older runs resolved)."""
    from .data.val_split import resolve_val_split
    from .engine.logdir import read_config
    from .retired import drop_retired

    saved = read_config(log_dir)
    for key in COMMAND_LINE_ONLY:  # older runs saved `resume: true`: a switch, not a setting
        saved.pop(key, None)
    saved = drop_retired(saved, str(log_dir / "config.yaml"))  # older runs saved switches since removed
    cfg = Config().update(saved, str(log_dir / "config.yaml"))
    cfg.val_split = resolve_val_split(cfg, embedded=_is_embedded(cfg))
    return cfg


# ----------------------------------------------------------------------------- 6: rules
def _apply_rules(cfg: Config, given: dict, file_settings: dict, embedded: bool) -> None:
    """The settings that depend on other settings, in place."""
    from .data.val_split import resolve_val_split
    from .flag_rules import apply_method_flags
    from .methods import METHODS

    cfg.method = METHODS.canonical(cfg.method)  # `--method JTLN` is jtln, as dataset names are
    explicit = set(given) | set(file_settings)
    if embedded:
        _embedded_backbone(cfg, explicit)
    _refuse_weights_file_without_weights(cfg, given, file_settings, embedded)
    apply_method_flags(cfg, explicit, set(given))
    cfg.val_split = resolve_val_split(cfg, embedded=_is_embedded(cfg))


def _embedded_backbone(cfg: Config, explicit: set) -> None:
    """The embedded task with an explicit backbone (``-a NAME`` other than ``smallcnn``, or
    ``--pretrained``) starts from its pretrained weights and ``--finetune``, unless
    ``--no-pretrained`` or ``--no-finetune`` says otherwise."""
    wants = ("arch" in explicit and cfg.arch != "smallcnn") or ("pretrained" in explicit and cfg.pretrained)
    if not wants:
        return
    if "pretrained" not in explicit:
        cfg.pretrained = True
    if "finetune" not in explicit:
        cfg.finetune = cfg.pretrained


def _refuse_weights_file_without_weights(cfg: Config, given: dict, file_settings: dict, embedded: bool) -> None:
    """``--pretrained-file`` with ``pretrained: false`` (from wherever it came) is a contradiction."""
    if cfg.pretrained_file is None or cfg.pretrained:
        return
    if "pretrained" in given:
        origin = "--no-pretrained"
    elif "pretrained" in file_settings:
        origin = f"'pretrained: false' in --config {given['config']}"
    elif embedded:
        origin = "the embedded Fashion-MNIST recipe (configs/fashion_mnist.yaml: pretrained: false)"
    else:
        origin = "the run's config.yaml (pretrained: false)"
    raise UserError(f"--pretrained-file loads weights, but {origin} asks for random ones; "
                    f"add --pretrained to load the file, or drop --pretrained-file")


def _is_embedded(cfg: Config) -> bool:
    from .data.task import is_embedded

    return is_embedded(cfg)


# ----------------------------------------------------------------------------- 8: the machine
def _check_machine(cfg: Config, embedded: bool, fresh: bool) -> None:
    """What only this machine can say: the backbone's offline weights, and a root that is no dataset's."""
    if fresh and embedded and cfg.pretrained and cfg.pretrained_file is None:  # set by -a/--pretrained
        _require_offline_weights(cfg.arch)
    if fresh and cfg.data is None and cfg.root is not None and not cfg.download:
        _refuse_root_without_dataset(cfg.root)


def _require_offline_weights(arch: str) -> None:
    from .models.offline import pretrained_offline

    if not pretrained_offline(arch):
        raise UserError(f"-a {arch}: no pretrained weights available offline (tf_efficientnet_lite0 has "
                        f"them); give --pretrained PATH (a weights file) or --no-pretrained (random init)")


def _refuse_root_without_dataset(root: str) -> None:
    """A root (TLlib's positional one, or ``--root``) with no ``-d`` must hold Fashion-MNIST, the
    embedded task's data; otherwise the user meant a dataset and must name it."""
    from .data import DATASETS
    from .data.fashion_mnist import holds_fashion_mnist

    if holds_fashion_mnist(root):
        return
    guess = [name for name in DATASETS.names() if name.lower() == Path(root).name.lower()]
    hint = f"-d {guess[0]}" if guess else "-d NAME"
    raise UserError(f"root {root} given without -d, and it holds no Fashion-MNIST files (the embedded task's): "
                    f"name its dataset with {hint} (one of {', '.join(DATASETS.names())})")


# ----------------------------------------------------------------------------- 9: the saved run
def _refuse_changes(saved: Config, cfg: Config, log_dir: Path, phase: str) -> None:
    """Refuse, in one line, every run-shaping field of ``cfg`` that differs from the saved run's."""
    free = {**RUN_FREE_FIELDS, **(TEST_FREE_FIELDS if phase in SAVED_RUN_PHASES else RESUME_FREE_FIELDS)}
    changed = [f"{flag_of(name)} ({getattr(saved, name)!r} -> {getattr(cfg, name)!r})"
               for name in Config.field_names() if name not in free and getattr(saved, name) != getattr(cfg, name)]
    if not changed:
        return
    if phase in SAVED_RUN_PHASES:
        command = "test" if phase == "test" else "--phase analysis"
        raise UserError(f"{command} --log {log_dir}: settings differ from the run's config.yaml: "
                        f"{', '.join(changed)}; the run is evaluated as it was trained, so drop them (only "
                        f"{', '.join(flag_of(n) for n in free if n not in _NOT_FLAGS_OF_TEST)} may change)")
    raise UserError(f"--resume: settings differ from the run in {log_dir}: {', '.join(changed)}; "
                    f"resume with the run's settings or start over with --overwrite")
