"""End to end: every registered method on a tiny generated task, resume equivalence, refusals,
non-finite losses, and one-line CLI errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tllib_jtln.cli import main
from tllib_jtln.engine.checkpoint import load_checkpoint
from tllib_jtln.engine.run import train_from_flags
from tllib_jtln.engine.trainer import train
from tllib_jtln.engine.run import resolve_config
from tllib_jtln.errors import UserError
from tllib_jtln.methods import METHODS

from tiny_images import make_tiny_task, tiny_argv, tiny_flags

FILES = ("config.yaml", "env.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
         "cost.npy", "cost.json", "cost.png", "transport.png", "transport.txt", "curves.png", "summary.json")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_task(root)
    return root


def _summary(log: Path) -> dict:
    return json.loads((log / "summary.json").read_text())


def _is_fraction(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_writes_the_whole_log_folder(method, data_root, tmp_path, capsys):
    log = tmp_path / method
    assert train_from_flags(tiny_flags(data_root, log, method=method)) == 0
    has_cost = "cost" in (_artifact_names(method))
    expected = [f for f in FILES if has_cost or not f.startswith("cost.")]
    missing = [f for f in expected if not (log / f).exists()]
    assert not missing, f"{method}: missing {missing}"
    s = _summary(log)
    for key in ("test_top1", "test_mean_class_acc", "val_top1", "val_mean_class_acc"):
        assert _is_fraction(s[key]), (key, s[key])
    assert s["method"] == method and s["best_epoch"] in (1, 2) and s["test_images"] == 12
    records = [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert records[1]["lr"] == pytest.approx(records[0]["lr"] * 0.1)  # MultiStepLR at epoch 1
    lines = (log / "transport.txt").read_text().splitlines()
    assert sum(line.startswith("tgt_") for line in lines) == 3
    env = json.loads((log / "env.json").read_text())
    assert env["packages"]["torch"] and "git" in env
    best = load_checkpoint(log / "checkpoints" / "best.pt")
    assert best["epoch"] == s["best_epoch"]
    assert "test top-1" in capsys.readouterr().out


def _artifact_names(method: str) -> set:
    """What a method's artifacts() holds once set up (a cost matrix for jtln)."""
    return {"cost"} if method == "jtln" else set()


def test_test_command_reproduces_the_summary(data_root, tmp_path, capsys):
    log = tmp_path / "run"
    train_from_flags(tiny_flags(data_root, log, method="jtln", feature_cache=str(tmp_path / "fc")))
    assert len(list((tmp_path / "fc").glob("features-*.pt"))) == 2  # source and target features
    capsys.readouterr()
    assert main(["test", "--log", str(log), "--no-progress"]) == 0
    out = capsys.readouterr().out
    s = _summary(log)
    assert f"test top-1 {100 * s['test_top1']:.2f}%" in out
    assert f"val top-1 {100 * s['val_top1']:.2f}%" in out


def test_resume_gives_the_same_final_metrics(data_root, tmp_path):
    once = tmp_path / "once"
    twice = tmp_path / "twice"
    train(resolve_config(tiny_flags(data_root, once, method="jtln", epochs=3, lr_decay_epochs=[2])))
    stopped = train(resolve_config(tiny_flags(data_root, twice, method="jtln", epochs=3, lr_decay_epochs=[2])),
                    stop_after_epoch=1)
    assert stopped["stopped_after_epoch"] == 1 and not (twice / "summary.json").exists()
    # a resumed run only needs --resume and --log: the rest comes from the run's config.yaml
    assert train_from_flags({"resume": True, "log": str(twice), "progress": False}) == 0
    a, b = _summary(once), _summary(twice)
    for key in ("test_top1", "test_mean_class_acc", "val_top1", "val_mean_class_acc", "best_epoch"):
        assert a[key] == b[key], key
    ma = load_checkpoint(once / "checkpoints" / "last.pt")
    mb = load_checkpoint(twice / "checkpoints" / "last.pt")
    for name, tensor in ma["model"].items():
        assert torch.equal(tensor, mb["model"][name]), name
    ra = [json.loads(x) for x in (once / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (twice / "metrics.jsonl").read_text().splitlines()]
    drop = ("epoch_time_s", "train_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rb]


def test_finished_run_is_not_overwritten(data_root, tmp_path, capsys):
    log = tmp_path / "run"
    train_from_flags(tiny_flags(data_root, log, method="erm", epochs=1))
    before = (log / "summary.json").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        train_from_flags(tiny_flags(data_root, log, method="erm", epochs=1))
    with pytest.raises(UserError, match="finished"):
        train_from_flags(tiny_flags(data_root, log, method="erm", epochs=1, resume=True))
    assert (log / "summary.json").read_bytes() == before
    assert train_from_flags(tiny_flags(data_root, log, method="erm", epochs=1, overwrite=True, seed=5)) == 0
    assert _summary(log)["seed"] == 5


def test_nonfinite_loss_stops_with_step_and_term_or_is_skipped(data_root, tmp_path, monkeypatch):
    cls = METHODS.get("erm")
    original = cls.losses

    def poisoned(self, model, batch, progress):
        terms = original(self, model, batch, progress)
        if 0.3 < progress < 0.5:  # step 2 of 6
            terms["poison"] = torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(cls, "losses", poisoned)
    with pytest.raises(UserError, match=r"step 2: loss term 'poison' is not finite.*--skip-nonfinite"):
        train_from_flags(tiny_flags(data_root, tmp_path / "a", method="erm"))
    train_from_flags(tiny_flags(data_root, tmp_path / "b", method="erm", skip_nonfinite=True))
    s = _summary(tmp_path / "b")
    assert s["skipped_steps"] == 1 and _is_fraction(s["test_top1"])


# ----------------------------------------------------------------------------- CLI errors
def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_cli_unknown_method_is_one_line(data_root, tmp_path, capsys):
    line = _one_line_error(capsys, ["train", *tiny_argv(data_root, tmp_path / "x", method="jtnl")])
    assert "jtnl" in line and "jtln" in line
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_cli_config_typo_is_one_line(data_root, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ot_wieght: 0.5\n")
    line = _one_line_error(capsys, ["train", "--config", str(recipe), "--log", str(tmp_path / "x")])
    assert "ot_wieght" in line and "ot_weight" in line


def test_cli_missing_root_is_one_line(data_root, tmp_path, capsys):
    argv = tiny_argv(data_root, tmp_path / "x", root=str(tmp_path / "no-such-folder"))
    line = _one_line_error(capsys, ["train", *argv])
    assert "no-such-folder" in line


def test_cli_test_without_a_run_is_one_line(tmp_path, capsys):
    line = _one_line_error(capsys, ["test", "--log", str(tmp_path / "nothing")])
    assert "nothing" in line
