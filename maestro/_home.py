"""Where Maestro keeps built models and cached data: ``$MAESTRO_HOME`` or ``~/.cache/maestro``."""

from __future__ import annotations

import os
from pathlib import Path


def maestro_home(home: str | os.PathLike | None = None) -> Path:
    """The Maestro home folder; an explicit ``home`` wins over ``$MAESTRO_HOME``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("MAESTRO_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "maestro"
