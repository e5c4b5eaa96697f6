"""Fuzzing the command line and the recipe loader: never a traceback, only one line and exit 2.

Random and mutated flag sets and YAML files go through the real parser and the real config
resolution (no training: the engine is replaced by a function that only resolves the config).
Every case must end either in a valid :class:`Config` or in a single-line error with exit 2.
"""
import random
import string

import pytest

import tllib_jtln.cli as cli
from tllib_jtln.config import Config, resolve

FIELDS = Config.field_names()
VALUES = ["0", "1", "-1", "0.5", "1e-3", "nan", "inf", "abc", "", "true", "knn", "target", "both",
          "resnet18", "3 4", "--", "-5", "1e400", "\x00", "é", "[1, 2]"]
YAML_VALUES = ["0", "1", "-3", "0.1", "abc", "true", "null", "[1, 2]", "{a: 1}", "'x'", "[", "1e-3", "~",
               "!!python/object/apply:os.system ['touch /tmp/tllib_jtln_pwned']", "&a [*a]", "{", "- 1"]


def _random_flags(rng: random.Random) -> list[str]:
    argv = ["train"]
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(FIELDS)
        flag = "--" + name.replace("_", "-")
        roll = rng.random()
        if roll < 0.15:  # a typo in the flag
            i = rng.randrange(2, len(flag))
            flag = flag[:i] + rng.choice(string.ascii_lowercase) + flag[i + 1:]
        elif roll < 0.25:
            flag = "--no-" + name.replace("_", "-")
        argv.append(flag)
        if rng.random() < 0.8:
            argv.append(rng.choice(VALUES))
    return argv


def _random_yaml(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(0, 6)):
        key = rng.choice(FIELDS)
        if rng.random() < 0.2:
            key = key[:-1] + rng.choice(string.ascii_lowercase)
        if rng.random() < 0.5:
            key = key.replace("_", "-")
        lines.append(f"{key}: {rng.choice(YAML_VALUES)}")
    text = "\n".join(lines)
    if rng.random() < 0.1:
        text = "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 40)))
    return text + "\n"


@pytest.fixture
def resolve_only(monkeypatch):
    """Replace training by config resolution, so each case costs microseconds."""
    monkeypatch.setattr(cli, "cmd_train", lambda args: isinstance(resolve(cli._given(args)), Config) and 0)


def test_fuzzed_command_lines_and_recipes_never_trace(tmp_path, capsys, resolve_only):
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for case in range(400):
        argv = _random_flags(rng)
        if rng.random() < 0.5:
            recipe = tmp_path / f"r{case}.yaml"
            recipe.write_text(_random_yaml(rng))
            argv += ["--config", str(recipe)]
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, (argv, err)
            assert "Traceback" not in err
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    # Both outcomes must occur, or the fuzzer is not exercising anything.
    assert outcomes["ok"] > 20 and outcomes["error"] > 100, outcomes


def test_yaml_tags_never_execute(tmp_path, capsys, resolve_only):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert cli.main(["train", "--config", str(recipe)]) == 2
    assert not marker.exists()
    assert "not valid YAML" in capsys.readouterr().err
