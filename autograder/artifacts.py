"""What may cross back from a sandboxed run: plain data only, checked before anyone loads it.

Accepted: ``.npy`` (numeric arrays, ``allow_pickle=False``), ``.json`` (size-capped) and
``.safetensors``. Refused, each with a reason a student can act on: a missing file, a name that
is not expected (or has a path in it), a symlink, a hard link, anything but a regular file, a
file over the size cap, a pickle or an object array, a file that does not parse.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

EXTENSIONS = (".npy", ".json", ".safetensors")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class ArtifactError(ValueError):
    """An artifact that cannot be accepted; the message is meant for the student."""


class ArtifactTooLarge(ArtifactError):
    """An artifact over its size cap (refused before its data is read)."""


def check_name(name: str) -> None:
    """Raise :class:`ArtifactError` unless ``name`` is a plain file name with a data extension."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ArtifactError(f"artifact name {name!r} is not a plain file name "
                            "(letters, digits, '_', '-', '.'; no folders)")
    if not name.endswith(EXTENSIONS):
        raise ArtifactError(f"artifact {name!r}: only {', '.join(EXTENSIONS)} files are accepted "
                            "(no pickle, no code)")


def parse(name: str, data: bytes) -> Any:
    """Parse the bytes of artifact ``name``: an ndarray, a JSON value or a dict of tensors."""
    if name.endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            if "pickle" in str(err).lower() or "object" in str(err).lower():
                raise ArtifactError(f"artifact {name!r} is a pickle/object array; save plain "
                                    "numeric arrays (np.save with a float or int array)") from None
            raise ArtifactError(f"artifact {name!r} is not a valid .npy file: {err}") from None
        except Exception as err:
            raise ArtifactError(f"artifact {name!r} is not a valid .npy file: {err}") from None
        if not isinstance(array, np.ndarray) or array.dtype.hasobject:
            raise ArtifactError(f"artifact {name!r} is a pickle/object array; save plain "
                                "numeric arrays")
        return array
    if name.endswith(".json"):
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ArtifactError(f"artifact {name!r} is not valid UTF-8 JSON: {err}") from None
    if name.endswith(".safetensors"):
        try:
            from safetensors.torch import load as load_safetensors

            return load_safetensors(data)
        except Exception as err:
            raise ArtifactError(f"artifact {name!r} is not a valid .safetensors file: "
                                f"{str(err)[:300]}") from None
    raise ArtifactError(f"artifact {name!r}: unsupported type")


def read_regular(dir_fd: int, name: str, max_bytes: int) -> bytes:
    """Read ``name`` inside the open folder ``dir_fd``: a regular, single-link file, no symlink."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise ArtifactError(f"artifact {name!r} is missing: the notebook did not write it to "
                            "the output folder") from None
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactError(f"artifact {name!r} is a symlink; write the data itself")
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"artifact {name!r} is not a regular file")
    if st.st_nlink != 1:
        raise ArtifactError(f"artifact {name!r} is a hard link; write the data itself")
    if st.st_size > max_bytes:
        raise ArtifactTooLarge(f"artifact {name!r} is too large: {st.st_size} bytes "
                               f"(limit {max_bytes})")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as err:
        raise ArtifactError(f"artifact {name!r} cannot be opened: {err.strerror}") from None
    try:
        st2 = os.fstat(fd)
        if (st2.st_ino, st2.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(st2.st_mode):
            raise ArtifactError(f"artifact {name!r} changed while being read")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ArtifactTooLarge(f"artifact {name!r} is too large (limit {max_bytes} bytes)")
    return data


def read_file(path: str | os.PathLike[str], max_bytes: int, *, too_large: str | None = None) -> bytes:
    """The bytes of the artifact file ``path`` with the checks of :func:`read_regular` (plain
    name, folder not a symlink, regular single-link file, at most ``max_bytes``); ``too_large``:
    the message of the :class:`ArtifactTooLarge` raised over the cap (say what the file should hold)."""
    path = Path(path)
    check_name(path.name)
    dir_fd = open_folder(path.parent)
    try:
        return read_regular(dir_fd, path.name, max_bytes)
    except ArtifactTooLarge:
        if too_large is None:
            raise
        raise ArtifactTooLarge(too_large) from None
    finally:
        os.close(dir_fd)


def open_folder(path: Path) -> int:
    """Open ``path`` as a folder without following a symlink at its last component."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise ArtifactError(f"the output folder is missing or not a folder ({err.strerror}); "
                            "do not delete or replace it") from None


def collect(folder: Path, expected: list[str], dest: Path, *, max_bytes: int = 64 * 2**20,
            ) -> tuple[dict[str, Path], dict[str, str]]:
    """Validate the ``expected`` artifacts in ``folder``; copy the good ones into ``dest``.

    Returns ``(artifacts, problems)``: name -> path of the validated copy (outside the
    sandbox's reach), and name -> reason for every expected artifact that was refused. Never
    raises for anything the notebook did.
    """
    artifacts: dict[str, Path] = {}
    problems: dict[str, str] = {}
    try:
        dir_fd = open_folder(folder)
    except ArtifactError as err:
        return {}, {name: str(err) for name in expected}
    try:
        try:
            present = sorted(os.listdir(dir_fd))[:50]
        except OSError:
            present = []
        for name in expected:
            try:
                check_name(name)
                data = read_regular(dir_fd, name, max_bytes)
                parse(name, data)
            except ArtifactError as err:
                reason = str(err)
                if "missing" in reason:
                    others = [p for p in present if p not in expected]
                    if others:
                        reason += f" (found instead: {', '.join(others[:10])})"
                problems[name] = reason
                continue
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / name
            target.write_bytes(data)
            artifacts[name] = target
    finally:
        os.close(dir_fd)
    return artifacts, problems


def load(path: str | os.PathLike[str], *, max_bytes: int = 64 * 2**20) -> Any:
    """Load one artifact safely (the same checks as :func:`collect`); raises ArtifactError."""
    return parse(Path(path).name, read_file(path, max_bytes))
