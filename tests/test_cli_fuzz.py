"""Fuzzing the command line and the recipe loader: never a traceback, only one line and exit 2.

Random and mutated flag sets and YAML files go through the real parser and the real config
resolution (no training: the engine is replaced by a function that only resolves the config).
Every case must end either in a valid :class:`Config` or in a single-line error with exit 2.
Also fuzzed (issue 16): TLlib list files (bytes, NULs, labels, FIFOs), suite files through
``bench --dry-run`` (names, values, destructive switches) and a run folder's ``config.yaml``
through ``test --log``.
"""
import random
import string

import pytest

import tllib_jtln.cli as cli
from tllib_jtln.config import Config
from tllib_jtln.settings import resolve_settings

FIELDS = Config.field_names()
VALUES = ["0", "1", "-1", "0.5", "1e-3", "nan", "inf", "abc", "", "true", "knn", "target", "both",
          "resnet18", "3 4", "--", "-5", "1e400", "\x00", "é", "[1, 2]", "7", "15", "99999999999999999999999",
          "../x"]
YAML_VALUES = ["0", "1", "-3", "0.1", "abc", "true", "null", "[1, 2]", "{a: 1}", "'x'", "[", "1e-3", "~",
               "!!python/object/apply:os.system ['touch /tmp/tllib_jtln_pwned']", "&a [*a]", "{", "- 1",
               ".nan", "-.inf", "1e300", "[-1]", "yes"]


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
    monkeypatch.setattr(cli, "cmd_train", lambda args: isinstance(resolve_settings(cli._given(args)), Config) and 0)


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


# ----------------------------------------------------------------------------- list files
GOOD_LINES = [b"img/a.png 0", b"img/a.png 1", b"# comment", b""]
BAD_LINES = [b"img/\xff.png 0", b"img/a\x00.png 0", b"img/a.png 99999999999999999999999",
              b"img/a.png -1", b"img/a.png x", b"img/a.png", b"../a.png 0", b"/etc/passwd 0", b"img/fifo.png 0",
              b"img/dir.png 0", b"img/missing.png 0", b"\xc3\x28 0", b"img/a.png 2"]


def test_fuzzed_list_files_never_trace(tmp_path):
    import os

    from PIL import Image

    from tllib_jtln.config import Config
    from tllib_jtln.data import build_task
    from tllib_jtln.errors import UserError

    root = tmp_path / "data"
    (root / "img" / "dir.png").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "img" / "a.png")
    os.mkfifo(root / "img" / "fifo.png")
    (root / "image_list").mkdir()
    rng = random.Random(16)
    outcomes = {"ok": 0, "error": 0}
    for case in range(120):
        for name in ("train.txt", "test.txt"):
            lines = [rng.choice(BAD_LINES if rng.random() < 0.1 else GOOD_LINES) for _ in range(rng.randint(1, 5))]
            (root / "image_list" / name).write_bytes(b"\n".join(lines) + b"\n")
        cfg = Config(data="ImageList", root=str(root), transforms="small", image_size=8, val_per_class=0,
                     workers=0, skip_bad_images=rng.random() < 0.5)
        try:
            task = build_task(cfg)
            for split in (task.target_train, task.target_test):  # loads every image: bad ones named or skipped
                for i in range(len(split)):
                    split[i]
            outcomes["ok"] += 1
        except UserError as exc:
            assert "\n" not in str(exc) and str(root) in str(exc), exc
            outcomes["error"] += 1
    assert outcomes["ok"] > 20 and outcomes["error"] > 20, outcomes


# ----------------------------------------------------------------------------- suites and run folders
ROW_NAMES = ["erm", "a b", "../up", "x/y", "..", ".", "ok-1", "'é'", "a\\\\b"]
SUITE_VALUES = ["{method: erm}", "{method: nosuch}", "{lr: .nan}", "{lr: -1}", "{overwrite: true}",
                "{resume: true}", "{sample_rate: 7}", "{lr_decay_epochs: [-1]}", "{epochs: 2}", "{epochs: 0}",
                "{sample_rate: 30}", "{}", "null", "[", "{overwrite: false}"]


def test_fuzzed_suites_never_trace_nor_leave_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(1616)
    outcomes = {"ok": 0, "error": 0}
    for case in range(60):
        rows = "\n".join(f"  {rng.choice(ROW_NAMES)}: {rng.choice(SUITE_VALUES)}" for _ in range(rng.randint(1, 3)))
        suite = tmp_path / f"s{case}.yaml"
        suite.write_text(f"out: out{case}\nseeds: [0]\nmethods:\n{rows}\n")
        try:
            code = cli.main(["bench", "--suite", str(suite), "--dry-run"])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code in (0, 2), (suite.read_text(), err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [], "a dry run wrote folders"
    assert outcomes["ok"] > 3 and outcomes["error"] > 20, outcomes


def test_fuzzed_run_config_yaml_never_traces(tmp_path, capsys):
    rng = random.Random(61)
    run = tmp_path / "run"
    run.mkdir()
    for case in range(60):
        (run / "config.yaml").write_text(_random_yaml(rng))
        code = cli.main(["test", "--log", str(run), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2, err  # no checkpoint: every case ends in one line
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
