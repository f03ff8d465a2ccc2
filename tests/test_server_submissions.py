"""Submissions to the model server: a real course folder (``maestro course init`` with the repo's
assignments), a real uvicorn on 127.0.0.1 with SQLite, the real lenet-mnist and hidden MNIST
split, and real attacks (maestro.attacks.PGD / FGSM) on the inputs the server hands out.

01-whitebox asks for three arrays (x_adv.npy: L∞ 0.2; x_adv_l2.npy: L2 2.5; x_adv_targeted.npy:
targeted, toward the grader's target classes, which the inputs endpoint hands out too); an upload
gives any of them at once (``{"artifacts": {file: {"npy_b64": ...}}}``) or the first alone
(``{"artifact": ...}``, the older body).

Uploads are graded in the background by the autograder's trusted scorer; checked here: the
grades and their reasons (a good PGD with a targeted PGD toward the served targets, an x_adv
over eps, one with a NaN row, an L2 artifact over its own eps, artifacts not uploaded), what a student
may see before the deadline (public parts only) against what an instructor sees, ownership
(another student's submission is a 404), tokens (401 before the body is read), refused
uploads (422, nothing stored), the daily limit (429), the JSON leaderboard (merged with the
notebook grades of ``maestro autograde``), and that submissions left behind by a crashed
server process are graded by the next one.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from _serve import wait_until_serving
import torch

import maestro
from autograder.config import load_config
from autograder.course import init_course, read_secret
from autograder.leaderboard import append_history, pseudonym
from autograder.scoring import HiddenData, public_mask, score_submission
from maestro.server.db import Store, Submissions
from maestro.server.submissions import entry_for

ROOT = Path(__file__).resolve().parents[1]
A = "01-whitebox"
pytestmark = pytest.mark.slow  # PGD on 500 images and ~15 gradings: ≈ 30 s on 2 busy cores

CONFIG = """
[server]
database = "server.db"
rate_limit = 0
max_body_bytes = 100_000       # small: an upload (≈ 2 MB of base64) has its own limit

