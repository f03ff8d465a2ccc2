"""Waiting for a `maestro serve` process the tests started."""

from __future__ import annotations

import time
from pathlib import Path

import httpx


def wait_until_serving(url: str, proc, log: Path, *, timeout: float = 90.0,
                       ready=lambda health: True, verify=True) -> None:
    """Poll ``url``/v1/health until it answers 200 and ``ready(health JSON)``; fail with the
    server's log if the process exits or ``timeout`` seconds pass. ``verify``: httpx's TLS
    verification (an ``ssl.SSLContext`` trusting a test CA for https)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/v1/health", timeout=2, verify=verify)
            if r.status_code == 200 and ready(r.json()):
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, Path(log).read_text()
        time.sleep(0.25)
