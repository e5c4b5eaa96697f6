"""Every recipe and suite shipped in configs/ parses against the current Config (no stale keys)."""
from pathlib import Path

import pytest

from tllib_jtln.bench.suite import expand_runs, load_suite
from tllib_jtln.config import Config, load_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_keys_and_values_are_valid(path):
    Config().update(load_yaml(path), str(path)).validate()


@pytest.mark.parametrize("path", sorted((CONFIGS / "suite").glob("*.yaml")), ids=lambda p: p.name)
def test_suite_files_are_valid(path):
    suite = load_suite(path)
    runs = expand_runs(suite)
    splits = len(suite.get("splits") or [None])
    assert len(runs) == len(suite["settings"]) * len(suite["methods"]) * splits * len(suite["seeds"])
    assert len(suite["seeds"]) >= 3
