"""Every setting of a run, in one place: command-line flags and YAML keys come from here.

A run's settings are resolved in this order, later ones winning:
``Config`` defaults -> the embedded recipe when no dataset is given -> ``--config FILE.yaml``
-> flags given on the command line. YAML keys are the field names below (``ot_weight``) or
their flag spelling (``ot-weight``); an unknown key is a :class:`UserError` naming the closest
known key.

Flags follow TLlib's fine-tuning scripts (the positional dataset root, ``-d``, ``-a``, ``-sr``,
``-sc``, ``-b``, ``-i``, ``--epochs``, ``--lr/--learning-rate``, ``--lr-gamma``,
``--lr-decay-epochs``, ``--wd``, ``--momentum``, ``--finetune``, ``--seed``, ``--log``,
``--phase``, ``--trade-off``, ``--pretrained PATH``, ``--train-resizing``, ``--val-resizing``,
``--no-hflip``, ``--color-jitter``); where our defaults differ (``--finetune`` on, ``--seed 0``,
selection on a validation split) the README's "Coming from TLlib" lists it.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError


def _opt(default: Any, help: str, flags: tuple[str, ...] = (), choices: tuple | None = None,
         nargs: str | None = None, path_value: bool = False) -> Any:
    meta = {"help": help, "flags": flags, "choices": choices, "nargs": nargs, "path_value": path_value}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """The resolved settings of one run. Field names are the YAML keys."""

    # --- what to run
    method: str = _opt("jtln", "training method (tllib-jtln list methods)")
    phase: str = _opt("train", "train; test: evaluate the best checkpoint of --log; analysis: t-SNE of its "
                               "features (tsne.png) and the A-distance, as TLlib", choices=("train", "test", "analysis"))
    config: Optional[str] = _opt(None, "YAML recipe; flags given on the command line win")

    # --- target data
    data: Optional[str] = _opt(None, "target dataset (tllib-jtln list datasets); none: the embedded Fashion-MNIST task",
                               flags=("-d", "--data"))
    root: Optional[str] = _opt(None, "target dataset root folder")
    sample_rate: int = _opt(100, "TLlib sample rate (100, 50, 30 or 15): which image_list/train_{sr}.txt to use",
                            flags=("-sr", "--sample-rate"))
    num_samples_per_class: Optional[int] = _opt(None, "draw K labelled target images per class (seeded); "
                                                      "the embedded task defaults to 10",
                                                flags=("-K", "--num-samples-per-class", "-sc",
                                                       "--num-samples-per-classes"))
    val_per_class: int = _opt(20, "target validation images per class (seeded), from where --val-split says")
    val_split: str = _opt("auto", "where validation images come from: rest (training pool outside the "
                                  "training set; default with -sr < 100 or -K), train (carved from the training "
                                  "set; default at -sr 100), test (TLlib's protocol: selects on the test set), "
                                  "none (keep the last epoch)", choices=("auto", "rest", "train", "test", "none"))
    # --- source data
    source_data: Optional[str] = _opt(None, "source dataset for the source head (the embedded task brings its own; "
                                                 "none: no source images)")
    source_root: Optional[str] = _opt(None, "source dataset root folder")
    source_per_class: Optional[int] = _opt(None, "cap on source images per class (seeded); none: all")
    source_classes: Optional[str] = _opt(None, "embedded task: comma-separated Fashion-MNIST class names of the "
                                               "source set (default: T-shirt/top,Trouser,Coat,Sandal,Bag)")
    target_classes: Optional[str] = _opt(None, "embedded task: comma-separated Fashion-MNIST class names of the "
                                               "target set (default: Pullover,Dress,Shirt,Sneaker,Ankle boot)")
    # --- images
    image_size: Optional[int] = _opt(None, "input size; default: 224 (TLlib transforms), 28 (embedded task)")
    transforms: str = _opt("auto", "tllib: RandomResizedCrop/Resize+CenterCrop; timm: the backbone's data config; "
                                   "small: pad-crop+flip for small images; auto picks by dataset",
                           choices=("auto", "tllib", "timm", "small"))
    train_resizing: str = _opt("default", "TLlib's train resizing (--transforms tllib): default (RandomResizedCrop, "
                                          "scale 0.2-1), res., res.|crop, res.sma|crop, inc.crop, cif.crop",
                               choices=("default", "res.", "res.|crop", "res.sma|crop", "inc.crop", "cif.crop"))
    val_resizing: str = _opt("default", "TLlib's eval resizing (--transforms tllib): default (Resize + CenterCrop), "
                                        "res., res.|crop", choices=("default", "res.", "res.|crop"))
    hflip: bool = _opt(True, "random horizontal flip in training (--no-hflip: TLlib's flag)")
    color_jitter: bool = _opt(False, "TLlib's ColorJitter(0.5, 0.5, 0.5, 0.5) in training (--transforms tllib)")
    invert: bool = _opt(False, "embedded task: invert grey levels (x -> 1 - x: dark objects on a light ground, "
                               "as in the product photos an ImageNet backbone knows)")
    workers: int = _opt(2, "data loading workers per process", flags=("-j", "--workers"))
    skip_bad_images: bool = _opt(False, "skip bad images (and report how many) instead of stopping: unreadable, "
                                        "not a regular file, or over 16384 x 16384 pixels (268 MP, the decoding "
                                        "limit that stops decompression bombs)")
    download: bool = _opt(False, "allow downloading a dataset that is missing")

    # --- model
    arch: str = _opt("resnet50", "backbone: any timm model, torchvision's alexnet, or smallcnn",
                     flags=("-a", "--arch"))
    pretrained: bool = _opt(True, "start from pretrained weights; --pretrained PATH: from that weights file "
                                  "(TLlib's form, = --pretrained-file PATH); --no-pretrained: random init",
                            path_value=True)
    pretrained_file: Optional[str] = _opt(None, "local weights file (.safetensors or .pth) for the backbone")
    bottleneck_dim: Optional[int] = _opt(None, "optional bottleneck width between trunk and heads")
    finetune: bool = _opt(True, "backbone at 0.1x the heads' learning rate (TLlib's --finetune)")
    freeze_bn: bool = _opt(False, "keep BatchNorm statistics from pretraining (BN layers in eval mode)")
    channels_last: bool = _opt(False, "use channels_last memory format for the model and batches")
    cpu_bf16: bool = _opt(False, "bfloat16 autocast on the CPU")

    # --- optimisation (TLlib defaults)
    batch_size: int = _opt(48, "target mini-batch size", flags=("-b", "--batch-size"))
    source_batch_size: Optional[int] = _opt(None, "source mini-batch size; default: --batch-size")
    iters_per_epoch: int = _opt(500, "iterations per epoch", flags=("-i", "--iters-per-epoch"))
    epochs: int = _opt(20, "number of epochs")
    lr: float = _opt(0.01, "base learning rate (heads); backbone 0.1x under --finetune",
                     flags=("--lr", "--learning-rate"))
    lr_gamma: float = _opt(0.1, "learning-rate decay factor")
    lr_decay_epochs: list = _opt([12], "epochs at which the learning rate decays", nargs="+")
    momentum: float = _opt(0.9, "SGD (Nesterov) momentum")
    wd: float = _opt(5e-4, "weight decay", flags=("--wd", "--weight-decay"))
    seed: int = _opt(0, "random seed")
    data_seed: Optional[int] = _opt(None, "seed of the data draws (K-shot subset, validation carve, source cap); "
                                          "none: --seed. Fix it to measure the noise of init and batch order alone")
    amp: bool = _opt(False, "mixed precision on CUDA")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")

    # --- methods
    trade_off: float = _opt(2.3, "weight of the method's regulariser: co_tuning's soft-label loss (TLlib's 2.3), "
                                 "jtln's OT term (= --ot-weight)")
    source_head_lr: float = _opt(0.0, "source-free jtln: source-head learning rate multiplier (0: frozen)")

    # --- JTLN (see the spec: docs/method.md)
    ot_on: str = _opt("target", "which samples feed the OT term; target (the paper's): the source head's "
                                "prediction p learns on target images; source (beyond the paper): the target "
                                "head learns on source images; both", choices=("target", "source", "both"))
    ot_target: str = _opt("prediction", "on target samples, q is the target-head prediction or the smoothed label",
                          choices=("prediction", "label"))
    ot_source: str = _opt("label", "on source samples (--ot-on source|both), p is the smoothed source label or the "
                                   "source-head prediction", choices=("label", "prediction"))
    ot_detach: bool = _opt(True, "detach the distribution that is not constrained (q on target samples, "
                                 "p on source samples)")
    ot_weight: float = _opt(1.0, "alpha: weight of the OT term")
    ot_eps: float = _opt(0.3, "entropic regularisation on the [0, 1] cost")
    ot_reg: str = _opt("entropy", "entropy: -eps H(P) (Cuturi); kl: eps KL(P || p q^T), which cannot reward "
                                  "spreading p and makes a constant cost a no-op", choices=("entropy", "kl"))
    ot_iters: int = _opt(100, "Sinkhorn iteration budget")
    ot_tol: float = _opt(1e-6, "Sinkhorn stopping tolerance (marginal error)")
    ot_smooth: float = _opt(1e-3, "delta: mix histograms with uniform so no mass is exactly zero")
    cost: str = _opt("knn", "cost matrix: knn, centroid, source-head, semantic, uniform, shuffled, file:PATH")
    cost_base: str = _opt("knn", "shuffled: the matrix whose source rows are permuted")
    cost_k: int = _opt(10, "knn: neighbours per target image")
    cost_index: str = _opt("auto", "knn: FAISS search; auto: exact (flat) unless the source is too large for it, "
                                   "then IVF-PQ (the choice is logged)", choices=("auto", "flat", "ivfpq"))
    cost_nprobe: Optional[int] = _opt(None, "knn with IVF-PQ: lists visited per query (default nlist/8, at least 8)")
    cost_source_per_class: Optional[int] = _opt(None, "knn/centroid: build the cost from a seeded draw of N source "
                                                      "images per class; none: every source image")
    cost_metric: str = _opt("cosine", "centroid: distance", choices=("cosine", "euclidean"))
    cost_refresh: int = _opt(0, "rebuild the cost from current features every N epochs (0: never)")
    source_stage: bool = _opt(False, "jtln with source data (beyond the paper): a source stage first (as "
                                     "consecutive's), then JTLN on the target images with M built after it")
    cost_seed: int = _opt(0, "shuffled: permutation seed")
    semantic_file: Optional[str] = _opt(None, "semantic: class-name embeddings (.json or .csv)")
    cost_normalize: str = _opt("global", "global: max(M) = 1; column: every target column onto [0, 1] "
                                         "(no per-class floor); none: the builder's scale",
                               choices=("global", "column", "none"))

    # --- run management
    log: str = _opt("logs/run", "log folder of the run")
    print_freq: int = _opt(100, "print every N iterations", flags=("-p", "--print-freq"))
    resume: bool = _opt(False, "continue the run in --log from its last checkpoint (command line only)")
    overwrite: bool = _opt(False, "replace the run in --log (its files are removed; command line only)")
    skip_nonfinite: bool = _opt(False, "skip a step whose loss is NaN/inf instead of stopping")
    progress: bool = _opt(True, "show progress bars")
    feature_cache: Optional[str] = _opt(None, "folder caching the features cost matrices are built from "
                                              "(keyed by data settings and a hash of the weights); none: no disk cache")

    # ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def update(self, values: dict, source: str) -> "Config":
        """Set fields from a mapping (YAML or flags); unknown keys and wrong types are UserErrors."""
        names = self.field_names()
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise UserError(f"{source}: unknown setting '{raw_key}'{hint}")
            if key == "pretrained" and isinstance(value, str):  # TLlib's `--pretrained PATH`
                self.pretrained_file, value = value, True
            value = _coerce(key, value, source)
            if key in COMMAND_LINE_ONLY and value and source != COMMAND_LINE:
                raise UserError(f"{source}: '{raw_key}: true' is refused: --{key} is destructive and accepted on "
                                f"the command line only; remove it from the file and pass --{key}")
            setattr(self, key, value)
        return self


    def validate(self) -> "Config":
        """Range checks that no type can express; a UserError names the flag and the allowed range.

        The one owner of settings checks: :func:`resolve` runs it, and so does the engine before a
        run (libraries check their own arguments, by argument name)."""
        for name, value in self.to_dict().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is None:
                continue
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise UserError(f"--{name.replace('_', '-')} must be {bounds}, got {value}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.sample_rate not in SAMPLE_RATES:
            raise UserError(f"-sr/--sample-rate must be one of TLlib's {', '.join(map(str, SAMPLE_RATES))} "
                            f"(the list files image_list/train_<sr>.txt), got {self.sample_rate}; "
                            f"use -K to draw K images per class")
        if any(epoch < 1 for epoch in self.lr_decay_epochs):
            raise UserError(f"--lr-decay-epochs must be epoch numbers >= 1, got {self.lr_decay_epochs}")
        return self


#: The sample rates of TLlib's list files (``image_list/train_{sr}.txt``).
SAMPLE_RATES = (100, 50, 30, 15)

#: The source name :func:`resolve` gives the flags typed on the command line.
COMMAND_LINE = "command line"

#: Destructive switches: accepted from the command line (or a program) only, never from a YAML file.
COMMAND_LINE_ONLY = ("overwrite", "resume")

#: Fields that must be > 0: the learning rate, Nesterov SGD's momentum, the entropic regularisation.
_POSITIVE = ("lr", "momentum", "ot_eps")

# (field, lowest allowed, highest allowed); None: unbounded on that side.
_RANGES = [
    ("batch_size", 1, None), ("source_batch_size", 1, None), ("iters_per_epoch", 1, None), ("epochs", 1, None),
    ("lr", 0.0, None), ("lr_gamma", 0.0, None), ("momentum", 0.0, 1.0), ("wd", 0.0, None), ("workers", 0, None),
    ("num_samples_per_class", 1, None), ("val_per_class", 0, None), ("source_per_class", 1, None),
    ("image_size", 8, None), ("bottleneck_dim", 1, None), ("print_freq", 1, None),
    ("trade_off", 0.0, None), ("source_head_lr", 0.0, None),
    ("ot_weight", 0.0, None), ("ot_iters", 1, None), ("ot_tol", 0.0, None), ("ot_smooth", 0.0, 0.5),
    ("cost_k", 1, None), ("cost_refresh", 0, None), ("seed", 0, None), ("data_seed", 0, None),
    ("cost_source_per_class", 1, None), ("cost_nprobe", 1, None),
]

_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check a YAML value against the field's type (ints for floats are fine)."""
    kind = _TYPES[key]
    meta = next(f.metadata for f in fields(Config) if f.name == key)
    if value is None:
        if kind.startswith("Optional"):
            return None
        raise UserError(f"{source}: setting '{key}' needs a value")
    base = kind.removeprefix("Optional[").removesuffix("]")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list) or (isinstance(value, int) and not isinstance(value, bool)),
    }[base]
    if not ok:
        raise UserError(f"{source}: setting '{key}' must be {base}, got {value!r}")
    if base == "float":
        value = float(value)
    if base == "list":
        value = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UserError(f"{source}: setting '{key}' must be a list of integers, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(f"{source}: setting '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_yaml(path: str | Path, flag: str = "--config") -> dict:
    """A YAML file as a mapping, parsed with ``yaml.safe_load`` (no code runs; a python tag is an error).

    ``flag`` names where the file came from in messages (``--config``, ``--suite``; empty: the path alone).
    """
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if not path.is_file():
        raise UserError(f"{flag or 'YAML file'}: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{name}: expected a mapping of settings, got {type(data).__name__}")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults are SUPPRESSed so that only given flags override."""
    for f in fields(Config):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        flags = meta.get("flags") or (flag,)
        if flag not in flags:
            flags = (*flags, flag)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"]}
        base = f.type.removeprefix("Optional[").removesuffix("]")
        if meta.get("path_value"):  # `--pretrained` (True), `--pretrained PATH` (a file), `--no-pretrained`
            parser.add_argument(*flags, nargs="?", const=True, metavar="PATH", **kw)
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            continue
        if base == "bool":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if base == "list":
            kw.update(type=int, nargs=meta.get("nargs") or "+")
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[base]
        parser.add_argument(*flags, **kw)


def resolve(given: dict, recipe: dict | None = None) -> Config:
    """Defaults, then ``recipe`` (the embedded task's), then ``--config`` YAML, then the given flags."""
    cfg = Config()
    if recipe:
        cfg.update(recipe, "embedded recipe")
    config_path = given.get("config")
    recipe_file = load_yaml(config_path) if config_path else {}
    if config_path:
        cfg.update(recipe_file, f"--config {config_path}")
    cfg.update(given, COMMAND_LINE)
    if cfg.pretrained_file is not None and not cfg.pretrained:
        if "pretrained" in given:
            origin = "--no-pretrained"
        elif any(str(k).replace("-", "_") == "pretrained" for k in recipe_file):
            origin = f"'pretrained: false' in --config {config_path}"
        else:
            origin = "the embedded Fashion-MNIST recipe (configs/fashion_mnist.yaml: pretrained: false)"
        raise UserError(f"--pretrained-file loads weights, but {origin} asks for random ones; "
                        f"add --pretrained to load the file, or drop --pretrained-file")
    return cfg.validate()
