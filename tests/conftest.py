"""Shared fixtures."""

from __future__ import annotations

import pytest

from maestro.models.train import num_threads


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread: tiny models (LSTMs, small MLPs) run many times
    faster on one thread than on two busy cores. The previous setting comes back afterwards."""
    with num_threads(1):
        yield
