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


#: what torch prints on every rank when DDP searched the first step for parameters without a gradient in vain
IDLE_SEARCH_WARNING = "find_unused_parameters=True was specified"


def test_ddp_does_not_search_for_idle_parameters_of_a_method_that_has_none(torchrun_run):
    _, _, out = torchrun_run
    assert out.returncode == 0, out.stderr[-3000:]
    assert IDLE_SEARCH_WARNING not in out.stderr


def test_two_process_consecutive_run_trains_both_stages_with_a_head_idle_in_each(tmp_path):
    """Stage 1 leaves the target head without a gradient, stage 2 the source head: DDP must expect that
    (``Stage.idle_parameters``), else it stops at the second step. (torch still warns here: its first-step
    check counts only parameters outside the forward pass, and the idle head's logits are computed.)"""
    log = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "tllib_jtln", "train", "--nproc-per-node", "2",
           *tiny_argv(tmp_path / "data", log, method="consecutive", epochs=1, lr_decay_epochs=[1])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("train_ce")) for r in records] == [["train_ce_source"],
                                                                                   ["train_ce_target"]]


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


WORKER_TEARDOWN = '''
import os, sys, threading, torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tllib_jtln.cost.features import collect_features
from tllib_jtln.engine import distributed as D

D.init(D.env_info(), torch.device("cpu"))
net = DDP(torch.nn.Linear(3, 2), find_unused_parameters=True)
net(torch.ones(4, 3)).sum().backward()
collect_features(torch.nn.Identity(), [(torch.zeros(2, 3), torch.zeros(2))], "cpu", progress=False)
del net
D.barrier()
D.cleanup()
native = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
with open(os.path.join(sys.argv[1], "threads" + os.environ["RANK"]), "w") as out:
    out.write(f"rank {os.environ['RANK']} native {native} python {sorted(t.name for t in threading.enumerate())}")
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_a_worker_leaves_no_thread_behind_after_cleanup(tmp_path):
    """The teardown race behind a rank's SIGABRT ("terminate called without an active exception"):
    after ``cleanup`` the process group's C++ threads (gloo's loop and workers) are gone, though DDP
    was used, and no daemon thread (tqdm's monitor) is left to meet the interpreter's shutdown."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_TEARDOWN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ((tmp_path / f"threads{rank}").read_text() for rank in (0, 1)):
        assert "gloo" not in line and "python ['MainThread']" in line, line


def test_nproc_per_node_relays_a_workers_one_line_error_and_exits_2(tmp_path):
    """A bad image seen by one rank: its one-line error, exit 2; no traceback of the rank that lost its
    peer, no torchrun log lines."""
    from tiny_images import make_tiny_task

    target, _ = make_tiny_task(tmp_path / "data")
    (target / "train" / "tgt_a" / "000.png").write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "tllib_jtln", "train", *tiny_argv(tmp_path / "data", tmp_path / "run", method="jtln"),
           "--nproc-per-node", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "000.png: unreadable or corrupt image" in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "torch/distributed/elastic" not in out.stderr


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


# `train` with 4-row feature-store shards: the tiny task's 24 source and 9 target images make 6 and 3 shards
SMALL_SHARDS = '''
import sys
from tllib_jtln.cli import main
from tllib_jtln.cost import feature_store

feature_store.SHARD_ROWS = 4
sys.exit(main(["train", *[a for a in sys.argv[1:] if a != "--"]]))
'''


def test_two_ranks_extract_their_own_shards_of_the_feature_stores(tmp_path):
    """``--feature-cache`` under DDP: rank r forwards the shards i = r (mod 2) of every store rank 0 reads
    (setup's, and the new stores of a --cost-refresh with new weights), and rank 0's cost matrix is the one
    a single process builds."""
    script = tmp_path / "small_shards.py"
    script.write_text(SMALL_SHARDS)

    def argv(log, cache):
        return tiny_argv(tmp_path / "data", tmp_path / log, method="jtln", feature_cache=str(tmp_path / cache),
                         epochs=2, iters_per_epoch=1, cost_refresh=1)

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run([*torchrun, str(script), "--", *argv("ddp", "fc_ddp")], capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # four stores (source and target, at setup and at the refresh), each complete
    stores = sorted((tmp_path / "fc_ddp").glob("features-*"))
    assert len(stores) == 4
    assert sorted(len(list((s / "done").iterdir())) for s in stores) == [3, 3, 6, 6]
    for rank, source, target in ((0, "0, 2, 4", "0, 2"), (1, "1, 3, 5", "1")):
        assert ddp.stdout.count(f"features: rank {rank} of 2 forwarded source shards {source} ") == 2, ddp.stdout
        assert ddp.stdout.count(f"features: rank {rank} of 2 forwarded target shards {target} ") == 2, ddp.stdout
    single = subprocess.run([sys.executable, str(script), *argv("single", "fc_single")], capture_output=True,
                            text=True, timeout=120, env=ENV)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "forwarded" not in single.stdout  # one process forwards every shard: no per-rank lines
    # the matrix built at setup, from the same initial weights: the same on one process and on two
    np.testing.assert_array_equal(np.load(tmp_path / "ddp" / "cost.npy"), np.load(tmp_path / "single" / "cost.npy"))
