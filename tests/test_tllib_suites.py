"""TLlib's benchmark suites (configs/suite/tllib_*.yaml): TLlib's recipe for every method of its
fine-tuning family beside JTLN, and ``bench --dry-run`` on a miniature TLlib root."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from tiny_images import make_tiny_task, make_tllib_root
from tllib_jtln.bench.suite import expand_runs, load_suite
from tllib_jtln.cli import main
from tllib_jtln.methods import METHODS

SUITE_DIR = Path(__file__).resolve().parents[1] / "configs" / "suite"
KNOBS = ("method", "cost", "cost_base", "finetune", "wd", "lr")  # what a row sets, kept by the miniature
SUITES = ["tllib_cub200", "tllib_stanford_cars", "tllib_aircraft"]
#: TLlib's benchmark rows and the task-adaptation examples' L2-SP and LwF, and JTLN
FAMILY = {"erm", "l2sp", "delta", "bss", "stochnorm", "lwf", "co_tuning", "bi_tuning", "jtln"}
#: lwf.sh's learning rate per sample rate (every other method: lr 0.01)
LWF_LR = {"tllib_cub200": {15: 0.001, 30: 0.001, 50: 0.001, 100: 0.01},
          "tllib_stanford_cars": dict.fromkeys((15, 30, 50, 100), 0.01),
          "tllib_aircraft": dict.fromkeys((15, 30, 50, 100), 0.001)}


@pytest.mark.parametrize("name", SUITES)
def test_suite_is_tllibs_recipe_for_every_method(name):
    suite = load_suite(SUITE_DIR / f"{name}.yaml")
    runs = expand_runs(suite)
    assert {r.settings["method"] for r in runs} >= FAMILY
    assert suite["seeds"] == [0, 1, 2]
    assert sorted({r.settings["sample_rate"] for r in runs}) == [15, 30, 50, 100]
    for run in runs:
        s = run.settings
        assert (s["arch"], s["pretrained"], s["image_size"], s["transforms"]) == ("resnet50.tv_in1k", True, 224,
                                                                                   "tllib"), run.name
        assert (s["batch_size"], s["epochs"], s["iters_per_epoch"], s["lr_decay_epochs"]) == (48, 20, 500, [12])
        assert s["finetune"] is (s["method"] != "bi_tuning"), run.name  # bi_tuning.sh has no --finetune
        assert s["wd"] == (0.0 if s["method"] in ("l2sp", "delta") else 5e-4), run.name  # delta.py: --wd 0
        expected_lr = LWF_LR[name][s["sample_rate"]] if s["method"] == "lwf" else 0.01
        assert s["lr"] == expected_lr, run.name
    jtln = [r.settings for r in runs if r.settings["method"] == "jtln"]
    assert any("source_data" not in s and s["cost"] == "source-head" for s in jtln)  # source-free, ImageNet head
    assert any(s.get("source_data") == "ImageNet" for s in jtln)  # ImageNet images as the source


#: the knobs TLlib's scripts default to, which the suites' rows leave at the methods' defaults
TLLIB_DEFAULTS = {"stochnorm": {"stochnorm_p": 0.5}, "lwf": {"lwf_temperature": 3.0, "lwf_trade_off": 4.0},
                  "bi_tuning": {"bi_tuning_k": 40, "bi_tuning_momentum": 0.999, "bi_tuning_temperature": 0.07,
                                "bi_tuning_projection_dim": 128, "bi_tuning_trade_off": 1.0},
                  "bss": {"bss_k": 1, "bss_trade_off": 0.001}, "co_tuning": {"trade_off": 2.3},
                  "l2sp": {"trade_off_backbone": 0.01, "trade_off_head": 0.01},
                  "delta": {"trade_off_backbone": 0.01, "trade_off_head": 0.01}}


@pytest.mark.parametrize("name", SUITES)
def test_the_knobs_the_suites_rely_on_are_the_methods_defaults(name):
    from tllib_jtln.config import Config

    for run in expand_runs(load_suite(SUITE_DIR / f"{name}.yaml")):
        knobs = TLLIB_DEFAULTS.get(run.settings["method"], {})
        resolved = Config().update(dict(run.settings), run.name)
        assert {k: getattr(resolved, k) for k in knobs} == knobs, run.name


def _on_fake_root(name: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """The suite file pointed at a miniature TLlib root (and an ImageFolder source), keeping the
    rows whose method this checkout registers; returns its path and those rows."""
    suite = yaml.safe_load((SUITE_DIR / f"{name}.yaml").read_text())
    suite["base"]["root"] = str(make_tllib_root(tmp_path / "data" / name))
    _, source = make_tiny_task(tmp_path / "source")
    rows = {row: {**values, **({"source_root": str(source)} if "source_root" in values else {})}
            for row, values in suite["methods"].items() if values["method"] in METHODS.names()}
    suite["methods"] = rows
    suite["pairs"] = [pair for pair in suite["pairs"] if set(pair) <= set(rows)]
    suite["out"] = str(tmp_path / "out")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path, list(rows)


@pytest.mark.parametrize("name", SUITES)
def test_suite_passes_dry_run_on_a_fake_tllib_root(name, tmp_path, capsys):
    path, rows = _on_fake_root(name, tmp_path)
    assert {"erm", "co_tuning", "jtln", "jtln-imagenet"} <= set(rows)
    assert main(["bench", "--suite", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(rows) * 4 * 3 + 1 and lines[-1].startswith(f"{len(rows) * 12} runs -> ")
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SUITE_DIR.parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SUITES)
def test_the_gpu_smokes_miniature_keeps_every_row_at_a_small_scale(name, tmp_path, capsys):
    mini_suite = _load_script("mini_suite")
    root, (_, source) = make_tllib_root(tmp_path / "root"), make_tiny_task(tmp_path / "tiny")
    path = tmp_path / "mini.yaml"
    assert mini_suite.main([str(SUITE_DIR / f"{name}.yaml"), "--out", str(path), "--root", str(root),
                            "--source-root", str(source), "--setting", "sr100", "--set", "device=cpu",
                            "--runs-out", str(tmp_path / "runs")]) == 0
    full, mini = load_suite(SUITE_DIR / f"{name}.yaml"), load_suite(path)
    assert list(mini["methods"]) == list(full["methods"]) and list(mini["settings"]) == ["sr100"]
    runs = expand_runs(mini)
    assert len(runs) == len(full["methods"])
    by_row = {r.row: r.settings for r in runs}
    for run in runs:
        s = run.settings
        assert (s["epochs"], s["iters_per_epoch"], s["batch_size"], s["device"]) == (1, 5, 8, "cpu")
        assert s["source_per_class"] == 5 and s["root"] == str(root)
        assert {k: v for k, v in s.items() if k in KNOBS} == \
            {k: v for k, v in next(r for r in expand_runs(full) if r.name == run.name).settings.items()
             if k in KNOBS}, run.name  # each row keeps its knobs
    assert by_row["jtln-imagenet"]["source_root"] == str(source)
    assert by_row["jtln-imagenet"]["source_data"] == "ImageFolder"
    capsys.readouterr()
    only = ",".join(f"*/{row}/*" for row, s in by_row.items() if s["method"] in METHODS.names())
    assert main(["bench", "--suite", str(path), "--dry-run", "--only", only]) == 0, capsys.readouterr().err
