"""Publish a run directory on the Hugging Face Hub: `stage_run` writes what is uploaded into a folder and `push_run`
uploads the adapter or the merged model, the model card and the reports in one commit.

What is published leaves out what must not leave the machine: eval.json keeps its per-item numbers but not the
items' text (questions, answers and generations are the users' training data), run.json and eval.json name local
files by their last path component only, and report.md / report.html are rebuilt from those copies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from llm_unlearn.compat import HubTransportError
from llm_unlearn.embedded import EMBEDDED
from llm_unlearn.evaluation.report import write_report
from llm_unlearn.evaluation.results import EvalResult, save_eval
from llm_unlearn.files import read_json_object, write_json_atomic, write_text_atomic
from llm_unlearn.hub.model_card import build_model_card, check_repo_id
from llm_unlearn.hub.run_directory import (
    UNLEARNING_REPORT_FILES,
    PushError,
    is_hub_id,
    public_value,
    read_run_directory,
)
from llm_unlearn.models import ADAPTER_CONFIG, load_model_and_tokenizer

# The files of a saved model, adapter or tokenizer that a push uploads. Nothing else in a run directory leaves it:
# not training_args.bin (a pickle), checkpoints, best/ or the PEFT README that the card replaces.
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    ADAPTER_CONFIG,
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Everything a push writes besides the model files; a new push deletes these in the repository first, so a file of
# an earlier push (adapter files after a --merge, an old unlearning report) does not linger.
PUBLISHED_FILES = (
    "README.md",
    "eval.json",
    "run.json",
    "report.md",
    "report.html",
    "report_files/*",
    *UNLEARNING_REPORT_FILES,
)
# What a published eval.json item keeps besides its numbers.
ITEM_KEYS_KEPT = ("index", "subject_id")


def _public_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """An eval item without its text: its index, subject id and numbers."""
    return {
        key: value
        for key, value in item.items()
        if key in ITEM_KEYS_KEPT or value is None or isinstance(value, int | float)
    }


def public_eval(result: EvalResult, repo_id: str) -> EvalResult:
    """The eval.json that is published: per-item text removed, local paths shortened, the model named by its
    repository."""
    public = result.to_dict()
    for split in result.split_names():
        public["splits"][split]["items"] = [_public_item(item) for item in result.split_items(split)]
    public = public_value(public)
    public["model"] = repo_id
    return EvalResult(public, source=f"the public eval.json of {repo_id}")


def stage_run(
    run_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    repo_id: str,
    merge: bool = False,
    base_model: str | None = None,
    license: str | None = None,
    dtype: str = "float32",
    eval_json: str | os.PathLike | None = None,
    unlearning_report: str | os.PathLike | None = None,
) -> list[str]:
    """Write into `folder` what `push_run` uploads: the adapter (its base set to `base_model` when given) or the
    model (merged in `dtype` with `merge`), README.md (the card), the public eval.json and run.json, the reports
    rebuilt from them, and the unlearning report when the run has one (`eval_json` and `unlearning_report` say
    where they are when not in the run directory). Returns the written files' paths."""
    check_repo_id(repo_id)
    run = read_run_directory(run_dir, eval_json=eval_json, unlearning_report=unlearning_report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise PushError(f"staging folder {str(folder)!r} is not empty; give a new or empty directory.")
    if run.is_adapter and not merge:
        base = base_model or run.adapter_base
        if base != EMBEDDED and not is_hub_id(base):
            raise PushError(
                f"the adapter in {str(run.path)!r} is trained on the local model {run.adapter_base!r}, which people "
                f"loading {repo_id} from the Hub do not have; pass --base_model with the Hub id of that same model "
                "(published first), or --merge to upload the full merged weights."
            )
    if merge and run.is_adapter:
        model, tokenizer = load_model_and_tokenizer(str(run.path), dtype=dtype)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        for pattern in MODEL_FILE_PATTERNS:
            for source in run.path.glob(pattern):
                shutil.copy2(source, folder / source.name)
        if run.is_adapter and base_model is not None:
            config = read_json_object(folder / ADAPTER_CONFIG, PushError)
            config["base_model_name_or_path"] = base_model
            write_json_atomic(config, folder / ADAPTER_CONFIG)
    card = build_model_card(run, repo_id=repo_id, merged=merge, base_model=base_model, license=license)
    write_text_atomic(str(card), folder / "README.md")
    write_json_atomic(public_value(run.record), folder / "run.json")
    if run.eval is not None:
        save_eval(public_eval(run.eval, repo_id), folder / "eval.json")
        write_report(
            [folder], folder, labels=[repo_id.split("/")[-1]], title=f"Unlearning evaluation: {repo_id}"
        )
    for source in run.unlearning_report:
        # Copied byte for byte: the report is signed by a hash of its content.
        shutil.copy2(source, folder / source.name)
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    merge: bool = False,
    private: bool = False,
    api: HfApi | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    dtype: str = "float32",
    eval_json: str | os.PathLike | None = None,
    unlearning_report: str | os.PathLike | None = None,
) -> CommitInfo:
    """Publish a run directory as the Hub model repository `repo_id` in one commit (see `stage_run` for what is
    uploaded); files an earlier push wrote are replaced, others in the repository are kept. Returns the commit."""
    check_repo_id(repo_id)
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="llm-unlearn-push-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        files = stage_run(
            run_dir,
            folder,
            repo_id=repo_id,
            merge=merge,
            base_model=base_model,
            license=license,
            dtype=dtype,
            eval_json=eval_json,
            unlearning_report=unlearning_report,
        )
        what = "adapter" if ADAPTER_CONFIG in files else "model"
        # Nothing is written into the run directory, and the upload is one commit: a push that fails here leaves
        # both as they were, and can simply be run again.
        unchanged = f"no commit was made and the run directory {str(run_dir)!r} is unchanged"
        try:
            api.create_repo(repo_id, exist_ok=True, private=private)
            if revision is not None and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message
                or f"Upload {what} from run {Path(run_dir).name} (llm-unlearn push)",
                revision=revision,
                delete_patterns=[*MODEL_FILE_PATTERNS, *PUBLISHED_FILES],
            )
        except HubTransportError as error:
            raise PushError(
                f"could not push to {repo_id}: the Hub at {api.endpoint} could not be reached "
                f"({type(error).__name__}: {error}); {unchanged}. Check the network connection or HF_ENDPOINT, "
                "then run the push again."
            ) from error
        except (HfHubHTTPError, LocalTokenNotFoundError) as error:
            if isinstance(error, HfHubHTTPError) and error.response.status_code not in (401, 403):
                raise
            raise _refused(error, api, repo_id, unchanged) from error


def _refused(
    error: HfHubHTTPError | LocalTokenNotFoundError, api: HfApi, repo_id: str, unchanged: str
) -> PushError:
    """The error for a push the Hub refused for want of a (valid, permitted) token: what it answered and how to
    log in."""
    if isinstance(error, LocalTokenNotFoundError):
        answer = "no Hugging Face token was found"
    else:
        status = f"HTTP {error.response.status_code} {error.response.reason_phrase}"
        if error.response.status_code == 403:
            answer = f"{status}: the token may not write there"
        elif api.token or get_token():
            answer = f"{status}: the token was not accepted"
        else:
            answer = f"{status}: no Hugging Face token was found"
    return PushError(
        f"could not push to {repo_id}: the Hub at {api.endpoint} refused it ({answer}); {unchanged}. Run "
        f"`hf auth login` or set HF_TOKEN to a token with write access to {repo_id.split('/')[0]}, then run the "
        "push again."
    )
