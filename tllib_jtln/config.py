"""Every setting of a run, in one place: command-line flags and YAML keys come from here.

A run's settings are resolved by :func:`tllib_jtln.settings.resolve_settings`, the one pass
(defaults -> saved run -> embedded recipe -> ``--config FILE.yaml`` -> flags -> rules ->
:meth:`Config.validate`). YAML keys are the field names below (``ot_weight``) or their flag
spelling (``ot-weight``); an unknown key is a :class:`UserError` naming the closest known key.

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

from . import readers
from .errors import UserError


def _opt(default: Any, help: str, flags: tuple[str, ...] = (), choices: tuple | None = None,
         nargs: str | None = None, path_value: bool = False, names: bool = False) -> Any:
    """A field's default and flag metadata; ``names``: a list of names, ``a,b`` on the command line."""
    meta = {"help": help, "flags": flags, "choices": choices, "nargs": nargs, "path_value": path_value,
            "names": names}
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
    class_split: Optional[str] = _opt(None, "embedded task: random:S draws the S-th seeded random partition of the ten "
                                            "classes into 5 source and 5 target classes (random:S:NS/NT for other "
                                            "sizes); recorded by name in summary.json. Not with --source-classes/"
                                            "--target-classes")
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
    pool: bool = _opt(True, "TLlib's --no-pool is accepted and changes nothing: every backbone here returns pooled "
                            "(B, D) features already (timm's own pooling, a ViT's class token)")
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
    momentum: float = _opt(0.9, "SGD (Nesterov) momentum; Adam's beta1")
    optimizer: str = _opt("SGD", "SGD (Nesterov momentum, TLlib's default) or Adam (TLlib's --optimizer)",
                          choices=("SGD", "Adam"))
    wd: float = _opt(5e-4, "weight decay", flags=("--wd", "--weight-decay"))
    seed: int = _opt(0, "random seed")
    data_seed: Optional[int] = _opt(None, "seed of the data draws (K-shot subset, validation carve, source cap); "
                                          "none: --seed. Fix it to measure the noise of init and batch order alone")
    amp: bool = _opt(False, "mixed precision on CUDA")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")

    # --- methods
    trade_off: float = _opt(2.3, "weight of the method's regulariser: co_tuning's soft-label loss (TLlib's 2.3), "
                                 "jtln's OT term (= --ot-weight); bss, lwf, bi_tuning: their --*-trade-off")
    regularizers: list = _opt([], "TLlib regularisers added to erm, joint or jtln: bss, l2sp, delta, stochnorm, lwf "
                                  "(tllib-jtln list regularizers); --with bss,l2sp or a YAML list", flags=("--with", "--regularizers"),
                              names=True)
    bss_k: int = _opt(1, "bss: how many of the smallest singular values of the batch features are shrunk (TLlib's -k)")
    bss_trade_off: float = _opt(0.001, "bss: weight of the BSS term (TLlib's --trade-off for bss.py)")
    trade_off_backbone: float = _opt(0.01, "l2sp/delta: alpha, weight of the backbone term (distance to the starting "
                                           "weights; DELTA: of the feature maps), TLlib's")
    trade_off_head: float = _opt(0.01, "l2sp/delta: beta, weight of the new head's L2 penalty, TLlib's")
    delta_attention_epochs: int = _opt(10, "delta: epochs fitting the linear head the channel attention is measured "
                                           "with (TLlib's --attention-epochs)")
    delta_attention_iters: int = _opt(10, "delta: batches the filter importance is averaged over (TLlib's "
                                          "--attention-iteration-limit)")
    delta_attention_batch_size: int = _opt(32, "delta: batch size of the channel-attention computation")
    relationship: Optional[str] = _opt(None, "co_tuning: the category relation file (.npy, target x source classes, "
                                             "TLlib's --relationship): read when it exists, else computed and written "
                                             "there (a relative path is under --log); none: computed, kept in the "
                                             "checkpoint")
    # stochnorm, lwf, bi_tuning: their knobs go here
    stochnorm_p: float = _opt(0.5, "stochnorm: probability that a BatchNorm channel normalises with the batch "
                                   "statistics in training, else the moving ones (TLlib's --prob)")
    lwf_temperature: float = _opt(3.0, "lwf: distillation temperature T (TLlib's lwf.py -T)")
    lwf_trade_off: float = _opt(4.0, "lwf: weight of the distillation term (TLlib's --trade-off for lwf.py)")
    bi_tuning_k: int = _opt(40, "bi_tuning: keys queued per class (TLlib's --K)")
    bi_tuning_momentum: float = _opt(0.999, "bi_tuning: momentum m of the key encoder (TLlib's --m)")
    bi_tuning_temperature: float = _opt(0.07, "bi_tuning: temperature of the contrastive terms (TLlib's --T)")
    bi_tuning_projection_dim: int = _opt(128, "bi_tuning: width of the projector head (TLlib's --projection-dim)")
    bi_tuning_trade_off: float = _opt(1.0, "bi_tuning: weight of the two contrastive terms (TLlib's --trade-off "
                                           "for bi_tuning.py)")

    # --- JTLN (see the spec: docs/method.md)
    ot_on: str = _opt("target", "which samples feed the OT term; target (the paper's): the source head's "
                                "prediction p learns on target images; source (beyond the paper): the target "
                                "head learns on source images", choices=("target", "source"))
    ot_target: str = _opt("prediction", "on target samples, q is the target-head prediction or the smoothed label",
                          choices=("prediction", "label"))
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
                                   "then an IVF index with 8-bit scalar codes, ivfsq (the choice is logged); ivfpq: product codes, "
                                   "8x smaller, coarser", choices=("auto", "flat", "ivfsq", "ivfpq"))
    cost_nprobe: Optional[int] = _opt(None, "knn with an IVF index: lists visited per query (default nlist/8, at least 8)")
    cost_source_per_class: Optional[int] = _opt(None, "knn/centroid: build the cost from a seeded draw of N source "
                                                      "images per class; none: every source image")
    cost_refresh: int = _opt(0, "rebuild the cost from current features every N epochs (0: never)")
    source_stage: bool = _opt(False, "jtln with source data (beyond the paper): a source stage first (as "
                                     "consecutive's), then JTLN on the target images with M built after it")
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
    skip_test: bool = _opt(False, "no test pass at the end (selection runs): summary.json holds the validation "
                                  "figures and says test_skipped")
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
            key = KEY_ALIASES.get(str(raw_key), str(raw_key).replace("-", "_"))
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

        The one owner of settings checks: :func:`~tllib_jtln.settings.resolve_settings` runs it, and so
        does the engine before a run (libraries check their own arguments, by argument name)."""
        for name, value in self.to_dict().items():
            refuse_nul(name, value)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{flag_of(name)} must be a finite number, got {value}")
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is None:
                continue
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise UserError(f"{flag_of(name)} must be {bounds}, got {value}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise UserError(f"{flag_of(name)} must be > 0, got {getattr(self, name)}")
        if self.sample_rate not in SAMPLE_RATES:
            raise UserError(f"-sr/--sample-rate must be one of TLlib's {', '.join(map(str, SAMPLE_RATES))} "
                            f"(the list files image_list/train_<sr>.txt), got {self.sample_rate}; "
                            f"use -K to draw K images per class")
        if self.class_split is not None:
            parse_class_split(self.class_split)
            named = [flag for flag, value in (("--source-classes", self.source_classes),
                                              ("--target-classes", self.target_classes)) if value is not None]
            if named:
                raise UserError(f"--class-split {self.class_split} and {' and '.join(named)} both choose the classes; "
                                f"give one: --class-split for a random split, or the named classes")
        if self.skip_test and self.val_split == "none":
            raise UserError("--skip-test with --val-split none leaves the run without any figure; validate "
                            "(--val-split rest or train) or drop --skip-test")
        if any(epoch < 1 for epoch in self.lr_decay_epochs):
            raise UserError(f"--lr-decay-epochs must be epoch numbers >= 1, got {self.lr_decay_epochs}")
        return self


def flag_of(name: str) -> str:
    """The long flag of field ``name`` (``ot_eps`` -> ``--ot-eps``)."""
    return "--" + name.replace("_", "-")


def refuse_nul(name: str, value: Any) -> None:
    """A NUL byte in a text setting is a UserError naming the setting (paths cannot hold one)."""
    if isinstance(value, str) and "\x00" in value:
        raise UserError(f"setting '{name}' ({flag_of(name)}) contains a NUL byte: {value!r}; remove it")


#: ``--class-split`` sizes when the value gives none: 5 source and 5 target classes.
DEFAULT_SPLIT_SIZES = (5, 5)


def parse_class_split(text: str) -> tuple[int, int, int]:
    """``random:S`` or ``random:S:NS/NT`` -> ``(S, NS, NT)`` (sizes default to 5/5); a one-line
    UserError naming the flag and the form otherwise."""
    form = "random:S or random:S:NS/NT (S >= 0, e.g. random:3 or random:3:6/4)"
    parts = str(text).split(":")
    sizes = parts[2].split("/") if len(parts) == 3 else [str(n) for n in DEFAULT_SPLIT_SIZES]
    numbers = [parts[1] if len(parts) > 1 else "", *sizes]
    if parts[0] != "random" or len(parts) not in (2, 3) or len(sizes) != 2 or not all(n.isdigit() for n in numbers):
        raise UserError(f"--class-split {text}: expected {form}")
    index, num_source, num_target = (int(n) for n in numbers)
    if num_source < 1 or num_target < 2:
        raise UserError(f"--class-split {text}: needs at least 1 source and 2 target classes, got {num_source}/"
                        f"{num_target}")
    return index, num_source, num_target


#: YAML keys that name a field by its flag's word: ``with: [bss, l2sp]`` is ``regularizers``.
KEY_ALIASES = {"with": "regularizers"}

#: The sample rates of TLlib's list files (``image_list/train_{sr}.txt``).
SAMPLE_RATES = (100, 50, 30, 15)

#: The source name :func:`~tllib_jtln.settings.resolve_settings` gives the flags typed on the command line.
COMMAND_LINE = "command line"

#: Destructive switches: accepted from the command line (or a program) only, never from a YAML file.
COMMAND_LINE_ONLY = ("overwrite", "resume")

#: Fields that must be > 0: the learning rate, Nesterov SGD's momentum, the entropic regularisation, the temperatures.
_POSITIVE = ("lr", "momentum", "ot_eps", "lwf_temperature", "bi_tuning_temperature")

#: Seeds are NumPy's and torch's: unsigned 32-bit integers.
MAX_SEED = 2 ** 32 - 1

# (field, lowest allowed, highest allowed); None: unbounded on that side. The learning rate, weight
# decay and decay factor are bounded (10, 1, 1: far above any fine-tuning recipe) so that SGD's
# float32 arithmetic cannot overflow.
_RANGES = [
    ("batch_size", 1, None), ("source_batch_size", 1, None), ("iters_per_epoch", 1, None), ("epochs", 1, None),
    ("lr", 0.0, 10.0), ("lr_gamma", 0.0, 1.0), ("momentum", 0.0, 1.0), ("wd", 0.0, 1.0), ("workers", 0, None),
    ("num_samples_per_class", 1, None), ("val_per_class", 0, None), ("source_per_class", 1, None),
    ("image_size", 8, None), ("bottleneck_dim", 1, None), ("print_freq", 1, None),
    ("trade_off", 0.0, None),
    ("ot_weight", 0.0, None), ("ot_iters", 1, None), ("ot_tol", 0.0, None), ("ot_smooth", 0.0, 0.5),
    ("cost_k", 1, None), ("cost_refresh", 0, None), ("seed", 0, MAX_SEED), ("data_seed", 0, MAX_SEED),
    ("bss_k", 1, None), ("bss_trade_off", 0.0, None), ("trade_off_backbone", 0.0, None), ("trade_off_head", 0.0, None),
    ("delta_attention_epochs", 0, None), ("delta_attention_iters", 1, None), ("delta_attention_batch_size", 1, None),
    ("cost_source_per_class", 1, None), ("cost_nprobe", 1, None),
    ("stochnorm_p", 0.0, 1.0), ("lwf_trade_off", 0.0, None), ("bi_tuning_k", 1, None), ("bi_tuning_momentum", 0.0, 1.0),
    ("bi_tuning_projection_dim", 1, None), ("bi_tuning_trade_off", 0.0, None),
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
        "list": isinstance(value, (list, str)) if meta.get("names") else (
            isinstance(value, list) or (isinstance(value, int) and not isinstance(value, bool))),
    }[base]
    if not ok:
        raise UserError(f"{source}: setting '{key}' must be {base}, got {value!r}")
    if base == "float":
        value = float(value)
    if base == "list" and meta.get("names"):
        return _names(key, value, source)
    if base == "list":
        value = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UserError(f"{source}: setting '{key}' must be a list of integers, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(f"{source}: setting '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def split_names(text: str) -> list[str]:
    """``"bss, l2sp"`` -> ``["bss", "l2sp"]`` (empty items dropped)."""
    return [name.strip() for name in str(text).split(",") if name.strip()]


def _names(key: str, value: Any, source: str) -> list[str]:
    """A names setting from ``a,b`` or a list of strings."""
    items = split_names(value) if isinstance(value, str) else value
    if not all(isinstance(v, str) for v in items):
        raise UserError(f"{source}: setting '{key}' must be a list of names, got {value!r}")
    return [v.strip() for v in items if v.strip()]


def load_yaml(path: str | Path, flag: str = "--config") -> dict:
    """A YAML file as a mapping, parsed with ``yaml.safe_load`` (no code runs; a python tag is an error)
    within :mod:`tllib_jtln.readers`' bounds (1 MiB, nesting depth, aliases expanded, 64-bit integers).

    ``flag`` names where the file came from in messages (``--config``, ``--suite``; empty: the path alone).
    """
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if not path.is_file():
        raise UserError(f"{flag or 'YAML file'}: file not found: {path}")
    data = readers.load_yaml(path, name)  # bounded: size, depth, aliases, integer digits
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
        if meta.get("names"):
            kw.update(type=split_names, metavar="NAME[,NAME]")
        elif base == "list":
            kw.update(type=int, nargs=meta.get("nargs") or "+")
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[base]
        parser.add_argument(*flags, **kw)
