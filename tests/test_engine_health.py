"""The engine's at-chance check (engine/health.py): which epochs it names, and that a run prints it once."""
import json
import math

import pytest

from tllib_jtln.engine.health import collapse_warning
from tllib_jtln.engine.reporter import Reporter
from tllib_jtln.engine.run import train_from_flags

from tiny_images import tiny_flags

#: epoch 2 of imagenet_pretrained K2/bi_tuning/seed0 (TLlib's recipe at lr 0.01): collapsed
COLLAPSED = {"epoch": 2, "train_ce_target": 1.6304, "val_top1": 0.2}


def test_a_collapsed_epoch_is_named_with_its_numbers():
    (line,) = collapse_warning(COLLAPSED, 5)
    assert line.startswith("epoch 2: the target head is at chance") and "1.630" in line
    assert f"log 5 = {math.log(5):.3f}" in line and "20.0%" in line and "lower --lr" in line


@pytest.mark.parametrize("change", [
    {"epoch": 1},                   # a fresh head starts uniform: never judged
    {"train_ce_target": 1.40},      # below 0.97 log 5 = 1.561: learning
    {"val_top1": 0.26},             # above 1.25 x chance = 0.25
    {"val_top1": float("nan")},     # no validation (--val-split none)
    {"train_ce_target": None},      # a source-only stage
])
def test_a_learning_or_unjudgeable_epoch_is_not_named(change):
    record = {**COLLAPSED, **change}
    if record["train_ce_target"] is None:
        del record["train_ce_target"]
    assert collapse_warning(record, 5) == []


def test_a_diverged_epoch_at_chance_is_named_too():
    assert collapse_warning({**COLLAPSED, "train_ce_target": 10.7}, 5)  # K2/bi_tuning/seed3 at epoch 2


def test_each_kind_of_warning_is_printed_once_per_run(tmp_path, capsys):
    reporter = Reporter(cfg=None, log_dir=tmp_path, is_main=True, total_epochs=3)
    reporter.warn_once("method", ["sinkhorn A"])
    reporter.warn_once("collapse", [])
    reporter.warn_once("collapse", ["collapse B"])
    reporter.warn_once("method", ["sinkhorn C"])
    reporter.warn_once("collapse", ["collapse D"])
    assert capsys.readouterr().err.splitlines() == ["warning: sinkhorn A", "warning: collapse B"]


def test_a_run_that_diverges_says_so_once_and_still_finishes(data_root, tmp_path, capsys):
    log = tmp_path / "run"
    flags = tiny_flags(data_root, log, method="erm", lr=10.0, epochs=3, lr_decay_epochs=[10], skip_nonfinite=True)
    assert train_from_flags(flags) == 0
    records = [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]
    named = [r["epoch"] for r in records if collapse_warning(r, 3)]
    err = capsys.readouterr().err
    assert named, records  # lr 10 on the tiny task leaves the head at chance
    assert err.count("the target head is at chance") == 1 and f"epoch {named[0]}:" in err