[submissions]
course = "{course}"
assignments = ["{a}"]
max_per_day = 4
pseudonyms = false
"""


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _npy_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def _upload(http, token: str, arr: np.ndarray):
    """The older body: the first artifact (x_adv.npy) alone."""
    return http.post(f"/v1/assignments/{A}/submissions", json={"artifact": {"npy_b64": _npy_b64(arr)}},
                     headers=_auth(token))


def _upload_all(http, token: str, arrays: dict):
    """Several artifacts at once: {file name or key: array}."""
    body = {"artifacts": {name: {"npy_b64": _npy_b64(arr)} for name, arr in arrays.items()}}
    return http.post(f"/v1/assignments/{A}/submissions", json=body, headers=_auth(token))


def _part(result: dict, term: str, label: str = "public") -> dict:
    (found,) = [p for p in result["parts"] if p["name"] == f"{label}: {term}"]
    return found


def _wait(http, token: str, sid: str, timeout: float = 120.0) -> dict:
    """Poll until the submission is graded or failed (the timeout only bounds a hung grader)."""
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/v1/submissions/{sid}", headers=_auth(token))
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("graded", "failed"):
            return r.json()
        assert time.monotonic() < deadline, f"submission {sid} still {r.json()['status']}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    path = tmp_path_factory.mktemp("course") / "aml-course"
    init_course(path, ROOT / "assignments")
    return path


@pytest.fixture(scope="module")
def server(course_server, course):
    url, app, folder = course_server(CONFIG.format(course=course, a=A))
    store = app.state.store
    tokens = {s: store.create_token(s) for s in ("alice", "bob", "carol", "dave")}
    tokens["prof"] = store.create_token("prof", role="instructor")
    return argparse.Namespace(url=url, app=app, store=store, folder=folder, tokens=tokens)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def task(server, http, course, one_torch_thread):
    """The inputs and targets from the server, the model, and real attacks on them (as a
    student would make them: from the threat models of GET /v1/assignments/{id})."""
    h = _auth(server.tokens["alice"])
    info = http.get(f"/v1/assignments/{A}", headers=h).json()
    r = http.get(f"/v1/assignments/{A}/inputs", headers=h).json()
    x = np.load(io.BytesIO(base64.b64decode(r["inputs"]["npy_b64"])), allow_pickle=False)
    targets = np.load(io.BytesIO(base64.b64decode(r["targets"]["npy_b64"])), allow_pickle=False)
    model = maestro.models.load("lenet-mnist")
    specs = {a["file"]: a for a in info["artifacts"]}
    t = info["threat"]
    threat = maestro.ThreatModel(t["norm"], t["eps"], bounds=tuple(t["bounds"]))
    tt = specs["x_adv_targeted.npy"]["threat"]
    targeted_threat = maestro.ThreatModel(tt["norm"], tt["eps"], bounds=tuple(tt["bounds"]))
    xt = torch.from_numpy(x)
    y = model.predict(xt)  # the model's own predictions: students never get the labels
    pgd = maestro.attacks.PGD(threat, steps=10)(model, xt, y).x_adv.numpy().astype(np.float32)
    fgsm = maestro.attacks.FGSM(threat)(model, xt, y).x_adv.numpy().astype(np.float32)
    toward = maestro.attacks.PGD(targeted_threat, steps=10, targeted=True)(
        model, xt, y, target=torch.from_numpy(targets)).x_adv.numpy().astype(np.float32)
    cfg = load_config(course / "source" / A / "grading.toml")
    return argparse.Namespace(info=info, x=x, targets=targets, pgd=pgd, fgsm=fgsm, toward=toward,
                              model=model, cfg=cfg, public=public_mask(len(x), cfg, read_secret(course)))


@pytest.fixture(scope="module")
def graded(server, http, task):
    """alice: all three artifacts (PGD; the inputs unmodified as the L2 one; a targeted PGD
    toward the served targets), named by key or file; bob (the older one-artifact body): every
    pixel moved by 0.3 > eps; carol: PGD with a NaN in one public row, and an L2 artifact over
    its eps 2.5 (yet within L∞ 0.2), no targeted one; prof (instructor, the older body): PGD.
    All uploaded, then waited for."""
    nan = task.pgd.copy()
    nan[int(np.flatnonzero(task.public)[3]), 0, 5, 5] = np.nan
    over = np.clip(task.x + 0.3 * np.sign(task.pgd - task.x + 1e-9), 0, 1).astype(np.float32)
    over_l2 = np.clip(task.x + 0.2 * np.sign(task.pgd - task.x + 1e-9), 0, 1).astype(np.float32)
    assert np.median(np.linalg.norm((over_l2 - task.x).reshape(len(task.x), -1), axis=1)) > 2.5
    uploads = [
        ("alice", _upload_all, {"x_adv": task.pgd, "x_adv_l2.npy": task.x, "x_adv_targeted.npy": task.toward}),
        ("bob", _upload, over),
        ("carol", _upload_all, {"x_adv.npy": nan, "x_adv_l2": over_l2}),
        ("prof", _upload, task.pgd),
    ]
    sent = {}
    for who, send, arr in uploads:
        r = send(http, server.tokens[who], arr)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and r.headers["location"] == f"/v1/submissions/{body['id']}"
        sent[who] = body["id"]
    return {who: _wait(http, server.tokens[who], sid) for who, sid in sent.items()}


def test_assignment_info_and_inputs(server, http, task, course):
    h = _auth(server.tokens["bob"])
    listed = http.get("/v1/assignments", headers=h).json()["assignments"]
    assert [a["id"] for a in listed] == [A]
    info = task.info
    assert info["threat"] == {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0], "atol": 1e-6}
    assert info["artifact"]["file"] == "x_adv.npy" and info["artifact"]["dtype"] == "float32"
    assert info["artifact"]["shape"] == [500, 1, 28, 28] and info["max_per_day"] == 4
    assert info["leaderboard_name"] == "alice" and info["final"] is False
    # every artifact with its own threat model (bounds and atol from [threat]) and targeting
    arts = {a["file"]: a for a in info["artifacts"]}
    assert list(arts) == ["x_adv.npy", "x_adv_l2.npy", "x_adv_targeted.npy"]
    assert [a["key"] for a in info["artifacts"]] == ["x_adv", "x_adv_l2", "x_adv_targeted"]
    assert arts["x_adv.npy"]["threat"] == info["threat"] == arts["x_adv_targeted.npy"]["threat"]
    assert arts["x_adv_l2.npy"]["threat"] == {"norm": "l2", "eps": 2.5, "bounds": [0.0, 1.0], "atol": 1e-6}
    assert [a["targeted"] for a in info["artifacts"]] == [False, False, True] and info["targeted"] is True
    assert all(a["shape"] == [500, 1, 28, 28] and a["dtype"] == "float32" for a in arts.values())
    # the hidden inputs, in the scorer's order, and the grader's targets — and nothing else:
    # no labels, no public mask
    secret = read_secret(course)
    hidden = HiddenData.load(task.cfg, secret).with_targets(task.cfg, task.model, secret)
    np.testing.assert_array_equal(task.x, hidden.x.numpy())
    assert task.targets.dtype == np.int64 and task.targets.shape == (500,)
    np.testing.assert_array_equal(task.targets, hidden.targets.numpy())
    assert not np.any(task.targets == task.model.predict(torch.from_numpy(task.x)).numpy())
    r = http.get(f"/v1/assignments/{A}/inputs", headers=h).json()
    assert set(r) == {"assignment", "inputs", "targets", "shape", "dtype", "threat"}
    as_json = http.get(f"/v1/assignments/{A}/inputs?format=json", headers=h).json()
    np.testing.assert_array_equal(np.asarray(as_json["inputs"], np.float32), task.x)
    assert as_json["targets"] == task.targets.tolist()
    assert http.get("/v1/assignments/nope", headers=h).status_code == 404


def test_a_good_attack_is_graded_and_students_see_only_the_public_part(server, http, graded, task, course):
    mine = graded["alice"]
    assert mine["status"] == "graded", mine
    # before the deadline: the public part, its reasons and metrics; nothing of the private part
    assert mine["max_score"] == 50 and mine["parts"] and all(p["visibility"] == "public" for p in mine["parts"])
    assert mine["score"] == pytest.approx(sum(p["points"] for p in mine["parts"]), abs=1e-3)
    assert "private_metrics" not in mine and "passed" not in mine
    assert "private part (50 points) is scored after the deadline" in mine["note"]
    m = mine["public_metrics"]
    assert m["success_rate"] > 0.85 and m["valid"] is True
    assert "private" not in json.dumps(mine["parts"])
    # each artifact scored on its own terms: the L∞ PGD near full points, the unmodified
    # "L2 attack" nothing (0% success), the targeted PGD toward the served targets some points
    assert _part(mine, "attack success rate")["points"] > 0.8 * _part(mine, "attack success rate")["max_points"]
    l2 = _part(mine, "L2 attack success rate")
    assert l2["points"] == 0 and l2["max_points"] > 0 and "x_adv_l2: success_rate = 0.0%" in l2["reason"]
    assert m["x_adv_l2.success_rate"] == 0
    tgt = _part(mine, "targeted success rate")
    assert tgt["points"] > 0 and m["x_adv_targeted.targeted_success_rate"] > 0.3, tgt
    assert mine["problems"] == []
    # the instructor sees everything, the student's id included
    full = http.get(f"/v1/submissions/{mine['id']}", headers=_auth(server.tokens["prof"])).json()
    assert full["student"] == "alice" and full["max_score"] == 100
    assert full["score"] == pytest.approx(sum(p["points"] for p in full["parts"]), abs=1e-3)
    assert {p["visibility"] for p in full["parts"]} == {"public", "private"}
    assert full["private_metrics"]["success_rate"] > 0.85 and _part(full, "targeted success rate", "private")["points"] > 0
    # what the grader stored is what the scorer gives the same files (a zip of the three)
    assert full["score"] == pytest.approx(_score_locally(task, course, {"x_adv.npy": task.pgd, "x_adv_l2.npy": task.x,
                                                                "x_adv_targeted.npy": task.toward}), abs=1e-3)


def _score_locally(task, course, arrays: dict) -> float:
    import tempfile

    secret = read_secret(course)
    hidden = HiddenData.load(task.cfg, secret).with_targets(task.cfg, task.model, secret)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, arr in arrays.items():
            np.save(Path(tmp) / name, arr)
            paths[name] = Path(tmp) / name
        return score_submission(task.cfg, paths, hidden, task.model).score


def test_the_older_one_artifact_body_and_missing_artifacts(server, http, graded):
    """{"artifact": ...} is the first artifact; the others, and any artifact an upload leaves
    out, score 0 on their own terms with the reason, while the given ones count."""
    prof = graded["prof"]  # the instructor's view: everything
    assert prof["status"] == "graded" and prof["score"] > 0
    assert _part(prof, "attack success rate")["points"] > 0 and _part(prof, "perturbation size")["points"] > 0
    for term, file in (("L2 attack success rate", "x_adv_l2.npy"), ("targeted success rate", "x_adv_targeted.npy")):
        for label in ("public", "private"):
            part = _part(prof, term, label)
            assert part["points"] == 0 and part["reason"].startswith(f"{file} was not uploaded"), part
    assert sum(p.startswith(("x_adv_l2.npy was not", "x_adv_targeted.npy was not")) for p in prof["problems"]) == 2
    carol = graded["carol"]  # no targeted artifact
    assert _part(carol, "targeted success rate")["reason"].startswith("x_adv_targeted.npy was not uploaded")


def test_threat_model_violations_score_zero_with_the_reason(server, http, graded):
    over = graded["bob"]
    assert over["status"] == "graded" and over["score"] == 0
    assert any("breaks the threat model" in p and "linf distance > eps 0.2" in p for p in over["problems"])
    assert all("private part" not in p for p in over["problems"])
    # one NaN in a public row of x_adv: its public terms score 0 and say why; its private
    # part counts. The L2 artifact, over ITS eps (2.5) though within L∞ 0.2: 0 on its terms
    nan = graded["carol"]
    assert nan["status"] == "graded" and nan["score"] == 0
    assert "NaN or infinite values" in _part(nan, "attack success rate")["reason"]
    l2 = _part(nan, "L2 attack success rate")["reason"]
    assert "x_adv_l2.npy breaks the threat model" in l2 and "l2 distance > eps 2.5" in l2, l2
    full = http.get(f"/v1/submissions/{nan['id']}", headers=_auth(server.tokens["prof"])).json()
    private = {p["name"]: p["points"] for p in full["parts"] if p["visibility"] == "private"}
    assert private["private: attack success rate"] > 25 and private["private: L2 attack success rate"] == 0


def test_tokens_and_ownership(server, http, graded):
    sid = graded["alice"]["id"]
    # no token: 401, and before the body is read (a malformed body is still a 401)
    url = f"/v1/assignments/{A}/submissions"
    for content in (b"{not json", b'{"artifact": 3}', b""):
        r = http.post(url, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and "missing token" in r.json()["detail"], r.text
    assert http.get(f"/v1/submissions/{sid}").status_code == 401
    assert http.get(f"/v1/submissions/{sid}", headers=_auth("mt_nope")).status_code == 401
    # another student's submission is unknown to bob, and not in his list
    bob = _auth(server.tokens["bob"])
    r = http.get(f"/v1/submissions/{sid}", headers=bob)
    assert r.status_code == 404 and r.json()["detail"] == f"no submission {sid!r} of yours"
    assert http.get("/v1/submissions/0123456789abcdef", headers=bob).status_code == 404
    mine = http.get(f"/v1/assignments/{A}/submissions", headers=bob).json()["submissions"]
    assert [s["id"] for s in mine] == [graded["bob"]["id"]]
    assert http.get(f"/v1/assignments/{A}/submissions?student=alice", headers=bob).status_code == 403
    # a revoked token loses access; the student's submissions stay theirs under a new token
    old = server.store.create_token("alice")
    assert server.store.revoke("alice") == 2
    assert http.get(f"/v1/submissions/{sid}", headers=_auth(old)).status_code == 401
    server.tokens["alice"] = server.store.create_token("alice")
    assert http.get(f"/v1/submissions/{sid}", headers=_auth(server.tokens["alice"])).status_code == 200
    # instructors see everyone's
    prof = _auth(server.tokens["prof"])
    everyone = http.get(f"/v1/assignments/{A}/submissions", headers=prof).json()["submissions"]
    assert {s["student"] for s in everyone} >= {"alice", "bob", "carol", "prof"}
    only = http.get(f"/v1/assignments/{A}/submissions?student=alice", headers=prof).json()["submissions"]
    assert [s["id"] for s in only] == [sid]


def test_refused_uploads_are_422_and_cost_nothing(server, http, task):
    h = _auth(server.tokens["dave"])
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        (_npy_b64(task.pgd[:10]), "has shape (10, 1, 28, 28); expected (500, 1, 28, 28)"),
        (_npy_b64(task.pgd.astype(np.float64)), "has dtype float64; expected float32"),
        (base64.b64encode(pickled.getvalue()).decode(), "Python objects"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"\x93NUMPY junk").decode(), "not a valid .npy"),
    ]
    for payload, reason in cases:
        r = http.post(f"/v1/assignments/{A}/submissions", json={"artifact": {"npy_b64": payload}}, headers=h)
        assert r.status_code == 422 and reason in r.json()["detail"], (reason, r.text)
    for body in ({"artifact": {"npy_b64": _npy_b64(task.pgd), "extra": 1}}, {"x_adv": []}, {}):
        r = http.post(f"/v1/assignments/{A}/submissions", json=body, headers=h)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.text
    # several artifacts: every array checked, the refusal names the file; names must be the
    # assignment's (file names or keys), each once, at least one; artifact or artifacts
    good, files = _npy_b64(task.pgd), "x_adv.npy, x_adv_l2.npy, x_adv_targeted.npy"
    several = [
        ({"x_adv.npy": good, "x_adv_l2.npy": _npy_b64(task.pgd[:10])},
         "x_adv_l2.npy has shape (10, 1, 28, 28); expected (500, 1, 28, 28)"),
        ({"x_adv": good, "x_adv_targeted": _npy_b64(task.pgd.astype(np.float64))},
         "x_adv_targeted.npy has dtype float64; expected float32"),
        ({"x_adv_l2.npy": "not base64!"}, "x_adv_l2.npy: npy_b64 is not valid base64"),
        ({"x_adv.npy": good, "x_adv_linf.npy": good}, f"no artifact 'x_adv_linf.npy'; expected any of {files}"),
        ({"x_adv.npy": good, "x_adv": good}, "x_adv.npy is given twice"),
        ({}, f"artifacts: give at least one of {files}"),
    ]
    for arts, reason in several:
        body = {"artifacts": {k: {"npy_b64": v} for k, v in arts.items()}}
        r = http.post(f"/v1/assignments/{A}/submissions", json=body, headers=h)
        assert r.status_code == 422 and reason in r.json()["detail"], (reason, r.text)
    both = {"artifact": {"npy_b64": good}, "artifacts": {"x_adv_l2.npy": {"npy_b64": good}}}
    r = http.post(f"/v1/assignments/{A}/submissions", json=both, headers=h)
    assert r.status_code == 422 and "not both" in r.json()["detail"], r.text
    r = http.post("/v1/assignments/nope/submissions", json={"artifact": {"npy_b64": "AAAA"}}, headers=h)
    assert r.status_code == 404
    # larger than any upload needs (every artifact in float64): 413 before it is read (uploads
    # have their own limit, the sum of their artifacts'; the server's max_body_bytes is smaller)
    limit = http.get(f"/v1/assignments/{A}", headers=h).json()["max_upload_bytes"]
    assert limit > 3 * 8 * 500 * 28 * 28 * 4 / 3
    big = {"artifacts": {"x_adv.npy": {"npy_b64": "A" * limit}}}
    r = http.post(f"/v1/assignments/{A}/submissions", json=big, headers=h)
    assert r.status_code == 413 and "upload exactly the array" in r.json()["detail"]
    # within the body limit, but one array larger than its artifact needs: 422 naming it
    r = http.post(f"/v1/assignments/{A}/submissions", json={"artifacts": {"x_adv_l2": {"npy_b64": "A" * (limit // 2)}}},
                  headers=h)
    assert r.status_code == 422 and r.json()["detail"].startswith("x_adv_l2.npy: larger than an array"), r.text
    info = http.get(f"/v1/assignments/{A}", headers=h).json()
    assert info["uploads_today"] == 0 and info["uploads_left_today"] == 4
    assert http.get(f"/v1/assignments/{A}/submissions", headers=h).json()["submissions"] == []


def test_stored_uploads_are_checked_again_before_grading(server, http, task):
    """The grader trusts nothing in the database: a stored zip must hold only the assignment's
    artifact files, stored (not compressed), each once; anything else fails with the reason."""
    from maestro.server.submissions import pack, unpack

    a = server.app.state.assignments[A]
    npy = base64.b64decode(_npy_b64(task.pgd))
    assert pack(a, {"x_adv.npy": npy}) == npy  # the first artifact alone: the raw .npy, as before
    both = pack(a, {"x_adv_targeted.npy": npy, "x_adv.npy": npy})
    assert both.startswith(b"PK\x03\x04") and both == pack(a, {"x_adv.npy": npy, "x_adv_targeted.npy": npy})
    assert unpack(a, both) == {"x_adv.npy": npy, "x_adv_targeted.npy": npy}

    def zipped(*members, method=zipfile.ZIP_STORED, data=npy) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name in members:
                zf.writestr(name, data)
        return buf.getvalue()

    bad = [(zipped("../x_adv.npy"), "not one of x_adv.npy"), (zipped("evil.npy"), "not one of"),
           (zipped("x_adv.npy", method=zipfile.ZIP_DEFLATED), "compressed"), (zipped(), "neither a .npy file nor a zip"),
           (b"GIF89a", "neither a .npy file nor a zip")]
    for blob, why in bad:
        with pytest.raises(ValueError, match=why):
            unpack(a, blob)
    # stored as an older or a foreign server might have: graded, or failed with the reason
    subs = Submissions(server.store)
    prof = server.store.authenticate(server.tokens["prof"])
    rows = [subs.add(assignment=A, student="prof", token_id=prof.token_id, sha256="2" * 64, data=blob)
            for blob in (zipped("../x_adv.npy"), zipped("x_adv_l2.npy", data=base64.b64decode(_npy_b64(task.x))))]
    server.app.state.grader.wake()
    failed, l2_only = (_wait(http, server.tokens["prof"], r["id"]) for r in rows)
    assert failed["status"] == "failed" and "not one of x_adv.npy" in failed["reason"], failed
    assert l2_only["status"] == "graded" and l2_only["score"] == 0, l2_only
    assert _part(l2_only, "attack success rate")["reason"].startswith("x_adv.npy was not uploaded")
    assert "x_adv_l2: success_rate" in _part(l2_only, "L2 attack success rate")["reason"]
    # a student's upload the grader fails on (bytes spoilt after the upload's checks; its day's
    # upload counted, as POST /v1/assignments/ID/submissions counts it) is given back
    from maestro.server.app import _day_key

    token = server.store.create_token("erin")
    erin = server.store.authenticate(token)
    assert server.store.reserve(erin.token_id, _day_key(A, dt.datetime.now(dt.UTC)), 1, 4)

    def info():
        return http.get(f"/v1/assignments/{A}", headers=_auth(token)).json()

    assert info()["uploads_today"] == 1
    row = subs.add(assignment=A, student="erin", token_id=erin.token_id, sha256="3" * 64, data=b"GIF89a")
    server.app.state.grader.wake()
    spoilt = _wait(http, token, row["id"])
    assert spoilt["status"] == "failed" and "the grader failed" in spoilt["reason"]
    assert "does not count toward your uploads of the day" in spoilt["reason"]
    assert info()["uploads_today"] == 0 and info()["uploads_left_today"] == 4


def test_daily_upload_limit(server, http, task):
    h = _auth(server.tokens["dave"])
    ids = []
    for _ in range(4):
        r = _upload(http, server.tokens["dave"], task.fgsm)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    r = _upload(http, server.tokens["dave"], task.fgsm)
    assert r.status_code == 429 and "at most 4 uploads of 01-whitebox per day (UTC)" in r.json()["detail"]
    assert http.get(f"/v1/assignments/{A}", headers=h).json()["uploads_left_today"] == 0
    done = [_wait(http, server.tokens["dave"], sid) for sid in ids]
    assert [d["status"] for d in done] == ["graded"] * 4
    assert len({d["score"] for d in done}) == 1 and 10 < done[0]["score"] < 40  # FGSM: below PGD


def test_leaderboard_json(server, http, graded, task, course):
    # a notebook graded by `maestro autograde` (its history file) is ranked with the uploads
    steps3 = maestro.attacks.PGD(maestro.ThreatModel("linf", 0.2), steps=3)(
        task.model, torch.from_numpy(task.x), task.model.predict(task.x)).x_adv.numpy()
    path = course / "erin-x_adv.npy"
    np.save(path, steps3.astype(np.float32))
    secret = read_secret(course)
    hidden = HiddenData.load(task.cfg, secret).with_targets(task.cfg, task.model, secret)
    result = score_submission(task.cfg, {"x_adv.npy": path}, hidden, task.model)
    append_history(course, entry_for(task.cfg, "erin", result, "2026-11-20T10:00:00+00:00", "e" * 64))
    for who in ("dave",):  # dave's uploads (test_daily_upload_limit) are graded by now
        for s in http.get(f"/v1/assignments/{A}/submissions", headers=_auth(server.tokens[who])).json()["submissions"]:
            _wait(http, server.tokens[who], s["id"])
    board = http.get(f"/v1/assignments/{A}/leaderboard", headers=_auth(server.tokens["bob"])).json()
    names = [r["name"] for r in board["rows"]]
    assert board["final"] is False and board["part"] == "public" and board["max_score"] == 100
    assert names[0] == "alice" and "prof" not in names  # an instructor's uploads are not ranked
    assert set(names) == {"alice", "bob", "carol", "dave", "erin"}
    rows = {r["name"]: r for r in board["rows"]}
    assert rows["alice"]["score"] > rows["erin"]["score"] > rows["dave"]["score"] > 0
    assert rows["bob"]["score"] == rows["carol"]["score"] == 0 and rows["bob"]["rank"] == rows["carol"]["rank"]
    assert rows["dave"]["submissions"] == 4 and rows["alice"]["rank"] == 1
    assert "private_score" not in json.dumps(board)
    # the final ranking (private part): instructors only, before the deadline
    r = http.get(f"/v1/assignments/{A}/leaderboard?final=true", headers=_auth(server.tokens["bob"]))
    assert r.status_code == 403
    final = http.get(f"/v1/assignments/{A}/leaderboard?final=true", headers=_auth(server.tokens["prof"])).json()
    frows = {r["name"]: r for r in final["rows"]}
    assert final["part"] == "private" and frows["carol"]["score"] > 25 and "total_score" in frows["carol"]
    # the public page and its data need no token (public_leaderboard defaults to true)
    assert httpx.get(f"{server.url}/leaderboard/{A}.json").json()["rows"] == board["rows"]
    page = httpx.get(f"{server.url}/leaderboard/{A}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<td class="name">alice</td>' in page.text and f'"{A}.json"' in page.text
    assert httpx.get(f"{server.url}/leaderboard/nope").status_code == 404


def test_openapi_declares_the_error_answers(server, http):
    paths = http.get("/openapi.json").json()["paths"]
    op = paths["/v1/assignments/{assignment}/submissions"]["post"]
    for code in ("401", "403", "404", "413", "422", "429"):
        schema = op["responses"][code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (code, schema)
    assert "202" in op["responses"]
    assert "404" in paths["/v1/submissions/{submission}"]["get"]["responses"]
    for path, ops in paths.items():  # the public page and its data need no token
        for op in ops.values():
            public = path.startswith("/leaderboard/") or path == "/v1/health"
            assert ("401" in op["responses"]) is not public and ("security" in op) is not public, path


def _fuzz(url: str, op, path: str, headers: dict | None) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance

    fixed = {"path_parameters": {"assignment": A}} if "{assignment}" in path else {}
    cases = st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE, **fixed),
                      op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
                      op.as_strategy(generation_mode=GenerationMode.POSITIVE))
    public = path.startswith("/leaderboard/")

    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case):
        r = case.call(base_url=url, headers=headers, timeout=60)
        case.validate_response(r, checks=[not_a_server_error, response_schema_conformance])
        if headers is None and not public:
            assert r.status_code == 401, (case.as_curl_command(), r.text)

    run()


@pytest.mark.parametrize("token", [True, False], ids=["student", "no-token"])
def test_fuzz_the_submission_endpoints(server, token):
    """schemathesis on every submission and leaderboard operation: no 5xx, every answer (errors
    included) as the schema says; without a token, 401 but for the public leaderboard."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = _auth(server.store.create_token("fuzzer")) if token else None
    ops = [(p, m) for p, ms in schema.raw_schema["paths"].items() for m in ms
           if p.startswith(("/v1/assignments", "/v1/submissions", "/leaderboard/"))]
    assert len(ops) == 9
    for path, method in ops:
        _fuzz(server.url, schema[path][method], path, headers)


