"""The speed scripts: gpu_smoke.sh parses, profile_run.py sums named functions of a profile."""
import cProfile
import importlib.util
import pstats
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_smoke_script_parses():
    out = subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_smoke.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_profile_run_sums_cumulative_times_of_named_functions_and_timed_calls():
    profile_run = _load("profile_run")

    def inner():
        return sum(range(20000))

    def outer():
        return inner() + inner()

    profiler = cProfile.Profile()
    profiler.runcall(outer)
    stats = pstats.Stats(profiler)
    here = "tests/test_speed_scripts.py"
    both = profile_run.cumulative(stats, [(here, "outer")])
    assert both is not None and both >= profile_run.cumulative(stats, [(here, "inner")]) > 0
    assert profile_run.cumulative(stats, [(here, "nowhere")]) is None
    calls = []
    assert profile_run.timed(calls, inner)() == sum(range(20000))
    assert len(calls) == 1 and calls[0][0] >= 0 and calls[0][1] == 0  # (seconds, images): an int has no .count
    text = profile_run.table("phase", [("a", 0.5), ("b", None)], whole=1.0, unit=2)
    assert "| a | 250.0 | 50% |" in text and "| b | n/a | |" in text and "| **total** | 500.0 | 100% |" in text
