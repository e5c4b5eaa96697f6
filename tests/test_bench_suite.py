"""The suite runner's bookkeeping: suite validation, run expansion, resumability, tables."""
import json
import sys
import warnings
from pathlib import Path
from unittest import mock

import pytest
import yaml

from tllib_jtln.bench.report import (collect_results, k_of_settings, mean_std, plot_accuracy_vs_k, render_pairs,
                                     render_switches, render_table, row_style, write_report)
from tllib_jtln.bench.paired import paired_stats
from tllib_jtln.bench.suite import expand_runs, load_suite, run_one, select_runs
from tllib_jtln.errors import UserError

SUITE = """
name: demo
seeds: [0, 1, 2]
base: {epochs: 2}
settings:
  K1: {num_samples_per_class: 1}
  K5: {num_samples_per_class: 5}
methods:
  erm: {method: erm}
  jtln: {method: jtln, cost: knn}
pairs:
  - [jtln, erm]
"""


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    return load_suite(path)


def test_expand_runs_merges_base_setting_and_row(suite):
    runs = expand_runs(suite)
    assert len(runs) == 2 * 2 * 3
    run = next(r for r in runs if r.name == "K5/jtln/seed1")
    assert run.settings == {"epochs": 2, "num_samples_per_class": 5, "method": "jtln", "cost": "knn"}


def test_a_rows_per_setting_values_apply_in_that_column_only(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace("erm: {method: erm}", "erm: {method: erm, lr: 0.001, per_setting: {K5: {lr: 0.1}}}"))
    runs = {r.name: r.settings for r in expand_runs(load_suite(path))}
    assert runs["K1/erm/seed0"] == {"epochs": 2, "num_samples_per_class": 1, "method": "erm", "lr": 0.001}
    assert runs["K5/erm/seed2"] == {"epochs": 2, "num_samples_per_class": 5, "method": "erm", "lr": 0.1}
    assert "lr" not in runs["K5/jtln/seed0"]


@pytest.mark.parametrize("per_setting, needle", [
    ("{K9: {lr: 0.1}}", "methods.erm.per_setting: unknown setting 'K9'; the suite's settings: K1, K5"),
    ("{K5: {lrr: 0.1}}", "did you mean 'lr'"),
    ("[K5]", "methods.erm.per_setting: must map setting names to Config settings"),
])
def test_bad_per_setting_values_fail_before_any_run(tmp_path, per_setting, needle):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace("erm: {method: erm}", f"erm: {{method: erm, per_setting: {per_setting}}}"))
    with pytest.raises(UserError, match=needle):
        load_suite(path)


@pytest.mark.parametrize("text, needle", [
    (SUITE.replace("epochs: 2", "epoks: 2"), "did you mean 'epochs'"),
    (SUITE.replace("seeds: [0, 1, 2]", "seeds: []"), "seeds: expected a non-empty list"),
    (SUITE.replace("[jtln, erm]", "[jtln, nope]"), "pair"),
    (SUITE + "extra: 1\n", "unknown key"),
])
def test_bad_suites_fail_before_any_run(tmp_path, text, needle):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle):
        load_suite(path)


def _fake_summaries(suite, out, values):
    for run in expand_runs(suite):
        folder = out / run.name
        folder.mkdir(parents=True)
        top1 = values[(run.row, run.setting)][run.seed]
        (folder / "summary.json").write_text(json.dumps({"test_top1": top1, "test_mean_class_acc": top1 / 2,
                                                         "val_top1": 1 - top1}))


def test_tables_show_mean_and_sample_std_and_paired_wins(suite, tmp_path):
    values = {(row, s): [0.5, 0.6, 0.7] for row in ("erm", "jtln") for s in ("K1", "K5")}
    values[("jtln", "K1")] = [0.6, 0.6, 0.8]
    _fake_summaries(suite, tmp_path, values)
    records = collect_results(suite, expand_runs(suite), tmp_path)
    table = render_table(suite, records, "test_top1")
    assert "| erm | 60.0 ± 10.0 | 60.0 ± 10.0 |" in table
    assert "| jtln | 66.7 ± 11.5 |" in table
    pairs = render_pairs(suite, records)
    # differences 10, 0, 10 points: mean 6.7, sd 5.8, t(0.975, 2) = 4.303 -> +- 14.3; t = 2.0 -> p = 0.18
    assert "+6.7 [-7.7, +21.0] p=0.18 (2/3 wins)" in pairs and "+0.0 [+0.0, +0.0] p n/a (0/3 wins)" in pairs
    md = write_report(suite, records, tmp_path, "suite.yaml").read_text()
    assert "Runs finished: 12/12" in md and "test mean-class acc" in md
    assert "| erm | 40.0 ± 10.0 | 40.0 ± 10.0 |" in md  # the validation table (1 - top1)
    val_pairs = md.split("paired differences, validation top-1")[1]
    assert "-6.7 [-21.0, +7.7] p=0.18 (0/3 wins)" in val_pairs  # validation = 1 - test here, so the signs flip


