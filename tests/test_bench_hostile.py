"""`tllib-jtln bench` against careless and hostile input (issue 26): one writer per suite, Ctrl-C,
the suite file's schema, run folders edited by hand, ``--only`` matching nothing.

The training processes are stand-ins (``suite.train_command`` patched): a few lines of Python that
write what a finished ``train`` writes, or sleep until stopped.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tllib_jtln.bench import suite as suite_mod
from tllib_jtln.bench.runfolder import StaleArea
from tllib_jtln.bench.suite import expand_runs, load_suite, run_one, run_suite
from tllib_jtln.cli import main
from tllib_jtln.engine.logdir import release_log_dirs
from tllib_jtln.errors import UserError

SUITE = """
name: demo
seeds: [0, 1, 2, 3]
base: {epochs: 1}
settings:
  K1: {num_samples_per_class: 1}
methods:
  erm: {method: erm}
"""

#: a stand-in for `train`: records its arguments and writes the summary a finished run writes
FINISHED_TRAIN = """
import json, sys
from pathlib import Path
log = Path(sys.argv[1])
(log / "argv.txt").write_text(" ".join(sys.argv[2:]))
(log / "summary.json").write_text(json.dumps({"test_top1": 0.5, "test_mean_class_acc": 0.5, "val_top1": 0.5}))
"""

#: holds the lock of the folder argv[1] (as a `train` or a `bench` does) until its stdin closes
LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    release_log_dirs()  # the suites' `out` locks this test process took


def _suite_file(tmp_path, text=SUITE, out=None):
    path = tmp_path / "suite.yaml"
    path.write_text(text + f"out: {out or tmp_path / 'out'}\n")
    return path


def _finished_train(monkeypatch):
    monkeypatch.setattr(suite_mod, "train_command", lambda recipe, log_dir, resume: [
        sys.executable, "-c", FINISHED_TRAIN, str(log_dir), *(["--resume"] if resume else [])])


def _hold_lock(folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _finish(folder: Path, run, **recipe_changes) -> None:
    """Make ``folder`` hold a finished run of ``run`` (its recipe changed by ``recipe_changes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite_recipe.yaml").write_text(yaml.safe_dump({**run.settings, "seed": run.seed, **recipe_changes}))
    (folder / "summary.json").write_text(json.dumps({"test_top1": 0.9}))


# ----------------------------------------------------------------------------- item 2: one writer
def test_a_second_bench_on_the_same_out_is_refused_naming_the_first_ones_pid(tmp_path, monkeypatch):
    _finished_train(monkeypatch)
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        busy = rf"out: {out} is in use by another `tllib-jtln bench` \(pid {holder.pid}\)"
        with pytest.raises(UserError, match=busy):
            run_suite(str(_suite_file(tmp_path)))
    finally:
        holder.stdin.close()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing run, nothing moved
    assert run_suite(str(_suite_file(tmp_path))) == 0  # once the other one has ended


def test_the_stale_move_spares_held_folders_existing_entries_and_symlinks(tmp_path, monkeypatch):
    _finished_train(monkeypatch)
    out = tmp_path / "out"
    runs = expand_runs(load_suite(_suite_file(tmp_path)))
    # a folder another process holds (a `train` on it) is left in place, its holder named
    _finish(out / runs[0].name, runs[0], lr=9.0)
    holder = _hold_lock(out / runs[0].name)
    try:
        status, _ = run_one(runs[0], out)
    finally:
        holder.stdin.close()
        holder.wait()
    assert status.startswith("failed") and f"pid {holder.pid}" in status, status
    assert json.loads((out / runs[0].name / "summary.json").read_text()) == {"test_top1": 0.9}
    # an existing entry of <out>.stale is never replaced: the move takes a fresh folder
    monkeypatch.setattr("tllib_jtln.bench.runfolder.time.strftime", lambda *a: "20260101T000000")
    earlier = tmp_path / "out.stale" / "20260101T000000" / runs[1].name
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text("the earlier stale run")
    _finish(out / runs[1].name, runs[1], lr=9.0)
    assert run_one(runs[1], out)[0] == "done"
    assert (earlier / "summary.json").read_text() == "the earlier stale run"
    assert (tmp_path / "out.stale" / "20260101T000000-2" / runs[1].name / "summary.json").is_file()
    # no symlink is followed: not <out>.stale, not a run folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other_out = tmp_path / "other"
    (tmp_path / "other.stale").symlink_to(elsewhere)
    _finish(other_out / runs[2].name, runs[2], lr=9.0)
    status, _ = run_one(runs[2], other_out)
    assert status.startswith("failed") and "symlink" in status and not any(elsewhere.iterdir())
    assert (other_out / runs[2].name / "summary.json").is_file()
    _finish(elsewhere / "seed3", runs[3], lr=9.0)
    (out / runs[3].name).symlink_to(elsewhere / "seed3")
    status, _ = run_one(runs[3], out)
    assert status.startswith("failed") and "symlink" in status
    assert (elsewhere / "seed3" / "summary.json").is_file() and (out / runs[3].name).is_symlink()


@pytest.mark.parametrize("name", ["stdout.txt", "suite_recipe.yaml"])
def test_a_symlink_planted_in_a_run_folder_is_refused_not_written_through(tmp_path, monkeypatch, name):
    _finished_train(monkeypatch)
    run = expand_runs(load_suite(_suite_file(tmp_path)))[0]
    out, outside = tmp_path / "out", tmp_path / "precious.yaml"
    outside.write_text(yaml.safe_dump({**run.settings, "seed": run.seed}, sort_keys=True))  # the recipe it wants
    before = outside.read_bytes()
    (out / run.name).mkdir(parents=True)
    (out / run.name / name).symlink_to(outside)
    status, _ = run_one(run, out)
    assert status.startswith("failed") and name in status and "a symlink" in status, status
    assert outside.read_bytes() == before and (out / run.name / name).is_symlink()
    assert not (out / run.name / "summary.json").exists()  # the run never started


def test_a_symlink_planted_where_the_report_goes_is_refused_not_written_through(tmp_path, monkeypatch):
    _finished_train(monkeypatch)
    out, outside = tmp_path / "out", tmp_path / "precious.md"
    outside.write_text("mine\n")
    out.mkdir()
    (out / "results_demo.md").symlink_to(outside)
    with pytest.raises(UserError, match=r"results_demo\.md: a symlink"):
        run_suite(str(_suite_file(tmp_path)))
    assert outside.read_text() == "mine\n"


def test_a_stale_area_claims_a_new_folder_per_bench(tmp_path):
    first, second = StaleArea(tmp_path / "out"), StaleArea(tmp_path / "out")
    assert first._claim() != second._claim() and first._claim() == first.folder


# ----------------------------------------------------------------------------- item 4: Ctrl-C
#: a stand-in for `train` that writes its pid and sleeps, noting a KeyboardInterrupt; the seed1 run
#: ignores SIGINT (it must be killed)
SLEEPING_TRAIN = """
import os, signal, sys, time
log = sys.argv[1]
if log.endswith("seed1"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
open(os.path.join(log, "pid.txt"), "w").write(str(os.getpid()))
try:
    time.sleep(120)
except KeyboardInterrupt:  # unwound as a Ctrl-C'd `train` does
    open(os.path.join(log, "unwound.txt"), "w").write("KeyboardInterrupt")
    raise
"""

BENCH_WITH_SLEEPERS = f"""
import sys
import tllib_jtln.bench.children as children, tllib_jtln.bench.suite as suite
children.SIGNAL_AFTER_S, children.STOP_GRACE_S = 0.5, 1.0
suite.train_command = lambda recipe, log_dir, resume: [sys.executable, "-c", {SLEEPING_TRAIN!r}, str(log_dir)]
from tllib_jtln.cli import main
sys.exit(main(["bench", "--suite", sys.argv[1], "--jobs", "2"]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sigint_on_entry, signum, target", [
    pytest.param(signal.SIG_DFL, signal.SIGINT, "process group", id="Ctrl-C"),
    pytest.param(signal.SIG_DFL, signal.SIGINT, "process", id="kill-INT"),
    # a background job of a script (`bench &`, `nohup bench &`) inherits SIGINT ignored, across exec
    pytest.param(signal.SIG_IGN, signal.SIGINT, "process", id="background-kill-INT"),
    pytest.param(signal.SIG_IGN, signal.SIGTERM, "process", id="background-kill-TERM"),  # SLURM, systemd, docker
])
def test_ctrl_c_stops_bench_promptly_and_a_rerun_continues(tmp_path, monkeypatch, sigint_on_entry, signum, target):
    path = _suite_file(tmp_path)
    out = tmp_path / "out"
    runs = expand_runs(load_suite(path))
    _finish(out / runs[0].name, runs[0])  # finished before: kept
    bench = subprocess.Popen([sys.executable, "-c", BENCH_WITH_SLEEPERS, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, sigint_on_entry))
    try:
        _stop_bench(bench, out, runs, signum, target)
    finally:  # a bench that did not stop, and its children, are not left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bench.pid, signal.SIGKILL)
    # the same command again: the finished run kept, the others (re)run, a checkpoint resumed
    (out / runs[2].name / "checkpoints").mkdir()
    (out / runs[2].name / "checkpoints" / "last.pt").write_bytes(b"")
    _finished_train(monkeypatch)
    assert run_suite(str(path)) == 0
    assert json.loads((out / runs[0].name / "summary.json").read_text()) == {"test_top1": 0.9}
    assert (out / runs[2].name / "argv.txt").read_text() == "--resume"
    assert all((out / run.name / "summary.json").is_file() for run in runs)


def _stop_bench(bench: subprocess.Popen, out: Path, runs: list, signum: int, target: str) -> None:
    """Send ``signum`` to ``bench`` (or its process group) once two runs are running; check it
    stopped within seconds as on Ctrl-C: exit 130, its children gone, a queued run never started."""
    pid_files = [out / run.name / "pid.txt" for run in runs[1:3]]
    deadline = time.monotonic() + 90
    while not all(p.is_file() and p.read_text() for p in pid_files):
        assert bench.poll() is None and time.monotonic() < deadline, bench.communicate()
        time.sleep(0.1)
    children = [int(p.read_text()) for p in pid_files]
    started = time.monotonic()
    if target == "process group":
        os.killpg(bench.pid, signum)  # Ctrl-C in a terminal
    else:
        os.kill(bench.pid, signum)
    stdout, stderr = bench.communicate(timeout=30)
    assert bench.returncode == 130, stderr
    assert time.monotonic() - started < 10
    assert "interrupted" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr
    assert not any(_alive(pid) for pid in children)  # the one ignoring SIGINT was killed
    assert (out / runs[2].name / "unwound.txt").is_file()  # the other took the forwarded SIGINT as Ctrl-C
    assert not (out / runs[3].name).exists()  # queued: never started
    assert (out / runs[0].name / "summary.json").is_file()


# ----------------------------------------------------------------------------- item 6: the schema
@pytest.mark.parametrize("edit, needle", [
    (("seeds: [0, 1, 2, 3]", "seeds: 5"), "seeds: expected a non-empty list of integers"),
    (("seeds: [0, 1, 2, 3]", "seeds: [0, true]"), "seeds: expected a non-empty list of integers"),
    (("seeds: [0, 1, 2, 3]", "seeds: [1, 1]"), "names a seed twice"),
    (("base: {epochs: 1}", "base: null"), "'base' is empty"),
    (("base: {epochs: 1}", "base: [1]"), "base: expected a mapping"),
    (("erm: {method: erm}", "erm: erm"), "methods.erm: expected a mapping"),
    (("K1: {num_samples_per_class: 1}", "K1: [1]"), "settings.K1: expected a mapping"),
    (("name: demo", "name: ../../ESCAPED"), "name: name '../../ESCAPED' is a file or folder name"),
    (("name: demo", "name: [a]"), "name: a name must be text"),
    (("methods:\n  erm: {method: erm}", "methods:\n  1: {method: erm}\n  '1': {method: erm}"), "'1' is given twice"),
    (("methods:\n  erm: {method: erm}", "methods:\n  erm: {method: erm}\n  erm: {method: jtln}"),
     "line 9: key 'erm' is given twice"),
    (("name: demo", "name: demo\nname: other"), "key 'name' is given twice"),
    (("name: demo", "name: demo\npairs: null"), "'pairs' is empty"),
    (("name: demo", "name: demo\npairs: [[erm]]"), "each pair must be"),
    (("name: demo", "name: demo\nsplits: [a, 1]"), "splits: expected a non-empty list of text"),
])
def test_suite_files_are_checked_against_the_schema_before_any_run(tmp_path, edit, needle):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace(*edit))
    with pytest.raises(UserError, match=needle) as error:
        load_suite(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("out, needle", [("~", "'out' is empty"), ("[a, b]", "out: expected a folder path"),
                                         ('"a\\0b"', "holds a NUL byte"), ("''", "out: expected a folder path")])
def test_out_must_be_one_folder_path(tmp_path, out, needle):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE + f"out: {out}\n")
    with pytest.raises(UserError, match=needle):
        load_suite(path)


def test_out_under_home_is_expanded_once_for_the_runs_and_the_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _finished_train(monkeypatch)
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace("[0, 1, 2, 3]", "[0]") + "out: ~/x\n")
    assert load_suite(path)["out"] == str(tmp_path / "home" / "x")
    assert run_suite(str(path)) == 0
    assert (tmp_path / "home" / "x" / "results_demo.md").is_file() and not (tmp_path / "~").exists()
    assert (tmp_path / "home" / "x" / "K1" / "erm" / "seed0" / "summary.json").is_file()


# ----------------------------------------------------------------------------- item 7: edited run files
@pytest.mark.parametrize("name, text", [
    ("suite_recipe.yaml", b"epochs: [1\n"),  # bad YAML
    ("suite_recipe.yaml", b"epochs: \xff\xfe\n"),  # not UTF-8
    ("suite_recipe.yaml", b"!!python/object/apply:os.system ['echo pwned']\n"),  # a python tag
    ("summary.json", b'{"test_top1": 0.8'),  # cut by a full disk
    ("summary.json", b'{"test_top1": "high"}'),  # edited
    ("summary.json", b'[0.8]'),
])
def test_an_unreadable_run_file_fails_that_run_and_the_others_finish(tmp_path, monkeypatch, capsys, name, text):
    _finished_train(monkeypatch)
    path = _suite_file(tmp_path)
    runs = expand_runs(load_suite(path))
    folder = tmp_path / "out" / runs[1].name
    _finish(folder, runs[1])
    (folder / name).write_bytes(text)
    assert run_suite(str(path)) == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1 and runs[1].name in failed[0] and str(folder / name) in failed[0], lines
    assert sum("done" in line for line in lines) == 3
    assert not (tmp_path / "pwned").exists()
    report = json.loads((tmp_path / "out" / "results_demo.json").read_text())
    assert [r["finished"] for r in report["runs"]] == [True, name == "suite_recipe.yaml", True, True]


# ----------------------------------------------------------------------------- item 13: --only
def test_only_matching_no_run_says_so_and_exits_2(tmp_path, capsys):
    path = _suite_file(tmp_path)
    handlers = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)]
    assert main(["bench", "--suite", str(path), "--only", "K9/*"]) == 2
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)] == handlers  # put back
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--only 'K9/*' matches none of the suite's 4 runs" in err
    assert not (tmp_path / "out").exists()
