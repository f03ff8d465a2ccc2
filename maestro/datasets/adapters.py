"""Adapters: bring outside data into Maestro as ``(x, y, classes, info)``.

``load_raw(scheme, arg, home=..., **options)`` returns the whole data set in its original order;
:func:`maestro.datasets.load` applies the train/dev/test/hidden split. Schemes:

``hf:<dataset id>[:config]``
    A Hugging Face dataset (all of its splits pooled). Options: ``image_column=``,
    ``text_column=``, ``label_column=``, ``splits=`` (which of the dataset's splits to pool),
    ``size=(H, W)``, ``mode="L"|"RGB"``, ``max_examples=``, ``revision=``. Offline (no network, or
    ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set) it loads from the local cache only and fails
    within seconds. A local folder of data files (or one written by ``save_to_disk``) works too.
``torchvision:<Name>``
    A torchvision data set (needs ``pip install "maestro-aml[vision]"``), train and test pooled,
    kept under ``<maestro home>/data/torchvision``. Options: ``download=False``, ``size=``,
    ``mode=``, ``max_examples=``; anything else goes to the data set's constructor.
``csv:<path>``
    Text data with a header row: columns ``text`` and ``label`` (``text_column=``,
    ``label_column=``, ``encoding="utf-8"``, ``delimiter=","``, ``classes=``, ``max_examples=``).
``folder:<path>``
    Images, one sub-folder per class (``mode=``, ``size=``, ``max_examples=``).
``npz:<path>``
    Arrays: ``x`` (or ``images``) and ``y`` (or ``labels``), optional ``classes``; or ``texts``
    for text (``classes=``, ``max_examples=``). Loaded without pickle.

Nothing heavy (PIL, ``datasets``, torchvision) is imported until a scheme needs it.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.util
import inspect
import os
import re
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from ..errors import AssetUnavailable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEXT_COLUMN_NAMES = ("text", "sentence", "content", "review", "document", "tweet", "comment", "body")
LABEL_COLUMN_NAMES = ("label", "labels")
HF_PROBE_TIMEOUT_S = 2.0
_TRUE = {"1", "ON", "YES", "TRUE"}
_LOCAL_HINT = (
    "or provide the data locally instead: npz:<file.npz> (arrays x, y), csv:<file.csv> "
    "(columns text,label) or folder:<dir> (one sub-folder of images per class)"
)

Raw = tuple[torch.Tensor | list[str], torch.Tensor, list[str], dict]


def load_raw(scheme: str, arg: str, *, home: Path, **options) -> Raw:
    """The whole data set named ``<scheme>:<arg>`` as ``(x, y, classes, info)``."""
    loaders = {
        "hf": load_hf,
        "torchvision": load_torchvision,
        "csv": load_csv,
        "folder": load_folder,
        "npz": load_npz,
    }
    if scheme not in loaders:
        raise ValueError(
            f"unknown dataset scheme {scheme!r}; known: {', '.join(f'{s}:' for s in loaders)}"
        )
    if not isinstance(arg, str) or not arg:
        raise ValueError(f"dataset '{scheme}:': the part after '{scheme}:' is empty")
    loader = loaders[scheme]
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "home"]
        _check_options(f"dataset '{scheme}:{arg}'", options, allowed)
    return loader(arg, home=Path(home), **options)


# -- shared helpers ---------------------------------------------------------------------------
def _check_options(where: str, options: dict, allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {', '.join(unknown)}; this loader accepts "
            f"{', '.join(sorted(allowed)) or 'no options'}"
        )


def _check_size(where: str, size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{where}: size must be (height, width) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_mode(where: str, mode) -> str | None:
    if mode is None:
        return None
    if mode not in ("L", "RGB"):
        raise ValueError(f"{where}: mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
    return mode


def _check_max_examples(where: str, max_examples) -> int | None:
    if max_examples is None:
        return None
    if not isinstance(max_examples, int) or isinstance(max_examples, bool) or max_examples < 1:
        raise ValueError(f"{where}: max_examples must be a positive int, got {max_examples!r}")
    return max_examples


def _subset(n: int, max_examples: int | None) -> np.ndarray | None:
    """Indices of a deterministic, order-preserving sample of ``max_examples`` out of ``n``.

    A sample, not the first rows: many data sets are stored sorted by class.
    """
    if max_examples is None or max_examples >= n:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, size=max_examples, replace=False))


def _file(where: str, arg: str, *, kind: str) -> Path:
    path = Path(arg).expanduser()
    if kind == "dir":
        if not path.exists():
            raise AssetUnavailable(f"{where}: folder {str(path)!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"{where}: {str(path)!r} is a file; folder: needs a folder")
    else:
        if not path.exists():
            raise AssetUnavailable(f"{where}: file {str(path)!r} does not exist")
        if not path.is_file():
            raise ValueError(f"{where}: {str(path)!r} is not a file")
    return path


def _labels_from_values(where: str, values: Sequence, classes=None) -> tuple[list[int], list[str]]:
    """Integer labels and class names from ints (or int strings) or class-name strings."""
    vals = list(values)
    if not vals:
        raise ValueError(f"{where}: no examples")
    if classes is not None:
        classes = [str(c) for c in classes]
    int_like = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals) or all(
        isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v) for v in vals
    )
    if int_like:
        ints = [int(v) for v in vals]
    elif all(isinstance(v, str) for v in vals):
        names = [v.strip() for v in vals]
        if any(not n for n in names):
            raise ValueError(f"{where}: label #{names.index('')} is empty; every example needs a label")
        if classes is None:
            classes = sorted(set(names))
        lookup = {c: i for i, c in enumerate(classes)}
        missing = sorted(set(names) - set(lookup))
        if missing:
            raise ValueError(f"{where}: label(s) {missing[:5]} are not in classes={classes}")
        return [lookup[n] for n in names], list(classes)
    else:
        bad = next(v for v in vals if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool))
        raise TypeError(
            f"{where}: labels must be integer class indices or class-name strings; found "
            f"{bad!r} ({type(bad).__name__})"
        )
    lo, hi = min(ints), max(ints)
    if lo < 0:
        raise ValueError(f"{where}: labels must be class indices >= 0, found {lo}")
    if classes is None:
        classes = [str(i) for i in range(hi + 1)]
    elif hi >= len(classes):
        raise ValueError(f"{where}: label {hi} is out of range for {len(classes)} classes {classes}")
    return ints, list(classes)


# -- images -----------------------------------------------------------------------------------
_GRAY_MODES = {"1", "L", "LA", "I", "F", "La"}


def _is_gray(img) -> bool:
    if img.mode in _GRAY_MODES or img.mode.startswith("I;16"):
        return True
    if img.mode == "P":
        palette = img.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
        return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())
    return False


def _image_array(img, mode: str | None, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """One PIL image as an H×W×C array (uint8, or float32 in [0,1] for 16-bit/float images).

    C is 1 when the image is grayscale (or ``mode="L"``), else 3; alpha is dropped.
    """
    from PIL import Image

    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    gray = mode == "L" or (mode is None and _is_gray(img))
    wide = img.mode.startswith("I") or img.mode == "F"
    if gray and wide:
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.size and arr.max() > 255):
            top = 65535.0
        elif img.mode == "F" and arr.size and arr.max() <= 1.0:
            top = 1.0
        else:
            top = 255.0
        if arr.size and (arr.min() < 0 or arr.max() > top):
            raise ValueError(f"{where}: pixel values outside 0..{top:g} in a {img.mode!r} image")
        if size is not None:
            f = Image.fromarray((arr / top).astype(np.float32))
            arr = np.asarray(f.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float64) * top
        return (np.clip(arr / top, 0.0, 1.0)).astype(np.float32)[:, :, None]
    if gray:
        img = img.convert("LA").convert("L") if img.mode in ("P", "PA") else img.convert("L")
    elif img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _stack_images(arrays: list[np.ndarray], mode: str | None) -> torch.Tensor:
    """H×W×C arrays (1 or 3 channels, uint8 or float) -> float N×C×H×W in [0,1]."""
    channels = 1 if mode == "L" else 3 if mode == "RGB" else max(a.shape[2] for a in arrays)
    out = np.empty((len(arrays), channels, *arrays[0].shape[:2]), dtype=np.float32)
    for i, a in enumerate(arrays):
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        out[i] = np.broadcast_to(a.transpose(2, 0, 1), out.shape[1:])
    return torch.from_numpy(out)


def _images_from_pil(images, where: str, mode: str | None, size, names=None) -> torch.Tensor:
    """Convert an iterable of PIL images, failing at the first size mismatch when no ``size``."""
    arrays: list[np.ndarray] = []
    first = None
    for i, img in enumerate(images):
        label = names[i] if names is not None else f"image #{i}"
        try:
            arr = _image_array(img, mode, size, f"{where}: {label}")
        except (OSError, SyntaxError) as e:  # Pillow's errors for broken files
            raise ValueError(f"{where}: cannot read {label}: {e}") from e
        if first is None:
            first = (label, arr.shape[:2])
        elif arr.shape[:2] != first[1]:
            (h0, w0), (h1, w1) = first[1], arr.shape[:2]
            raise ValueError(
                f"{where}: images have different sizes ({first[0]} is {h0}×{w0}, {label} is "
                f"{h1}×{w1}); pass size=(H, W) to resize them all, e.g. size=({h0}, {w0})"
            )
        arrays.append(arr)
    if not arrays:
        raise ValueError(f"{where}: no images")
    return _stack_images(arrays, mode)


def _array_to_nchw(where: str, x: np.ndarray, key: str = "x") -> torch.Tensor:
    """An image array (N×C×H×W, N×H×W or N×H×W×C; uint8 or float in [0,1]) -> float N×C×H×W."""
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(
            f"{where}: {key!r} must hold numbers (uint8 0..255 or float in [0, 1]); got dtype {x.dtype}"
        )
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3, 4):
            pass
        elif x.shape[3] in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise ValueError(
                f"{where}: {key!r} has shape {x.shape}; expected N×C×H×W or N×H×W×C with C in 1, 3, 4"
            )
    else:
        raise ValueError(
            f"{where}: {key!r} has shape {x.shape}; expected images N×C×H×W, N×H×W or N×H×W×C"
        )
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.integer):
        raise TypeError(
            f"{where}: {key!r} has integer dtype {x.dtype}; use uint8 (0..255, scaled by 1/255) or "
            f"float in [0, 1], e.g. x.astype(np.uint8) or x / 255.0"
        )
    else:
        out = x.astype(np.float32)
        if out.size and not np.isfinite(out).all():
            raise ValueError(f"{where}: {key!r} contains NaN or infinite values")
        if out.size and (out.min() < 0.0 or out.max() > 1.0):
            raise ValueError(
                f"{where}: float {key!r} must already lie in [0, 1], found values in "
                f"[{out.min():g}, {out.max():g}]; divide by 255 (or save uint8 pixels)"
            )
    return torch.from_numpy(np.ascontiguousarray(out))


# -- csv: -------------------------------------------------------------------------------------
def load_csv(
    arg: str,
    *,
    home: Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    encoding: str = "utf-8",
    delimiter: str = ",",
    classes: Sequence[str] | None = None,
    max_examples: int | None = None,
) -> Raw:
    where = f"csv:{arg}"
    path = _file(where, arg, kind="file")
    max_examples = _check_max_examples(where, max_examples)
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with open(path, encoding=enc, newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = reader.fieldnames
            if not header:
                raise ValueError(f"{where}: the file is empty; expected a header row {text_column},{label_column}")
            missing = [c for c in (text_column, label_column) if c not in header]
            if missing:
                raise ValueError(
                    f"{where}: no column(s) {', '.join(map(repr, missing))} in the header "
                    f"{header}; the first row must name the columns (e.g. text,label), or pass "
                    f"text_column=... and label_column=..."
                )
            texts, labels = [], []
            for row in reader:
                text, label = row.get(text_column), row.get(label_column)
                line = reader.line_num
                if text is None or label is None:
                    raise ValueError(f"{where}: line {line} has fewer fields than the header")
                if not label.strip():
                    raise ValueError(f"{where}: line {line} has an empty {label_column!r}")
                texts.append(text)
                labels.append(label)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{where}: cannot decode the file as {encoding} ({e.reason} at byte {e.start}); "
            f"pass the file's encoding, e.g. encoding=\"latin-1\""
        ) from e
    except csv.Error as e:
        raise ValueError(f"{where}: malformed CSV: {e}") from e
    if not texts:
        raise ValueError(f"{where}: the file has a header but no rows")
    ints, names = _labels_from_values(f"{where}: column {label_column!r}", labels, classes)
    keep = _subset(len(texts), max_examples)
    if keep is not None:
        texts = [texts[i] for i in keep]
        ints = [ints[i] for i in keep]
    info = {"source": str(path), "text_column": text_column, "label_column": label_column}
    return texts, torch.tensor(ints, dtype=torch.long), names, info


# -- folder: ----------------------------------------------------------------------------------
def load_folder(
    arg: str,
    *,
    home: Path | None = None,
    mode: str | None = None,
    size=None,
    max_examples: int | None = None,
) -> Raw:
    where = f"folder:{arg}"
    root = _file(where, arg, kind="dir")
    mode, size = _check_mode(where, mode), _check_size(where, size)
    max_examples = _check_max_examples(where, max_examples)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        extra = f" (found {len(loose)} loose image(s) at the top level)" if loose else ""
        raise ValueError(
            f"{where}: no class sub-folders{extra}; expected one sub-folder per class, e.g. "
            f"{root}/cat/1.png and {root}/dog/2.png"
        )
    files: list[Path] = []
    labels: list[int] = []
    for i, d in enumerate(class_dirs):
        imgs = sorted(
            p for p in d.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not imgs:
            raise ValueError(
                f"{where}: class folder {d.name!r} has no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        files += imgs
        labels += [i] * len(imgs)
    keep = _subset(len(files), max_examples)
    if keep is not None:
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]

    from PIL import Image

    def images():
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    yield im
            except (OSError, SyntaxError) as e:
                raise ValueError(f"{where}: cannot read image {str(f)!r}: {e}") from e

    names = [str(f.relative_to(root)) for f in files]
    x = _images_from_pil(images(), where, mode, size, names)
    info = {"source": str(root), "mode": "L" if x.shape[1] == 1 else "RGB"}
    if size is not None:
        info["size"] = size
    return x, torch.tensor(labels, dtype=torch.long), [d.name for d in class_dirs], info


# -- npz: -------------------------------------------------------------------------------------
def load_npz(
    arg: str,
    *,
    home: Path | None = None,
    classes: Sequence[str] | None = None,
    max_examples: int | None = None,
) -> Raw:
    where = f"npz:{arg}"
    path = _file(where, arg, kind="file")
    max_examples = _check_max_examples(where, max_examples)
    arrays: dict[str, np.ndarray] = {}
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            raise ValueError(
                f"{where}: a single .npy array, not an .npz archive; save with np.savez(path, x=..., y=...)"
            )
        with z:
            for key in z.files:
                try:
                    arrays[key] = z[key]
                except ValueError as e:
                    if "allow_pickle" in str(e) or "Object arrays" in str(e):
                        raise ValueError(
                            f"{where}: array {key!r} holds Python objects, which would need "
                            f"pickle; Maestro loads .npz files without pickle for safety. Save "
                            f"plain arrays instead: numbers for x/y (e.g. np.asarray(x, dtype=np.uint8)) "
                            f"and str arrays for texts/classes (np.asarray(texts, dtype=str))"
                        ) from e
                    raise
    except (OSError, EOFError) as e:
        raise ValueError(f"{where}: not a readable .npz file ({e}); save with np.savez(path, x=..., y=...)") from e
    except ValueError as e:
        if str(e).startswith(where):
            raise
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(
                f"{where}: the file needs pickle to load ({e}); Maestro loads .npz files without "
                f"pickle for safety. Save plain arrays with np.savez(path, x=..., y=...)"
            ) from e
        raise ValueError(f"{where}: not a readable .npz file ({e}); save with np.savez(path, x=..., y=...)") from e

    def pick(*keys):
        found = [k for k in keys if k in arrays]
        if len(found) > 1:
            raise ValueError(f"{where}: both {found[0]!r} and {found[1]!r} present; keep one")
        return (found[0], arrays[found[0]]) if found else (None, None)

    xk, x = pick("x", "images")
    _, texts = pick("texts")
    yk, y = pick("y", "labels")
    have = sorted(arrays)
    if x is None and texts is None:
        raise ValueError(
            f"{where}: no inputs; expected an array 'x' (or 'images') for images or 'texts' for "
            f"text, found keys {have}"
        )
    if x is not None and texts is not None:
        raise ValueError(f"{where}: has both {xk!r} and 'texts'; keep one (images or text)")
    if y is None:
        raise ValueError(f"{where}: no labels; expected an array 'y' (or 'labels'), found keys {have}")
    if y.ndim != 1:
        raise ValueError(f"{where}: {yk!r} must be 1-D (one label per example), got shape {y.shape}")
    n = len(x) if x is not None else len(texts)
    if len(y) != n:
        raise ValueError(f"{where}: {n} inputs but {len(y)} labels in {yk!r}")
    if "classes" in arrays:
        if classes is not None:
            raise ValueError(f"{where}: the file has 'classes'; do not also pass classes=")
        cls = arrays["classes"]
        if cls.dtype.kind not in "US" or cls.ndim != 1:
            raise TypeError(f"{where}: 'classes' must be a 1-D array of str, got {cls.dtype} {cls.shape}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in cls.tolist()]
    if y.dtype.kind in "US":
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()]
        if all(re.fullmatch(r"\s*-?\d+\s*", v) for v in values) and values:
            raise TypeError(f"{where}: {yk!r} holds numbers as strings; save integer labels (y.astype(int))")
    elif y.dtype.kind in "iu":
        values = y.tolist()
    elif y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{where}: {yk!r} contains NaN or infinite values")
        raise TypeError(
            f"{where}: {yk!r} has float dtype {y.dtype}; labels must be integer class indices "
            f"(save y.astype(np.int64))"
        )
    else:
        raise TypeError(f"{where}: {yk!r} must hold integer class indices or class names, got {y.dtype}")
    ints, names = _labels_from_values(f"{where}: {yk!r}", values, classes)
    if x is not None:
        xs = _array_to_nchw(where, x, xk)
    else:
        if texts.ndim != 1 or texts.dtype.kind not in "US":
            raise TypeError(
                f"{where}: 'texts' must be a 1-D array of str (np.asarray(texts, dtype=str)), got "
                f"dtype {texts.dtype} shape {texts.shape}"
            )
        xs = [t.decode() if isinstance(t, bytes) else str(t) for t in texts.tolist()]
    yt = torch.tensor(ints, dtype=torch.long)
    keep = _subset(n, max_examples)
    if keep is not None:
        yt = yt[torch.from_numpy(keep)]
        xs = xs[torch.from_numpy(keep)] if isinstance(xs, torch.Tensor) else [xs[i] for i in keep]
    return xs, yt, names, {"source": str(path)}


# -- torchvision: -----------------------------------------------------------------------------
def load_torchvision(
    arg: str,
    *,
    home: Path,
    download: bool = False,
    mode: str | None = None,
    size=None,
    max_examples: int | None = None,
    **kwargs,
) -> Raw:
    where = f"torchvision:{arg}"
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(
            f"{where}: torchvision is not installed. Install the vision extra: "
            f'pip install "maestro-aml[vision]" (or load your images with folder:<dir> / npz:<file>)'
        )
    mode, size = _check_mode(where, mode), _check_size(where, size)
    max_examples = _check_max_examples(where, max_examples)
    tvd = importlib.import_module("torchvision.datasets")
    available = {
        n: getattr(tvd, n)
        for n in dir(tvd)
        if not n.startswith("_") and isinstance(getattr(tvd, n), type)
    }
    cls = available.get(arg) or {k.lower(): v for k, v in available.items()}.get(arg.lower())
    if cls is None:
        raise ValueError(
            f"{where}: torchvision has no data set {arg!r}; some it has: "
            f"{', '.join(sorted(k for k in available if k.isupper() or 'MNIST' in k or 'CIFAR' in k)[:12])}"
        )
    root = Path(home) / "data" / "torchvision"
    params = inspect.signature(cls).parameters
    if "train" in params:
        parts = {"train": {"train": True}, "test": {"train": False}}
    elif "split" in params:
        parts = {"train": {"split": "train"}, "test": {"split": "test"}}
    else:
        parts = {"all": {}}
    for k in kwargs:
        if k not in params:
            raise TypeError(f"{where}: unknown option {k!r}; {cls.__name__} accepts {', '.join(params)}")
    xs, ys, classes = [], [], None
    for part, extra in parts.items():
        call = {**kwargs, **extra}
        if "download" in params:
            call["download"] = bool(download)
        try:
            ds = cls(str(root), **call)
        except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted"
            if download:
                raise AssetUnavailable(f"{where}: could not download the {part} split into {root}: {e}") from e
            raise AssetUnavailable(
                f"{where}: the {part} files are not under {root} ({e}). Pass download=True to "
                f"fetch them (needs network), or copy the files there"
            ) from e
        x, y = _torchvision_arrays(ds, where, mode, size)
        xs.append(x)
        ys.append(y)
        classes = classes or [str(c) for c in getattr(ds, "classes", []) or []]
    x = torch.cat(xs) if len({tuple(t.shape[1:]) for t in xs}) == 1 else None
    if x is None:
        raise ValueError(f"{where}: splits have different image shapes; pass size=(H, W)")
    y = torch.cat(ys)
    if not classes or int(y.max()) >= len(classes):
        classes = [str(i) for i in range(int(y.max()) + 1)]
    keep = _subset(len(y), max_examples)
    if keep is not None:
        k = torch.from_numpy(keep)
        x, y = x[k], y[k]
    return x, y, classes, {"source": f"torchvision.datasets.{cls.__name__}", "root": str(root)}


def _torchvision_arrays(ds, where: str, mode, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path through ``.data`` and ``.targets``/``.labels``; else one item at a time."""
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if isinstance(data, torch.Tensor):
        data = data.numpy()
    if (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim in (3, 4)
        and targets is not None
        and len(targets) == len(data)
        and mode is None
        and size is None
    ):
        x = _array_to_nchw(where, data)
        y = torch.as_tensor(np.asarray(targets), dtype=torch.long).flatten()
        return x, y
    items = [ds[i] for i in range(len(ds))]
    x = _images_from_pil((img for img, _ in items), where, mode, size)
    y = torch.tensor([int(t) for _, t in items], dtype=torch.long)
    return x, y