def test_a_crashed_servers_submissions_are_graded_by_the_next(course_server, course, task, tmp_path):
    """Submissions queued, or half-graded by a server process that died, are graded on restart."""
    db = tmp_path / "shared.db"
    store = Store(f"sqlite:///{db}")
    subs = Submissions(store)
    token = store.create_token("frank")
    who = store.authenticate(token)
    data = base64.b64decode(_npy_b64(task.fgsm))
    held = subs.add(assignment=A, student="frank", token_id=who.token_id, sha256="0" * 64, data=data)
    queued = subs.add(assignment=A, student="frank", token_id=who.token_id, sha256="1" * 64, data=data)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = f"{socket.gethostname()[:60]}:{int(gone.stdout)}:abcdef"  # a process that has exited
    claimed, _ = subs.claim(dead, [A])  # the oldest: held by the dead process, half-graded
    assert claimed["id"] == held["id"] and subs.get(held["id"])["status"] == "grading"
    assert subs.get(queued["id"])["status"] == "queued"
    store.close()
    url, app, _ = course_server(CONFIG.format(course=course, a=A).replace('"server.db"', json.dumps(str(db))))
    with httpx.Client(base_url=url, timeout=60) as client:
        for s in (held, queued):
            r = _wait(client, token, s["id"])
            assert r["status"] == "graded" and r["score"] > 10, r
            assert dt.datetime.fromisoformat(r["graded_at"]) >= dt.datetime.fromisoformat(r["submitted_at"])


