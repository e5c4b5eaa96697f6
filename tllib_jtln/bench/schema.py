"""The suite file's schema: each top-level key, its type and its default, checked before any run.

A suite file is read like a ``--config`` file (``yaml.safe_load``: no code runs) and then checked
here as a whole, so a mistake is one line naming the key, never a traceback halfway through a
suite:

- a key appearing twice in one mapping is refused (YAML would keep the last silently);
- every top-level key has a type (:data:`SUITE_KEYS`); ``null`` is refused for each of them (omit
  the key for its default), and accepted only as a row's or a setting's own settings (``erm:``);
- ``name``, row and setting names become file and folder names under ``out``: non-empty, no
  ``/``, ``\\``, NUL, ``.`` or ``..``; a number is taken as its text, so ``1`` and ``"1"`` (one
  folder) cannot both be given;
- ``out`` is a path, ``~`` expanded here once, so the runs and the tables land in one place.

The Config settings of every row and setting are checked by :meth:`Config.update` (typos, types)
in :func:`load_suite`; their ranges per run by ``suite.check_runs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import Config, load_yaml
from ..errors import UserError


def folder_name(value: Any, where: str) -> str:
    """``value`` as a file or folder name directly under ``out`` (a string or an integer, as text)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UserError(f"{where}: a name must be text, got {value!r}; quote it")
    text = str(value)
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\x00"):
        raise UserError(f"{where}: name {text!r} is a file or folder name under out:, so it must not be empty, "
                        f"'.' or '..', nor contain '/', '\\' or a NUL byte; rename it")
    return text


def path_text(value: Any, where: str) -> str:
    """A folder path as text with ``~`` expanded (the one expansion of it)."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: expected a folder path as text, got {value!r}")
    if "\x00" in value:
        raise UserError(f"{where}: the path {value!r} holds a NUL byte; remove it")
    return str(Path(value).expanduser())


def _seeds(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(type(s) is int for s in value):
        raise UserError(f"{where}: expected a non-empty list of integers, e.g. [0, 1, 2], got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"{where}: {value} names a seed twice (two runs would share one folder); list each once")
    return value


def _settings(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping of Config settings, e.g. {{epochs: 10}}, got {value!r}")
    return value


def _named_settings(value: Any, where: str) -> dict[str, dict]:
    """``{name: Config settings}``; a name's value may be empty (``erm:``: no settings of its own)."""
    if not isinstance(value, dict) or not value:
        raise UserError(f"{where}: expected a non-empty mapping of names to Config settings, "
                        f"e.g. {{erm: {{method: erm}}}}, got {value!r}")
    named: dict[str, dict] = {}
    for raw, settings in value.items():
        name = folder_name(raw, where)
        if name in named:
            raise UserError(f"{where}: {name!r} is given twice (as a number and as text: one folder); keep one")
        named[name] = {} if settings is None else _settings(settings, f"{where}.{name}")
    return named


def _pairs(value: Any, where: str) -> list[list[str]]:
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a list of [row, row] pairs, got {value!r}")
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise UserError(f"{where}: each pair must be [row, row] of two method rows, got {pair!r}")
        pairs.append([folder_name(p, where) for p in pair])
    return pairs


def _text_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{where}: expected a non-empty list of text, got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"{where}: {value} names an entry twice; list each once")
    return value


def _metric(value: Any, where: str) -> str:
    from .report import METRICS

    names = [name for name, _ in METRICS]
    if value not in names:
        raise UserError(f"{where}: expected one of {names}, got {value!r}")
    return value


@dataclass(frozen=True)
class Key:
    """One top-level key: ``check(value, where) -> value`` and ``default(suite so far, path)``
    (``default`` None: the key is required; a default returning None: the key stays absent)."""

    check: Callable[[Any, str], Any]
    default: Callable[[dict, Path], Any] | None


