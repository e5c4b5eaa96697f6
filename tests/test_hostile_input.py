"""Hostile and careless input, round two (issue 16): every failure one line, nothing lost, no run clobbered.

Every hostile file is generated here, small. Pinned: one run per log folder (a lock, gone with a
killed holder); errors from data-loader workers arrive as the same one line as without workers;
decompression bombs, FIFOs, non-UTF-8 or NUL bytes and absurd labels in list files; invalid run
``config.yaml``; messages that named the wrong cause; suite names that leave ``out:``; destructive
switches in YAML files; ``bench --dry-run`` checking every run; exit status 2 for a full disk.
"""
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import tllib_jtln.data.imagelist as imagelist
from tllib_jtln.cli import main
from tllib_jtln.config import Config
from tllib_jtln.data import BadImageWarning, build_task, read_image_list
from tllib_jtln.data.imagelist import ImageList
from tllib_jtln.engine.logdir import lock_log_dir, release_log_dirs
from tllib_jtln.engine.run import resolve_config
from tllib_jtln.engine.trainer import train
from tllib_jtln.errors import UserError, one_line

from tiny_images import make_tiny_task, tiny_argv, tiny_flags

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit grey PNG of zeros: ``width x height`` pixels in a few hundred bytes per 10^8 pixels."""
    row = b"\x00" + bytes((width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def image_list_root(root: Path, train_lines: list[str], test_lines: list[str] | None = None) -> Path:
    """An ``ImageList`` dataset: two good images per label 0..2, and the given list lines."""
    from PIL import Image

    for split in ("train", "test"):
        for label in range(3):
            for i in range(2):
                path = root / split / f"c{label}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (80 * label, 40 * i, 9)).save(path)
    good = {split: [f"{split}/c{label}/{i}.png {label}" for label in range(3) for i in range(2)]
            for split in ("train", "test")}
    (root / "image_list").mkdir(exist_ok=True)
    (root / "image_list" / "train.txt").write_text("\n".join(good["train"] + train_lines) + "\n")
    (root / "image_list" / "test.txt").write_text("\n".join(good["test"] + (test_lines or [])) + "\n")
    return root


def image_list_cfg(root: Path, **kw) -> Config:
    values = dict(data="ImageList", root=str(root), transforms="small", image_size=16, val_per_class=0, workers=0)
    values.update(kw)
    return Config(**values)


# ----------------------------------------------------------------------------- 1. one run per log folder
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tllib_jtln.engine.logdir import lock_log_dir
    lock_log_dir(Path(sys.argv[1]))
    print("locked", flush=True)
    sys.stdin.read()
""")


def hold_lock(log: Path) -> subprocess.Popen:
    log.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(log)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_on_a_log_folder_is_refused_naming_the_holder_and_a_killed_holder_frees_it(
        data_root, tmp_path, capsys):
    log = tmp_path / "log"
    stopped = train(resolve_config(tiny_flags(data_root, log)), stop_after_epoch=1)
    assert stopped["stopped_after_epoch"] == 1
    before = (log / "checkpoints" / "last.pt").read_bytes()
    holder = hold_lock(log)
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main(["train", *tiny_argv(data_root, log), *extra]) == 2
            line = one_error_line(capsys)
            assert f"--log {log} is in use by another run (pid {holder.pid})" in line, line
        assert (log / "checkpoints" / "last.pt").read_bytes() == before  # nothing clobbered
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock
        holder.wait()
    assert main(["train", *tiny_argv(data_root, log), "--resume"]) == 0
    assert (log / "summary.json").is_file()
    # a reader takes no lock: `test --log` of a folder held by a writer works
    holder = hold_lock(log)
    try:
        assert main(["test", "--log", str(log), "--no-progress"]) == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    lock_log_dir(tmp_path)
    lock_log_dir(tmp_path)  # the same process may take it again (prepare_log_dir does)
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    release_log_dirs()
    holder = hold_lock(tmp_path)  # another process can take it now
    holder.send_signal(signal.SIGKILL)
    holder.wait()


