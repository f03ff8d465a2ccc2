"""``hf:<model id>``: a Hugging Face sequence classifier and its tokenizer.

Offline machines fail fast: when ``$HF_HUB_OFFLINE`` is set, or huggingface.co:443 does not
answer within 2 s, only the local cache is used, and a model that is not there raises a clear
:class:`AssetUnavailable` instead of hanging on retries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import AssetUnavailable

PROBE = ("huggingface.co", 443)
PROBE_TIMEOUT = 2.0
_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """True when the Hub must not be contacted: ``$HF_HUB_OFFLINE``/``$TRANSFORMERS_OFFLINE``
    is set, or a 2-second TCP probe of huggingface.co:443 fails."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        with socket.create_connection(PROBE, timeout=PROBE_TIMEOUT):
            return False
    except OSError:
        return True


def _unavailable(model_id: str, reason: str) -> AssetUnavailable:
    return AssetUnavailable(
        f"Hugging Face model {model_id!r} is not available: {reason}. To use it on this machine, "
        f"provide it locally: on a machine with internet run `huggingface-cli download {model_id}` and "
        "copy the cache (~/.cache/huggingface) here, or save it there with "
        "model.save_pretrained(folder) + tokenizer.save_pretrained(folder) and load "
        "'hf:<that folder>' (a local path), or save it as a kit checkpoint with "
        "maestro.models.save(wrapper, folder) and load 'file:<folder>'"
    )


def _cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # an id the cache helper rejects (HFValidationError) is simply not cached
        return False
    return isinstance(hit, str)


def load_hf(model_id: str, *, max_length: int = 128):
    """``(model, tokenizer)`` for a Hub id or a local folder saved with ``save_pretrained``."""
    if not model_id:
        raise ValueError("'hf:' needs a model id, e.g. 'hf:distilbert-base-uncased-finetuned-sst-2-english'")
    local = Path(model_id).expanduser()
    is_folder = local.is_dir()
    local_only = False
    if not is_folder:
        local_only = offline()
        if local_only and not _cached(model_id):
            raise _unavailable(model_id, "this machine is offline (no connection to huggingface.co, "
                               "or HF_HUB_OFFLINE is set) and the model is not in the local cache")
    source = str(local) if is_folder else model_id
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        reason = "this machine is offline and the local cache is incomplete" if local_only else str(err)
        raise _unavailable(model_id, reason) from err
    return model.eval(), tokenizer
