"""The model server against a real uvicorn on 127.0.0.1, real zoo models and SQLite."""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx  # the server extra, installed by `make test`
import numpy as np
import pytest

from _serve import wait_until_serving

import maestro
from maestro.server import ServerConfig, create_app
from maestro.server.local import background_server, free_port

CONFIG = """
[server]
database = "server.db"
max_body_bytes = 200_000
rate_limit = 0
max_batch = 300

[tasks.digits-labels]
model = "cnn-digits"
dataset = "digits"
access = "labels"
budget = 50
threat = { norm = "l2", eps = 1.5 }

[tasks.digits-scores]
model = "cnn-digits"
dataset = "digits"
access = "scores"
budget = 5000
threat = { norm = "linf", eps = 0.2 }

[tasks.digits-wb]
model = "cnn-digits"
dataset = "digits"
access = "white-box"
budget = 1000

[tasks.tweets]
model = "lstm-tweets"
dataset = "tweets"
access = "white-box"
budget = 1000
threat = { norm = "tokens", eps = 2 }

[tasks.tweets-labels]
model = "lstm-tweets"
dataset = "tweets"
access = "labels"
threat = { norm = "tokens", eps = 2 }
"""


@pytest.fixture(scope="module")
def server(course_server):
    url, app, course = course_server(CONFIG)
    return argparse.Namespace(url=url, store=app.state.store, course=course)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=250)) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    d = maestro.datasets.load("digits", split="test")
    return d.x[:64].numpy(), d.y[:64].numpy()


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _npy(arr: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return {"npy_b64": base64.b64encode(buf.getvalue()).decode()}


def _from_npy(v) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(v["npy_b64"])), allow_pickle=False)