def test_course_folder_alone_is_a_server_config(course):
    """`maestro serve --course DIR` on a `maestro course init` folder (no server.toml): every
    white-box attack assignment takes submissions (black-box and defense units are graded by
    `maestro autograde`, and refused with the reason when listed); pseudonyms are stable names
    keyed by the course secret."""
    from maestro.server import ServerConfig
    from maestro.server.submissions import Assignment

    cfg = ServerConfig.load(course)
    assert cfg.tasks == {} and cfg.submissions.assignments == [A] and cfg.course == course.resolve()
    # the others: a live leaderboard of `maestro autograde`'s grades each, no uploads
    assert cfg.submissions.boards == sorted(p.name for p in (course / "source").iterdir() if p.name != A)
    with pytest.raises(ValueError, match="list each assignment once"):
        ServerConfig.from_dict({"submissions": {"assignments": [A], "boards": [A]}})
    with pytest.raises(ValueError, match="or boards"):
        ServerConfig.from_dict({"submissions": {"assignments": []}})
    for unit, why in (("02-blackbox-scores", "black-box unit"), ("04-adversarial-training", "defense unit")):
        if (course / "source" / unit).is_dir():
            with pytest.raises(ValueError, match=why):
                Assignment(course, unit)
    assert cfg.submissions.pseudonyms is True and cfg.submissions.max_per_day == 20
    name = pseudonym("alice", read_secret(course))
    assert name == pseudonym("alice", read_secret(course)) and "alice" not in name
    with pytest.raises(ValueError, match="time zone"):
        ServerConfig.from_dict({"submissions": {"assignments": [A], "deadline": "2026-12-01T23:59:00"}})
    with pytest.raises(ValueError, match="unknown keys"):
        ServerConfig.from_dict({"submissions": {"assignments": [A], "max_per_dya": 3}})
    late = ServerConfig.from_dict({"submissions": {"assignments": [A], "deadline": "2020-01-01T00:00:00Z"}})
    assert late.submissions.past_deadline() and late.submissions.is_final()


