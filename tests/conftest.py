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


# -- the order the test files start in ------------------------------------------------------------
#: The slowest test files, roughly slowest first. `make test` runs whole files per process
#: (pytest-xdist --dist loadfile) in collection order (--no-loadscope-reorder): xdist's own order,
#: most tests first, would start these few-but-long files (tutorial 06, the demos, the browser)
#: last, where one of them keeps one process busy for minutes after the other has run out of files.
#: Longest first, the short files fill in at the end. Files not listed keep their order (the
#: assignments come next), after these; a name that is not (or no longer) here is ignored.
#: Measured alone on 2 cores shared with other jobs: test_notebooks ~870 s (06: ~710 s),
#: test_demo ~230 s, test_chat ~210 s; the others are expected to take a minute or more.
SLOW_FILES_FIRST = (
    "test_notebooks.py",
    "test_demo_llm.py",
    "test_demo.py",
    "test_chat.py",
    "test_assignment_11.py",
    "test_assignment_12.py",
    "test_sandbox.py",
    "test_autograde.py",
    "test_server_fuzz.py",
    "test_jupyterlab.py",
    "test_leaderboard_page.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


# -- one line at the end of the run: what was skipped, why, and what would run it ----------------
#: (cause, pattern of the skip reasons it explains, what enables those tests); first match wins
SKIP_CAUSES = (
    ("run in CI only", r"^only CI", "CI=true make test"),
    ("need bubblewrap", r"bubblewrap|bwrap",
     "make debs as root, or: sudo apt-get install bubblewrap"),
    ("need chromium", r"chromium|playwright|browser",
     "make debs as root, or: sudo apt-get install chromium"),
    ("need PostgreSQL", r"postgres|pg_ctl|initdb",
     "make debs as root, or: sudo apt-get install postgresql"),
    ("need an NVIDIA GPU", r"CUDA|GPU|NVIDIA", "a GPU machine: .ci/gpu-check (README, Development)"),
    ("need a Python other users can run", r"uid 65534",
     "a Python and checkout outside a private home (e.g. /usr/bin/python3.11 -m venv)"),
    ("need root", r"cgroup|root|CAP_MKNOD", "run the tests as root"),
    ("need the model zoo", r"zoo|models build|is not built", "make models"),
)


def skip_summary(reasons: list[str]) -> str:
    """``skipped N: k need X [what enables them]; ...`` for the skip reasons of a run."""
    import re

    if not reasons:
        return "skipped: none"
    counts: dict[tuple[str, str], int] = {}
    for reason in reasons:
        cause = next(((c, fix) for c, pattern, fix in SKIP_CAUSES
                      if re.search(pattern, reason, re.IGNORECASE)),
                     ("for other reasons", "see the SKIPPED lines above"))
        counts[cause] = counts.get(cause, 0) + 1
    parts = [f"{n} {cause} [{fix}]" for (cause, fix), n in
             sorted(counts.items(), key=lambda kv: -kv[1])]
    return f"skipped {len(reasons)}: " + "; ".join(parts)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """After pytest's own summary (the SKIPPED lines), just above its closing line."""
    result = yield
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons.append(text.removeprefix("Skipped: "))
    terminalreporter.write_line(skip_summary(reasons), bold=bool(reasons), yellow=bool(reasons))
    return result
