"""A 2-process DDP run (gloo, CPU) through torchrun, on the tiny generated task."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tiny_images import tiny_argv


def test_two_process_gloo_run(tmp_path):
    log = tmp_path / "ddp"
    # `--` ends torchrun's own options: otherwise argparse rejects `--log` as an ambiguous
    # abbreviation of torchrun's --log-dir/--log-line-prefix-template/...
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tllib_jtln", "--", "train", *tiny_argv(tmp_path / "data", log, method="jtln")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
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