def test_maestro_serve_a_course_folder(course, tmp_path):
    """`maestro serve --course DIR` on the course folder itself (no server.toml), then stopped
    with SIGTERM: graders stop cleanly, the public page answers with pseudonyms."""
    from maestro.server.local import free_port

    from maestro.server import ServerConfig

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    store = Store(ServerConfig.load(course).database_url)  # what `maestro tokens create --course` opens
    token = store.create_token("gina")
    store.close()
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "maestro", "serve", "--course", str(course), "--port",
                                 str(port), "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, proc, log, ready=lambda health: health["assignments"] == 1)
        info = httpx.get(f"{url}/v1/assignments/{A}", headers=_auth(token)).json()
        assert info["leaderboard_name"] == pseudonym("gina", read_secret(course))
        assert info["max_per_day"] == 20
        page = httpx.get(f"{url}/leaderboard/{A}")
        assert page.status_code == 200 and "alice" not in page.text  # pseudonyms by default
        # a defense unit: its board (empty until `maestro autograde` grades it), no uploads
        board = httpx.get(f"{url}/leaderboard/04-adversarial-training.json")
        assert board.status_code == 200 and board.json()["rows"] == []
        refused = httpx.post(f"{url}/v1/assignments/04-adversarial-training/submissions", json={}, headers=_auth(token))
        assert refused.status_code == 404 and "maestro autograde" in refused.json()["detail"]
    finally:
        proc.terminate()
        code = proc.wait(60)
    # uvicorn shuts down gracefully (the graders with it), then re-raises SIGTERM
    assert code in (0, -signal.SIGTERM) and "Traceback" not in log.read_text(), log.read_text()
    assert "leaderboard: http://127.0.0.1" in log.read_text()
    assert "/leaderboard/10-war" in log.read_text() and "leaderboards of 02-blackbox-scores" in log.read_text()