def test_config_rejects_mistakes(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        ServerConfig.from_dict({"tasks": {"t": {"model": "cnn-digits", "acess": "labels"}}})
    with pytest.raises(ValueError, match="access must be one of"):
        ServerConfig.from_dict({"tasks": {"t": {"model": "cnn-digits", "access": "grey-box"}}})
    with pytest.raises(ValueError, match="no tasks"):
        ServerConfig.from_dict({"server": {}})
    with pytest.raises(ValueError, match="eps"):
        ServerConfig.from_dict({"tasks": {"t": {"model": "cnn-digits", "threat": {"norm": "linf", "eps": -1}}}})
    with pytest.raises(ValueError, match="needs threat norm 'tokens'"):
        create_app(ServerConfig.from_dict({"tasks": {"t": {"model": "lstm-tweets", "threat": {"norm": "l2", "eps": 1}}}},
                                          course_dir=tmp_path))
    cfg = ServerConfig.from_dict({"tasks": {"t": {"model": "cnn-digits"}}}, course_dir=tmp_path)
    assert cfg.database_url == f"sqlite:///{tmp_path.resolve()}/maestro-server.db"
    (tmp_path / "server.toml").write_text("[tasks.t\nmodel=1")
    with pytest.raises(ValueError, match="not valid TOML"):
        ServerConfig.load(tmp_path)


def test_auth(server, http, digits):
    x = digits[0][:2].tolist()
    assert http.get("/v1/health").json()["status"] == "ok"
    r = http.post("/v1/tasks/digits-scores/predict", json={"inputs": x})
    assert r.status_code == 401 and "missing token" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = http.get("/v1/tasks", headers=_auth("mt_not-a-token"))
    assert r.status_code == 401 and "invalid or revoked" in r.json()["detail"]
    token = server.store.create_token("revoked-student")
    assert http.post("/v1/tasks/digits-scores/predict", json={"inputs": x}, headers=_auth(token)).status_code == 200
    assert server.store.revoke("revoked-student") == 1
    r = http.post("/v1/tasks/digits-scores/predict", json={"inputs": x}, headers=_auth(token))
    assert r.status_code == 401
    # only hashes are stored: the token itself appears nowhere in the database (or its WAL)
    assert not any(token.encode() in f.read_bytes() for f in server.course.glob("server.db*"))
    assert all(len(t["hash_prefix"]) == 12 for t in server.store.list_tokens())


def test_no_token_is_401_whatever_the_body(server, http):
    """The token is checked before the body is read: a malformed, huge or empty body without a
    (valid) token is a 401, never a 400/413/422 that would tell the body was looked at."""
    big = b'{"inputs": [' + b"0.5, " * 60_000 + b"0.5]}"  # over max_body_bytes
    for path in ("/v1/tasks/digits-scores/predict", "/v1/tasks/nope/gradient", "/get_batch_output"):
        for body in (b"{not json", b'{"inputs": 3}', b"", b"\xff\xfe", big):
            for headers, why in (({}, "missing token"), (_auth("mt_wrong"), "invalid or revoked"),
                                 ({"Authorization": "Basic dXNlcjpwdw=="}, "missing token")):
                r = http.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
                assert r.status_code == 401 and why in r.json()["detail"], (path, body[:20], r.text)
                assert r.headers["www-authenticate"] == "Bearer"
    assert http.get("/v1/nothing-here").status_code == 401
    h = _auth(server.store.create_token("body-checked"))
    assert http.get("/v1/nothing-here", headers=h).status_code == 404
    r = http.post("/v1/tasks/digits-scores/predict", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_openapi_declares_every_error_answer(http):
    schema = http.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    assert schema["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # one error shape
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path == "/v1/health":
                assert codes == {"200"}
                continue
            assert {"401", "422", "429"} <= codes, (method, path, codes)
            if method == "post":
                assert "413" in codes and "403" in codes and "404" in codes, (path, codes)
            for code in codes - {"200"}:
                assert op["responses"][code]["content"]["application/json"]["schema"] == error, (path, code)
            assert op.get("security") == [{"HTTPBearer": []}], path


def test_tasks_and_access(server, http, digits):
    h = _auth(server.store.create_token("access-student"))
    tasks = {t["name"]: t for t in http.get("/v1/tasks", headers=h).json()["tasks"]}
    assert set(tasks) == {"digits-labels", "digits-scores", "digits-wb", "tweets", "tweets-labels"}
    info = http.get("/v1/tasks/digits-scores", headers=h).json()
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10 and info["modality"] == "image"
    assert info["access"] == "scores" and info["budget"] == 5000 and info["remaining"] == 5000
    assert info["threat"]["norm"] == "linf" and info["threat"]["eps"] == 0.2
    assert http.get("/v1/tasks/nope", headers=h).status_code == 404
    x = digits[0][:2].tolist()
    r = http.post("/v1/tasks/digits-scores/gradient", json={"inputs": x, "labels": [0, 1]}, headers=h)
    assert r.status_code == 403 and "'white-box' access" in r.json()["detail"] and "'scores'" in r.json()["detail"]
    for op in ("proba", "logits"):
        r = http.post(f"/v1/tasks/digits-labels/{op}", json={"inputs": x}, headers=h)
        assert r.status_code == 403 and "allows: predict" in r.json()["detail"]
    r = http.get("/v1/tasks/tweets-labels/embedding", headers=h)
    assert r.status_code == 403
    r = http.post("/v1/tasks/digits-scores/tokenize", json={"texts": ["a"]}, headers=h)
    assert r.status_code == 404 and "text tasks" in r.json()["detail"]
    assert http.get("/v1/usage", headers=h).status_code == 403
    # refused calls cost nothing
    assert http.get("/v1/tasks/digits-labels", headers=h).json()["used"] == 0
    assert "/v1/tasks/{task}/predict" in http.get("/openapi.json").json()["paths"]


def _fire(http, url, bodies, token):
    barrier = threading.Barrier(len(bodies))

    def one(body):
        barrier.wait()
        return http.post(url, json=body, headers=_auth(token))

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_budget_exact_under_200_concurrent_requests(server, http, digits):
    token = server.store.create_token("concurrent-student")
    x = digits[0]
    bodies = [{"inputs": x[i % 64: i % 64 + 1].tolist()} for i in range(200)]
    answers = _fire(http, "/v1/tasks/digits-labels/predict", bodies, token)
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 50 and codes.count(429) == 150, sorted(set(codes))
    assert all("budget spent" in r.json()["detail"] for r in answers if r.status_code == 429)
    who = server.store.authenticate(token)
    assert server.store.used(who.token_id, "digits-labels") == 50
    # batches of 3 against 50: answered inputs match the counter, never over the budget
    token = server.store.create_token("concurrent-batches")
    answers = _fire(http, "/v1/tasks/digits-labels/predict", [{"inputs": x[:3].tolist()}] * 60, token)
    served = sum(3 for r in answers if r.status_code == 200)
    who = server.store.authenticate(token)
    assert served == server.store.used(who.token_id, "digits-labels") == 48


def test_a_batch_over_the_budget_is_refused_whole(server, http, digits):
    h = _auth(server.store.create_token("whole-batch"))
    x = digits[0]
    assert http.post("/v1/tasks/digits-labels/predict", json={"inputs": x[:40].tolist()}, headers=h).status_code == 200
    r = http.post("/v1/tasks/digits-labels/predict", json={"inputs": x[:20].tolist()}, headers=h)
    assert r.status_code == 429
    assert "needs 20 queries but only 10" in r.json()["detail"] and "nothing was run" in r.json()["detail"]
    r = http.post("/v1/tasks/digits-labels/predict", json={"inputs": x[:10].tolist()}, headers=h)
    assert r.status_code == 200 and r.json()["remaining"] == 0 and r.json()["used"] == 50


def test_instructors_have_no_budget(server, http, digits):
    h = _auth(server.store.create_token("prof", role="instructor"))
    for _ in range(2):
        r = http.post("/v1/tasks/digits-labels/predict", json={"inputs": digits[0][:40].tolist()}, headers=h)
        assert r.status_code == 200 and r.json()["budget"] is None
    rows = http.get("/v1/usage", headers=h).json()["usage"]
    assert {"student": "prof", "role": "instructor", "task": "digits-labels", "used": 80, "requests": 2} in rows


def test_request_size_limits(server, http, digits):
    h = _auth(server.store.create_token("big-sender"))
    big = np.random.default_rng(0).random((300, 1, 8, 8)).tolist()  # JSON > 200 kB
    r = http.post("/v1/tasks/digits-scores/proba", json={"inputs": big}, headers=h)
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: streamed
        data = b'{"inputs": ' + str(big).encode() + b"}"
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    r = http.post("/v1/tasks/digits-scores/proba", content=chunks(),
                  headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413
    many = _npy(np.zeros((301, 1, 8, 8), np.float32))  # small as npy, but over max_batch
    r = http.post("/v1/tasks/digits-scores/proba", json={"inputs": many}, headers=h)
    assert r.status_code == 413 and "at most 300" in r.json()["detail"]
    assert http.get("/v1/tasks/digits-scores", headers=h).json()["used"] == 0


def test_bad_inputs_get_422_with_the_reason(server, http, digits):
    h = _auth(server.store.create_token("sloppy"))
    x = digits[0][:2]
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    nan = x.copy()
    nan[1, 0, 0, 0] = np.nan
    cases = [
        ("digits-scores/proba", {"inputs": x[:, :, :4].tolist()}, "expected shape N×1×8×8"),
        ("digits-scores/proba", {"inputs": (x * 255).tolist()}, "divide by 255"),
        ("digits-scores/proba", {"inputs": _npy(nan)}, "NaN"),
        ("digits-scores/proba", {"inputs": _npy((x * 16).astype(np.int64))}, "floating-point"),
        ("digits-scores/proba", {"inputs": {"npy_b64": "not base64!"}}, "base64"),
        ("digits-scores/proba", {"inputs": {"npy_b64": base64.b64encode(pickled.getvalue()).decode()}}, "object arrays"),
        ("digits-scores/proba", {"inputs": [[1.0, 2.0], [3.0]]}, "ragged"),
        ("digits-scores/proba", {"inputs": ["a", "b"]}, "expected numbers"),
        ("digits-scores/proba", {"inputs": []}, "empty batch"),
        ("digits-scores/proba", {"inputs": 0.5}, "Input should be"),
        ("digits-wb/gradient", {"inputs": x.tolist(), "labels": [0, 10]}, "labels must lie in [0, 9]"),
        ("digits-wb/gradient", {"inputs": x.tolist(), "labels": [0]}, "expected 2 labels"),
        ("digits-wb/gradient", {"inputs": x.tolist(), "labels": [0.5, 1]}, "whole numbers"),
        ("tweets/predict", {"inputs": [1, 2]}, "list of strings"),
        ("tweets/predict", {"inputs": {"input_ids": [[1, 99999]]}}, "token ids must lie in"),
        ("tweets/predict", {"inputs": {"input_ids": [[1, 2]], "attention_mask": [[1]]}}, "attention_mask"),
    ]
    for path, body, reason in cases:
        r = http.post(f"/v1/tasks/{path}", json=body, headers=h)
        assert r.status_code == 422, (path, reason, r.status_code, r.text)
        assert reason in str(r.json()["detail"]), (reason, r.json())
    r = http.post("/v1/tasks/digits-scores/proba", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = http.post("/v1/tasks/digits-scores/proba?format=xml", json={"inputs": x.tolist()}, headers=h)
    assert r.status_code == 422
    for task in ("digits-scores", "digits-wb", "tweets"):
        assert http.get(f"/v1/tasks/{task}", headers=h).json()["used"] == 0


def test_npy_and_json_give_identical_answers(server, http, digits):
    h = _auth(server.store.create_token("formats"))
    x, y = digits[0][:16], digits[1][:16]
    local = maestro.models.load("cnn-digits")
    for op, body, want in [
        ("digits-scores/proba", {"inputs": x.tolist()}, local.predict_proba(x).numpy()),
        ("digits-scores/predict", {"inputs": x.tolist()}, local.predict(x).numpy()),
        ("digits-wb/gradient", {"inputs": x.tolist(), "labels": y.tolist()}, local.gradient(x, y).numpy()),
    ]:
        as_json = http.post(f"/v1/tasks/{op}", json=body, headers=h).json()["outputs"]
        npy_body = {**body, "inputs": _npy(x)}
        if "labels" in body:
            npy_body["labels"] = _npy(y)
        as_npy = _from_npy(http.post(f"/v1/tasks/{op}?format=npy", json=npy_body, headers=h).json()["outputs"])
        np.testing.assert_array_equal(np.asarray(as_json, dtype=as_npy.dtype), as_npy)
        np.testing.assert_array_equal(as_npy, want)  # and what the local wrapper says


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_raw_npy_bodies_both_ways(server, http, digits):
    h = _auth(server.store.create_token("raw-student"))
    x = digits[0][:16]
    local = maestro.models.load("cnn-digits")
    raw_in = {**h, "Content-Type": "application/x-npy"}
    for op, want in [("predict", local.predict(x).numpy()), ("proba", local.predict_proba(x).numpy()),
                     ("logits", local.logits(x).numpy())]:
        # raw in, JSON out: the same answer as a JSON request
        as_json = http.post(f"/v1/tasks/digits-scores/{op}", json={"inputs": x.tolist()}, headers=h).json()
        r = http.post(f"/v1/tasks/digits-scores/{op}", content=_npy_bytes(x), headers=raw_in)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == as_json["outputs"] and r.json()["queries"] == 16
        # with a query string the request takes FastAPI's route, not the server's fast path: same
        r = http.post(f"/v1/tasks/digits-scores/{op}?format=npy", content=_npy_bytes(x), headers=raw_in)
        assert r.status_code == 200 and np.array_equal(_from_npy(r.json()["outputs"]), want)
        # raw in, raw out: the array as the body, the counts in headers
        r = http.post(f"/v1/tasks/digits-scores/{op}", content=_npy_bytes(x),
                      headers={**raw_in, "Accept": "application/x-npy"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content), allow_pickle=False), want)
        assert r.headers["X-Maestro-Queries"] == "16" and r.headers["X-Maestro-Budget"] == "5000"
        assert int(r.headers["X-Maestro-Used"]) + int(r.headers["X-Maestro-Remaining"]) == 5000
    assert http.get("/v1/tasks/digits-scores", headers=h).json()["used"] == 12 * 16  # four requests per op
    # a raw answer to a JSON request too (one array); the unbudgeted task sends no budget headers
    r = http.post("/v1/tasks/tweets-labels/predict", json={"inputs": ["so late", "lovely crew"]},
                  headers={**h, "Accept": "application/x-npy"})
    assert r.status_code == 200 and "X-Maestro-Budget" not in r.headers and r.headers["X-Maestro-Used"] == "2"
    assert np.load(io.BytesIO(r.content)).tolist() == maestro.models.load("lstm-tweets").predict(
        ["so late", "lovely crew"]).tolist()
    # gradient with its logits holds two arrays: still JSON
    r = http.post("/v1/tasks/digits-wb/gradient?format=npy", headers={**h, "Accept": "application/x-npy"},
                  json={"inputs": _npy(x[:2]), "labels": [0, 1], "return_logits": True})
    assert r.status_code == 200 and set(r.json()) >= {"outputs", "logits"}


@pytest.mark.parametrize("arr", [
    np.arange(64 * 784, dtype=np.float32).reshape(64, 1, 28, 28), np.arange(5), np.zeros((0, 3)),
    np.float32(3.0), np.arange(6, dtype=">f4").reshape(2, 3), np.array([True, False]),
    np.arange(4, dtype=np.uint8).reshape(2, 2), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(3, dtype=np.float16)], ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_bytes_read_back_exactly_writable_and_native(arr):
    from maestro.server.arrays import from_npy_bytes

    got = from_npy_bytes(_npy_bytes(arr))
    assert got.shape == arr.shape and got.dtype == arr.dtype.newbyteorder("=")
    assert got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, arr)


def test_npy_bytes_refused_when_truncated_padded_or_not_numeric():
    from maestro.server.arrays import from_npy_bytes

    raw = _npy_bytes(np.arange(10, dtype=np.float32))
    for bad, reason in [(raw[:-4], "not a valid .npy array"), (raw + b"\0" * 4, "not a valid .npy array"),
                        (_npy_bytes(np.array(["a"])), "numeric"), (_npy_bytes(np.zeros(1, np.complex64)), "numeric")]:
        with pytest.raises(ValueError, match=reason):
            from_npy_bytes(bad)


def test_raw_npy_bodies_refused_with_the_reason(server, http, digits):
    h = _auth(server.store.create_token("raw-sloppy"))
    raw_in = {**h, "Content-Type": "application/x-npy"}
    x = digits[0][:2]
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        ("digits-scores/proba", b"not an npy file", 422, "not a valid .npy array"),
        ("digits-scores/proba", b"", 422, "not a valid .npy array"),
        ("digits-scores/proba", pickled.getvalue(), 422, "object arrays"),
        ("digits-scores/proba", _npy_bytes(x * 255), 422, "divide by 255"),
        ("digits-scores/proba", _npy_bytes(x[:, :, :4]), 422, "expected shape N×1×8×8"),
        ("digits-labels/proba", _npy_bytes(x), 403, "needs 'scores' access"),
        ("digits-wb/gradient", _npy_bytes(x), 415, "gradient takes a JSON body"),
        ("tweets-labels/predict", _npy_bytes(np.ones((2, 5), np.int64)), 415, "text task"),
        ("nope/predict", _npy_bytes(x), 404, "unknown task"),
    ]
    for path, body, code, reason in cases:
        r = http.post(f"/v1/tasks/{path}", content=body, headers=raw_in)
        assert r.status_code == code, (path, reason, r.status_code, r.text)
        assert reason in r.json()["detail"], (reason, r.json())
    r = http.post("/v1/tasks/digits-scores/predict", content=_npy_bytes(x), headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 415 and "application/x-npy" in r.json()["detail"]
    r = http.post("/get_batch_output", content=_npy_bytes(x), headers=raw_in)
    assert r.status_code == 415 and "JSON body" in r.json()["detail"]
    assert http.get("/v1/tasks/digits-scores", headers=h).json()["used"] == 0  # nothing charged


def test_text_endpoints(server, http):
    h = _auth(server.store.create_token("texter"))
    texts = ["the flight was late again", "great crew, thank you!"]
    local = maestro.models.load("lstm-tweets")
    tok = http.post("/v1/tasks/tweets/tokenize", json={"texts": texts}, headers=h).json()
    assert tok["input_ids"] == local.tokenize(texts).input_ids.tolist()
    assert http.post("/v1/tasks/tweets-labels/detokenize", json={"inputs": tok}, headers=h).json()["texts"] == texts
    r = http.post("/v1/tasks/tweets-labels/predict", json={"inputs": texts}, headers=h).json()
    assert r["outputs"] == local.predict(texts).tolist() and r["budget"] is None
    assert http.post("/v1/tasks/tweets-labels/predict", json={"inputs": tok}, headers=h).json()["outputs"] == r["outputs"]
    g = _from_npy(http.post("/v1/tasks/tweets/gradient?format=npy", json={"inputs": texts, "labels": [1, 0]},
                            headers=h).json()["outputs"])
    np.testing.assert_allclose(g, local.gradient(texts, [1, 0]).numpy(), atol=1e-6)
    emb = _from_npy(http.get("/v1/tasks/tweets/embedding?format=npy", headers=h).json()["embedding"])
    np.testing.assert_array_equal(emb, local.embedding_matrix().numpy())


def test_aliases_answer_like_v1(server, http, digits):
    token = server.store.create_token("seed-user")
    h = _auth(token)
    x, y = digits[0][:8].tolist(), digits[1][:8].tolist()
    assert http.post("/get_batch_output", json={"task": "digits-scores", "inputs": x}).status_code == 401
    alias = http.post("/get_batch_output", json={"task": "digits-scores", "inputs": x}, headers=h).json()
    v1 = http.post("/v1/tasks/digits-scores/proba", json={"inputs": x}, headers=h).json()
    assert alias["outputs"] == v1["outputs"] and alias["used"] == 8 and v1["used"] == 16
    labels = http.post("/get_batch_output", json={"task": "digits-labels", "inputs": x}, headers=h).json()
    assert labels["outputs"] == np.argmax(v1["outputs"], 1).tolist()
    ga = http.post("/get_batch_input_gradient", json={"task": "digits-wb", "inputs": x, "labels": y}, headers=h).json()
    gv = http.post("/v1/tasks/digits-wb/gradient", json={"inputs": x, "labels": y}, headers=h).json()
    assert ga["outputs"] == gv["outputs"]
    r = http.post("/get_batch_input_gradient", json={"task": "digits-scores", "inputs": x, "labels": y}, headers=h)
    assert r.status_code == 403


def test_rate_limit_per_token(tmp_path, digits):
    (tmp_path / "server.toml").write_text(
        '[server]\nrate_limit = 0.01\nrate_burst = 2\n[tasks.d]\nmodel = "cnn-digits"\naccess = "labels"\n'
    )
    app = create_app(ServerConfig.load(tmp_path))
    a, b = (app.state.store.create_token(s) for s in ("a", "b"))
    with background_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        body = {"inputs": digits[0][:1].tolist()}
        codes = [http.post("/v1/tasks/d/predict", json=body, headers=_auth(a)).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        r = http.post("/v1/tasks/d/predict", json=body, headers=_auth(a))
        assert "rate limit" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        assert http.post("/v1/tasks/d/predict", json=body, headers=_auth(b)).status_code == 200  # per token
    app.state.store.close()


def _cli(*argv: str) -> argparse.Namespace:
    from maestro.server.cli import add_commands

    parser = argparse.ArgumentParser(prog="maestro")
    parser.add_argument("--home", default=None)
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_tokens_command(tmp_path, capsys):
    (tmp_path / "server.toml").write_text('[tasks.d]\nmodel = "cnn-digits"\n')
    course = ["--course", str(tmp_path)]
    args = _cli("tokens", "create", "alice", *course)
    assert args.func(args) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("mt_") and len(token) > 40
    args = _cli("tokens", "create", "prof", "--instructor", *course)
    args.func(args)
    assert capsys.readouterr().out.strip().startswith("mt_")
    students = tmp_path / "students.csv"
    students.write_text("id,first_name,last_name,email\nbob,Bob,B,b@x\ncarol,Carol,C,c@x\nbob,Bob,B,b@x\n")
    args = _cli("tokens", "import", str(students), *course)
    args.func(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "student,token" and [ln.split(",")[0] for ln in lines[1:]] == ["bob", "carol"]
    args = _cli("tokens", "revoke", "alice", *course)
    args.func(args)
    args = _cli("tokens", "list", *course)
    args.func(args)
    out = capsys.readouterr().out
    assert token not in out
    rows = [ln.split() for ln in out.strip().splitlines()[1:]]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("alice", "student", "revoked"), ("prof", "instructor", "active"),
        ("bob", "student", "active"), ("carol", "student", "active")]
    args = _cli("tokens", "revoke", "nobody", *course)
    with pytest.raises(ValueError, match="no active token"):
        args.func(args)
    from maestro.server.db import Store

    store = Store(f"sqlite:///{tmp_path}/maestro-server.db")
    assert store.authenticate(token) is None and store.authenticate(lines[1].split(",")[1]).student == "bob"
    store.close()


@pytest.mark.slow
def test_budget_exact_across_two_worker_processes(server, http, digits, tmp_path):
    """`maestro serve --workers 2` on the same SQLite file: the budget holds across processes."""
    port = free_port()
    script = ("import argparse, sys; from maestro.server.cli import add_commands; "
              "p = argparse.ArgumentParser(); p.add_argument('--home'); add_commands(p.add_subparsers()); "
              "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "serve.log", "wb")  # closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "serve", str(server.course), "--port", str(port), "--workers", "2",
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        other = f"http://127.0.0.1:{port}"
        wait_until_serving(other, proc, tmp_path / "serve.log")
        token = server.store.create_token("two-processes")
        x = digits[0]
        barrier = threading.Barrier(200)

        def one(i):
            barrier.wait()
            url = (other if i % 2 else server.url) + "/v1/tasks/digits-labels/predict"
            return httpx.post(url, json={"inputs": x[i % 64: i % 64 + 1].tolist()}, headers=_auth(token), timeout=60)

        with ThreadPoolExecutor(200) as pool:
            codes = [r.status_code for r in pool.map(one, range(200))]
        assert codes.count(200) == 50 and codes.count(429) == 150
        who = server.store.authenticate(token)
        assert server.store.used(who.token_id, "digits-labels") == 50
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_no_5xx_for_junk_on_any_endpoint(server, http):
    h = _auth(server.store.create_token("fuzzer"))
    big_endian = _npy(np.zeros((2, 1, 8, 8), ">f4"))
    junk = [None, [], {}, "x", 1, {"inputs": None}, {"inputs": {}}, {"inputs": [None]}, {"inputs": [[]]},
            {"inputs": {"npy_b64": ""}}, {"inputs": {"input_ids": [[]]}}, {"inputs": ["a"], "labels": "b"},
            {"inputs": [[[[0.5]]]], "labels": [-1]}, {"texts": [1]}, {"texts": None}, {"task": 3},
            {"task": "digits-wb", "inputs": big_endian, "labels": [0, 1]}, {"inputs": big_endian}]
    paths = [p for p, ops in http.get("/openapi.json").json()["paths"].items() if "post" in ops]
    assert len(paths) >= 8
    for path in paths:
        for task in ("digits-wb", "tweets"):
            for body in junk:
                r = http.post(path.replace("{task}", task), json=body, headers=h)
                assert r.status_code < 500, (path, task, body, r.text)
    # big-endian .npy is read in the native byte order
    r = http.post("/v1/tasks/digits-wb/predict", json={"inputs": big_endian}, headers=h)
    assert r.status_code == 200 and r.json()["outputs"] == maestro.models.load("cnn-digits").predict(
        np.zeros((2, 1, 8, 8), np.float32)).tolist()


def test_a_token_revoked_elsewhere_stops_working_within_the_auth_ttl(tmp_path):
    """The server remembers a token for ``auth_ttl`` seconds; `maestro tokens revoke` (another
    Store on the same database) takes effect once that has passed, and a revocation through the
    server's own store at once."""
    import time

    from maestro.server.db import Store

    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    server, cli = Store(url, auth_ttl=0.5), Store(url)
    token = cli.create_token("alice")
    assert server.authenticate(token) is not None and server.cached_caller(token) is not None
    assert cli.revoke("alice") == 1
    time.sleep(0.6)
    assert server.cached_caller(token) is None and server.authenticate(token) is None
    other = cli.create_token("bob")
    assert server.authenticate(other) is not None
    assert server.revoke("bob") == 1 and server.cached_caller(other) is None


def test_charge_returns_the_usage_and_refuses_past_the_budget(tmp_path):
    from maestro.server.db import Store

    store = Store(f"sqlite:///{tmp_path / 'usage.db'}")
    who = store.authenticate(store.create_token("carol"))
    assert store.charge(who.token_id, "digits", 30, 50) == 30  # creates the usage row
    assert store.charge(who.token_id, "digits", 30, 50) is None  # refused whole: nothing charged
    assert store.charge(who.token_id, "digits", 20, 50) == 50
    assert store.charge(who.token_id, "other", 7, None) == 7 and store.used(who.token_id, "digits") == 50
