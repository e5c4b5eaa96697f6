"""Hostile and careless input, round three (issue 26): one test per mechanism, each failing before it.

Pinned: nothing is written through a symlink in a run folder; the user's files are never deleted,
replaced or appended; every stopped run can be continued (a missing test pass, a kill during the
first checkpoint); a safe but malformed checkpoint is one line naming it; text files are bounded
(depth, aliases, digits, declared shapes); text that is not UTF-8 (or not printable in the
terminal's encoding) is no traceback; ImageFolder labels follow class names and every folder is
listed once; error messages name the way forward; a newcomer's first-hour stumbles.
"""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tllib_jtln.cli import main
from tllib_jtln.config import Config
from tllib_jtln.engine.run import resolve_config
from tllib_jtln.engine.trainer import train
from tllib_jtln.errors import UserError

from tiny_images import tiny_argv, tiny_flags

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stopped(data_root, tmp_path_factory):
    """Run folders of a jtln and an erm run of 2 epochs, stopped after epoch 1 (copy before changing)."""
    runs = {}
    for method in ("jtln", "erm"):
        log = tmp_path_factory.mktemp("stopped") / method
        train(resolve_config(tiny_flags(data_root, log, method=method)), stop_after_epoch=1)
        runs[method] = log
    return runs


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target, symlinks=True)
    return target


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def resume(log: Path, *extra: str) -> int:
    return main(["train", "--resume", "--log", str(log), "--no-progress", *extra])


# ----------------------------------------------------------------------------- 1. symlinks in a run folder
def test_nothing_is_written_through_a_symlink_or_special_file_in_a_run_folder(stopped, tmp_path, capsys):
    from tllib_jtln.engine.logdir import prepare_log_dir, release_log_dirs

    victim = tmp_path / "important.txt"
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    planted = {".lock": victim, "config.yaml": victim, "metrics.jsonl": victim, "env.json": victim,
               f"checkpoints/last.pt.{os.getpid()}.tmp": victim, "checkpoints": victim_dir}
    for index, (name, target) in enumerate(planted.items()):
        victim.write_text("mine\n")
        log = copy_run(stopped["jtln"], tmp_path, f"run{index}")
        place = log / name
        if place.is_dir():
            shutil.rmtree(place)
        place.unlink(missing_ok=True)
        place.symlink_to(target)
        assert resume(log) == 2, name
        line = one_error_line(capsys)
        assert str(place) in line and "symlink" in line, line
        assert victim.read_text() == "mine\n" and not any(victim_dir.iterdir()), name
    fifo = copy_run(stopped["jtln"], tmp_path, "fifo") / "metrics.jsonl"
    fifo.unlink()
    os.mkfifo(fifo)
    assert resume(fifo.parent) == 2  # never waits for a reader of the FIFO
    assert "a FIFO" in one_error_line(capsys)
    # a --log that is itself a symlink is resolved once: the run writes into the real folder
    link = tmp_path / "link"
    link.symlink_to(copy_run(stopped["jtln"], tmp_path, "real"))
    try:
        assert prepare_log_dir(link, overwrite=False, resume=True) == tmp_path / "real"
    finally:
        release_log_dirs()


# ----------------------------------------------------------------------------- 5. the user's files
def test_the_users_files_are_never_deleted_replaced_or_appended(data_root, stopped, tmp_path, capsys):
    import tllib_jtln.data.fashion_mnist as fmnist

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "notes.txt"):
        (theirs / name).write_text(f"my {name}\n")
    for extra in ([], ["--overwrite"]):
        assert main(["train", *tiny_argv(data_root, theirs), *extra]) == 2
        line = one_error_line(capsys)
        assert "config.yaml, metrics.jsonl" in line and "marker" in line, line
    assert sorted(p.name for p in theirs.iterdir()) == ["config.yaml", "metrics.jsonl", "notes.txt"]
    assert all((theirs / n).read_text() == f"my {n}\n" for n in ("config.yaml", "metrics.jsonl", "notes.txt"))

    log = copy_run(stopped["erm"], tmp_path)
    (log / "checkpoints" / "mine.txt").write_text("mine\n")
    assert main(["train", *tiny_argv(data_root, log, method="erm", epochs=1), "--overwrite"]) == 0
    said = capsys.readouterr().out
    assert "--overwrite: removed config.yaml" in said and "checkpoints/last.pt" in said, said
    assert (log / "checkpoints" / "mine.txt").read_text() == "mine\n"

    raw = tmp_path / "R" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    own = raw / "train-labels-idx1-ubyte.gz"
    own.write_bytes(b"my own copy")
    if not fmnist.has_files(fmnist.DEBIAN_DIR):
        pytest.skip("Debian's Fashion-MNIST files are not installed")
    assert main(["data", "prepare", "fashion-mnist", "--root", str(tmp_path / "R")]) == 0
    assert not own.is_symlink() and own.read_bytes() == b"my own copy"