def test_the_python_client_fetches_submits_and_waits_for_the_grade(server, task):
    """maestro.remote.assignment — what a student's notebook uses instead of raw HTTP: inputs
    and targets, mistakes caught before an upload is spent, an upload, its grade, the board."""
    token = server.store.create_token("fran")
    with maestro.remote.assignment(server.url, token, A) as course:
        assert course.files == ("x_adv.npy", "x_adv_l2.npy", "x_adv_targeted.npy")
        assert course.threat.norm == "linf" and course.threat.eps == task.info["threat"]["eps"]
        assert course.threat_for("x_adv_l2.npy").norm == "l2"
        np.testing.assert_array_equal(course.inputs().numpy(), task.x)
        np.testing.assert_array_equal(course.targets().numpy(), task.targets)
        left = course.info["uploads_left_today"]
        assert left == 4 and "uploads left today=4" in repr(course)
        # mistakes are caught here: nothing is stored, no upload of the day is spent
        over = np.clip(task.x + 0.3, 0, 1)
        with pytest.raises(maestro.ThreatModelViolation, match=r"(?s)x_adv\.npy: .*nothing was uploaded"):
            course.submit(x_adv=over)
        with pytest.raises(ValueError, match="expected shape"):
            course.submit(x_adv=task.pgd[:10])
        with pytest.raises(ValueError, match="no artifact 'x_adv_l1.npy'"):
            course.submit(x_adv_l1=task.pgd)
        with pytest.raises(ValueError, match="nothing to submit"):
            course.submit()
        assert course.submissions() == [] and course.refresh()["uploads_left_today"] == left
        # a tensor and an array, by keyword and by file name; the L2 file left out
        sub = course.submit({"x_adv_targeted.npy": task.toward}, x_adv=torch.from_numpy(task.pgd))
        assert sub["status"] == "queued" and course.info["uploads_left_today"] == left - 1
        graded = course.result(sub, timeout=300)
        assert graded["status"] == "graded" and graded["score"] > 0
        l2 = _part(graded, "L2 attack success rate")  # the public part: fran's view before the deadline
        assert l2["points"] == 0 and l2["reason"].startswith("x_adv_l2.npy was not uploaded")
        assert _part(graded, "targeted success rate")["points"] > 0
        assert [s["id"] for s in course.submissions()] == [sub["id"]]
        assert "fran" in [r["name"] for r in course.leaderboard()["rows"]]
        # check=False sends a violating array anyway: graded, 0 on its own terms
        late = course.result(course.submit(x_adv=over, check=False), timeout=300)
        assert late["status"] == "graded" and late["score"] < graded["score"]
    with pytest.raises(ValueError, match="unknown assignment 'nope'"):
        maestro.remote.assignment(server.url, token, "nope")
    with pytest.raises(maestro.AccessDenied):
        maestro.remote.assignment(server.url, "mt_not-a-token", A)
