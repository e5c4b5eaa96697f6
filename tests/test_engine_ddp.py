"""A 2-process DDP run (gloo, CPU) through torchrun and through `train --nproc-per-node 2`, on the
tiny generated task."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tiny_images import tiny_argv


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _torchrun(tmp_path, log):
    # `--` ends torchrun's own options: otherwise argparse rejects `--log` as an ambiguous
    # abbreviation of torchrun's --log-dir/--log-line-prefix-template/...
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tllib_jtln", "--", "train", *tiny_argv(tmp_path / "data", log, method="jtln")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """One torchrun run shared by the tests below: (its folder, its data root, the process result)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    return tmp_path, tmp_path / "ddp", _torchrun(tmp_path, tmp_path / "ddp")


def test_two_process_gloo_run(torchrun_run):
    _, log, out = torchrun_run
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((log / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["test_images"] == 12  # counts summed over the two shards, each image once
    assert 0.0 <= summary["test_top1"] <= 1.0
    # only rank 0 writes: one metrics line per epoch, one summary line on stdout
    assert len((log / "metrics.jsonl").read_text().splitlines()) == 2
    assert out.stdout.count("best epoch") == 1
    assert (log / "checkpoints" / "best.pt").is_file() and (log / "transport.png").is_file()
    cost = np.load(log / "cost.npy")
    assert cost.shape == (4, 3) and np.isfinite(cost).all()


def test_nproc_per_node_flag_matches_torchrun(torchrun_run):
    """The single-process command plus `--nproc-per-node 2` gives what torchrun gives."""
    tmp_path, via_torchrun, first = torchrun_run
    via_flag = tmp_path / "flag"
    assert first.returncode == 0, first.stderr[-3000:]
    cmd = [sys.executable, "-m", "tllib_jtln", "train", *tiny_argv(tmp_path / "data", via_flag, method="jtln"),
           "--nproc-per-node", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    a = json.loads((via_torchrun / "summary.json").read_text())
    b = json.loads((via_flag / "summary.json").read_text())
    assert b["world_size"] == 2
    assert set(a) == set(b)
    for key in a:
        if key != "wall_time_s":
            assert a[key] == b[key], key
    assert out.stdout.count("best epoch") == 1 and out.stdout.count("recipe:") == 1


def test_two_process_run_with_regularisers_reading_features_feature_maps_and_a_frozen_copy(tmp_path):
    """DELTA's hooks and frozen copy, BSS's features and StochNorm's layers under DDP: one forward through the
    wrapper per step, the channel attention computed on rank 0 and broadcast."""
    log = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "tllib_jtln", "train", "--nproc-per-node", "2",
           *tiny_argv(tmp_path / "data", log, method="jtln", regularizers="delta,bss,stochnorm", delta_attention_iters=1,
                      epochs=1, lr_decay_epochs=[1])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((log / "metrics.jsonl").read_text().splitlines()[0])
    assert all(np.isfinite(record[k]) for k in ("train_delta_backbone", "train_delta_head", "train_bss", "train_ot"))
    assert json.loads((log / "summary.json").read_text())["world_size"] == 2


def test_two_process_bi_tuning_run_projects_inside_the_one_forward(tmp_path):
    """Bi-Tuning's projector is trained under DDP: it runs inside the wrapped forward (a head used only
    outside it would be marked unused and then ready twice); the key encoder and queues need no gradient."""
    log = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "tllib_jtln", "train", "--nproc-per-node", "2",
           *tiny_argv(tmp_path / "data", log, method="bi_tuning", bi_tuning_k=2, epochs=1, lr_decay_epochs=[1])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((log / "metrics.jsonl").read_text().splitlines()[0])
    assert all(np.isfinite(record[k]) for k in ("train_ce_target", "train_bi_tuning_z", "train_bi_tuning_y"))
    assert json.loads((log / "summary.json").read_text())["world_size"] == 2
