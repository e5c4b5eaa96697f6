"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import pytest

from tiny_images import make_tiny_task


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A fresh tiny transfer task on disk (see ``tiny_images.make_tiny_task``), one per test module.

    Module scope, not session: a module may touch the images (``test_engine_e2e`` bumps their mtimes to
    make a feature store stale), so no module sees another's changes.
    """
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_task(root)
    return root
