"""maestro.remote against a real server on 127.0.0.1: the wrapper's interface, its errors,
and black-box attacks running unchanged within the server's budget."""

from __future__ import annotations

import pytest
import torch

import maestro
from maestro.attacks import PGD, HopSkipJump, SquareAttack
from maestro.errors import AccessDenied, QueryBudgetExceeded
from maestro.remote import RemoteModel, connect

CONFIG = """
[server]
rate_limit = 0
max_batch = 512

[tasks.scores]
model = "cnn-digits"
dataset = "digits"
access = "scores"
budget = 20000
threat = { norm = "linf", eps = 0.2 }

[tasks.labels]
model = "cnn-digits"
dataset = "digits"
access = "labels"
budget = 8000
threat = { norm = "l2", eps = 1.5 }

[tasks.small]
model = "cnn-digits"
access = "labels"
budget = 30

[tasks.wb]
model = "cnn-digits"
access = "white-box"

[tasks.tweets]
model = "lstm-tweets"
dataset = "tweets"
access = "white-box"
threat = { norm = "tokens", eps = 2 }

[tasks.tweets-labels]
model = "lstm-tweets"
access = "labels"
threat = { norm = "tokens", eps = 2 }
"""


@pytest.fixture(scope="module")
def server(course_server):
    url, app, _ = course_server(CONFIG)
    return url, app.state.store


@pytest.fixture(scope="module")
def token(server):
    return server[1].create_token("remote-student")


@pytest.fixture(scope="module")
def local():
    return maestro.models.load("cnn-digits")


@pytest.fixture(scope="module")
def digits():
    d = maestro.datasets.load("digits", split="test")
    return d.x[:40], d.y[:40]


def test_remote_mirrors_the_wrapper(server, token, local, digits):
    x, y = digits
    with connect(server[0], token, "scores") as m:
        assert isinstance(m, RemoteModel)
        assert (m.modality, m.access, m.num_classes, m.input_shape) == ("image", "scores", 10, (1, 8, 8))
        assert m.input_bounds == (0.0, 1.0) and m.budget == 20000 and m.remaining == 20000
        assert m.threat == maestro.ThreatModel("linf", 0.2, access="scores")
        assert torch.equal(m.predict(x), local.predict(x))
        assert torch.equal(m.predict_proba(x), local.predict_proba(x))
        assert torch.equal(m.logits(x[:5]), local.logits(x[:5]))
        assert m.queries == 85 and m.remaining == 20000 - 85
        with pytest.raises(AccessDenied, match="'white-box' access"):
            m.gradient(x, y)
        assert m.queries == 85  # refused before anything was sent
        # the wrapper's own validators, before anything is sent
        with pytest.raises(ValueError, match="divide by 255"):
            m.predict(x * 255)
        with pytest.raises(TypeError, match="floating-point"):
            m.predict((x * 16).long())
        with pytest.raises(ValueError, match="labels must lie in"):
            m.prepare_labels([10] * 3, 3)
        assert m.queries == 85
        # and the server's 422, for inputs that reach it anyway, as ValueError with its reason
        with pytest.raises(ValueError, match="server: inputs: expected shape"):
            m._call("predict", torch.zeros(2, 1, 4, 4))
    with connect(server[0], token, "labels") as m:
        with pytest.raises(AccessDenied, match="allows: predict"):
            m.predict_proba(x)
    with connect(server[0], token, "wb") as m:
        assert m.budget is None
        torch.testing.assert_close(m.gradient(x, y), local.gradient(x, y), rtol=0, atol=1e-6)
        torch.testing.assert_close(m.gradient(x, y, loss="margin", targeted=True),
                                   local.gradient(x, y, loss="margin", targeted=True), rtol=0, atol=1e-6)
        # a white-box attack runs through the server too
        before = m.queries
        r = PGD(maestro.ThreatModel("linf", 0.2), steps=5)(m, x[:10], y[:10])
        here = PGD(maestro.ThreatModel("linf", 0.2), steps=5)(local, x[:10], y[:10])
        assert r.queries == here.queries == m.queries - before and r.success_rate > 0.5
        assert torch.equal(r.success, here.success) and torch.allclose(r.x_adv, here.x_adv, atol=1e-6)


