"""Arrays on the wire: JSON lists, base64-encoded ``.npy`` (``{"npy_b64": ...}``), or a whole
request/answer body of raw ``.npy`` bytes (``Content-Type: application/x-npy``).

``.npy`` payloads are read with ``np.load(allow_pickle=False)``: object arrays are refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re

import numpy as np

_NUMERIC = "biuf"


NPY_MEDIA_TYPE = "application/x-npy"


def from_npy_b64(data: str, what: str = "inputs") -> np.ndarray:
    if not isinstance(data, str):
        raise ValueError(f"{what}: npy_b64 must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: npy_b64 is not valid base64") from None
    return from_npy_bytes(raw, what)


def from_npy_bytes(raw: bytes, what: str = "inputs") -> np.ndarray:
    """The numeric array in the bytes of one ``.npy`` file (no pickle, native byte order)."""
    if not raw.startswith(b"\x93NUMPY"):
        kind = "empty" if not raw else ("a .npz archive" if raw.startswith(b"PK") else "something else")
        raise ValueError(f"{what}: not a valid .npy array: got {kind}, not the bytes np.save writes "
                         "(they start with \\x93NUMPY)")
    arr = _plain_npy(raw, what)
    if arr is not None:
        return arr
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower() or "object" in str(err).lower():
            raise ValueError(f"{what}: object arrays are not accepted (no pickle)") from None
        raise ValueError(f"{what}: not a valid .npy array ({err})") from None
    except Exception as err:
        raise ValueError(f"{what}: not a valid .npy array ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what}: expected one .npy array, got an archive")
    if arr.dtype.kind not in _NUMERIC:
        raise ValueError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    if not arr.dtype.isnative:  # big-endian payloads: torch only takes native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


# the header np.save writes for a C-ordered numeric array, e.g.
# {'descr': '<f4', 'fortran_order': False, 'shape': (64, 1, 28, 28), }
_PLAIN_HEADER = re.compile(rb"\{'descr': '([<>|=][biuf][1-8])', 'fortran_order': False, "
                           rb"'shape': \(((?:\d+, )*\d+,?|)\), \} *\n")


def _plain_npy(raw: bytes, what: str) -> np.ndarray | None:
    """The array of a ``.npy`` file with np.save's usual header, read without np.load's
    ``ast.literal_eval`` of the header; None for any other header (np.load then reads it, or
    says what is wrong). Data bytes that do not match the header's shape are refused."""
    if raw[6:8] == b"\x01\x00":
        start, size = 10, int.from_bytes(raw[8:10], "little")
    elif raw[6:8] in (b"\x02\x00", b"\x03\x00"):
        start, size = 12, int.from_bytes(raw[8:12], "little")
    else:
        return None
    m = _PLAIN_HEADER.fullmatch(raw, start, start + size)
    if m is None:
        return None
    dtype = np.dtype(m.group(1).decode())
    shape = tuple(int(d) for d in m.group(2).split(b",") if d.strip())
    count = math.prod(shape)
    if len(raw) - (start + size) != count * dtype.itemsize:
        raise ValueError(f"{what}: not a valid .npy array: the header says shape {shape} of {dtype} "
                         f"({count * dtype.itemsize} bytes) but {len(raw) - start - size} bytes follow it")
    arr = np.frombuffer(raw, dtype, count, start + size).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy, in native byte order


def to_npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def to_npy_b64(arr: np.ndarray) -> str:
    return base64.b64encode(to_npy_bytes(arr)).decode("ascii")


def from_json_list(value, what: str, dtype) -> np.ndarray:
    """A (nested) JSON list of numbers as an array of ``dtype``; ragged or non-numeric lists are
    refused with a reason."""
    try:
        arr = np.asarray(value)
    except ValueError:
        raise ValueError(f"{what}: ragged nested list (rows of different lengths)") from None
    if arr.dtype == object:
        raise ValueError(f"{what}: ragged nested list (rows of different lengths)")
    if arr.dtype.kind not in _NUMERIC:
        raise ValueError(f"{what}: expected numbers, got {arr.dtype.kind!r}-type values")
    if arr.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{what}: expected whole numbers")
    return arr.astype(dtype)


def decode(value, what: str, dtype=np.float32) -> np.ndarray:
    """Either wire form to an array (JSON lists are read as ``dtype``; ``.npy`` keeps its dtype)."""
    if isinstance(value, dict):
        if set(value) != {"npy_b64"}:
            raise ValueError(f"{what}: an object must be {{\"npy_b64\": \"...\"}}")
        return from_npy_b64(value["npy_b64"], what)
    if isinstance(value, (list, int, float)) and not isinstance(value, bool):
        return from_json_list(value, what, dtype)
    raise ValueError(f"{what}: expected a JSON list or {{\"npy_b64\": ...}}")


def encode(arr: np.ndarray, fmt: str):
    return {"npy_b64": to_npy_b64(arr)} if fmt == "npy" else arr.tolist()
