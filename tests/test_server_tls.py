"""`maestro serve --certfile/--keyfile`: the model server over https, and `maestro.remote` on it.

A throwaway certificate authority (``trustme``) signs a certificate for 127.0.0.1; a real
`maestro serve` process serves a course's task over TLS on loopback, and a real
:func:`maestro.remote.connect` queries it with the course's CA file (``ca=``). Also checked: each
way a student can get the connection wrong ends in a message that says what to do (the system
does not trust the course's certificate; http:// to the https server; https:// to a plain one),
and bad certificate files stop `maestro serve` before it starts.
"""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from _serve import wait_until_serving

import maestro
from maestro.remote import RemoteError
from maestro.server import ServerConfig
from maestro.server.cli import plain_http_warning
from maestro.server.db import Store
from maestro.server.local import free_port

trustme = pytest.importorskip("trustme", reason="pip install trustme (the dev extra has it)")

CONFIG = """
[server]
database = "server.db"
rate_limit = 0

[tasks.digits-scores]
model = "cnn-digits"
dataset = "digits"
access = "scores"
budget = 100
threat = { norm = "linf", eps = 0.1 }
"""


def _serve(course: Path, log: Path, *extra: str):
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "maestro", "serve", str(course), "--port", str(port),
                                 "--log-level", "warning", *extra],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, port


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, chain, key = tmp / "course-ca.pem", tmp / "server.pem", tmp / "server-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    course = tmp / "course"
    course.mkdir()
    (course / "server.toml").write_text(CONFIG)
    store = Store(ServerConfig.load(course).database_url)  # what `maestro tokens create` opens
    token = store.create_token("alice")
    store.close()
    log = tmp / "serve.log"
    proc, port = _serve(course, log, "--certfile", str(chain), "--keyfile", str(key))
    try:
        wait_until_serving(f"https://127.0.0.1:{port}", proc, log,
                           verify=ssl.create_default_context(cafile=str(ca_file)))
        yield {"url": f"https://127.0.0.1:{port}", "port": port, "ca": str(ca_file), "token": token,
               "log": log, "chain": chain, "key": key, "course": course}
    finally:
        _stop(proc)


def test_remote_over_https_with_the_course_ca(tls_server):
    digits = maestro.datasets.load("digits", split="test")
    x = digits.x[:40]
    local = maestro.models.load("cnn-digits")
    with maestro.remote.connect(tls_server["url"], tls_server["token"], "digits-scores", ca=tls_server["ca"]) as oracle:
        assert oracle.remaining == 100
        assert oracle.predict(x).tolist() == local.predict(x).tolist()
        assert np.allclose(oracle.predict_proba(x).numpy(), local.predict_proba(x).numpy(), atol=1e-5)
        assert oracle.remaining == 20  # 40 + 40 inputs charged, over TLS as over http
        # the port really speaks TLS: the startup line names https
        assert f"https://127.0.0.1:{tls_server['port']}" in tls_server["log"].read_text()
    assert "plain http" not in tls_server["log"].read_text()  # TLS (and loopback): no warning


def test_an_untrusted_certificate_says_how_to_trust_the_course(tls_server):
    # the system's CAs do not know the course's own authority
    with pytest.raises(RemoteError, match=r"certificate is not trusted.*ca='course-ca.pem'"):
        maestro.remote.connect(tls_server["url"], tls_server["token"], "digits-scores")
    # another course's authority is no better
    wrong = Path(tls_server["ca"]).with_name("other-ca.pem")
    trustme.CA().cert_pem.write_to_path(str(wrong))
    with pytest.raises(RemoteError, match="not trusted"):
        maestro.remote.connect(tls_server["url"], tls_server["token"], "digits-scores", ca=str(wrong))
    with pytest.raises(ValueError, match="no certificate file"):
        maestro.remote.connect(tls_server["url"], tls_server["token"], "digits-scores", ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="no usable PEM certificate"):
        maestro.remote.connect(tls_server["url"], tls_server["token"], "digits-scores", ca=str(tls_server["course"] / "server.toml"))
    with pytest.raises(ValueError, match="https:// server"):
        maestro.remote.connect(f"http://127.0.0.1:{tls_server['port']}", tls_server["token"], "digits-scores",
                               ca=tls_server["ca"])


def test_http_to_the_https_server_says_https(tls_server):
    with pytest.raises(RemoteError, match="starts with https://"):
        maestro.remote.connect(f"http://127.0.0.1:{tls_server['port']}", tls_server["token"], "digits-scores")


def test_https_to_a_plain_http_server_says_http():
    class Plain(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RemoteError, match="TLS handshake failed.*http://"):
            maestro.remote.connect(f"https://127.0.0.1:{server.server_address[1]}", "t0ken", "digits-scores")
    finally:
        server.shutdown()
        server.server_close()


def test_bad_certificate_files_stop_the_server_before_it_starts(tls_server, tmp_path):
    course = tls_server["course"]
    cases = [
        (["--certfile", str(tmp_path / "missing.pem")], "--certfile: no file at"),
        (["--keyfile", str(tls_server["key"])], "--keyfile needs --certfile"),
        (["--certfile", str(tls_server["chain"])], "not a usable PEM certificate chain"),  # no key
        (["--certfile", str(tls_server["key"]), "--keyfile", str(tls_server["chain"])], "not a usable PEM"),
    ]
    for flags, message in cases:
        run = subprocess.run([sys.executable, "-m", "maestro", "serve", str(course), "--port", str(free_port()), *flags],
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode != 0 and message in run.stderr, (flags, run.stderr[-2000:])
        assert "Traceback" not in run.stderr, run.stderr


def test_plain_http_beyond_loopback_is_warned():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert plain_http_warning(host, tls=False) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "maestro.example.edu"):
        warning = plain_http_warning(host, tls=False)
        assert warning and "--certfile" in warning and host in warning
        assert plain_http_warning(host, tls=True) is None
