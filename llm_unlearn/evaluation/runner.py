"""Evaluate a model with a suite: `evaluate` scores a loaded model and returns the eval.json record;
`evaluate_model` loads the model its arguments name, evaluates it (a share of the items per process under
`accelerate launch`) and writes eval.json and the report."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_unlearn.evaluation.evaluator import check_reference, evaluate_splits, forget_questions
from llm_unlearn.evaluation.harness import HarnessConfig, run_harness, task_manager
from llm_unlearn.evaluation.reference_logs import (
    EXPORT_FORMATS,
    load_reference,
    open_unlearning_log_name,
    write_open_unlearning_log,
)
from llm_unlearn.evaluation.report import check_report_output, write_report
from llm_unlearn.evaluation.results import EvalResult, load_eval, save_eval
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.files import check_writable_dir
from llm_unlearn.manifest import read_record
from llm_unlearn.models import ModelArguments, load_model_and_tokenizer

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

EVAL_FILE = "eval.json"


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: Suite,
    *,
    reference: EvalResult | None = None,
) -> dict[str, Any]:
    """Score `model` on every split of `suite`: per-item values, aggregates, membership inference, model
    utility, forget quality against `reference` (the retain model's eval), the suite's attacks and its
    lm-evaluation-harness tasks."""
    harness = suite.harness_config()
    # An unknown task name fails here, not after the splits are scored.
    manager = task_manager(harness) if harness is not None else None
    datasets, config = suite.load()
    result = evaluate_splits(model, tokenizer, datasets, config, reference=reference)
    if harness is not None:
        _add_harness(result, model, tokenizer, harness, manager)
    return result


def _add_harness(
    result: dict[str, Any],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harness: HarnessConfig,
    manager: TaskManager | None = None,
) -> None:
    """Run the suite's lm-eval tasks on `model` and add their results (on lm-eval's main process) and timing to
    `result`; `manager` is the task index when it was built already."""
    started = time.perf_counter()
    section = run_harness(model, tokenizer, harness, manager)
    result["timing"]["harness_s"] = time.perf_counter() - started
    if section is not None:
        result["harness"] = section


def evaluate_model(
    model_args: ModelArguments,
    suite: Suite,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    export_reference_format: str | None = None,
) -> Path:
    """Evaluate the model `model_args` names (at its revision, dtype and trust_remote_code) with `suite` (against
    its `reference_eval`: an eval.json, or a log of locuslab/open-unlearning) and write `output_dir/eval.json`
    (and, with the suite's `report`, the report beside it; with `export_reference_format` 'open-unlearning', its
    numbers as that framework's log, `export_path`); returns its path. Under `accelerate launch` every process
    evaluates a share of the items (and the whole of the suite's lm-eval tasks) and the main process writes."""
    # PartialState, unlike the Trainer's arguments, does not read ACCELERATE_USE_CPU itself: without it a CPU
    # run under torchrun would see one process and let every rank write. The true values are those accelerate
    # accepts for its env flags (accelerate.utils.str_to_bool).
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("y", "yes", "t", "true", "on", "1")
    state = PartialState(cpu=use_cpu)
    path = check_writable_dir(output_dir) / EVAL_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
    export = None
    if export_reference_format is not None:
        if export_reference_format not in EXPORT_FORMATS:
            raise ValueError(
                f"export_reference_format {export_reference_format!r} is not known; use one of {EXPORT_FORMATS}."
            )
        export = export_path(output_dir, suite)
        if export.exists() and not overwrite:
            raise FileExistsError(f"{export} exists; pass --overwrite to replace it.")
    if suite.report:
        check_report_output(output_dir, overwrite)
    if not model_args.model_name_or_path:
        raise ValueError("no model to evaluate; pass --model_name_or_path (a Hub id, a directory or 'embedded').")
    reference, reference_eval = None, suite.reference_eval
    if reference_eval is not None:
        # Checked before loading any model or data, so a wrong path fails at once. The suite's config (no data
        # loaded) names the splits a framework log's numbers belong to.
        if not Path(reference_eval).is_file():
            raise FileNotFoundError(f"--reference_eval {reference_eval} does not exist.")
        reference = load_reference(reference_eval, suite.eval_config())
    started = time.perf_counter()
    datasets, config = suite.load()
    if reference is not None:
        check_reference(
            config, list(datasets), reference, reference_eval, forget_questions(datasets, config.forget_split)
        )
    harness = suite.harness_config()
    # lm-eval's task index is built, and every task name checked, before the model loads.
    manager = task_manager(harness) if harness is not None else None
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path,
        dtype=model_args.dtype or "float32",
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
    )
    model.to(state.device)
    result = evaluate_splits(model, tokenizer, datasets, config, reference=reference)
    if harness is not None:
        # Every process runs every task on its own copy of the model: lm-eval shares its work among processes
        # only for a model it loads itself, and a process idling at a barrier for a whole benchmark would time out.
        _add_harness(result, model, tokenizer, harness, manager)
    result.update(
        suite=suite.suite,
        model=model_args.model_name_or_path,
        # Which model version was measured, by content hash (llm_unlearn.manifest).
        artifacts={"read": [read_record(model_args.model_name_or_path, model_args.model_revision)]},
        reference_eval=str(Path(reference_eval).resolve()) if reference_eval else None,
        num_processes=state.num_processes,
        wall_time_s=time.perf_counter() - started,
    )
    if state.is_main_process:
        try:
            save_eval(result, path)
        except OSError as error:
            # The evaluation is the expensive part: keep it where it can be written, and say where.
            fallback = Path(tempfile.gettempdir()) / f"llm_unlearn-eval-{os.getpid()}.json"
            save_eval(result, fallback)
            raise OSError(f"could not write {path} ({error}); the evaluation is saved in {fallback}.") from error
        if export is not None:
            write_open_unlearning_log(load_eval(path), export, overwrite=overwrite)
        if suite.report:
            write_report([path.parent], path.parent, overwrite=overwrite)
    state.wait_for_everyone()
    return path


def export_path(output_dir: str | os.PathLike, suite: Suite) -> Path:
    """Where `--export_reference_format open-unlearning` writes: `output_dir/TOFU_EVAL.json` (`MUSE_EVAL.json` for
    the muse suite), the name locuslab/open-unlearning gives its log."""
    return Path(output_dir) / open_unlearning_log_name(suite.suite)
