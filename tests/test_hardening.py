"""Files from strangers and faults (issue 9): nothing runs that should not, nothing is lost.

Pinned here: a malicious pickle given as ``--pretrained-file`` never executes; a checkpoint write
killed mid-way leaves the previous checkpoint loadable and ``--resume`` finishes the run; a disk
too small for the checkpoints is reported before anything is written. (List files that escape
the dataset root: tests/test_data_imagelist.py; NaN losses: tests/test_engine_e2e.py; YAML tags
and the CLI fuzzer: tests/test_cli_fuzz.py; pickled .npy costs: tests/test_cost_io.py.)
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from tllib_jtln.cli import main
from tllib_jtln.engine.checkpoint import load_checkpoint
from tllib_jtln.engine.run import resolve_config, train_from_flags
from tllib_jtln.engine.trainer import train

from tiny_images import tiny_argv, tiny_flags


class _Marker:
    """Unpickling this object would create the marker file (through os.system)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pretrained_file_never_runs_and_is_named(data_root, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "weights.pth"
    torch.save({"state_dict": _Marker(marker)}, evil)
    code = main(["train", *tiny_argv(data_root, tmp_path / "log", pretrained=True), "--pretrained-file", str(evil)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(evil) in err[0]
    assert not marker.exists()


def test_checkpoint_write_killed_midway_keeps_previous_and_resume_finishes(data_root, tmp_path):
    log = tmp_path / "run"
    stopped = train(resolve_config(tiny_flags(data_root, log, method="jtln", epochs=3)), stop_after_epoch=1)
    assert stopped["stopped_after_epoch"] == 1
    last = log / "checkpoints" / "last.pt"
    before = last.read_bytes()
    # A child process starts rewriting last.pt through the same atomic writer and is killed mid-write.
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from tllib_jtln.fileio import atomic_write
        def slow(fh):
            fh.write(b"partial checkpoint bytes")
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(last)!r}, slow)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert last.read_bytes() == before  # the previous checkpoint is untouched
    assert load_checkpoint(last)["epoch"] == 1
    assert train_from_flags({"resume": True, "log": str(log), "progress": False}) == 0
    summary = json.loads((log / "summary.json").read_text())
    assert 0.0 <= summary["test_top1"] <= 1.0


def test_disk_too_small_is_reported_before_anything_is_written(data_root, tmp_path, monkeypatch, capsys):
    import tllib_jtln.engine.logdir as logdir

    real = logdir.shutil.disk_usage
    monkeypatch.setattr(logdir.shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    log = tmp_path / "full"
    code = main(["train", *tiny_argv(data_root, log)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MiB free" in err[0]
    assert not (log / "config.yaml").exists() and not (log / "checkpoints").exists()


def test_disk_full_during_a_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(data_root, tmp_path,
                                                                                       monkeypatch, capsys):
    import errno

    import tllib_jtln.engine.checkpoint as checkpoint

    log = tmp_path / "run"
    train(resolve_config(tiny_flags(data_root, log, epochs=3)), stop_after_epoch=1)
    before = (log / "checkpoints" / "last.pt").read_bytes()

    def full(state, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(handle.name))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    code = main(["train", "--resume", "--log", str(log), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0]  # exit 2: a one-line error
    assert (log / "checkpoints" / "last.pt").read_bytes() == before


def test_a_stop_signal_during_an_atomic_write_lands_after_the_file_is_in_place(tmp_path):
    """Ctrl-C inside torch.save turned into a zip-writer error (exit 1, a traceback) instead of a clean
    stop: the writer now holds the signal until the file is complete, then raises it."""
    from tllib_jtln.fileio import atomic_write

    target = tmp_path / "checkpoint.bin"

    def interrupted(fh):
        fh.write(b"a" * 1000)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # without the hold, KeyboardInterrupt lands here, mid-write
        fh.write(b"b" * 1000)

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        atomic_write(target, interrupted)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the held SIGINT was never raised")
    finally:
        restored = signal.signal(signal.SIGINT, outer)
    assert target.read_bytes() == b"a" * 1000 + b"b" * 1000
    assert restored is signal.default_int_handler