def test_missing_seeds_are_marked_and_finished_runs_are_skipped(suite, tmp_path):
    run = expand_runs(suite)[0]
    folder = tmp_path / run.name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"test_top1": 0.9, "test_mean_class_acc": 0.9}))
    assert run_one(run, tmp_path)[0] == "skipped"
    records = collect_results(suite, expand_runs(suite), tmp_path)
    assert "90.0 ± 0.0 (1/3)" in render_table(suite, records, "test_top1")


def test_a_run_whose_recipe_changed_is_set_aside_and_redone(suite, tmp_path):
    run = expand_runs(suite)[0]
    folder = tmp_path / run.name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"test_top1": 0.9}))
    (folder / "suite_recipe.yaml").write_text(yaml.safe_dump({**run.settings, "seed": run.seed}))
    assert run_one(run, tmp_path)[0] == "skipped"  # same recipe: kept
    (folder / "suite_recipe.yaml").write_text(yaml.safe_dump({**run.settings, "seed": run.seed, "lr": 9.0}))
    stale = tmp_path.parent / f"{tmp_path.name}.stale"
    with mock.patch("tllib_jtln.bench.suite.train_command", lambda *a: [sys.executable, "-c", "pass"]):
        assert run_one(run, tmp_path)[0] == "done"
    moved = list(stale.glob(f"*/{run.name}/summary.json"))
    assert len(moved) == 1 and json.loads(moved[0].read_text())["test_top1"] == 0.9
    assert yaml.safe_load((folder / "suite_recipe.yaml").read_text()) == {**run.settings, "seed": run.seed}
    assert not (folder / "summary.json").exists()


def test_only_takes_comma_separated_patterns(suite):
    runs = expand_runs(suite)
    names = [r.name for r in select_runs(runs, "K1/erm/*, */jtln/seed0")]
    assert names == ["K1/erm/seed0", "K1/erm/seed1", "K1/erm/seed2", "K1/jtln/seed0", "K5/jtln/seed0"]
    assert select_runs(runs, "K9/*") == []


def test_mean_std_in_percent():
    assert mean_std([0.25]) == (25.0, 0.0)
    mean, std = mean_std([0.1, 0.3])
    assert mean == pytest.approx(20.0) and std == pytest.approx(14.142, abs=1e-3)