def test_errors_map_to_the_kits(server, token, digits):
    url, store = server
    x = digits[0]
    with pytest.raises(AccessDenied, match="invalid or revoked"):
        connect(url, "mt_wrong", "scores")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        connect(url, token, "nope")
    spender = store.create_token("budget-spender")
    m = connect(url, spender, "small")
    m.predict(x[:25])
    with pytest.raises(QueryBudgetExceeded, match="needs 10 queries but only 5"):
        m.predict(x[:10])  # refused by the client, nothing sent
    # a second client of the same token spends the rest; the first still believes 5 are left,
    # so its request reaches the server, whose 429 becomes the same error
    connect(url, spender, "small").predict(x[:5])
    assert m.remaining == 5
    with pytest.raises(QueryBudgetExceeded, match="server: budget spent"):
        m.predict(x[:1])
    assert m.remaining == 0 and store.used(store.authenticate(spender).token_id, "small") == 30
    with pytest.raises(maestro.errors.MaestroError, match="cannot reach"):
        connect("http://127.0.0.1:9", token, "scores", timeout=2)


def test_black_box_attacks_run_unchanged_within_the_budget(server, local, digits):
    url, store = server
    x, y = digits
    m = connect(url, store.create_token("attacker"), "scores")
    threat = maestro.ThreatModel("linf", 0.2, access="scores")
    remote = SquareAttack(threat, max_queries=100)(m, x, y)
    here = SquareAttack(threat, max_queries=100)(local.restrict("scores"), x, y)
    assert remote.success_rate > 0.7
    assert torch.equal(remote.success, here.success) and remote.queries == here.queries
    assert torch.allclose(remote.x_adv, here.x_adv)
    assert m.queries == remote.queries and m.remaining == 20000 - remote.queries
    info = m.refresh()
    assert info["used"] == remote.queries  # the server counted exactly what the attack counted

    m = connect(url, store.create_token("hsj"), "labels")
    l2 = maestro.ThreatModel("l2", 1.5, access="labels")
    hsj = HopSkipJump(l2, max_queries=150)(m, x[:20], y[:20])
    assert hsj.success_rate > 0.4 and hsj.queries <= 8000
    assert m.refresh()["used"] == hsj.queries == m.queries
    # an attack given less budget than it wants stops cleanly at the budget
    tight = connect(url, store.create_token("tight"), "small")
    r = HopSkipJump(l2, max_queries=150)(tight, x[:20], y[:20])
    assert r.queries <= 30 and tight.remaining == 30 - r.queries


def test_text_tasks(server, token):
    texts = ["the flight was late again", "great crew, thank you!"]
    clf = maestro.models.load("lstm-tweets")
    with connect(server[0], token, "tweets-labels") as m:
        tb = m.tokenize(texts)
        assert torch.equal(tb.input_ids, clf.tokenize(texts).input_ids)
        assert m.detokenize(tb) == texts and m.detokenize(tb.input_ids) == texts
        assert torch.equal(m.predict(texts), clf.predict(texts)) and torch.equal(m.predict(tb), clf.predict(texts))
        with pytest.raises(AccessDenied):
            m.embedding_matrix()
        with pytest.raises(AccessDenied):
            m.embeddings(texts)
        with pytest.raises(TypeError, match="one str"):
            m.predict("one text")
    with connect(server[0], token, "tweets") as m:
        g = m.gradient(texts, [1, 0])
        assert g.shape == clf.gradient(texts, [1, 0]).shape
        torch.testing.assert_close(g, clf.gradient(texts, [1, 0]), rtol=0, atol=1e-6)
        assert torch.equal(m.embedding_matrix(), clf.embedding_matrix())
        assert torch.equal(m.embeddings(texts), clf.embeddings(texts))
        assert m.queries == 2  # embeddings and tokenize are free, as in the wrapper
    # the tokenizer travels as JSON data: a client tokenizes exactly as the served model does
    import httpx

    from maestro.text import tokenizer_from_json

    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{server[0]}/v1/tasks/tweets-labels/tokenizer", headers=auth)
    assert r.status_code == 200 and r.json()["kind"] == "word"
    tok = tokenizer_from_json(r.json())
    assert torch.equal(tok.encode(texts).input_ids, clf.tokenize(texts).input_ids)
    assert tok.special_ids == clf.tokenizer.special_ids and tok.vocab_size == clf.tokenizer.vocab_size
    r = httpx.get(f"{server[0]}/v1/tasks/wb/tokenizer", headers=auth)
    assert r.status_code == 404 and "text tasks" in r.json()["detail"]
    assert httpx.get(f"{server[0]}/v1/tasks/tweets/tokenizer").status_code == 401