# ----------------------------------------------------------------------------- 2. worker errors, one line
def test_worker_error_is_unwrapped_to_the_single_line_of_workers_0(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    dataset = ImageList([(str(bad), 0)], ["a"], origin="list.txt")
    with pytest.raises(UserError) as direct:
        dataset[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    with pytest.raises(UserError) as wrapped:
        next(iter(loader))
    assert "Original Traceback" in str(wrapped.value)  # PyTorch's wrapping, which the CLI unwraps
    assert one_line(wrapped.value) == str(direct.value)


def test_corrupt_image_with_default_workers_is_one_line_and_skip_counts_it(data_root, tmp_path, capsys):
    import shutil

    target, source = make_tiny_task(data_root)
    copy = tmp_path / "target"
    shutil.copytree(target, copy)
    corrupt = copy / "train" / "tgt_a" / "000.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    argv = [a if a != str(target) else str(copy) for a in tiny_argv(data_root, tmp_path / "log")]
    argv[argv.index("--workers") + 1] = "2"
    argv[argv.index("--val-per-class") + 1] = "3"  # with -K 3: every image is loaded, the corrupt one too
    code = main(["train", *argv])
    assert code == 2
    line = one_error_line(capsys)
    assert line.startswith(f"tllib-jtln: error: {os.path.realpath(corrupt)}: unreadable or corrupt image"), line


def test_skip_bad_images_skips_in_workers_and_the_parent_counts_it(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    dataset = ImageList([(str(good), 0), (str(bad), 1), (str(good), 2)], ["a", "b", "c"],
                        transform=lambda im: torch.zeros(1), skip_bad_images=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        labels = [int(y) for _, y in loader]
    assert sorted(labels) == [0, 2, 2]  # the bad one replaced by the next good one
    assert dataset.bad_images == [str(bad)]


# ----------------------------------------------------------------------------- 3. decompression bombs
def test_decompression_bomb_is_a_bad_image_named_or_skipped(tmp_path):
    bomb = png(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(UserError, match=r"bomb\.png: image too large \(20000 x 20000 pixels; the limit is 268 megapixels"):
        ImageList([(str(bomb), 0)], ["a"])[0]
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    dataset = ImageList([(str(bomb), 0), (str(good), 1)], ["a", "b"], skip_bad_images=True)
    with pytest.warns(BadImageWarning, match="image too large"):
        assert dataset[0][1] == 1
    assert dataset.bad_images == [str(bomb)]


def test_pixel_limit_is_ours_and_below_it_pil_never_warns(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # load_rgb sets PIL's: restore it
    monkeypatch.setattr(imagelist, "MAX_IMAGE_PIXELS", 100 * 100)
    small, over, far_over = (png(tmp_path / f"{n}.png", n, n) for n in (90, 110, 150))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        assert ImageList([(str(small), 0)], ["a"])[0][0].size == (90, 90)
        with pytest.raises(UserError, match=r"image too large \(110 x 110 pixels; the limit"):
            ImageList([(str(over), 0)], ["a"])[0]
        with pytest.raises(UserError, match="image too large"):
            ImageList([(str(far_over), 0)], ["a"])[0]


def test_help_states_the_pixel_limit(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "16384 x 16384 pixels" in " ".join(capsys.readouterr().out.split())


# ----------------------------------------------------------------------------- 4. list files
@pytest.mark.parametrize("line, needle", [
    (b"train/c0/\xff\xfe.png 0", "line 7: byte 0xff at column 10 is not UTF-8"),
    (b"train/c0/0\x00.png 0", "line 7: NUL byte"),
    (b"train/c0/0.png 99999999999999999999999", "line 7: label 99999999999999999999999 out of range"),
])
def test_list_file_bytes_and_labels_are_named_by_line(tmp_path, line, needle):
    root = image_list_root(tmp_path, [])
    train_list = root / "image_list" / "train.txt"
    train_list.write_bytes(train_list.read_bytes() + line + b"\n")
    with pytest.raises(UserError) as info:
        read_image_list(train_list, root)
    assert str(info.value).startswith(f"{train_list} {needle}"), info.value


def test_test_label_beyond_the_training_classes_is_an_error_not_a_silent_drop(tmp_path):
    root = image_list_root(tmp_path, [], test_lines=["test/c0/0.png 7"])
    with pytest.raises(UserError) as info:
        build_task(image_list_cfg(root))
    assert str(info.value).startswith(f"{root / 'image_list' / 'test.txt'} line 7: test label 7 is not one of "
                                      f"the 3 classes"), info.value


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_listed_fifo_or_folder_is_refused_not_waited_on(tmp_path, kind):
    path = tmp_path / "train" / "c0" / "odd.png"
    path.parent.mkdir(parents=True)
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    dataset = ImageList([(str(path), 0)], ["a"])
    with pytest.raises(UserError, match="odd.png: not a regular file"):
        dataset[0]


# ----------------------------------------------------------------------------- 6. run folders' config.yaml
@pytest.mark.parametrize("text", ["epochs: [1,\n", "epochs: !!python/object/apply:os.getcwd []\n"])
def test_invalid_run_config_yaml_is_one_line_naming_it(tmp_path, capsys, text):
    log = tmp_path / "run"
    (log / "checkpoints").mkdir(parents=True)
    (log / "checkpoints" / "last.pt").write_bytes(b"x")
    (log / "config.yaml").write_text(text)
    for argv in (["test", "--log", str(log)], ["train", "--resume", "--log", str(log)]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert f"{log / 'config.yaml'}: not valid YAML" in line, line


# ----------------------------------------------------------------------------- 7. messages that misled
class _Obj:
    pass


def test_checkpoint_with_objects_never_suggests_turning_safety_off(tmp_path):
    from tllib_jtln.engine.checkpoint import load_checkpoint

    objects = tmp_path / "objects.pt"
    torch.save({"model": {}, "extra": _Obj()}, objects)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": {}, "extra": _Obj()}, protocol=4))
    for path in (objects, raw):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PyTorch's "pickle protocol" warning would fail here
            with pytest.raises(UserError) as info:
                load_checkpoint(path)
        text = str(info.value)
        assert "weights_only" not in text and "\n" not in text
        assert "not a checkpoint tllib-jtln wrote" in text, text


def test_cost_file_with_huge_values_names_the_file(tmp_path):
    from tllib_jtln.cost.io import load_cost_file

    path = tmp_path / "cost.npy"
    np.save(path, np.full((4, 3), 1e300))
    with pytest.raises(UserError, match=f"cost file {path}: entries up to 1e\\+300"):
        load_cost_file(path)


def test_k_taking_every_image_is_named_instead_of_val_per_class(tmp_path):
    root = image_list_root(tmp_path, [])
    with pytest.raises(UserError, match=r"^-K/--num-samples-per-class 100000 takes every training image"):
        build_task(image_list_cfg(root, num_samples_per_class=100000, val_per_class=2))


def test_pretrained_file_on_the_embedded_task_names_the_recipe(tmp_path):
    with pytest.raises(UserError, match="the embedded Fashion-MNIST recipe"):
        resolve_config({"pretrained_file": str(tmp_path / "w.pth")})
    with pytest.raises(UserError, match="but --no-pretrained asks"):
        resolve_config({"pretrained_file": "w.pth", "pretrained": False, "data": "CUB200"})
    assert resolve_config({"pretrained_file": "w.pth", "pretrained": True}).pretrained


# ----------------------------------------------------------------------------- 8. suites and recipes
SUITE = """
name: s
out: {out}
seeds: [0]
base: {{epochs: 1}}
methods:
  {row}: {{method: {method}, lr: {lr}}}
"""


def write_suite(tmp_path, row="erm", method="erm", lr="0.01") -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(out=tmp_path / "out", row=row, method=method, lr=lr))
    return path


@pytest.mark.parametrize("row", ["'../escape'", "'a/b'", "'..'", "'x\\\\y'"])
def test_suite_names_are_folder_names(tmp_path, capsys, row):
    assert main(["bench", "--suite", str(write_suite(tmp_path, row=row)), "--dry-run"]) == 2
    assert "must not be empty, '.' or '..', nor contain '/'" in one_error_line(capsys)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("method, lr, needle", [
    ("erm", ".nan", "--lr must be a finite number"),
    ("nosuchmethod", "0.01", "nosuchmethod"),
])
def test_bench_dry_run_checks_every_run_as_train_would(tmp_path, capsys, method, lr, needle):
    assert main(["bench", "--suite", str(write_suite(tmp_path, method=method, lr=lr)), "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert "run default/erm/seed0" in line and needle in line, line


def test_suite_syntax_error_names_the_suite_flag(tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text("seeds: [0\n")
    assert main(["bench", "--suite", str(path), "--dry-run"]) == 2
    assert f"--suite {path}: not valid YAML" in one_error_line(capsys)


@pytest.mark.parametrize("key", ["overwrite", "resume"])
def test_destructive_switches_are_refused_in_yaml_files(tmp_path, capsys, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{key}: true\n")
    assert main(["train", "--config", str(recipe)]) == 2
    assert f"'{key}: true' is refused: --{key} is destructive" in one_error_line(capsys)
    suite = write_suite(tmp_path)
    suite.write_text(suite.read_text().replace("base: {epochs: 1}", f"base: {{epochs: 1, {key}: true}}"))
    assert main(["bench", "--suite", str(suite), "--dry-run"]) == 2
    assert f"--{key} is destructive" in one_error_line(capsys)
    recipe.write_text(f"{key}: false\n")  # a saved config.yaml of older runs says false: harmless
    assert resolve_config({"config": str(recipe)}).overwrite is False


@pytest.mark.parametrize("argv, needle", [
    (["-sr", "7"], "-sr/--sample-rate must be one of TLlib's 100, 50, 30, 15"),
    (["-sr", "50"], "the embedded Fashion-MNIST task has no list files"),
    (["--lr-decay-epochs", "-1"], "--lr-decay-epochs must be epoch numbers >= 1"),
])
def test_rates_without_lists_and_negative_milestones_are_refused(tmp_path, capsys, argv, needle):
    code = main(["train", *argv, "--log", str(tmp_path / "log"), "--epochs", "1", "-i", "1", "--no-progress"])
    assert code == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "log" / "checkpoints").exists()