# ----------------------------------------------------------------------------- 3. every stopped run continues
def test_a_run_stopped_after_its_last_epoch_resumes_into_its_test_pass(stopped, tmp_path, capsys):
    log = copy_run(stopped["erm"], tmp_path)
    assert resume(log) == 0  # epoch 2 and the test pass
    (log / "summary.json").unlink()  # as if killed during the test pass
    assert resume(log) == 0
    assert "every epoch is done; running the test pass" in capsys.readouterr().out
    assert (log / "summary.json").is_file()


def test_a_run_killed_in_its_first_checkpoint_writes_starts_again_and_resume_says_so(data_root, stopped, tmp_path,
                                                                                     capsys):
    log = copy_run(stopped["erm"], tmp_path)
    (log / "checkpoints" / "last.pt").unlink()  # best.pt was written, last.pt was not
    (log / "checkpoints" / "last.pt.tmp").write_bytes(b"cut short")
    assert resume(log) == 2
    assert "without --resume to start it again" in one_error_line(capsys)
    assert main(["train", *tiny_argv(data_root, log, method="erm", epochs=1)]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "checkpoints/last.pt.tmp" in out, out
    assert (log / "summary.json").is_file()


# ----------------------------------------------------------------------------- 7. malformed checkpoints
def _edit_last(log: Path, edit) -> None:
    path = log / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def _numpy_rng_of_three_keys(ckpt):
    ckpt["rng"]["numpy"]["keys"] = torch.zeros(3, dtype=torch.int64)


@pytest.mark.parametrize("case, needle", [
    ("best over last", "not the last.pt of a run"),
    ("another method's", "written by a 'jtln' run"),
    ("epoch -5", "out of range"),
    ("bad rng", "counters or RNG state"),
])
def test_a_safe_but_malformed_last_checkpoint_is_one_line_naming_it(stopped, tmp_path, capsys, case, needle):
    log = copy_run(stopped["erm"], tmp_path)
    last = log / "checkpoints" / "last.pt"
    if case == "best over last":
        shutil.copyfile(log / "checkpoints" / "best.pt", last)
    elif case == "another method's":
        shutil.copyfile(stopped["jtln"] / "checkpoints" / "last.pt", last)
    elif case == "epoch -5":
        _edit_last(log, lambda ckpt: ckpt.update(epoch=-5))
    else:
        _edit_last(log, _numpy_rng_of_three_keys)
    assert resume(log) == 2
    line = one_error_line(capsys)
    assert str(last) in line and needle in line, line


# ----------------------------------------------------------------------------- 8. resource bombs
def _alias_bomb(levels: int = 6) -> str:
    """``lr_decay_epochs`` whose last element expands to 10^levels integers through YAML aliases."""
    parts = ["&l0 [" + ", ".join(["1"] * 10) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "lr_decay_epochs: [" + ", ".join(parts) + "]\n"


def _npy_declaring(path: Path, shape: tuple) -> Path:
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 64)
    return path


def test_resource_bombs_in_text_files_are_refused_in_one_line(stopped, tmp_path, capsys):
    from tllib_jtln.cost import load_cost_file
    from tllib_jtln.cost.embeddings import load_embeddings

    deep = "[" * 50000
    digits = "1" * 401
    for name, text in (("deep.yaml", f"lr_decay_epochs: {deep}\n"), ("laughs.yaml", _alias_bomb()),
                       ("digits.yaml", f"lr: {digits}\n")):
        path = tmp_path / name
        path.write_text(text)
        assert main(["train", "--config", str(path)]) == 2, name
        line = one_error_line(capsys)
        assert str(path) in line and len(line) < 400, line
    log = copy_run(stopped["erm"], tmp_path)
    (log / "config.yaml").write_text(f"epochs: {deep}\n")
    assert main(["test", "--log", str(log)]) == 2
    assert "nested deeper than" in one_error_line(capsys)

    library = []
    for name, text in (("deep.json", deep), ("digits.json", '{"Dress": [' + digits + "]}")):
        (tmp_path / name).write_text(text)
        library.append((load_embeddings, tmp_path / name))
    matrix = tmp_path / "cost.npy"
    np.save(matrix, np.ones((2, 2)))
    (tmp_path / "cost.json").write_text(deep)
    library.append((load_cost_file, matrix))
    library.append((load_cost_file, _npy_declaring(tmp_path / "huge.npy", (10 ** 9, 10 ** 9))))
    for reader, path in library:
        with pytest.raises(UserError) as info:
            reader(path)
        text = str(info.value)
        assert "\n" not in text and path.stem in text and len(text) < 400, text


# ----------------------------------------------------------------------------- 10. encodings
def test_text_that_is_not_utf8_or_not_printable_is_no_traceback(data_root, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "list"
    (root / "image_list").mkdir(parents=True)
    for label in range(2):
        Image.new("RGB", (8, 8)).save(root / f"{label}.png")
    (root / "image_list" / "train.txt").write_text("0.png 0\n1.png 1\n")
    (root / "image_list" / "test.txt").write_text("0.png 0\n1.png 1\n")
    (root / "image_list" / "classes.txt").write_bytes(b"caf\xe9\nbar\n")  # Latin-1, not UTF-8
    assert main(["data", "prepare", "ImageList", "--root", str(root)]) == 2
    assert "classes.txt line 1: byte 0xe9" in one_error_line(capsys)

    log = tmp_path / "журнал"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-m", "tllib_jtln", "train", *tiny_argv(data_root, log, epochs=1)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (log / "summary.json").is_file()


# ----------------------------------------------------------------------------- 12. ImageFolder by name
def test_image_folder_labels_follow_class_names_and_every_folder_is_listed_once(tmp_path):
    from PIL import Image

    from tllib_jtln.data import DATASETS

    root = tmp_path / "folders"
    for split, names in (("train", ("a", "b", "c")), ("test", ("a", "c"))):
        for name in names:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / name / "0.png")
    builder = DATASETS.get("ImageFolder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test = builder(str(root), "test")
    assert test.classes == ["a", "b", "c"] and sorted(test.targets) == [0, 2]  # c is label 2, as in training
    assert [str(w.message) for w in caught if "no test images for training classes b;" in str(w.message)]
    (root / "test" / "z").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "z" / "0.png")
    with pytest.raises(UserError, match="class folder 'z' is not one of the 3 training classes"):
        builder(str(root), "test")
    (root / "train" / "a" / "loop").symlink_to(root / "train")
    with pytest.raises(UserError, match="reached a second time through a symlink"):
        builder(str(root), "train")


# ----------------------------------------------------------------------------- 13. the way forward
def test_error_messages_say_resume_only_when_there_is_something_to_resume(data_root, stopped, tmp_path,
                                                                          monkeypatch, capsys):
    import errno

    import tllib_jtln.engine.checkpoint as checkpoint
    from tllib_jtln.engine.epoch import non_finite
    from tllib_jtln.engine.distributed import env_info

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["data", "prepare", "fashion-mnist", "--root", str(blocker / "R")]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "--resume" not in line, line

    def full(state, handle):
        raise OSError(errno.ENOSPC, "No space left on device", str(handle.name))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    fresh = tmp_path / "fresh"
    assert main(["train", *tiny_argv(data_root, fresh, method="erm")]) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "no checkpoint was saved" in line and "--resume" not in line
    log = copy_run(stopped["erm"], tmp_path)
    assert resume(log) == 2
    assert f"continue with --resume --log {log}" in one_error_line(capsys)

    with pytest.raises(UserError, match="--ot-eps"):
        non_finite(Config(), env_info(), {"ce_target": torch.tensor(1.0), "ot": torch.tensor(float("nan"))},
                   torch.tensor(float("nan")), 0, 3)


# ----------------------------------------------------------------------------- 15. the first hour
def test_first_hour_stumbles_end_in_one_line_or_quietly(data_root, tmp_path, capsys, monkeypatch):
    from tllib_jtln.engine.reporter import ProgressBar

    assert main(["train", *tiny_argv(data_root, tmp_path / "a", arch="alexnet", image_size=32)]) == 2
    line = one_error_line(capsys)
    assert "-a alexnet cannot take --image-size 32" in line and "smallest it takes is 63" in line, line

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tllib_jtln", "list", "archs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head` that read nothing: the listing meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err

    assert ProgressBar(True, True, 5, "epoch 1/1", 1).bar is None  # stderr is captured, not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = ProgressBar(True, True, 5, "epoch 1/1", 1)
    assert bar.bar is not None
    bar.close()