#: The suite file's top-level keys, in the order they are checked (``name`` before ``out``, whose
#: default uses it). A new key is one line here.
SUITE_KEYS: dict[str, Key] = {
    "name": Key(folder_name, lambda suite, path: folder_name(path.stem, "the suite file's name")),
    "out": Key(path_text, lambda suite, path: f"logs/suite/{suite['name']}"),
    "seeds": Key(_seeds, None),
    "base": Key(_settings, lambda suite, path: {}),
    "settings": Key(_named_settings, lambda suite, path: {"default": {}}),
    "methods": Key(_named_settings, None),
    "pairs": Key(_pairs, lambda suite, path: []),
    "metric": Key(_metric, lambda suite, path: None),
    "splits": Key(_text_list, lambda suite, path: None),
}


def refuse_duplicate_keys(text: str, where: str) -> None:
    """A key given twice in one mapping of the YAML ``text`` is a UserError naming it and its line.

    Walks the composed node graph (no object is built; an aliased node is visited once)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seen_nodes: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in keys:
                        raise UserError(f"{where}: line {key.start_mark.line + 1}: key {key.value!r} is given "
                                        f"twice in one mapping (YAML would keep the last silently); keep one")
                    keys.add((key.tag, key.value))
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


#: in a method row: ``{setting: {Config key: value}}`` for that column only
PER_SETTING = "per_setting"


def _check_per_setting(per_setting: Any, settings: dict, where: str) -> None:
    """A row's ``per_setting`` maps setting names of the suite to Config settings."""
    if not isinstance(per_setting, dict):
        raise UserError(f"{where}: must map setting names to Config settings, got {per_setting!r}")
    for setting, values in per_setting.items():
        if setting not in settings:
            raise UserError(f"{where}: unknown setting {setting!r}; the suite's settings: {', '.join(settings)}")
        Config().update(dict(values or {}), f"{where}.{setting}")


def _check_splits(suite: dict, where: str) -> None:
    """``splits``: each a valid ``--class-split``, and then no row, setting or base sets ``class_split``."""
    if not suite.get("splits"):
        return
    for split in suite["splits"]:
        try:
            Config(class_split=split).validate()
        except UserError as exc:
            raise UserError(f"{where}: splits: {exc}") from None
    fixed = [name for name, values in [("base", suite["base"]), *suite["settings"].items(), *suite["methods"].items()]
             if "class_split" in values or "class-split" in values]
    if fixed:
        raise UserError(f"{where}: 'splits' sets every run's class split, but {', '.join(fixed)} sets "
                        f"class_split too; keep one of them")


def load_suite(path: str | Path) -> dict:
    """Read and check a suite file; returns it with every key present and normalised (names as
    text, ``out`` expanded). Every mistake is a UserError naming ``--suite PATH`` and the key."""
    path = Path(path)
    where = f"--suite {path}"
    raw = load_yaml(path, flag="--suite")
    refuse_duplicate_keys(path.read_text(encoding="utf-8"), where)
    unknown = [str(k) for k in raw if k not in SUITE_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(SUITE_KEYS)}")
    suite: dict[str, Any] = {}
    for key, spec in SUITE_KEYS.items():
        if key not in raw:
            if spec.default is None:
                raise UserError(f"{where}: '{key}' is required and must not be empty")
            default = spec.default(suite, path)
            if default is not None:
                suite[key] = default
        elif raw[key] is None:
            raise UserError(f"{where}: '{key}' is empty (null); give a value or omit the key for its default")
        else:
            suite[key] = spec.check(raw[key], f"{where}: {key}")
    for group in ("settings", "methods"):
        for name, values in suite[group].items():
            values = dict(values)
            per_setting = values.pop(PER_SETTING, {}) if group == "methods" else {}
            Config().update({**suite["base"], **values}, f"{where}: {group}.{name}")  # typos fail here
            _check_per_setting(per_setting, suite["settings"], f"{where}: methods.{name}.{PER_SETTING}")
    _check_splits(suite, where)
    for pair in suite["pairs"]:
        missing = [p for p in pair if p not in suite["methods"]]
        if missing:
            raise UserError(f"{where}: pairs: {pair} names {missing[0]!r}, which is not a row of methods: "
                            f"{sorted(suite['methods'])}")
    return suite
