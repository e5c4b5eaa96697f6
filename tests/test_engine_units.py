"""Engine pieces that need no data, model or method: checkpoints, log folder, metrics, plots,
settings resolution, evaluation arithmetic, distributed no-ops."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from tllib_jtln.config import Config
from tllib_jtln.engine import checkpoint as C
from tllib_jtln.engine import seeding
from tllib_jtln.engine import distributed as D
from tllib_jtln.engine.evaluate import evaluate
from tllib_jtln.engine.logdir import MetricsLog, prepare_log_dir, read_config, write_config
from tllib_jtln.engine.plots import plot_curves, save_transport, transport_lines
from tllib_jtln.engine.run import EMBEDDED_RECIPE, resolve_config
from tllib_jtln.errors import UserError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_loads_with_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2], gamma=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    state = {"format": C.FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "rng": seeding.rng_state(), "best": {"epoch": 1, "val_top1": 0.5}}
    path = C.save_checkpoint(state, tmp_path / "ck" / "last.pt")
    loaded = C.load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], model.weight)
    opt2 = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt2.load_state_dict(loaded["optimizer"])
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, [2], gamma=0.1)
    sched2.load_state_dict(loaded["scheduler"])
    assert sched2.last_epoch == 1
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_checkpoint_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    C.save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def boom(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(C.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(C.load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert not (tmp_path / "last.pt.tmp").exists()


def test_corrupt_or_missing_checkpoint_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        C.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot be read"):
        C.load_checkpoint(bad)


def test_rng_state_restores_python_numpy_torch():
    seeding.seed_everything(3)
    state = seeding.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(5)
    # through a weights_only round trip, as the engine does
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    seeding.set_rng_state(torch.load(buf, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


# ----------------------------------------------------------------------------- log folder
def test_log_dir_refuses_finished_run_without_overwrite(tmp_path):
    log = tmp_path / "run"
    prepare_log_dir(log, overwrite=False, resume=False)
    (log / "summary.json").write_text("{}")
    (log / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_log_dir(log, overwrite=False, resume=False)
    with pytest.raises(UserError, match="finished"):
        prepare_log_dir(log, overwrite=False, resume=True)
    prepare_log_dir(log, overwrite=True, resume=False)
    assert not (log / "summary.json").exists()
    assert (log / "notes.txt").read_text() == "mine"  # only the run's files are removed


def test_log_dir_with_checkpoints_refused_and_resume_needs_last(tmp_path):
    log = tmp_path / "run"
    prepare_log_dir(log, overwrite=False, resume=False)
    (log / "checkpoints").mkdir()
    (log / "checkpoints" / "best.pt").write_bytes(b"x")  # stopped before last.pt: nothing to resume
    with pytest.raises(UserError, match="nothing to resume.*without --resume"):
        prepare_log_dir(log, overwrite=False, resume=True)
    prepare_log_dir(log, overwrite=False, resume=False)  # ... so train starts it again
    (log / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="already holds a run"):
        prepare_log_dir(log, overwrite=False, resume=False)
    with pytest.raises(UserError, match="contradict"):
        prepare_log_dir(log, overwrite=True, resume=True)


def test_unwritable_log_dir_is_user_error(tmp_path):
    if os.geteuid() == 0:  # root writes through permissions; /proc refuses new folders to anyone
        target = Path("/proc/tllib-jtln-no-such-dir/run")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "run"
    with pytest.raises(UserError, match="not writable"):
        prepare_log_dir(target, overwrite=False, resume=False)


def test_log_path_that_is_a_file_is_user_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        prepare_log_dir(f, overwrite=False, resume=False)


def test_config_yaml_roundtrips_into_config(tmp_path):
    cfg = resolve_config({"method": "erm", "epochs": 3})
    write_config(cfg.to_dict(), tmp_path)
    again = Config().update(read_config(tmp_path), "config.yaml")
    assert again == cfg
    # and the file is a valid --config recipe
    from_file = resolve_config({"config": str(tmp_path / "config.yaml")})
    assert from_file.config == str(tmp_path / "config.yaml")
    from_file.config = None
    assert from_file == cfg


def test_metrics_log_appends_reads_and_truncates(tmp_path):
    log = MetricsLog(tmp_path)
    for e in (1, 2, 3):
        log.append({"epoch": e, "val_top1": e / 10})
    with open(log.path, "ab") as fh:  # edited lines: too deep to parse, not UTF-8, not a record
        fh.write(b"[" * 50000 + b'\n{"epoch": "\xff"}\n[1]\n')
        fh.write(b'{"epoch": 4, "val_to')  # a line cut by a kill
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]
    kept = log.truncate_after(2)
    assert [r["epoch"] for r in kept] == [1, 2]
    assert [json.loads(x)["epoch"] for x in log.path.read_text().splitlines()] == [1, 2]


# ----------------------------------------------------------------------------- settings
def test_embedded_recipe_applies_only_without_dataset_and_under_flags(tmp_path):
    cfg = resolve_config({"method": "jtln"})
    assert cfg.data is None and cfg.arch == "smallcnn" and cfg.pretrained is False
    assert cfg.epochs == EMBEDDED_RECIPE["epochs"]
    assert resolve_config({"epochs": 2}).epochs == 2  # flags win over the recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text("batch_size: 7\n")
    assert resolve_config({"config": str(recipe)}).batch_size == 7  # YAML wins over the recipe
    named = resolve_config({"data": "CUB200", "root": "x"})
    assert named.arch == Config().arch and named.epochs == Config().epochs  # TLlib defaults


def test_embedded_recipe_file_matches_code():
    data = yaml.safe_load((REPO / "configs" / "fashion_mnist.yaml").read_text())
    assert data == EMBEDDED_RECIPE


def test_resume_config_comes_from_the_run_and_refuses_identity_changes(tmp_path):
    log = tmp_path / "run"
    log.mkdir()
    cfg = resolve_config({"method": "joint", "epochs": 2, "log": str(log)})
    write_config(cfg.to_dict(), log)
    again = resolve_config({"resume": True, "log": str(log), "epochs": 4})
    assert again.method == "joint" and again.epochs == 4 and again.resume
    with pytest.raises(UserError, match="method"):
        resolve_config({"resume": True, "log": str(log), "method": "erm"})
    with pytest.raises(UserError, match="class"):  # other classes: another task, not a continuation
        resolve_config({"resume": True, "log": str(log), "class_split": "random:1"})


# ----------------------------------------------------------------------------- evaluation
class _Fixed(nn.Module):
    """Predicts target class ``x[:, 0]`` and source logits ``x[:, 1:3]``."""

    def forward(self, x):
        pred = x[:, 0].long()
        return x[:, 1:3], nn.functional.one_hot(pred, 3).float()


def test_evaluate_top1_mean_class_and_source_mass():
    # labels 0,0,0,1 ; predictions 0,0,1,1 ; class 2 absent
    x = torch.tensor([[0, 10, 0], [0, 10, 0], [1, 0, 10], [1, 0, 10]], dtype=torch.float)
    y = torch.tensor([0, 0, 0, 1])
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    res = evaluate(_Fixed(), loader, torch.device("cpu"), 3, source_mass=2)
    assert res.top1 == pytest.approx(3 / 4)
    assert res.mean_class_acc == pytest.approx((2 / 3 + 1) / 2)  # classes without images don't count
    assert res.count == 4 and np.isnan(res.per_class[2])
    assert res.source_mass.shape == (2, 3)
    assert res.source_mass[:, 1].tolist() == pytest.approx([0.0, 1.0], abs=1e-4)
    assert res.source_mass[0, 0].item() == pytest.approx(2 / 3, abs=1e-3)


# ----------------------------------------------------------------------------- plots
def test_transport_view_ranks_sources(tmp_path):
    plan = torch.tensor([[0.7, 0.1], [0.2, 0.1], [0.1, 0.8]])
    posterior = torch.tensor([[0.2, 0.6], [0.6, 0.2], [0.2, 0.2]])
    cost = torch.tensor([[0.0, 1.0], [0.5, 0.9], [1.0, 0.1]])
    txt, png = save_transport(tmp_path, ["a", "b", "c"], ["T1", "T2"], plan=plan, posterior=posterior, cost=cost,
                              top=2)
    lines = txt.read_text().splitlines()
    assert "# plan: mean OT plan (validation images), share of the column, largest first" in lines
    assert "# posterior: mean source-head posterior (test images), share of the column, largest first" in lines
    t1 = next(line for line in lines if line.startswith("T1"))
    t2 = next(line for line in lines if line.startswith("T2"))
    assert t1.split("<-")[1].strip().startswith("plan: a 0.700, b 0.200")
    assert "posterior: b 0.600, a 0.200" in t1 and "cost: a 0.000, b 0.500" in t1
    assert "plan: c 0.800" in t2 and "posterior: a 0.600" in t2 and "cost: c 0.100" in t2
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="shape"):
        transport_lines(["a"], ["T1", "T2"], plan=plan)
    with pytest.raises(ValueError, match="give plan, posterior or cost"):
        transport_lines(["a"], ["T1"])


def test_curves_png(tmp_path):
    records = [{"epoch": e, "train_loss": 1 / e, "train_ce_t": 0.5 / e, "val_top1": 0.2 * e,
                "val_mean_class_acc": 0.2 * e} for e in (1, 2, 3)]
    path = plot_curves(records, tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- distributed
def test_distributed_helpers_are_noops_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.env_info()
    assert info.world_size == 1 and info.is_main and not info.enabled
    t = torch.ones(3)
    assert torch.equal(D.all_reduce_sum(t), torch.ones(3))
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.all_agree(False) is False
    assert D.resolve_device("cpu", info).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            D.resolve_device("cuda", info)
    with pytest.raises(UserError, match="auto, cpu"):
        D.resolve_device("tpu", info)


def test_transport_view_with_many_source_classes_keeps_the_top_rows(tmp_path):
    gen = torch.Generator().manual_seed(0)
    mass = torch.rand(300, 4, generator=gen)
    mass[123, :] = 10.0  # every target class draws most from source class 123
    names = [f"s{i}" for i in range(300)]
    txt, png = save_transport(tmp_path, names, ["a", "b", "c", "d"], posterior=mass, top=2)
    assert all(" <- posterior: s123 " in line for line in txt.read_text().splitlines()[2:])
    from PIL import Image
    with Image.open(png) as im:
        assert im.size[1] < 2000  # 300 rows were not all drawn


def test_stop_after_env_is_parsed(monkeypatch):
    from tllib_jtln.engine.run import STOP_AFTER_ENV, _stop_after_from_env

    monkeypatch.delenv(STOP_AFTER_ENV, raising=False)
    assert _stop_after_from_env() is None
    monkeypatch.setenv(STOP_AFTER_ENV, "2")
    assert _stop_after_from_env() == 2
    monkeypatch.setenv(STOP_AFTER_ENV, "two")
    with pytest.raises(UserError, match=STOP_AFTER_ENV):
        _stop_after_from_env()


def _feature_fn_on_a_tiny_task(tmp_path):
    """The engine's feature function over a 6-image task whose training augmentation must never run."""
    from tllib_jtln.data import TransferTask
    from tllib_jtln.data.memory import TensorImages
    from tllib_jtln.engine.assembly import Parts, make_feature_fn

    def augment(image):
        raise AssertionError("training augmentation ran in a feature pass")

    def to_float(image):
        return image.float().unsqueeze(0)

    images, labels = torch.arange(12, dtype=torch.uint8).view(6, 1, 2).expand(6, 2, 2), torch.tensor([0, 1] * 3)
    data = TensorImages(images, labels, ["a", "b"], augment)
    task = TransferTask(name="t", target_train=data, target_val=data, target_test=data, target_classes=["a", "b"],
                        source_train=data, source_classes=["a", "b"], in_chans=1, image_size=2,
                        eval_transform=to_float)

    class Mean(nn.Module):
        def forward_features(self, x):
            return x.flatten(1).mean(1, keepdim=True)

    parts = Parts(cfg=Config(workers=0, progress=False), task=task, model=Mean(), device=torch.device("cpu"),
                  info=D.DistInfo(), log_dir=tmp_path)
    return make_feature_fn(parts, {"epoch": 0}), labels


