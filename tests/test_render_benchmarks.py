"""The speed-table renderer turns pytest-benchmark JSON into grouped markdown rows."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "render_benchmarks.py"
spec = importlib.util.spec_from_file_location("render_benchmarks", SCRIPT)
render_benchmarks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_benchmarks)


def test_render_groups_sorts_and_reports_extra_info():
    report = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "system": "Linux", "machine": "x86_64",
                         "python_version": "3.11"},
        "datetime": "2026-11-28T15:00:00",
        "benchmarks": [
            {"name": "slow", "group": "ot", "stats": {"median": 0.5, "stddev": 0.01, "rounds": 3}, "extra_info": {}},
            {"name": "fast", "group": "ot", "stats": {"median": 0.002, "stddev": 0.0001, "rounds": 50},
             "extra_info": {"speedup": 12.345}},
        ],
    }
    text = render_benchmarks.render(report)
    assert "Test CPU, 2 logical cores" in text and "2026-11-28" in text
    fast, slow = text.index("| fast |"), text.index("| slow |")
    assert fast < slow
    assert "| fast | 2.00 | 0.10 | 50 | speedup=12.3 |" in text
