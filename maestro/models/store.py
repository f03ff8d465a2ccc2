"""Kit checkpoints: a folder with ``model.safetensors`` + ``meta.json`` (+ ``tokenizer.json`` for
word tokenizers). Never pickle. Written atomically (a temporary folder renamed into place), and
verified by the sha256 of ``model.safetensors`` on every load.

Two kinds of checkpoint:

* ``arch`` names an architecture of :mod:`maestro.models.archs`, rebuilt from ``config``;
* ``arch == "hf"``: a Hugging Face model saved with ``save_pretrained`` (config.json and the
  tokenizer files sit beside it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import AssetUnavailable
from .archs import (
    MINILM_PACKAGE,
    EncoderClassifier,
    ZooArch,
    build_arch,
    encoder_identity,
    sha256_file,
)

WEIGHTS, META, TOKENIZER = "model.safetensors", "meta.json", "tokenizer.json"
FORMAT = 1


def write_atomic(folder: str | os.PathLike, fill: Callable[[Path], dict]) -> dict:
    """Create ``folder`` atomically: ``fill(tmp)`` writes the files into a temporary sibling
    folder and returns the metadata; the sha256 of the weights is added, ``meta.json`` written,
    and the folder renamed into place (replacing an older one)."""
    folder = Path(folder)
    if folder.exists() and not (folder / META).is_file() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not a Maestro checkpoint; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is readable like any other
    try:
        meta = dict(fill(tmp))
        meta["sha256"] = sha256_file(tmp / WEIGHTS)
        meta.setdefault("format", FORMAT)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def tokenizer_meta(module, tokenizer) -> dict | None:
    """How to rebuild ``tokenizer`` for ``module`` (``None`` for image models)."""
    from ..text import HFTokenizer, WordTokenizer

    if tokenizer is None:
        return None
    if isinstance(tokenizer, WordTokenizer):
        return {"kind": "word", "file": TOKENIZER}
    if isinstance(tokenizer, HFTokenizer):
        if isinstance(module, EncoderClassifier):
            return {"kind": "encoder", "package": module.config["encoder"]["package"], "max_length": tokenizer.max_length}
        return {"kind": "hf", "max_length": tokenizer.max_length}
    raise TypeError(f"cannot save a tokenizer of type {type(tokenizer).__name__}; use WordTokenizer or a Hugging Face one")


def write_checkpoint(folder: str | os.PathLike, module: torch.nn.Module, meta: dict, tokenizer=None) -> dict:
    """Save ``module`` (a zoo architecture or a Hugging Face model) with ``meta``; returns the
    metadata as written (with ``sha256``)."""
    from safetensors.torch import save_file

    tok = tokenizer_meta(module, tokenizer)

    def fill(tmp: Path) -> dict:
        out = dict(meta)
        if isinstance(module, ZooArch):
            flush_subnormals_(module)
            save_file(module.checkpoint_state(), str(tmp / WEIGHTS), metadata={"format": "pt"})
            out.update(arch=module.arch_name, config=module.config)
        elif hasattr(module, "save_pretrained"):
            module.save_pretrained(str(tmp), safe_serialization=True)
            out.update(arch="hf", config={})
        else:
            raise TypeError(
                f"save() stores zoo architectures (maestro.models.archs) and Hugging Face models; "
                f"{type(module).__name__} is neither. Save its state_dict with safetensors and "
                "rebuild it with maestro.models.wrap()"
            )
        if tok is not None:
            out["tokenizer"] = tok
            if tok["kind"] == "word":
                tokenizer.save(tmp / TOKENIZER)
            elif tok["kind"] == "hf":
                tokenizer.hf.save_pretrained(str(tmp))
        return out

    return write_atomic(folder, fill)


def read_meta(folder: str | os.PathLike) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise AssetUnavailable(f"{folder} is not a Maestro checkpoint: {META} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AssetUnavailable(f"{path} is not valid JSON ({err}); rebuild or re-save the model") from err


def verify(folder: str | os.PathLike, meta: dict) -> None:
    """Raise if ``model.safetensors`` is missing or its sha256 differs from ``meta``."""
    weights = Path(folder) / WEIGHTS
    if not weights.is_file():
        raise AssetUnavailable(f"{weights} is missing; rebuild or re-save the model")
    found = sha256_file(weights)
    if found != meta.get("sha256"):
        raise AssetUnavailable(
            f"{weights} does not match its meta.json (sha256 {found[:12]}… ≠ {str(meta.get('sha256'))[:12]}…): "
            "the file was modified or corrupted. Rebuild it (`maestro models build <name> --force`, or "
            "maestro.models.build([name], force=True))"
        )


def flush_subnormals_(module: torch.nn.Module) -> int:
    """Set the module's subnormal floating-point parameters and buffers (|w| < finfo.tiny, not 0)
    to 0, in place; returns how many there were. Weight decay leaves such values behind, and
    every multiply-add with one is slow on most CPUs: 1,411 of them made mlp-digits' forward
    pass 8× slower (measured on 20,000 inputs, one thread). Their effect on any output is below
    float32's resolution."""
    n = 0
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                tiny = (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)
                k = int(tiny.sum())
                if k:
                    t[tiny] = 0
                    n += k
    return n


def read_checkpoint(folder: str | os.PathLike) -> tuple[torch.nn.Module, object, dict]:
    """``(module, tokenizer or None, meta)`` from a checkpoint folder, weights verified."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    verify(folder, meta)
    if meta.get("arch") == "hf":
        from transformers import AutoModelForSequenceClassification

        module = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True).eval()
    else:
        module = build_arch(meta["arch"], meta["config"])
        module.load_checkpoint_state(load_file(str(folder / WEIGHTS)))
        flush_subnormals_(module)  # checkpoints written before the zoo flushed them
        module.eval()
    return module, read_tokenizer(folder, meta.get("tokenizer")), meta


def read_tokenizer(folder: Path, tok: dict | None):
    if tok is None:
        return None
    from ..text import HFTokenizer, WordTokenizer

    if tok["kind"] == "word":
        return WordTokenizer.load(folder / tok.get("file", TOKENIZER))
    from transformers import AutoTokenizer

    if tok["kind"] == "encoder":
        source = encoder_identity(tok.get("package", MINILM_PACKAGE))["path"]
    elif tok["kind"] == "hf":
        source = str(folder)
    else:
        raise ValueError(f"{folder}: unknown tokenizer kind {tok['kind']!r} in meta.json")
    return HFTokenizer(AutoTokenizer.from_pretrained(source), max_length=tok.get("max_length", 128))
