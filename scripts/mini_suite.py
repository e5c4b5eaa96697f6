"""Write a miniature copy of a suite file: the same rows (each method with its knobs), one setting,
one seed and a few steps, on the data roots given. ``scripts/gpu_smoke.sh`` runs TLlib's suite this
way on a generated miniature TLlib root, so every row of the real file is exercised on the GPU.

    python scripts/mini_suite.py configs/suite/tllib_cub200.yaml --out mini.yaml --root ROOT \\
        --source-root IMAGEFOLDER [--arch tf_efficientnet_lite0] [--setting sr50] [--set device=cuda ...]

Rows that read a source set (``source_root``) get ``--source-root`` as an ``ImageFolder``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

#: the scale of a miniature run (Config keys), over the suite's base
MINIATURE = {"epochs": 1, "iters_per_epoch": 5, "lr_decay_epochs": [1], "batch_size": 8, "source_batch_size": 8,
             "val_per_class": 5, "source_per_class": 5, "workers": 2, "progress": False}


def miniature(suite: dict, root: str, source_root: str, arch: str, setting: str | None = None,
              overrides: dict | None = None, out: str | None = None) -> dict:
    """``suite`` (as parsed from YAML) cut to one setting and seed, every row kept with its knobs, on
    ``root``; the :data:`MINIATURE` scale wins over the suite's (rows included), ``overrides`` over all."""
    settings = suite.get("settings") or {"default": {}}
    setting = setting or next(iter(settings))
    if setting not in settings:
        raise SystemExit(f"--setting {setting}: the suite's settings are {', '.join(settings)}")
    rows = {}
    for name, values in suite["methods"].items():
        values = dict(values or {})
        values.update({key: value for key, value in MINIATURE.items() if key in values})  # the scale wins
        if "source_root" in values:
            values.update(source_data="ImageFolder", source_root=source_root)
        if "per_setting" in values:
            values["per_setting"] = {k: v for k, v in values["per_setting"].items() if k == setting}
        rows[name] = values
    return {**suite, "name": f"{suite.get('name', 'suite')}_mini", "out": out or f"logs/suite/{suite.get('name')}_mini",
            "seeds": [suite["seeds"][0]], "settings": {setting: settings[setting]}, "methods": rows,
            "base": {**suite.get("base", {}), **MINIATURE, "root": root, "arch": arch, **(overrides or {})}}


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text}: give KEY=VALUE, e.g. device=cuda")
    return key.replace("-", "_"), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the miniature suite file to write")
    parser.add_argument("--root", required=True, help="target dataset root (the suite's dataset layout)")
    parser.add_argument("--source-root", required=True, help="an ImageFolder source set for the rows with one")
    parser.add_argument("--arch", default="tf_efficientnet_lite0", help="backbone (default: the offline one)")
    parser.add_argument("--setting", default=None, help="the column to keep (default: the first)")
    parser.add_argument("--set", dest="overrides", type=_key_value, action="append", default=[],
                        help="a Config key for every run, KEY=VALUE (YAML value), repeatable")
    parser.add_argument("--runs-out", default=None, help="the miniature suite's out: folder")
    args = parser.parse_args(argv)
    suite = yaml.safe_load(args.suite.read_text())
    mini = miniature(suite, args.root, args.source_root, args.arch, args.setting, dict(args.overrides),
                     args.runs_out)
    args.out.write_text(yaml.safe_dump(mini, sort_keys=False))
    print(f"{args.out}: {len(mini['methods'])} rows x 1 setting x 1 seed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
