"""The one settings pass (tllib_jtln.settings): a saved run's fields compared, ranges, NUL bytes,
names matched loosely, a root that names no dataset, flag typos, and ``--val-split none``'s lines."""
import math
import re

import pytest
import yaml

from tllib_jtln.cli import main
from tllib_jtln.engine.logdir import write_config
from tllib_jtln.engine.reporter import Reporter
from tllib_jtln.engine import run
from tllib_jtln.errors import UserError
from tllib_jtln.settings import RESUME_FREE_FIELDS, RUN_FREE_FIELDS, TEST_FREE_FIELDS, resolve_settings


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def saved_run(tmp_path):
    """A run folder holding the config.yaml a fresh jtln run with a source stage saved (no training needed)."""
    log = tmp_path / "run"
    log.mkdir()
    write_config(run.resolve_config({"method": "jtln", "source_stage": True, "log": str(log)}).to_dict(), log)
    return log


# ----------------------------------------------------------------------------- 2. the saved run's fields
@pytest.mark.parametrize("flag, value, saved", [
    ("ot_eps", 0.5, "0.3"), ("ot_reg", "kl", "'entropy'"), ("cost_refresh", 1, "0"),
    ("source_stage", False, "True"), ("lr", 0.1, "0.05"), ("lr_decay_epochs", [3], "[6]"),
])
def test_resume_refuses_every_run_shaping_change(saved_run, flag, value, saved):
    with pytest.raises(UserError, match=r"--resume: .*" + re.escape(f"--{flag.replace('_', '-')} ({saved} -> ")):
        run.resolve_config({"resume": True, "log": str(saved_run), flag: value})


def test_resume_accepts_where_and_how_fields_and_more_epochs(saved_run, tmp_path):
    cfg = run.resolve_config({"resume": True, "log": str(saved_run), "device": "cpu", "workers": 3, "epochs": 12,
                          "root": str(tmp_path), "skip_nonfinite": True, "progress": False})
    assert cfg.resume and cfg.source_stage and cfg.epochs == 12 and cfg.workers == 3
    with pytest.raises(UserError, match="--amp"):  # training arithmetic: refused on resume, free on test
        run.resolve_config({"resume": True, "log": str(saved_run), "amp": True})
    assert resolve_settings({"log": str(saved_run), "amp": True}, "test").amp


@pytest.mark.parametrize("argv, needle", [
    (["test", "-a", "resnet50"], "--arch ('smallcnn' -> 'resnet50')"),
    (["train", "--phase", "test", "-sr", "50"], "--sample-rate (100 -> 50)"),
    (["train", "--phase", "analysis", "--val-per-class", "3"], "--val-per-class (20 -> 3)"),
])
def test_test_log_refuses_run_shaping_flags_by_name(saved_run, capsys, argv, needle):
    assert main([*argv, "--log", str(saved_run)]) == 2
    line = one_error_line(capsys)
    assert needle in line and "--device" in line, line


def test_test_log_accepts_where_and_how_flags(saved_run, tmp_path):
    cfg = resolve_settings({"log": str(saved_run), "device": "cpu", "workers": 0, "root": str(tmp_path)}, "test")
    assert cfg.phase == "test" and cfg.root == str(tmp_path) and cfg.method == "jtln" and cfg.source_stage


def test_free_fields_are_config_fields():
    from tllib_jtln.config import Config

    names = set(Config.field_names())
    assert set(RUN_FREE_FIELDS) | set(RESUME_FREE_FIELDS) | set(TEST_FREE_FIELDS) <= names


# ----------------------------------------------------------------------------- 3. ranges
@pytest.mark.parametrize("given, needle", [
    ({"lr": 1e308}, "--lr must be in"), ({"lr": 1e39}, "--lr must be in"), ({"wd": 1e308}, "--wd must be in"),
    ({"lr_gamma": 1e308}, "--lr-gamma must be in"), ({"seed": 2 ** 64}, "--seed must be in [0, 4294967295]"),
    ({"data_seed": 2 ** 32}, "--data-seed must be in"),
])
def test_numbers_that_overflow_sgd_or_seeds_are_refused(given, needle):
    with pytest.raises(UserError) as exc:
        run.resolve_config(given)
    assert needle in str(exc.value)


def test_bench_dry_run_refuses_a_seed_numpy_cannot_take(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "out": str(tmp_path / "out"), "seeds": [2 ** 40],
                                     "base": {"epochs": 1}, "methods": {"erm": {"method": "erm"}}}))
    assert main(["bench", "--suite", str(suite), "--dry-run"]) == 2
    assert "--seed must be in" in one_error_line(capsys)


# ----------------------------------------------------------------------------- 4. NUL bytes
def test_a_nul_byte_in_a_text_setting_names_the_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text('log: "a\\0b"\n')
    assert main(["train", "--config", str(recipe)]) == 2
    assert "setting 'log' (--log) contains a NUL byte" in one_error_line(capsys)
    with pytest.raises(UserError, match="setting 'arch'"):
        run.resolve_config({"arch": "resnet\x0050"})
    with pytest.raises(UserError, match="setting 'log'"):
        run.test_from_flags({"log": "run\x00"})


# ----------------------------------------------------------------------------- 5. a newcomer's first hour
def test_a_root_without_dataset_asks_for_d(tmp_path, capsys):
    root = tmp_path / "cub200"
    root.mkdir()
    with pytest.raises(UserError, match="given without -d.*name its dataset with -d CUB200 .*OxfordIIITPets"):
        run.resolve_config({"root": str(root), "num_samples_per_class": 4})
    assert main(["train", str(tmp_path), "-sr", "15"]) == 2
    assert "-d NAME (one of" in one_error_line(capsys)
    fashion = tmp_path / "fm"  # the embedded task's own files under --root stay accepted
    fashion.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (fashion / name).write_bytes(b"")
    assert run.resolve_config({"root": str(fashion)}).data is None


def test_method_names_match_case_and_separators_or_suggest():
    assert run.resolve_config({"method": "JTLN"}).method == "jtln"
    assert run.resolve_config({"method": "Co-Tuning"}).method == "co_tuning"
    with pytest.raises(UserError, match="did you mean 'jtln'"):
        run.resolve_config({"method": "jtnl"})


def test_flag_typo_suggests_the_flag_and_the_subcommand_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--tradeoff", "1"])
    line = one_error_line(capsys)
    assert exc.value.code == 2
    assert "did you mean --trade-off?" in line and "`tllib-jtln train --help`" in line, line


def test_no_validation_prints_val_none_not_nan(tmp_path, capsys):
    reporter = Reporter(run.resolve_config({"val_split": "none"}), tmp_path, True, 2)
    record = {"epoch": 2, "train_loss": 0.5, "val_top1": math.nan, "val_mean_class_acc": math.nan, "lr": 0.01,
              "epoch_time_s": 1.0}
    reporter.epoch_line(record, improved=True)
    reporter.finished({"test_top1": 0.5, "test_mean_class_acc": 0.5, "test_images": 10, "skipped_images": 0},
                      {"epoch": 2, "val_top1": math.nan}, 1.0, tmp_path)
    out = capsys.readouterr().out
    assert "nan" not in out and out.count("val: none") == 2, out
