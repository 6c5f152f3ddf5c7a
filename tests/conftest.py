"""Shared test helpers: where ../shared is, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(relative: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is not there."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data/fixtures folder sits beside the project checkout)")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
