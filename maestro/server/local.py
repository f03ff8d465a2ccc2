"""Run a server app on a loopback port in a background thread (tests, notebooks, demos).

    with background_server(create_app(config)) as url:
        oracle = maestro.remote.connect(url, token, "digits-scores")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0):
    """Serve ``app`` with uvicorn in a daemon thread; yields its base URL, stops on exit."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("background_server listens on loopback addresses only")
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name=f"maestro-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
