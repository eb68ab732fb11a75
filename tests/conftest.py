"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep the suite fast and reproducible on 2-core CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture
def test_data() -> Path:
    """Folder of the project's own test data (official-implementation fixtures, ...)."""
    return TEST_DATA
