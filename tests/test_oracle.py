"""The black-box oracle (autograder/oracle.py): a real oracle process on a UNIX socket, reached
from a real notebook in the real bubblewrap sandbox through the bound socket file; queries are
counted outside, the budget is the server's, and the sandbox has neither network nor zoo."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

import maestro
from autograder import load
from autograder.oracle import OracleJob, oracle_spec, private_model_home, private_seed, serve_oracle
from autograder.sandbox import Limits, probe_bwrap, run_notebook
from maestro._home import maestro_home
from maestro.errors import QueryBudgetExceeded
from maestro.remote import RemoteError, connect

BWRAP_OK, BWRAP_WHY = probe_bwrap()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap cannot start: {BWRAP_WHY}")
LIMITS = Limits(wall_seconds=120, memory_bytes=4 * 2**30, cpu_seconds=120, output_bytes=256 * 2**10)
THREAT = {"norm": "linf", "eps": 0.2, "query_budget": 1000}


@pytest.fixture(scope="module")
def oracle():
    with serve_oracle("lenet-mnist", task="mnist-scores", dataset="mnist", access="scores",
                      budget=300, threat=THREAT) as o:
        yield o


@pytest.fixture(scope="module")
def digits():
    return maestro.datasets.load("mnist", split="dev").x[:200]


def test_unix_urls_are_checked_before_anything_is_sent():
    for bad in ("unix://relative/oracle.sock", "unix:///tmp/dir/", "ftp://host", "/tmp/o.sock"):
        with pytest.raises(ValueError, match="unix://|http"):
            connect(bad, "mt_x", "task")
    with pytest.raises(RemoteError, match=r"cannot reach .*\(is the server running"):
        connect("unix:///nonexistent-maestro/oracle.sock", "mt_x", "task")


def test_oracle_counts_and_enforces_the_budget_outside(oracle, digits):
    session = oracle.issue("host-student")
    model = connect(oracle.url, session.token, oracle.task)
    assert model.access == "scores" and model.threat.query_budget == 1000
    assert model.remaining == 300 and session.queries() == 0
    probs = model.predict_proba(digits[:120])
    assert probs.shape == (120, 10) and torch.allclose(probs.sum(1), torch.ones(120), atol=1e-4)
    assert session.queries() == 120 == model.queries
    other = oracle.issue("someone-else")  # budgets are per token
    assert other.queries() == 0
    assert {r["student"]: r["used"] for r in oracle.usage()} == {"host-student": 120}


def test_sockets_must_be_real_sockets_outside_the_sandbox_mounts(tmp_path, oracle):
    nb = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), nb)
    plain = tmp_path / "file.sock"
    plain.write_text("")
    for bad, why in [("oracle.sock", "absolute"), (plain, "not a UNIX socket"),
                     (tmp_path / "missing.sock", "does not exist"),
                     ("/sandbox/work/o.sock", "mounts itself"),
                     (str(oracle.socket_path.parent / ".." / "x.sock"), "absolute path without")]:
        with pytest.raises(ValueError, match=why):
            run_notebook(nb, workdir=tmp_path / "run", sockets=[bad], sandbox="fallback")


PROBE = """
import json, os, socket
import numpy as np, torch
import maestro
from maestro.errors import AccessDenied, QueryBudgetExceeded
seen = {}
s = socket.socket(); s.settimeout(3)
try:
    s.connect(('127.0.0.1', tcp_port)); seen['net'] = 'connected'
except OSError as err:
    seen['net'] = type(err).__name__
seen['zoo_env'] = os.environ.get('MAESTRO_HOME')
for path in (host_zoo, host_zoo + '/models/lenet-mnist/model.safetensors', host_db):
    seen[path] = os.path.exists(path)
try:
    maestro.models.load('lenet-mnist'); seen['load'] = 'loaded'
except Exception as err:
    seen['load'] = type(err).__name__
seen['oracle_dir'] = sorted(os.listdir(os.path.dirname(oracle_url[len('unix://'):])))
x = torch.from_numpy(np.load(inputs['x.npy']))
oracle = maestro.remote.connect(oracle_url, oracle_token, oracle_task)
stale = maestro.remote.connect(oracle_url, oracle_token, oracle_task)  # sees 300 left
seen['proba'] = list(oracle.predict_proba(x[:150]).shape)
seen['remaining'] = oracle.remaining
try:
    oracle.gradient(x[:2], 0); seen['gradient'] = 'allowed'
except AccessDenied as err:
    seen['gradient'] = str(err)
try:
    stale.predict(x[:200]); seen['over'] = 'ran'
except QueryBudgetExceeded as err:
    seen['over'] = str(err)
