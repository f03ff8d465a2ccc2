"""Shared fixtures."""

from __future__ import annotations

import contextlib

import pytest

from maestro.models.train import num_threads


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread: tiny models (LSTMs, small MLPs) run many times
    faster on one thread than on two busy cores. The previous setting comes back afterwards."""
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def course_server(tmp_path_factory):
    """``start(config) -> (url, app, course)``: a real server on loopback for a fresh course folder
    whose ``server.toml`` is ``config``; stopped, and its store closed, after the module."""
    from maestro.server import ServerConfig, create_app
    from maestro.server.local import background_server

    with contextlib.ExitStack() as stack:

        def start(config: str):
            course = tmp_path_factory.mktemp("course")
            (course / "server.toml").write_text(config)
            app = create_app(ServerConfig.load(course))
            stack.callback(app.state.store.close)  # runs after the server below has stopped
            url = stack.enter_context(background_server(app))
            return url, app, course

        yield start