def test_accuracy_vs_k_picture_and_switches_caption(suite, tmp_path):
    values = {(row, s): [0.5, 0.6, 0.7] for row in ("erm", "jtln") for s in ("K1", "K5")}
    _fake_summaries(suite, tmp_path, values)
    records = collect_results(suite, expand_runs(suite), tmp_path)
    assert k_of_settings(suite) == {"K1": 1, "K5": 5}
    md = write_report(suite, records, tmp_path, "suite.yaml").read_text()
    picture = tmp_path / "accuracy_vs_k_demo.png"
    assert picture.is_file() and picture.stat().st_size > 5000 and "accuracy_vs_k_demo.png" in md
    for record in records:
        record["switches"] = {"ot_reg": "kl", "ot_on": "target"} if record["row"] == "jtln" else {}
    table = render_switches(suite, records)
    assert "Shared by every row with switches: ot_on=target; ot_reg=kl." in table
    assert "| jtln | (shared only) |" in table and "| erm | (none) |" in table
    records[-1]["switches"] = {"ot_reg": "entropy", "ot_on": "target"}  # one jtln run differs: ot_on is shared
    table = render_switches(suite, records)
    assert "Shared by every row with switches: ot_on=target." in table
    assert "| jtln | ot_reg=entropy / ot_reg=kl |" in table
    for record in records:  # runs of older code lack a switch added since: one cell, the gap named
        if record["row"] == "jtln":
            record["switches"] = {"ot_reg": "kl", "ot_on": "target", **({"stage": False} if record["seed"] else {})}
    table = render_switches(suite, records)
    assert "| jtln | (shared only) (stage: not recorded by the runs made before it existed) |" in table
    records[-1]["switches"]["stage"] = True  # a recorded difference stays two cells
    assert "stage=False / " in render_switches(suite, records)
    only_k5 = [r for r in records if r["setting"] == "K5"]  # K1 declared but not run: nothing to draw
    assert plot_accuracy_vs_k(suite, only_k5, tmp_path / "k5.png") is None
    one_k = dict(suite, settings={"K5": {"num_samples_per_class": 5}})
    assert plot_accuracy_vs_k(one_k, records, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_suites_sharing_a_run_folder_ask_the_same_recipe_of_each_shared_run():
    """Suites writing to one ``out`` must agree on every run they share, or each would set the
    other's finished runs aside as stale."""
    by_out: dict = {}
    for path in sorted(Path(__file__).parent.parent.glob("configs/suite/*.yaml")):
        suite = load_suite(str(path))
        by_out.setdefault(suite["out"], []).append((path.name, {r.name: r.settings for r in expand_runs(suite)}))
    shared = 0
    for suites in by_out.values():
        for i, (name_a, runs_a) in enumerate(suites):
            for name_b, runs_b in suites[i + 1:]:
                for run in runs_a.keys() & runs_b.keys():
                    shared += 1
                    assert runs_a[run] == runs_b[run], f"{name_a} and {name_b} disagree on {run}"
    assert shared > 0


def test_rows_of_the_accuracy_picture_look_different_beyond_the_colour_cycle():
    styles = [tuple(sorted(row_style(index).items())) for index in range(30)]
    assert len(set(styles)) == 30  # a 15-row suite no longer draws two rows alike
    assert row_style(0)["color"] == row_style(10)["color"] and row_style(0) != row_style(10)


def test_paired_interval_and_p_value_match_the_direct_formulas():
    """Differences 1, 2, 3, 4 points: mean 2.5, sd sqrt(5/3); the 95% interval is mean +- t(0.975, 3)
    sd / sqrt(4) with t(0.975, 3) = 3.182446 (the t table), and the paired t statistic
    2.5 / (sd / 2) = 3.873 on 3 degrees of freedom has two-sided p = 0.0305."""
    b = [0.50, 0.40, 0.30, 0.60]
    a = [x + d / 100 for x, d in zip(b, (1, 2, 3, 4))]
    st = paired_stats(a, b)
    sd = (5 / 3) ** 0.5
    assert st.n == 4 and st.wins == 4 and st.mean == pytest.approx(2.5)
    assert st.low == pytest.approx(2.5 - 3.182446 * sd / 2, abs=1e-5)
    assert st.high == pytest.approx(2.5 + 3.182446 * sd / 2, abs=1e-5)
    assert st.p_value == pytest.approx(0.0305, abs=5e-4)
    one = paired_stats([0.7], [0.5])
    assert (one.mean, one.low, one.high, one.p_value, one.wins) == (pytest.approx(20.0), pytest.approx(20.0),
                                                                     pytest.approx(20.0), None, 1)
    with pytest.raises(ValueError, match="same number"):
        paired_stats([0.1], [])


def test_paired_differences_equal_up_to_float_noise_have_no_interval_and_no_warning():
    """Two units, each 2 points apart: 100 (0.70 - 0.68) and 100 (0.62 - 0.60) differ in the last
    bits, which scipy's t-test met with a 'catastrophic cancellation' warning and a p near 0."""
    a, b = [0.70, 0.62], [0.68, 0.60]
    assert 100 * (a[0] - b[0]) != 100 * (a[1] - b[1])  # the noise is there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st = paired_stats(a, b)
    assert (st.low, st.high, st.p_value, st.wins) == (st.mean, st.mean, None, 2)
    assert st.mean == pytest.approx(2.0)


SPLIT_SUITE = SUITE + "splits: [random:0, random:3]\n"


def test_splits_are_a_factor_like_the_seeds_and_pair_by_split_and_seed(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SPLIT_SUITE)
    suite = load_suite(path)
    runs = expand_runs(suite)
    assert len(runs) == 2 * 2 * 2 * 3
    run = next(r for r in runs if r.name == "K5/jtln/random_3/seed1")
    assert run.split == "random:3" and run.settings["class_split"] == "random:3"
    # the same seed on two splits: two units; jtln beats erm by 10 points on random:3 only
    for run in runs:
        folder = tmp_path / run.name
        folder.mkdir(parents=True)
        top1 = 0.5 + 0.1 * run.seed / 2 + (0.1 if run.row == "jtln" and run.split == "random:3" else 0.0)
        (folder / "summary.json").write_text(json.dumps({"test_top1": top1, "test_mean_class_acc": top1,
                                                         "val_top1": top1}))
    records = collect_results(suite, runs, tmp_path)
    assert "| erm | 55.0 ± 4.5 | 55.0 ± 4.5 |" in render_table(suite, records, "test_top1")  # 6 units each
    assert "(3/6 wins)" in render_pairs(suite, records)
    md = write_report(suite, records, tmp_path, "suite.yaml").read_text()
    assert "2 class splits x seeds [0, 1, 2] (6 units)" in md and "same class split and seed" in md
    for text, needle in ((SUITE + "splits: random:0\n", "splits: expected a non-empty list"),
                         (SUITE + "splits: [random:0, random:0]\n", "names an entry twice"),
                         (SUITE + "splits: [random:x]\n", "--class-split random:x: expected"),
                         (SPLIT_SUITE.replace("erm: {method: erm}", "erm: {method: erm, class_split: random:1}"),
                          "erm sets class_split too")):
        path.write_text(text)
        with pytest.raises(UserError, match=needle):
            load_suite(path)


def test_forest_plot_has_one_panel_per_k_above_the_tables(suite, tmp_path):
    from PIL import Image

    values = {(row, s): [0.5, 0.6, 0.7] for row in ("erm", "jtln") for s in ("K1", "K5")}
    values[("jtln", "K5")] = [0.6, 0.65, 0.8]
    _fake_summaries(suite, tmp_path, values)
    records = collect_results(suite, expand_runs(suite), tmp_path)
    md = write_report(suite, records, tmp_path, "suite.yaml").read_text()
    forest = tmp_path / "paired_demo.png"
    assert forest.is_file() and forest.stat().st_size > 5000
    assert Image.open(forest).text["Panels"] == "K = 1 (3 units); K = 5 (3 units)"
    assert md.index("paired_demo.png") < md.index("**test top-1**") < md.index("accuracy_vs_k_demo.png")


def test_a_suite_of_skip_test_runs_is_reported_on_validation_alone(suite, tmp_path):
    for run in expand_runs(suite):
        folder = tmp_path / run.name
        folder.mkdir(parents=True)
        val = 0.5 + 0.1 * run.seed + (0.05 if run.row == "jtln" else 0.0)
        (folder / "summary.json").write_text(json.dumps({"test_top1": None, "test_mean_class_acc": None,
                                                         "val_top1": val, "test_skipped": True}))
    md = write_report(suite, collect_results(suite, expand_runs(suite), tmp_path), tmp_path, "suite.yaml").read_text()
    assert "target VALIDATION accuracy" in md and "12 runs skipped the test pass" in md
    assert "**test top-1**" not in md and "paired differences, test top-1" not in md
    assert "| erm | 60.0 ± 10.0 | 60.0 ± 10.0 |" in md and "+5.0 [+5.0, +5.0] p n/a (3/3 wins)" in md
    assert (tmp_path / "paired_demo.png").is_file() and "validation top-1 against K" in md


def test_cells_with_runs_that_ended_at_chance_are_named_below_the_tables(suite, tmp_path):
    values = {(row, s): [0.2, 0.6, 0.7] for row in ("erm", "jtln") for s in ("K1", "K5")}
    _fake_summaries(suite, tmp_path, values)
    classes = ["a", "b", "c", "d", "e"]  # chance 20%
    collapsed = [{"epoch": 1, "train_ce_target": 1.70, "val_top1": 0.2},
                 {"epoch": 2, "train_ce_target": 1.62, "val_top1": 0.2}]   # log 5 = 1.609: at chance
    recovered = [{"epoch": 1, "train_ce_target": 1.70, "val_top1": 0.2},
                 {"epoch": 2, "train_ce_target": 1.62, "val_top1": 0.2},
                 {"epoch": 3, "train_ce_target": 0.40, "val_top1": 0.7}]   # kept epoch 3: learnt after all
    for run in expand_runs(suite):
        folder = tmp_path / run.name
        summary = json.loads((folder / "summary.json").read_text())
        metrics = collapsed if (run.row, run.setting, run.seed) == ("jtln", "K5", 0) else recovered
        summary.update(target_classes=classes, best_epoch=metrics[-1]["epoch"] if metrics is recovered else 1)
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    (tmp_path / expand_runs(suite)[0].name / "metrics.jsonl").write_text("{not json\n")  # unreadable: no note
    records = collect_results(suite, expand_runs(suite), tmp_path)
    assert sum(r["at_chance"] is True for r in records) == 1 and records[0]["at_chance"] is None
    md = write_report(suite, records, tmp_path, "suite.yaml").read_text()
    assert "Runs that ended at chance" in md and "K5/jtln 1 of 3." in md and "erm 1" not in md