seen['last'] = oracle.predict(x[100:200]).tolist()
json.dump(seen, open(output_dir + '/seen.json', 'w'))
print('remaining after', oracle.remaining)
"""


@needs_bwrap
@pytest.mark.slow
def test_a_sandboxed_notebook_reaches_the_oracle_only_through_its_socket(tmp_path, oracle, digits):
    session = oracle.issue("sandboxed-student")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    threading.Thread(target=lambda: tcp.accept(), daemon=True).start()
    x = tmp_path / "x.npy"
    np.save(x, digits.numpy())
    nb = new_notebook(cells=[
        new_code_cell("inputs = {}\noutput_dir = '.'", metadata={"tags": ["parameters"]}),
        new_code_cell(PROBE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    zoo = Path(maestro_home()).resolve()
    try:
        result = run_notebook(
            path, workdir=tmp_path / "run", sandbox="bwrap", limits=LIMITS,
            parameters={**session.parameters(), "tcp_port": tcp.getsockname()[1],
                        "host_zoo": str(zoo), "host_db": str(oracle.socket_path.parent / "oracle.db")},
            inputs={"x.npy": x}, outputs=["seen.json"], sockets=[oracle.socket_path],
            maestro_home=None)
    finally:
        tcp.close()
    assert result.status == "ok", result.reason + result.log_tail
    seen = load(result.artifacts["seen.json"])
    # no network, no zoo, no oracle database: only the socket
    assert seen["net"] != "connected"
    assert seen["zoo_env"] is None and seen["load"] == "AssetUnavailable"
    assert not seen[str(zoo)] and not seen[str(oracle.socket_path.parent / "oracle.db")]
    assert seen["oracle_dir"] == ["oracle.sock"]
    # the oracle answered through the socket, at its access level
    assert seen["proba"] == [150, 10] and seen["remaining"] == 150
    assert "needs 'white-box' access" in seen["gradient"]
    # the stale client believed 300 were left: the SERVER refused (429), nothing was run
    assert seen["over"].startswith("server: budget spent: this request needs 200 queries but only "
                                   "150 of your budget of 300"), seen["over"]
    assert "nothing was run" in seen["over"]
    assert len(seen["last"]) == 100
    # counted outside, by the oracle: 150 + 100, the refused request not at all
    assert session.queries() == 250
    reference = maestro.models.load("lenet-mnist").predict(digits[100:200]).tolist()
    assert seen["last"] == reference
    assert "remaining after 50" in json.dumps(json.loads(result.executed_notebook.read_text()))


def test_the_oracle_process_and_its_folder_go_away(digits):
    with serve_oracle("lenet-mnist", task="t", budget=10, threat=THREAT) as o:
        session = o.issue("s")
        model = connect(o.url, session.token, o.task)
        assert model.predict(digits[:10]).shape == (10,)
        with pytest.raises(QueryBudgetExceeded, match="only 0 of the budget of 10"):
            model.predict(digits[:1])
        folder, proc = o.socket_path.parent, o._proc
        assert o.alive() and (folder.stat().st_mode & 0o777) == 0o700
    assert proc.poll() is not None and not folder.exists()


def test_a_bad_model_fails_at_start_with_the_oracle_log(tmp_path):
    with pytest.raises(RuntimeError, match="exited .* before it was ready(.|\n)*not built"), \
            serve_oracle("lenet-mnist", task="t", home=tmp_path / "empty-zoo"):
        pass
    with pytest.raises(ValueError, match="access"):
        with serve_oracle("lenet-mnist", task="t", access="everything"):
            pass


def test_oracle_table_of_grading_toml(tmp_path):
    cfg = tmp_path / "grading.toml"
    cfg.write_text('[assignment]\nid = "x"\n')
    assert oracle_spec(cfg) is None
    cfg.write_text('[oracle]\naccess = "scores"\nqueries_per_example = 1000\n')
    spec = oracle_spec(cfg)
    assert spec.access == "scores" and spec.private_model and spec.budget(500) == 500_000
    job = OracleJob.for_unit(spec, assignment="x", model="lenet-mnist", dataset="mnist",
                             threat={"norm": "linf", "eps": 0.2}, n_inputs=500, secret="s3cret")
    assert (job.task, job.access, job.budget) == ("x", "scores", 500_000)
    assert job.threat == {"norm": "linf", "eps": 0.2, "query_budget": 1000}
    assert job.seed == private_seed("s3cret", "lenet-mnist") and "s3cret" not in repr(job)
    with pytest.raises(ValueError, match="course secret"):
        OracleJob.for_unit(spec, assignment="x", model="lenet-mnist", dataset=None,
                           threat={}, n_inputs=5, secret=None)
    for body, why in [('access = "all"', "access"), ("queries_per_example = 0", "queries_per_example"),
                      ("budget = 5", "unknown key"), ('private_model = "yes"', "private_model")]:
        cfg.write_text(f"[oracle]\n{body}\n")
        with pytest.raises(ValueError, match=why):
            oracle_spec(cfg)


@pytest.mark.slow
def test_the_private_model_differs_from_the_rebuildable_zoo_model(tmp_path):
    """The public zoo build is reproducible by anyone (deterministic training on public data),
    so the grader's oracle serves a build seeded by the course secret instead."""
    assert private_seed("secret-a", "lenet-mnist") != private_seed("secret-b", "lenet-mnist")
    seed = private_seed("maestro-test-course-secret", "lenet-mnist")
    home = private_model_home("lenet-mnist", tmp_path, seed=seed)
    assert str(seed) not in str(home)
    weights = home / "models" / "lenet-mnist" / "model.safetensors"
    public = Path(maestro_home()) / "models" / "lenet-mnist" / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).digest() != hashlib.sha256(public.read_bytes()).digest()
    dev = maestro.datasets.load("mnist", split="dev")
    private = maestro.models.load("lenet-mnist", home=home)
    assert (private.predict(dev.x) == dev.y).float().mean() > 0.9  # as good a model
    assert private_model_home("lenet-mnist", tmp_path, seed=seed) == home  # reused
    assert (os.stat(home).st_mode & 0o777) == 0o700
