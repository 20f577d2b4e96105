"""Paths the tests use: the checkout (for launch scripts) and the published data in ../shared, read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SCALING = REPO_ROOT.parent / "shared" / "data" / "scaling"


def shared_scaling_file(name: str) -> Path:
    """A published data file of ../shared/data/scaling; its absence fails the test (never a skip)."""
    path = SHARED_SCALING / name
    if not path.is_file():
        pytest.fail(f"published scaling data missing: {path} (the checkout's ../shared folder is required)")
    return path
