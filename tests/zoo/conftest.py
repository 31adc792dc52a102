"""Zoo tests run tiny models: one intra-op thread is faster than two, and far faster on a busy machine
(two OpenMP threads spin-wait whenever one is descheduled)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
