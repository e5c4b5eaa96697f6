"""A tiny generated transfer task on disk, in the ``ImageFolder`` layout, for engine tests.

Target: 3 classes; source: 4 classes. Class ``c`` is a colour and stripe orientation plus noise;
target class ``j`` resembles source class ``j`` (same hue family), so a cost matrix has structure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 16
TARGET_CLASSES = ("tgt_a", "tgt_b", "tgt_c")
SOURCE_CLASSES = ("src_a", "src_b", "src_c", "src_d")
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 220), (200, 200, 40))


def _image(rng: np.random.Generator, cls: int, shift: int) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    stripes = ((x + shift * y) // 3 + cls) % 2 if cls % 2 else ((y + shift * x) // 3 + cls) % 2
    base = np.array(COLOURS[cls % len(COLOURS)], dtype=np.float64)
    img = stripes[..., None] * base + (1 - stripes[..., None]) * base * 0.3
    img += rng.normal(0, 25, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(folder: Path, classes, per_class: dict, seed: int, shift: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            d = folder / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_image(rng, c, shift)).save(d / f"{i:03d}.png")


def make_tiny_task(root: Path) -> tuple[Path, Path]:
    """Write ``root/target`` (train 6/class, test 4/class) and ``root/source`` (train 8/class)."""
    target, source = Path(root) / "target", Path(root) / "source"
    if not (target / "test").is_dir():
        _write(target, TARGET_CLASSES, {"train": 6, "test": 4}, seed=1, shift=1)
        _write(source, SOURCE_CLASSES, {"train": 8, "test": 2}, seed=2, shift=0)
    return target, source


def tiny_flags(data_root: Path, log: Path, **extra) -> dict:
    """Flags (as the CLI's ``given`` dict) of a seconds-long run on the tiny task."""
    target, source = make_tiny_task(data_root)
    given = {
        "data": "ImageFolder", "root": str(target), "source_data": "ImageFolder", "source_root": str(source),
        "num_samples_per_class": 3, "val_per_class": 2, "source_per_class": 6, "arch": "smallcnn",
        "pretrained": False, "finetune": False, "image_size": SIZE, "transforms": "small", "workers": 0,
        "batch_size": 4, "source_batch_size": 6, "iters_per_epoch": 3, "epochs": 2, "lr": 0.01,
        "lr_decay_epochs": [1], "progress": False, "print_freq": 1, "cost_k": 3, "log": str(log),
        "device": "cpu",
    }
    given.update(extra)
    return given


def tiny_argv(data_root: Path, log: Path, **extra) -> list[str]:
    """The same run as command-line arguments (after ``train``)."""
    argv: list[str] = []
    for key, value in tiny_flags(data_root, log, **extra).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


#: TLlib's sample rates and the per-class image counts of the miniature root (CUB200 has about 30
#: training images per class; 20 keeps the root small and -sr 15 at 3 images per class, as CUB's 4-5)
TLLIB_RATES = {100: 20, 50: 10, 30: 6, 15: 3}


def make_tllib_root(root: Path, test_per_class: int = 4) -> Path:
    """A miniature dataset in TLlib's layout: ``image_list/train_{100,50,30,15}.txt`` (nested, as
    TLlib's: each list keeps the first images of the larger one) and ``test.txt``, over the 3
    target classes; ``TLLIB_RATES[sr]`` training images per class at each sample rate."""
    root = Path(root)
    lists = root / "image_list"
    if (lists / "test.txt").is_file():
        return root
    _write(root, TARGET_CLASSES, {"train": TLLIB_RATES[100], "test": test_per_class}, seed=3, shift=1)
    lists.mkdir(parents=True, exist_ok=True)
    for sr, n in TLLIB_RATES.items():
        lines = [f"train/{name}/{i:03d}.png {c}" for c, name in enumerate(TARGET_CLASSES) for i in range(n)]
        (lists / f"train_{sr}.txt").write_text("\n".join(lines) + "\n")
    lines = [f"test/{name}/{i:03d}.png {c}" for c, name in enumerate(TARGET_CLASSES) for i in range(test_per_class)]
    (lists / "test.txt").write_text("\n".join(lines) + "\n")
    return root