def test_white_box_text_attacks_run_remotely(server, token):
    """HotFlip over HTTP (tokenizer sent as data, gradients and embeddings from the server)
    finds exactly what it finds on the local model."""
    from maestro.attacks import HotFlip

    data = maestro.datasets.load("tweets", "dev")[:24]
    clf = maestro.models.load("lstm-tweets")
    threat = maestro.ThreatModel("tokens", 2)
    local = HotFlip(threat)(clf, data.x, data.y)
    with connect(server[0], token, "tweets") as m:
        assert m.tokenizer.vocab_size == clf.tokenizer.vocab_size
        remote = HotFlip(threat)(m, data.x, data.y)
        assert m.queries > 0
    assert remote.x_adv == local.x_adv and torch.equal(remote.success, local.success)
    assert local.success.any()


def test_an_idle_connection_the_server_closed_is_replaced_and_nothing_is_charged_twice(tmp_path, digits):
    from maestro.server import ServerConfig, create_app
    from maestro.server.local import background_server

    (tmp_path / "server.toml").write_text(CONFIG)
    app = create_app(ServerConfig.load(tmp_path))
    token = app.state.store.create_token("idle-student")
    try:
        with background_server(app, keep_alive=0.2) as url:
            oracle = connect(url, token, "scores")
            x = digits[0][:8]
            first = oracle.predict(x)
            import time

            for _ in range(3):  # each time the server has closed the kept-alive connection
                time.sleep(0.5)
                assert torch.equal(oracle.predict(x), first)
            assert oracle.queries == 32 and app.state.store.used(app.state.store.authenticate(token).token_id, "scores") == 32
            oracle.close()
    finally:
        app.state.store.close()


def test_a_request_on_a_connection_closed_under_it_is_sent_once_more():
    """A kept-alive connection the server drops as the next request arrives, without running
    it (a stdlib server answering one request per connection): sent again on a fresh one."""
    import http.server
    import threading

    from maestro._http import HTTPClient, HTTPError

    answered, dropped = [], []

    class OnePerConnection(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one_request(self):
            if getattr(self, "served", False):  # the connection's second request: drop it
                dropped.append(self.rfile.peek(1)[:1])
                self.close_connection = True
                return
            self.served = True
            super().handle_one_request()

        def do_POST(self):
            answered.append(self.rfile.read(int(self.headers["Content-Length"])))
            answer = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OnePerConnection)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = HTTPClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=5)
        for i in range(4):
            assert client.request("POST", "/x", json={"i": i}).json() == {"ok": True}
        assert answered == [f'{{"i": {i}}}'.encode() for i in range(4)]  # each ran exactly once
        assert len(dropped) == 3  # requests 2-4 each met a connection that went away first
        client.close()
        # a fresh connection that fails is not sent again
        httpd.shutdown()
        httpd.server_close()
        with pytest.raises(HTTPError):
            HTTPClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=5).request("POST", "/x", json={})
    finally:
        httpd.shutdown()


def test_a_server_that_never_answers_times_out_with_a_clear_error():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        with pytest.raises(maestro.remote.RemoteError, match="no answer within 0.5 s"):
            RemoteModel(f"http://127.0.0.1:{listener.getsockname()[1]}", "token", "scores", timeout=0.5)
    finally:
        listener.close()


def test_nothing_listening_is_a_clear_error(tmp_path):
    with pytest.raises(maestro.remote.RemoteError, match="cannot reach the Maestro server"):
        RemoteModel(f"unix://{tmp_path}/nobody.sock", "token", "scores")


def test_threads_share_one_remote_model(server, token, local, digits):
    from concurrent.futures import ThreadPoolExecutor

    oracle = connect(server[0], token, "scores")
    x = digits[0]
    want = local.predict(x)
    before = oracle.queries
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: oracle.predict(x[i::4]), range(4)))
    for i, out in enumerate(outs):
        assert torch.equal(out, want[i::4])
    assert oracle.queries - before == len(x)
    oracle.close()
