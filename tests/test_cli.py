"""The command line's contract: version, one-line errors with exit 2, config resolution, SIGTERM."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tllib_jtln import __version__
from tllib_jtln.cli import main
from tllib_jtln.config import Config
from tllib_jtln.settings import resolve_settings
from tllib_jtln.errors import UserError
from tiny_images import tiny_argv


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tllib_jtln", *args], capture_output=True, text=True, timeout=120)


def test_version_prints_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"tllib-jtln {__version__}"


def test_unknown_subcommand_is_one_line_exit_2():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "frobnicate" in out.stderr and "Traceback" not in out.stderr


def test_unknown_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--ot-wieght", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ot-wieght" in err[0]


def test_config_typo_names_closest_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ot_wieght: 0.5\n")
    with pytest.raises(UserError, match="did you mean 'ot_weight'"):
        resolve_settings({"config": str(recipe)})


def test_flags_win_over_yaml_and_yaml_over_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: CUB200\not-weight: 0.5\nepochs: 3\n")  # a named dataset: no embedded recipe
    cfg = resolve_settings({"config": str(recipe), "epochs": 7})
    assert cfg.ot_weight == 0.5 and cfg.epochs == 7 and cfg.lr == Config().lr


@pytest.mark.parametrize("text, needle", [("epochs: many\n", "epochs"), ("ot_on: sideways\n", "ot_on"),
                                          ("- a\n- b\n", "mapping"), ("a: [\n", "not valid YAML")])
def test_bad_yaml_values_are_user_errors(tmp_path, text, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=needle):
        resolve_settings({"config": str(recipe)})


@pytest.mark.parametrize("given, needle", [({"ot_eps": 0.0}, "--ot-eps must be > 0"),
                                           ({"lr": float("nan")}, "--lr must be a finite"),
                                           ({"ot_smooth": 0.9}, "--ot-smooth must be in"),
                                           ({"batch_size": 0}, "--batch-size must be >= 1")])
def test_out_of_range_values_name_the_flag(given, needle):
    with pytest.raises(UserError, match=needle):
        resolve_settings(given)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["kill-INT", "kill-TERM"])
def test_a_stop_signal_ends_a_background_train_as_ctrl_c_does(tmp_path, signum):
    """A `train &` of a script (SIGINT ignored on entry) told `kill -INT PID` or `kill PID` (SLURM
    preemption, systemd): it unwinds as on Ctrl-C, exit 130, its checkpoints kept, the last line says
    --resume."""
    log = tmp_path / "run"
    argv = tiny_argv(tmp_path / "data", log, epochs=500)  # runs for minutes, a checkpoint every epoch
    train = subprocess.Popen([sys.executable, "-m", "tllib_jtln", "train", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while not (log / "checkpoints" / "last.pt").is_file():
            assert train.poll() is None and time.monotonic() < deadline, train.communicate()
            time.sleep(0.1)
        os.kill(train.pid, signum)
        _, stderr = train.communicate(timeout=30)
    finally:
        train.kill()
    assert train.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (f"tllib-jtln: interrupted; finished checkpoints are kept "
                                               f"(fix the cause, then continue with --resume --log {log})")