# -- hf: --------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def _probe_host() -> tuple[str, int]:
    """Where a connection must succeed for the Hub to be reachable (proxy or endpoint)."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(var):
            p = urlparse(os.environ[var] if "://" in os.environ[var] else f"http://{os.environ[var]}")
            if p.hostname:
                return p.hostname, p.port or 3128
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def hub_offline() -> tuple[bool, str]:
    """``(offline, why)``: offline when the env says so or a 2-second connection probe fails."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _env_true(var):
            return True, f"{var} is set"
    host, port = _probe_host()
    result: list[str] = []

    def probe() -> None:  # in a thread: a hanging DNS lookup ignores the socket timeout
        try:
            socket.create_connection((host, port), timeout=HF_PROBE_TIMEOUT_S).close()
            result.append("")
        except OSError as e:
            result.append(f"cannot reach {host}:{port} ({e.__class__.__name__}: {e})")

    thread = threading.Thread(target=probe, name="maestro-hub-probe", daemon=True)
    thread.start()
    thread.join(HF_PROBE_TIMEOUT_S + 0.2)
    if not result:
        return True, f"no answer from {host}:{port} within {HF_PROBE_TIMEOUT_S:g} s"
    return bool(result[0]), result[0]


@contextlib.contextmanager
def _hf_offline_mode():
    """Cache-only loading: offline env vars before ``datasets`` is imported, config flags after."""
    saved_env = {v: os.environ.get(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    for v in saved_env:
        os.environ[v] = "1"
    flags = []
    try:
        datasets = importlib.import_module("datasets")
        hub_constants = importlib.import_module("huggingface_hub.constants")
        for mod, attr in (
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
            (hub_constants, "HF_HUB_OFFLINE"),
        ):
            if hasattr(mod, attr):
                flags.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, True)
        yield datasets
    finally:
        for mod, attr, old in reversed(flags):
            setattr(mod, attr, old)
        for v, old in saved_env.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def load_hf(
    arg: str,
    *,
    home: Path | None = None,
    image_column: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    splits: Sequence[str] | str | None = None,
    size=None,
    mode: str | None = None,
    max_examples: int | None = None,
    revision: str | None = None,
) -> Raw:
    where = f"hf:{arg}"
    if image_column is not None and text_column is not None:
        raise ValueError(f"{where}: pass image_column= or text_column=, not both")
    mode, size = _check_mode(where, mode), _check_size(where, size)
    max_examples = _check_max_examples(where, max_examples)
    local = Path(arg).expanduser()
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        datasets = importlib.import_module("datasets")
        dd = datasets.load_from_disk(str(local))
        offline, why = False, ""
    else:
        dataset_id, _, config = arg.partition(":") if not local.exists() else (arg, "", "")
        offline, why = (False, "") if local.exists() else hub_offline()
        dd = _hf_fetch(where, dataset_id, config or None, revision, offline, why)
    return _from_hf(
        where, dd, image_column=image_column, text_column=text_column, label_column=label_column,
        splits=splits, size=size, mode=mode, max_examples=max_examples,
        info={"source": f"Hugging Face {arg}", "offline": offline},
    )


def _hf_fetch(where, dataset_id, config, revision, offline, why):
    kwargs = {"revision": revision} if revision else {}
    if offline:
        with _hf_offline_mode() as datasets:
            try:
                return datasets.load_dataset(dataset_id, config, **kwargs)
            except Exception as e:  # any failure offline means: not usable from the cache
                if isinstance(e, ValueError) and "config" in str(e).lower() and "cache" not in str(e).lower():
                    raise ValueError(f"{where}: {e}") from e
                raise AssetUnavailable(
                    f"{where}: the Hugging Face dataset {dataset_id!r}"
                    f"{f' (config {config!r})' if config else ''} is not in the local cache and "
                    f"this machine is offline ({why}). Load it once on a machine with network access "
                    f"(it is cached under $HF_HOME, default ~/.cache/huggingface), {_LOCAL_HINT}. "
                    f"[{e.__class__.__name__}: {e}]"
                ) from e
    datasets = importlib.import_module("datasets")
    try:
        return datasets.load_dataset(dataset_id, config, **kwargs)
    except Exception as e:
        name = e.__class__.__name__
        if name in ("DatasetNotFoundError", "FileNotFoundError", "RepositoryNotFoundError") or isinstance(
            e, (FileNotFoundError, ConnectionError)
        ):
            raise AssetUnavailable(
                f"{where}: could not load the Hugging Face dataset {dataset_id!r}: {e}. Check the id "
                f"on https://huggingface.co/datasets, {_LOCAL_HINT}"
            ) from e
        if type(e) is ValueError:  # e.g. an unknown config: datasets lists the valid ones
            raise ValueError(f"{where}: {e}") from e
        raise


def _hf_splits(where, dd, splits):
    datasets = sys.modules["datasets"]
    if isinstance(dd, datasets.Dataset):
        return {"all": dd}
    available = list(dd.keys())
    if splits is None:
        names = available
    else:
        names = [splits] if isinstance(splits, str) else list(splits)
        unknown = [s for s in names if s not in available]
        if unknown:
            raise ValueError(f"{where}: no split(s) {unknown}; the dataset has {available}")
    if not names:
        raise ValueError(f"{where}: the dataset has no splits")
    return {s: dd[s] for s in names}


def _from_hf(where, dd, *, image_column, text_column, label_column, splits, size, mode, max_examples, info) -> Raw:
    datasets = sys.modules.get("datasets") or importlib.import_module("datasets")
    parts = _hf_splits(where, dd, splits)
    features = next(iter(parts.values())).features
    for s, part in parts.items():
        if set(part.column_names) != set(features):
            raise ValueError(
                f"{where}: split {s!r} has columns {part.column_names}, unlike the others; choose "
                f"splits=[...] with matching columns"
            )
    cols = list(features)

    def check(col, what):
        if col is not None and col not in features:
            raise ValueError(f"{where}: no column {col!r} for {what}; the columns are {cols}")

    check(image_column, "image_column")
    check(text_column, "text_column")
    check(label_column, "label_column")

    if label_column is None:
        label_column = next((c for c in LABEL_COLUMN_NAMES if c in features), None)
        if label_column is None:
            label_column = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_column is None:
            raise ValueError(
                f"{where}: cannot tell which column holds the labels (no 'label'/'labels' column, no "
                f"ClassLabel feature); pass label_column=... (columns: {cols})"
            )
    if image_column is None and text_column is None:
        images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        if images:
            image_column = images[0]
        else:
            strings = [
                c for c, f in features.items()
                if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string") and c != label_column
            ]
            text_column = next((c for c in TEXT_COLUMN_NAMES if c in strings), None)
            if text_column is None and len(strings) == 1:
                text_column = strings[0]
            if text_column is None:
                raise ValueError(
                    f"{where}: cannot tell which column holds the inputs (no Image feature; text "
                    f"columns: {strings or 'none'}); pass image_column=... or text_column=... "
                    f"(columns: {cols})"
                )
    input_column = image_column or text_column

    label_feature = features[label_column]
    pool = datasets.concatenate_datasets(list(parts.values())) if len(parts) > 1 else next(iter(parts.values()))
    raw_labels = list(pool[label_column])  # a plain list: indexing a lazy Column is slow
    if isinstance(label_feature, datasets.ClassLabel):
        classes = list(label_feature.names)
        labelled = [i for i, v in enumerate(raw_labels) if v is not None and v >= 0]
    else:
        classes = None
        labelled = [i for i, v in enumerate(raw_labels) if v is not None and not (isinstance(v, int) and v < 0)]
    dropped = len(raw_labels) - len(labelled)
    if not labelled:
        raise ValueError(f"{where}: no labelled examples in column {label_column!r}")
    keep = _subset(len(labelled), max_examples)
    rows = [labelled[i] for i in keep] if keep is not None else labelled
    values = [raw_labels[i] for i in rows]
    if classes is not None:
        y = torch.tensor(values, dtype=torch.long)
    else:
        if any(isinstance(v, float) for v in values):
            if not all(float(v).is_integer() for v in values):
                raise TypeError(f"{where}: label column {label_column!r} holds non-integer numbers")
            values = [int(v) for v in values]
        ints, classes = _labels_from_values(f"{where}: label column {label_column!r}", values)
        y = torch.tensor(ints, dtype=torch.long)
    if len(rows) != len(pool):
        pool = pool.select(rows)

    if text_column is not None:
        texts = list(pool[text_column])
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(
                f"{where}: column {text_column!r} must hold strings; example {bad} is "
                f"{type(texts[bad]).__name__}; pass text_column=... naming a text column"
            )
        x = list(texts)
    else:
        if not isinstance(features[image_column], datasets.Image):
            raise TypeError(f"{where}: column {image_column!r} is {features[image_column]}, not an Image feature")

        def images():
            for start in range(0, len(pool), 1000):
                yield from pool[start : start + 1000][image_column]

        x = _images_from_pil(images(), where, mode, size)
    info = {**info, "input_column": input_column, "label_column": label_column, "splits": list(parts)}
    if dropped:
        info["dropped_unlabelled"] = dropped
    return x, y, classes, info
