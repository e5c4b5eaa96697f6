"""A TLlib user's path: TLlib's command lines, the suite recipes at every sample rate, the report flag."""
import json

import pytest
import yaml

from tiny_images import SIZE, TLLIB_RATES, make_tllib_root
from tllib_jtln.bench.report import TEST_SELECTED, render_table
from tllib_jtln.bench.suite import expand_runs, load_suite
from tllib_jtln.cli import _given, build_parser, main
from tllib_jtln.config import Config
from tllib_jtln.engine.run import describe_recipe, resolve_config
from tllib_jtln.errors import UserError

TINY = {"arch": "smallcnn", "pretrained": False, "finetune": False, "image_size": SIZE, "transforms": "small",
        "workers": 0, "batch_size": 4, "epochs": 1, "iters_per_epoch": 2, "lr_decay_epochs": [1],
        "progress": False, "device": "cpu", "val_per_class": 5}


def _given_of(argv):
    return _given(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("suite_file", ["configs/suite/tllib_cub200.yaml"])
def test_recipe_at_every_sample_rate_with_each_val_split(tmp_path, suite_file, capsys):
    """The recipe's own settings (dataset, methods, -sr columns), miniaturised, through TLlib's command form."""
    root = make_tllib_root(tmp_path / "cub200")
    suite = load_suite(suite_file)
    runs = [r for r in expand_runs(suite) if r.row == "erm" and r.seed == suite["seeds"][0]]
    assert sorted(r.settings["sample_rate"] for r in runs) == [15, 30, 50, 100]
    for run in runs:
        sr = run.settings["sample_rate"]
        n = TLLIB_RATES[sr]
        for choice in ("rest", "train", "test", "none"):
            recipe = tmp_path / f"sr{sr}_{choice}.yaml"
            recipe.write_text(yaml.safe_dump({**run.settings, **TINY, "val_split": choice}))
            log = tmp_path / "logs" / f"sr{sr}_{choice}"
            code = main(["train", str(root), "--config", str(recipe), "--log", str(log)])
            err = capsys.readouterr().err
            if choice == "rest" and sr == 100:
                assert code == 2 and "--val-split rest at -sr 100" in err and len(err.strip().splitlines()) == 1
                continue
            assert code == 0, err
            summary = json.loads((log / "summary.json").read_text())
            assert summary["selected_on"] == {"test": "test", "none": "last"}.get(choice, "val")
            carve = min(5, n // 2)
            expected_train = 3 * (n - carve) if choice == "train" else 3 * n
            expected_val = {"rest": 3 * min(5, 20 - n), "train": 3 * carve, "test": 12, "none": 0}[choice]
            assert (summary["target_train_size"], summary["target_val_size"]) == (expected_train, expected_val)


def test_tllib_flags_map_onto_ours(tmp_path):
    given = _given_of(["data/cub200", "-d", "CUB200", "-sr", "15", "-sc", "4", "--learning-rate", "0.1",
                       "--pretrained", "weights/moco.pth", "--no-hflip", "--train-resizing", "res.|crop",
                       "--val-resizing", "res.", "--color-jitter"])
    cfg = Config().update(given, "command line")
    assert cfg.root == "data/cub200" and cfg.num_samples_per_class == 4 and cfg.lr == 0.1
    assert cfg.pretrained is True and cfg.pretrained_file == "weights/moco.pth"
    assert (cfg.hflip, cfg.color_jitter, cfg.train_resizing, cfg.val_resizing) == (False, True, "res.|crop", "res.")
    assert Config().update(_given_of(["--pretrained"]), "cli").pretrained is True
    assert Config().update(_given_of(["--no-pretrained"]), "cli").pretrained is False
    with pytest.raises(UserError, match="given twice"):
        _given_of(["data/a", "--root", "data/b"])


def test_trade_off_is_jtln_ot_weight_and_refused_where_ignored():
    assert resolve_config({"method": "jtln", "trade_off": 0.5}).ot_weight == 0.5
    assert resolve_config({"method": "co_tuning", "trade_off": 1.5}).trade_off == 1.5
    assert resolve_config({"method": "jtln"}).ot_weight == 1.0  # the default trade-off never maps
    with pytest.raises(UserError, match="--trade-off 0.5 and --ot-weight 2.0"):
        resolve_config({"method": "jtln", "trade_off": 0.5, "ot_weight": 2.0})
    for method in ("erm", "joint", "consecutive"):
        with pytest.raises(UserError, match=f"--method {method} has none"):
            resolve_config({"method": method, "trade_off": 1.0})
    with pytest.raises(UserError, match="--source-stage is a jtln switch .* --method consecutive"):
        resolve_config({"method": "consecutive", "source_stage": True})
    with pytest.raises(UserError, match="--source-stage is a jtln switch .* without source data"):
        resolve_config({"method": "jtln", "source_stage": True, "source_data": "none"})
    assert resolve_config({"method": "jtln", "source_stage": True}).source_stage  # the embedded task's source


def test_tllib_transforms_follow_tllib_meanings():
    import torch
    from PIL import Image
    from tllib_jtln.data.transforms import build_transforms, tllib_transforms

    image = Image.new("RGB", (50, 30), (120, 30, 200))
    for resizing in ("default", "res.", "res.|crop", "res.sma|crop", "inc.crop", "cif.crop"):
        train, _ = tllib_transforms(24, train_resizing=resizing, hflip=False, color_jitter=True)
        assert train(image).shape == (3, 24, 24)
    for resizing in ("default", "res.", "res.|crop"):
        assert tllib_transforms(24, val_resizing=resizing)[1](image).shape == (3, 24, 24)
    train, _ = tllib_transforms(24)
    assert "scale=(0.2, 1.0)" in repr(train) and "RandomHorizontalFlip" in repr(train)
    assert "RandomHorizontalFlip" not in repr(tllib_transforms(24, hflip=False)[0])
    with pytest.raises(UserError, match="--no-hflip, --color-jitter: TLlib's transform options"):
        build_transforms("small", 24, tllib={"hflip": False, "color_jitter": True})
    assert isinstance(train(image), torch.Tensor)


def test_report_flags_test_selected_runs():
    suite = {"settings": {"sr15": {}}, "methods": {"erm": {}, "jtln": {}}, "seeds": [0]}
    records = [{"row": "erm", "setting": "sr15", "seed": 0, "finished": True, "test_top1": 0.5, "selected_on": "test"},
               {"row": "jtln", "setting": "sr15", "seed": 0, "finished": True, "test_top1": 0.6, "selected_on": "val"}]
    table = render_table(suite, records, "test_top1")
    assert f"50.0 ± 0.0 {TEST_SELECTED}" in table and f"60.0 ± 0.0 {TEST_SELECTED}" not in table
    assert "chosen on the test set" in table
    assert TEST_SELECTED not in render_table(suite, records[1:], "test_top1")


def test_embedded_default_names_its_recipe_and_explicit_backbones_use_offline_weights(capsys):
    line = describe_recipe(resolve_config({}))
    assert "embedded Fashion-MNIST" in line and "28 px" in line and "-a smallcnn (from scratch" in line
    cfg = resolve_config({"arch": "tf_efficientnet_lite0"})
    assert cfg.pretrained and cfg.finetune and "(pretrained" in describe_recipe(cfg)
    assert not resolve_config({"arch": "tf_efficientnet_lite0", "pretrained": False}).pretrained
    code = main(["train", "-a", "resnet50"])  # no offline weights: one line, no download attempt
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--pretrained PATH" in err and "--no-pretrained" in err


def test_phase_analysis_draws_tsne_of_the_best_checkpoint(tmp_path):
    from tiny_images import tiny_flags
    from tllib_jtln.engine.run import train_from_flags

    log = tmp_path / "run"
    flags = tiny_flags(tmp_path / "data", log, method="joint", epochs=1, iters_per_epoch=2)
    assert train_from_flags(flags) == 0
    assert main(["train", "--phase", "analysis", "--log", str(log)]) == 0
    assert (log / "tsne.png").stat().st_size > 0
    result = json.loads((log / "analysis.json").read_text())
    assert result["domains"] == ["source", "target"] and result["points"] == [24, 12]  # 6 x 4 source, 12 test
    assert -2.0 <= result["a_distance"] <= 2.0