def test_setup_features_see_the_evaluation_transform(tmp_path):
    """Cost-matrix features are an evaluation pass: the training augmentation never runs there."""
    features, labels = _feature_fn_on_a_tiny_task(tmp_path)
    for split in ("source", "target"):
        feats, labs = features(split)
        assert feats.flatten().tolist() == [float(2 * i) + 0.5 for i in range(6)] and labs.tolist() == labels.tolist()


def test_a_feature_pass_leaves_the_global_rng_untouched(tmp_path):
    """A refresh must not shift the dropout masks of the steps after it (the loader draws a seed)."""
    features, _ = _feature_fn_on_a_tiny_task(tmp_path)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    features("target")
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_saved_before_switches_were_removed_reads_back_unless_it_used_one(tmp_path):
    """A config.yaml written before --ot-detach, --ot-source, --cost-metric, --cost-seed and
    --source-head-lr were removed still loads (test --log, --resume) when it holds the behaviour kept."""
    from tllib_jtln.settings import _saved_config

    old = {**Config().to_dict(), "data": "CUB200", "val_split": "train", "ot_detach": True, "ot_source": "label", "cost_metric": "cosine", "cost_seed": 0,
           "source_head_lr": 0.0}
    write_config(old, tmp_path)
    assert _saved_config(tmp_path) == Config(data="CUB200", val_split="train")
    write_config({**old, "ot_detach": False}, tmp_path)
    with pytest.raises(UserError, match="'ot_detach: False' was removed"):
        _saved_config(tmp_path)
