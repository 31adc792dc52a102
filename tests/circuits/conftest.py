"""Shared small subjects for the circuit tests (built once per session)."""

from __future__ import annotations

import pytest

import workbench as wb
from tests.circuits.helpers import entity_pairs, world_llama
from tests.conftest import track


@pytest.fixture(scope="session")
def subj():
    return track(wb.load(world_llama(0), name="world-llama"))


@pytest.fixture(scope="session")
def pairs():
    """8 clean 3-object episodes and 8 fresh episodes of the same length as corruptions."""
    return entity_pairs(8, 3)
