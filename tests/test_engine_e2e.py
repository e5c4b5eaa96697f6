"""End to end: every registered method on a tiny generated task, resume equivalence, refusals,
non-finite losses, and one-line CLI errors."""
import json
import os
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

from tiny_images import tiny_argv, tiny_flags

FILES = ("config.yaml", "env.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
         "cost.npy", "cost.json", "cost.png", "transport.png", "transport.txt", "curves.png", "summary.json")


def _summary(log: Path) -> dict:
    return json.loads((log / "summary.json").read_text())


def _is_fraction(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


#: what a method needs beyond the tiny task: lwf distils a pretrained classifier, source-free
NEEDS = {"lwf": {"arch": "tf_efficientnet_lite0", "pretrained": True, "source_data": None, "source_root": None}}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_writes_the_whole_log_folder(method, data_root, tmp_path, capsys):
    log = tmp_path / method
    assert train_from_flags(tiny_flags(data_root, log, method=method, **NEEDS.get(method, {}))) == 0
    has_cost = "cost" in (_artifact_names(method))
    expected = [f for f in FILES if has_cost or not f.startswith("cost.")]
    missing = [f for f in expected if not (log / f).exists()]
    assert not missing, f"{method}: missing {missing}"
    s = _summary(log)
    for key in ("test_top1", "test_mean_class_acc", "val_top1", "val_mean_class_acc"):
        assert _is_fraction(s[key]), (key, s[key])
    epochs = 2 * len(s["stages"])  # every stage runs the full schedule
    assert s["method"] == method and s["best_epoch"] in (epochs - 1, epochs) and s["test_images"] == 12
    records = [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert all(np.isfinite(r["train_loss"]) for r in records)
    for stage in range(0, epochs, 2):  # each stage has its own MultiStepLR, decaying at its epoch 1
        assert records[stage + 1]["lr"] == pytest.approx(records[stage]["lr"] * 0.1)
        assert records[stage]["lr"] == pytest.approx(0.01)
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
    assert len(list((tmp_path / "fc").glob("features-*/done"))) == 2  # source and target feature stores
    out = capsys.readouterr().out
    assert "features: extracting source" in out and "read from the cache" not in out
    # a second run (another recipe) from the same trunk on the same images forwards no image
    train_from_flags(tiny_flags(data_root, tmp_path / "again", method="jtln", ot_weight=0.5,
                                feature_cache=str(tmp_path / "fc")))
    out = capsys.readouterr().out
    assert "features: extracting" not in out and out.count("read from the cache") == 2
    assert (tmp_path / "run" / "cost.npy").read_bytes() == (tmp_path / "again" / "cost.npy").read_bytes()
    # the same paths, but the source images changed in place (a new mtime): their store is stale
    for image in (data_root / "source" / "train").rglob("*.png"):
        stamp = image.stat()
        os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    train_from_flags(tiny_flags(data_root, tmp_path / "changed", method="jtln", feature_cache=str(tmp_path / "fc")))
    out = capsys.readouterr().out
    assert "features: extracting source" in out and out.count("read from the cache") == 1  # target: still a hit
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


@pytest.mark.parametrize("stop_after", [2, 3])  # at the stage boundary, and inside the second stage
def test_two_stage_resume_gives_the_same_final_metrics(data_root, tmp_path, stop_after):
    once, twice = tmp_path / "once", tmp_path / "twice"
    flags = dict(method="co_tuning", epochs=2, lr_decay_epochs=[1])
    train(resolve_config(tiny_flags(data_root, once, **flags)))
    train(resolve_config(tiny_flags(data_root, twice, **flags)), stop_after_epoch=stop_after)
    assert train_from_flags({"resume": True, "log": str(twice), "progress": False}) == 0
    a, b = _summary(once), _summary(twice)
    for key in ("test_top1", "val_top1", "best_epoch", "images_seen"):
        assert a[key] == b[key], key
    ma, mb = load_checkpoint(once / "checkpoints" / "last.pt"), load_checkpoint(twice / "checkpoints" / "last.pt")
    assert all(torch.equal(t, mb["model"][k]) for k, t in ma["model"].items())
    assert torch.equal(ma["method"]["relation"], mb["method"]["relation"])


def test_budgets_are_matched_in_images_seen_per_stream(data_root, tmp_path):
    """Two-stage baselines: stage 1 sees the source images of ``joint``, stage 2 the target images of ``erm``."""
    seen = {}
    for method in ("erm", "joint", "jtln", "consecutive", "co_tuning"):
        train_from_flags(tiny_flags(data_root, tmp_path / method, method=method))
        seen[method] = _summary(tmp_path / method)["images_seen"]
    steps = 2 * 3  # epochs x iterations per stage
    assert seen["erm"] == {"source": 0, "target": steps * 4}
    assert seen["joint"] == seen["jtln"] == {"source": steps * 6, "target": steps * 4}
    assert seen["consecutive"] == seen["co_tuning"] == seen["joint"]
    records = [json.loads(x) for x in (tmp_path / "consecutive" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["source", "source", "target", "target"]
    assert [("val_top1" in r) for r in records] == [False, False, True, True]  # only the target stage selects
    assert [r["images_seen"] for r in records][1] == {"source": steps * 6, "target": 0}


def test_jtln_summary_records_resolved_switches_and_sinkhorn_health(data_root, tmp_path, capsys):
    train_from_flags(tiny_flags(data_root, tmp_path / "a", method="jtln", ot_reg="kl", cost_normalize="column"))
    s = _summary(tmp_path / "a")
    assert s["switches"]["ot_on"] == "target" and s["switches"]["ot_reg"] == "kl"
    assert s["switches"]["cost_normalize"] == "column"
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ot_converged"] == 1.0 and 1 <= r["ot_iters"] <= 100 for r in records)
    # the OT term's two parts, per epoch: means over the same steps as train_ot, so they sum to it
    assert all(r["ot_transport"] + r["ot_reg_term"] == pytest.approx(r["train_ot"], abs=1e-6) for r in records)
    assert all(r["ot_reg_term"] >= -1e-9 for r in records)  # eps KL >= 0 under --ot-reg kl
    captured = capsys.readouterr()
    assert "warning: Sinkhorn" not in captured.err
    assert captured.out.count(", ot_transport ") == len(records) and captured.out.count(", ot_reg_term ") == len(records)
    # a budget too small to converge: said once, naming the flags to raise
    train_from_flags(tiny_flags(data_root, tmp_path / "b", method="jtln", ot_iters=1, ot_tol=0.0, ot_eps=0.01))
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ot_converged"] < 0.99 and r["ot_iters"] == 1 for r in records)
    err = capsys.readouterr().err
    assert err.count("warning: Sinkhorn converged on") == 1 and "--ot-iters" in err and "--ot-eps" in err
    # the transport view draws the OT plan that was solved, and the posterior separately, each titled
    text = (tmp_path / "a" / "transport.txt").read_text()
    assert "# plan: mean OT plan (validation images)" in text
    assert "# posterior: mean source-head posterior (test images)" in text


@pytest.mark.parametrize("method", ["joint", "jtln"])
def test_skip_test_leaves_out_the_test_pass_and_says_so(method, data_root, tmp_path, capsys):
    """--skip-test (selection runs): no test figures, validation kept, the closing line says so;
    a method without an OT plan (joint) has then no transport view to draw, and that is no error."""
    log = tmp_path / method
    assert train_from_flags(tiny_flags(data_root, log, method=method, skip_test=True)) == 0
    s = _summary(log)
    assert s["test_skipped"] is True and s["test_top1"] is None and s["test_per_class"] is None
    assert _is_fraction(s["val_top1"]) and s["target_val_size"] > 0
    assert "test skipped (--skip-test)" in capsys.readouterr().out
    assert (log / "transport.txt").exists() == (method == "jtln")  # jtln: its plan on validation and the cost
    with pytest.raises(UserError, match="--skip-test with --val-split none"):
        train_from_flags(tiny_flags(data_root, tmp_path / "none", method=method, skip_test=True, val_split="none"))


def test_features_for_costs_come_from_the_evaluation_view(data_root, tmp_path):
    """Two builds from the same weights give identical features and an identical cost, through the
    engine's own feature path; the augmented training view would not."""
    from tllib_jtln.cost import build_cost
    from tllib_jtln.engine import distributed as D
    from tllib_jtln.engine.assembly import Parts, build_task_and_model, make_feature_fn

    cfg = resolve_config(tiny_flags(data_root, tmp_path / "f", method="jtln"))
    task, model = build_task_and_model(cfg)
    parts = Parts(cfg=cfg, task=task, model=model, device=torch.device("cpu"), info=D.env_info(), log_dir=tmp_path)
    builds = []
    for _ in range(2):
        features = make_feature_fn(parts, {"epoch": 0})  # a fresh memo each time
        (sf, sl), (tf, tl) = features("source"), features("target")
        builds.append((sf, tf, build_cost("knn", sf, sl, tf, tl, k=3)))
    assert torch.equal(builds[0][0], builds[1][0]) and torch.equal(builds[0][1], builds[1][1])
    assert torch.equal(builds[0][2], builds[1][2])
    # the training view is augmented: two passes differ (what the features must not see)
    x1 = torch.stack([task.target_train[i][0] for i in range(len(task.target_train))])
    x2 = torch.stack([task.target_train[i][0] for i in range(len(task.target_train))])
    assert not torch.equal(x1, x2)


def test_cost_refreshes_keep_a_run_and_its_controls_paired(data_root, tmp_path, monkeypatch):
    """jtln --cost-refresh 1 (a feature pass between the epochs) and its uniform control (none) see the
    same batches and the same global RNG state (hence dropout masks) at every step."""
    cls = METHODS.get("jtln")
    original = cls.losses
    steps: dict[str, list] = {}

    def recording(self, model, batch, progress):
        steps[self.cfg.log].append((batch.y_s.tolist(), batch.y_t.tolist(), float(batch.x_t.sum()),
                                    torch.get_rng_state()))
        return original(self, model, batch, progress)

    monkeypatch.setattr(cls, "losses", recording)
    for name, cost in (("knn", "knn"), ("uniform", "uniform")):
        steps[str(tmp_path / name)] = []
        train_from_flags(tiny_flags(data_root, tmp_path / name, method="jtln", cost=cost, cost_refresh=1))
    treatment, control = steps.values()
    assert len(treatment) == len(control) == 6
    for a, b in zip(treatment, control):
        assert a[:3] == b[:3] and torch.equal(a[3], b[3])


def test_nonfinite_logits_inside_the_ot_term_meet_the_same_policy(data_root, tmp_path, monkeypatch):
    """Logits that overflow (e.g. --lr 1e30) must not crash inside Sinkhorn: stop naming the term, or skip."""
    cls = METHODS.get("jtln")
    original = cls.losses

    def poisoned(self, model, batch, progress):
        if 0.3 < progress < 0.5:
            def inf_model(x, **kw):  # jtln asks for the features too (with_features=True)
                out = model(x, **kw)
                return out._replace(source_logits=out.source_logits * float("inf"))
            return original(self, inf_model, batch, progress)
        return original(self, model, batch, progress)

    monkeypatch.setattr(cls, "losses", poisoned)
    with pytest.raises(UserError, match=r"step 2: loss term '(ce_source|ot)' is not finite.*--skip-nonfinite"):
        train_from_flags(tiny_flags(data_root, tmp_path / "a", method="jtln"))
    train_from_flags(tiny_flags(data_root, tmp_path / "b", method="jtln", skip_nonfinite=True))
    assert _summary(tmp_path / "b")["skipped_steps"] == 1


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
