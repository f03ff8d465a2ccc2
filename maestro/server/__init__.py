"""The Maestro model server: serve course models over HTTP at an access level and a query
budget per student (``maestro serve``; clients use :func:`maestro.remote.connect`).

    from maestro.server import ServerConfig, create_app
    app = create_app(ServerConfig.load("course/"))      # course/server.toml

Needs the ``server`` extra (fastapi, uvicorn, sqlalchemy, httpx). Names load on first use, so
``maestro.server.cli`` stays light for the command line.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ServerConfig": "config",
    "TaskConfig": "config",
    "Store": "db",
    "create_app": "app",
    "background_server": "local",
}
__all__ = ["ServerConfig", "Store", "TaskConfig", "background_server", "create_app"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'maestro.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"maestro.server.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
