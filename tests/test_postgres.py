"""The storage layers on a real PostgreSQL server that the tests start themselves (tests/_pg.py):
the model server's tokens and budgets (one database behind several server processes) and the
nbgrader gradebook (``maestro course init --db-url``, nbgrader itself, the driver's grades).
Where PostgreSQL cannot start they are skipped with the reason; under CI as root they fail."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serve import wait_until_serving
from _pg import postgres_or_skip

import maestro
from maestro.server.db import Store
from maestro.server.local import free_port

BIN = Path(sys.executable).parent
A = "01-whitebox"

SERVER_TOML = """
[server]
database = "{url}"
rate_limit = 0

[tasks.digits-labels]
model = "cnn-digits"
dataset = "digits"
access = "labels"
budget = 50
"""


@pytest.fixture(scope="module")
def pg():
    with postgres_or_skip() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def digits():
    return maestro.datasets.load("digits", split="test").x[:64].numpy()


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- the model server's store ---------------------------------------------------------------
def test_tokens_and_usage_on_postgres(pg, tmp_path):
    url = pg.create_database("tokens")
    plain = url.replace("postgresql+psycopg://", "postgresql://")  # the driver is filled in
    store = Store(plain)
    try:
        assert store.engine.dialect.name == "postgresql" and store.engine.dialect.driver == "psycopg"
        alice = store.create_token("alice")
        prof = store.create_token("prof", role="instructor")
        (tmp_path / "students.csv").write_text("id,name\nbob,Bob\ncarol,Carol\nbob,Bob again\n")
        imported = store.import_students(tmp_path / "students.csv")
        assert sorted(imported) == ["bob", "carol"]
        listed = store.list_tokens()
        assert [t["student"] for t in listed] == ["alice", "prof", "bob", "carol"]
        assert all(not t["revoked"] and len(t["hash_prefix"]) == 12 for t in listed)
        assert alice not in str(listed)  # only hashes are stored
        assert store.authenticate(prof).is_instructor and store.authenticate("mt_nope") is None
        who = store.authenticate(alice)
        assert store.reserve(who.token_id, "t", 30, 50) and not store.reserve(who.token_id, "t", 21, 50)
        store.refund(who.token_id, "t", 10)
        assert store.reserve(who.token_id, "t", 30, 50) and store.used(who.token_id, "t") == 50
        assert store.usage_table() == [{"student": "alice", "role": "student", "task": "t",
                                        "used": 50, "requests": 2}]
        assert store.revoke("alice") == 1 and store.revoke("alice") == 0
        assert store.authenticate(alice) is None
        assert store.revoke(str(listed[1]["id"])) == 1 and store.authenticate(prof) is None
        with pytest.raises(ValueError, match="non-empty"):
            store.create_token("  ")
    finally:
        store.close()


def test_stores_opening_a_fresh_database_together(pg):
    """Server processes starting at once on an empty database all create the tables safely."""
    url = pg.create_database("fresh")
    barrier, errors, stores = threading.Barrier(8), [], []

    def open_store():
        barrier.wait()
        try:
            stores.append(Store(url))
        except Exception as err:  # collected, shown by the assert below
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        token = stores[0].create_token("x")
        assert all(s.authenticate(token).student == "x" for s in stores)
    finally:
        for s in stores:
            s.close()


def test_budget_exact_across_two_stores(pg):
    """200 concurrent reservations of 1 against a budget of 50, split over two engines."""
    url = pg.create_database("reserve")
    a, b = Store(url), Store(url)
    try:
        who = a.authenticate(a.create_token("racer"))
        barrier = threading.Barrier(64)

        def one(i):
            if i < 64:
                barrier.wait()
            return (a if i % 2 else b).reserve(who.token_id, "t", 1, 50)

        with ThreadPoolExecutor(64) as pool:
            granted = list(pool.map(one, range(200)))
        assert granted.count(True) == 50 and a.used(who.token_id, "t") == b.used(who.token_id, "t") == 50
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_budget_exact_across_server_processes_on_one_database(pg, course_server, tmp_path, digits):
    """`maestro serve --workers 2` (starting on an empty database) and an in-process server, all
    on one PostgreSQL database: 200 concurrent one-input predicts, budget 50 → exactly 50."""
    config = SERVER_TOML.format(url=pg.create_database("server"))
    course = tmp_path / "course"
    course.mkdir()
    (course / "server.toml").write_text(config)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "maestro", "serve", str(course), "--port", str(port), "--workers", "2",
         "--log-level", "warning"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        other = f"http://127.0.0.1:{port}"
        wait_until_serving(other, proc, tmp_path / "serve.log")
        url, app, _ = course_server(config)
        store = app.state.store
        token = store.create_token("two-processes")
        barrier = threading.Barrier(200)

        def one(i):
            barrier.wait()
            base = other if i % 2 else url
            return httpx.post(base + "/v1/tasks/digits-labels/predict", timeout=60, headers=_auth(token),
                              json={"inputs": digits[i % 64: i % 64 + 1].tolist()})

        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(one, range(200)))
        codes = [r.status_code for r in answers]
        assert codes.count(200) == 50 and codes.count(429) == 150, sorted(set(codes))
        assert all("budget spent" in r.json()["detail"] for r in answers if r.status_code == 429)
        assert store.used(store.authenticate(token).token_id, "digits-labels") == 50
        assert "Traceback" not in (tmp_path / "serve.log").read_text(errors="replace")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_server_on_postgres_answers_a_budgeted_predict(pg, course_server, digits):
    url, app, _ = course_server(SERVER_TOML.format(url=pg.create_database("predict")))
    assert app.state.store.engine.dialect.name == "postgresql"
    token = app.state.store.create_token("dora")
    with maestro.remote.connect(url, token, "digits-labels") as oracle:
        labels = oracle.predict(digits[:40])
        assert labels.shape == (40,) and oracle.remaining == 10
        local = maestro.models.load("cnn-digits").predict(digits[:40])
        assert np.array_equal(np.asarray(labels), np.asarray(local))
        with pytest.raises(maestro.errors.QueryBudgetExceeded, match="only 10"):
            oracle.predict(digits[:11])
        oracle.predict(digits[:10])
        assert oracle.remaining == 0
    usage = app.state.store.usage_table()
    assert usage == [{"student": "dora", "role": "student", "task": "digits-labels", "used": 50, "requests": 2}]


# -- the nbgrader gradebook -------------------------------------------------------------------
def test_db_url_is_what_nbgrader_config_says(tmp_path, monkeypatch):
    from autograder.course import check_db_url, db_url

    assert db_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'gradebook.db'}"  # nbgrader's default
    cfg = tmp_path / "nbgrader_config.py"
    cfg.write_text("c = get_config()\nc.CourseDirectory.root = 'sub'\n")
    assert db_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'sub' / 'gradebook.db'}"
    cfg.write_text("import os\nc = get_config()\nc.CourseDirectory.db_url = os.environ['GB_URL']\n")
    monkeypatch.setenv("GB_URL", "postgresql+psycopg://grader@db.example/gb")
    assert db_url(tmp_path) == "postgresql+psycopg://grader@db.example/gb"
    monkeypatch.delenv("GB_URL")
    with pytest.raises(ValueError, match="nbgrader_config.py: cannot be read: KeyError"):
        db_url(tmp_path)
    assert check_db_url("postgres://u:pw@h/gb") == "postgresql+psycopg://u:pw@h/gb"
    with pytest.raises(ValueError, match="absolute SQLite path"):
        check_db_url("sqlite:///gradebook.db")
    with pytest.raises(ValueError, match="not a database URL"):
        check_db_url("gradebook")


def test_unreachable_gradebook_leaves_no_course_behind(tmp_path):
    from sqlalchemy.exc import OperationalError

    from autograder.course import init_course

    port = free_port()  # nothing listens there
    with pytest.raises(OperationalError):
        init_course(tmp_path / "c", db_url=f"postgresql://nobody@127.0.0.1:{port}/gb?connect_timeout=5")
    assert not (tmp_path / "c" / "nbgrader_config.py").exists()
    assert not (tmp_path / "c" / "maestro.toml").exists()


@pytest.fixture(scope="module")
def pg_course(pg, tmp_path_factory):
    """A course whose gradebook is on PostgreSQL, its assignment generated by nbgrader itself."""
    from autograder.course import init_course

    url = pg.create_database("gradebook")
    password_url = url.replace("postgres@", "postgres:s3cret@")  # trust auth ignores it
    course = tmp_path_factory.mktemp("pgcourse") / "pg-course"
    info = init_course(course, db_url=password_url)
    assert info["gradebook"] == url.replace("postgres@", "postgres:***@")  # not printed in clear
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", A], cwd=course, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return course


def test_gradebook_on_postgres_shared_by_nbgrader_and_the_driver(pg_course):
    import psycopg

    from autograder.config import load_config
    from autograder.course import db_url, gradebook
    from autograder.driver import _graded_cells, _record

    assert db_url(pg_course).startswith("postgresql+psycopg://")
    assert not (pg_course / "gradebook.db").exists()  # nothing went to SQLite
    cfg = load_config(pg_course / "source" / A / "grading.toml")
    when = dt.datetime(2026, 11, 25, 12, 0)
    with gradebook(pg_course) as gb:
        assert A in [a.name for a in gb.assignments]
        cells = _graded_cells(gb, A)  # written by `nbgrader generate_assignment`, read here
        assert cells > 0
        points = sum(c.max_score for nb in gb.find_assignment(A).notebooks for c in nb.grade_cells)
        total = _record(gb, A, "alice", cfg.max_score / 2, cfg.max_score, when)
        assert total == pytest.approx(points / 2, abs=1e-3)
        _record(gb, A, "alice", cfg.max_score, cfg.max_score, when)  # a regrade: same submission
    with gradebook(pg_course) as gb:
        subs = {s.student_id: s for s in gb.assignment_submissions(A)}
        assert list(subs) == ["alice"] and subs["alice"].score == pytest.approx(points, abs=1e-3)
    # straight from PostgreSQL, not through nbgrader
    dsn = db_url(pg_course).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT s.id, g.auto_score FROM grade g JOIN submitted_notebook n ON "
                            "g.notebook_id = n.id JOIN submitted_assignment a ON n.assignment_id = a.id "
                            "JOIN student s ON a.student_id = s.id").fetchall()
    assert {r[0] for r in rows} == {"alice"} and sum(r[1] for r in rows) == pytest.approx(points, abs=1e-3)


@pytest.mark.slow
def test_autograde_records_on_postgres(pg_course):
    """`maestro autograde` end to end (sandboxed run, hidden-set scoring) into the PG gradebook."""
    import shutil

    from maestro._home import maestro_home

    from autograder.course import gradebook
    from autograder.driver import autograde
    from autograder.sandbox import probe_bwrap

    if not probe_bwrap()[0]:
        pytest.skip("bubblewrap cannot run here")
    if not (Path(maestro_home()) / "models" / "lenet-mnist").exists():
        pytest.skip("lenet-mnist is not built (maestro models build lenet-mnist)")
    nb = f"{A}.ipynb"
    (pg_course / "submitted" / "ref" / A).mkdir(parents=True)
    shutil.copy(pg_course / "source" / A / nb, pg_course / "submitted" / "ref" / A / nb)
    [outcome] = autograde(pg_course, A, student="ref", progress=False, timeout=150)
    assert outcome.state == "graded" and outcome.score > 0, outcome
    with gradebook(pg_course) as gb:
        sub = gb.find_submission(A, "ref")
        assert sub.score == pytest.approx(sub.max_score * outcome.score / outcome.max_score, abs=1e-3)
