"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def lake(tmp_path):
    """An empty lake in a temporary folder."""
    from backend_fab.lake import Lake

    return Lake(tmp_path / "lake")
