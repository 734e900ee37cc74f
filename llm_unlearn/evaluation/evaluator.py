"""Evaluate a model on named splits: each pass the requested metrics need runs once per item (teacher forcing,
answer groups, generation, gradients), every metric is derived from the passes' per-item outputs, and the
result is per-item JSON with aggregates, membership inference, the suite-level summary, robustness attacks and
timings. Every pass splits its items across processes under `accelerate launch` / `torchrun`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_unlearn.data.prompts import rendered_example
from llm_unlearn.evaluation import aggregate, membership
from llm_unlearn.evaluation.aggregate import summarize_with_ci
from llm_unlearn.evaluation.attacks import AttackContext, attack_params, run_attack
from llm_unlearn.evaluation.distributed import map_items
from llm_unlearn.evaluation.generation import generate_greedy
from llm_unlearn.evaluation.gradients import (
    GRADNORM_MODES,
    GRADNORM_REDUCTIONS,
    GradnormMode,
    GradnormReduction,
    gradient_norms,
)
from llm_unlearn.evaluation.items import FORMATS, EvalItem, build_items, truncation
from llm_unlearn.evaluation.metrics import (
    ES_NO_MATCH,
    ZLIB_TEXTS,
    AnswerGroupStatistics,
    EsNoMatch,
    Metric,
    ZlibText,
    get_metric,
)
from llm_unlearn.evaluation.results import SOURCE_FORMAT, TRUTH_RATIO_STAT, EvalResult
from llm_unlearn.evaluation.statistics import AnswerGroup, compute_item_statistics, score_answer_groups

logger = logging.getLogger(__name__)

TRUTH_RATIO = "truth_ratio"
# TOFU's model utility components per split (docs/metrics.md#model_utility), used when a suite names none.
DEFAULT_UTILITY = ("probability", "rouge_l_recall", TRUTH_RATIO_STAT)

# The metric conventions (docs/metrics.md#metric-conventions): fields of EvalConfig that a split may override.
# The choice-valued ones with their accepted values; `truth_ratio_aggregator: auto` takes closer_to_1 on the
# forget split and true_better elsewhere.
CONVENTION_CHOICES: dict[str, tuple[str, ...]] = {
    "zlib_text": ZLIB_TEXTS,
    "es_no_match": ES_NO_MATCH,
    "gradnorm_reduction": GRADNORM_REDUCTIONS,
    "gradnorm_mode": GRADNORM_MODES,
    "truth_ratio_aggregator": ("auto", *aggregate.TRUTH_RATIO_AGGREGATORS),
}
CONVENTIONS = ("exclude_last_token", "rouge_stemmer", "min_k_fraction", *CONVENTION_CHOICES)
# The conventions that change a membership score: the members and nonmembers of a comparison need the same.
_MIA_CONVENTIONS = ("exclude_last_token", "zlib_text", "min_k_fraction", "gradnorm_reduction", "gradnorm_mode")


def check_metric_names(names: Sequence[str]) -> None:
    """Raise ValueError naming the first unknown metric and listing the known ones."""
    for name in names:
        get_metric(name)


def check_convention(name: str, value: Any, where: str, *, inherit: bool = False) -> None:
    """Raise ValueError naming the option `name` (of `where`: a config, suite or split) and the values it accepts
    when `value` is not one of them; with `inherit`, None (take the suite-wide value) is accepted too."""
    if value is None and inherit:
        return
    if name in CONVENTION_CHOICES:
        accepted, valid = f"one of {CONVENTION_CHOICES[name]}", value in CONVENTION_CHOICES[name]
    elif name == "min_k_fraction":
        accepted = "a fraction in (0, 1]"
        valid = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1
    elif name == "rouge_stemmer":
        # None: each ROUGE metric's own setting (recall with the stemmer, F1 without).
        accepted, valid = "true, false or null", value is None or isinstance(value, bool)
    elif name == "exclude_last_token":
        accepted, valid = "true or false", isinstance(value, bool)
    else:
        raise ValueError(f"{name!r} is not a metric convention; the conventions are {CONVENTIONS}.")
    if not valid:
        raise ValueError(f"{where}: {name} must be {accepted}, got {value!r}.")


@dataclass
class SplitConfig:
    """How one split is evaluated, where it differs from the defaults of `EvalConfig`."""

    metrics: tuple[str, ...] | None = None  # None: EvalConfig.metrics
    format: str = "qa"  # see llm_unlearn.evaluation.items
    max_new_tokens: int | None = None  # None: EvalConfig.max_new_tokens
    stop_strings: tuple[str, ...] = ()
    max_answer_tokens: int | None = None  # score and compare only this many answer tokens (MUSE: 128)
    fewshot: tuple[tuple[str, str], ...] = ()  # (question, answer) shots of a `fewshot_qa` split
    # This split's metric conventions; None: EvalConfig's (docs/metrics.md#metric-conventions).
    exclude_last_token: bool | None = None
    rouge_stemmer: bool | None = None
    min_k_fraction: float | None = None
    zlib_text: ZlibText | None = None
    es_no_match: EsNoMatch | None = None
    gradnorm_reduction: GradnormReduction | None = None
    gradnorm_mode: GradnormMode | None = None
    truth_ratio_aggregator: str | None = None

    def __post_init__(self) -> None:
        if self.metrics is not None:
            self.metrics = tuple(self.metrics)
            check_metric_names(self.metrics)
        if self.format not in FORMATS:
            raise ValueError(f"split format {self.format!r} is not known; use one of {FORMATS}.")
        for name in CONVENTIONS:
            check_convention(name, getattr(self, name), "SplitConfig", inherit=True)
        self.stop_strings = tuple(self.stop_strings)
        self.fewshot = tuple(tuple(shot) for shot in self.fewshot)


@dataclass
class EvalConfig:
    """What to compute and how: metrics per split, batching, generation, prompt formatting, membership
    inference, the summary's components and robustness attacks."""

    metrics: tuple[str, ...] = ("probability", "rouge_l_recall")
    batch_size: int = 16
    max_new_tokens: int = 200  # TOFU's ROUGE setting
    max_length: int = 512
    prompt_template: str = "auto"
    system_prompt: str | None = None
    date_string: str | None = None
    splits: dict[str, SplitConfig] = field(default_factory=dict)
    # {"members": split, "nonmembers": split, "scores": [...]}: membership inference (docs/metrics.md#membership-inference).
    mia: dict[str, Any] | None = None
    privleak_score: str = "min_k"  # MUSE's Min-40%
    # PrivLeak's reference AUC when no reference eval is given: a published retrained model's (MUSE's own code).
    privleak_published_auc: float | None = None
    # Model utility's components: split -> aggregate names; None: DEFAULT_UTILITY on every non-forget split.
    utility: dict[str, list[str]] | None = None
    forget_split: str = "forget"
    retain_split: str = "retain"
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack name -> parameter overrides
    attack_metrics: tuple[str, ...] = ("probability", "rouge_l_recall")
    seed: int = 0
    # Metric conventions (docs/metrics.md#metric-conventions), each overridable per split in `splits`. The
    # defaults are this project's own; eval/tofu.yaml and eval/muse.yaml set the reference framework's.
    exclude_last_token: bool = False  # EM, ES, Min-K%, Min-K%++ and GradNorm leave out the last target token
    rouge_stemmer: bool | None = None  # None: each ROUGE metric's own (rouge_l_recall stemmed, rouge_l_f1 not)
    min_k_fraction: float = 0.4  # k of Min-K% and Min-K%++
    zlib_text: ZlibText = "text"  # what zlib compresses: the item's whole text, or its answer alone
    es_no_match: EsNoMatch = "zero"  # ES when not even the last token is reproduced: 0, or 1/|y|
    gradnorm_reduction: GradnormReduction = "global_l2"  # one L2 norm, or the mean of per-tensor L2 norms
    gradnorm_mode: GradnormMode = "eval"  # the model's mode during the gradient pass
    truth_ratio_aggregator: str = "auto"  # truth_ratio_stat: auto, closer_to_1, true_better or prob_mean

    def __post_init__(self) -> None:
        self.metrics = tuple(self.metrics)
        self.attack_metrics = tuple(self.attack_metrics)
        check_metric_names(self.metrics + self.attack_metrics)
        self.splits = {
            name: spec if isinstance(spec, SplitConfig) else SplitConfig(**spec)
            for name, spec in self.splits.items()
        }
        for name in ("batch_size", "max_new_tokens", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be at least 1, got {getattr(self, name)}.")
        for name in CONVENTIONS:
            check_convention(name, getattr(self, name), "EvalConfig")
        if self.mia is not None:
            missing = [key for key in ("members", "nonmembers", "scores") if key not in self.mia]
            if missing:
                raise ValueError(
                    f"EvalConfig.mia lacks {missing}; give {{'members': 'forget', 'nonmembers': 'holdout', "
                    f"'scores': {list(membership.MIA_SCORES)}}}."
                )
            membership.check_scores(self.mia["scores"])
            members, nonmembers = (self.conventions(self.mia[role]) for role in ("members", "nonmembers"))
            differing = [name for name in _MIA_CONVENTIONS if members[name] != nonmembers[name]]
            if differing:
                raise ValueError(
                    f"membership inference compares the scores of the {self.mia['members']!r} and "
                    f"{self.mia['nonmembers']!r} splits, which set {differing} differently; give both the same "
                    "values (or set them once for the whole suite)."
                )
        for name, overrides in self.attacks.items():
            # Bad attack names and parameters fail here, before the main evaluation runs.
            attack_params(name, **overrides)

    def split_config(self, split: str) -> SplitConfig:
        """The split's settings; a split an attack derives from the forget split (`forget_rest`) is measured
        like the forget split."""
        if split in self.splits:
            return self.splits[split]
        if split.startswith(f"{self.forget_split}_") and self.forget_split in self.splits:
            return self.splits[self.forget_split]
        return SplitConfig()

    def split_metrics(self, split: str) -> tuple[str, ...]:
        """The metrics of `split`, plus those its role in membership inference needs."""
        metrics = self.split_config(split).metrics
        metrics = self.metrics if metrics is None else metrics
        if self.mia is not None and split in (self.mia["members"], self.mia["nonmembers"]):
            metrics += tuple(
                name for name in membership.metrics_for(self.mia["scores"]) if name not in metrics
            )
        return metrics

    def conventions(self, split: str) -> dict[str, Any]:
        """The metric conventions `split` is measured with (docs/metrics.md#metric-conventions): the split's own
        where it sets one, else this config's."""
        spec = self.split_config(split)
        return {
            name: getattr(self, name) if getattr(spec, name) is None else getattr(spec, name)
            for name in CONVENTIONS
        }


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _answer_groups(
    model: PreTrainedModel, items: Sequence[EvalItem], config: EvalConfig, pad_token_id: int,
    distribution_stats: bool, progress: str,
) -> list[AnswerGroupStatistics]:  # fmt: skip
    """Each item's answer, paraphrased answer and perturbed answers scored in one teacher-forced pass, the
    prompt run once per item and every answer continuing from its cache."""
    groups = [
        AnswerGroup(
            prompt_ids=item.prompt_ids,
            answer_ids=[
                item.answer_ids,
                *([item.paraphrased_ids] if item.paraphrased_ids else []),
                *item.perturbed_ids,
            ],
        )
        for item in items
    ]
    scored = score_answer_groups(
        model, groups, batch_size=config.batch_size, pad_token_id=pad_token_id,
        distribution_stats=distribution_stats, progress=progress,
    )  # fmt: skip
    results = []
    for item, (answer, *rest) in zip(items, scored, strict=True):
        paraphrased = rest.pop(0) if item.paraphrased_ids else None
        results.append(AnswerGroupStatistics(answer=answer, paraphrased=paraphrased, perturbed=tuple(rest)))
    return results


def _timed(timing: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = work()
    timing[name] = timing.get(name, 0.0) + time.perf_counter() - started
    return value


def _scored_by_answer_groups(config: EvalConfig, split: str, needed: set[str]) -> bool:
    """Whether `split` is scored through answer groups (prompt once, answers from its cache): when the metrics
    asked for need them (`needed` inputs), and for both membership splits when either split's metrics do, so that
    an AUC compares scores from one numerical path (the two paths differ in low precision)."""
    if "answer_group" in needed:
        return True
    if config.mia is None or split not in (config.mia["members"], config.mia["nonmembers"]):
        return False
    return any(
        "answer_group" in get_metric(metric).inputs
        for name in (config.mia["members"], config.mia["nonmembers"])
        for metric in config.split_metrics(name)
    )


def _split_inputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    items: list[EvalItem],
    metrics: list[Metric],
    config: EvalConfig,
    timing: dict[str, float],
) -> dict[str, list[Any]]:
    """Run each pass that `metrics` need once over `items`; return the per-item inputs by name."""
    needed = {key for metric in metrics for key in metric.inputs}
    spec = config.split_config(split)
    pad_token_id = _pad_token_id(tokenizer)
    distribution_stats = "distribution_statistics" in needed
    inputs: dict[str, list[Any]] = {
        "answer": [item.reference for item in items],
        "text": [item.text for item in items],
    }
    if _scored_by_answer_groups(config, split, needed):
        groups = _timed(timing, "answer_groups_s", lambda: map_items(
            lambda part: _answer_groups(model, part, config, pad_token_id, distribution_stats, f"{split}: answers"),
            items,
        ))  # fmt: skip
        inputs["answer_group"] = groups
        inputs["statistics"] = inputs["distribution_statistics"] = [group.answer for group in groups]
    elif needed & {"statistics", "distribution_statistics"}:
        statistics = _timed(timing, "forward_s", lambda: map_items(
            lambda part: compute_item_statistics(
                model, [item.encoded() for item in part], batch_size=config.batch_size,
                pad_token_id=pad_token_id, progress=f"{split}: forward", distribution_stats=distribution_stats,
            ),
            items,
        ))  # fmt: skip
        inputs["statistics"] = inputs["distribution_statistics"] = statistics
    if "generation" in needed:
        if any(item.prompt is None for item in items):
            raise ValueError(
                f"split {split!r} has format {spec.format!r}, which has no prompt to generate from; drop the "
                f"generation metrics ({[m.name for m in metrics if 'generation' in m.inputs]}) from it."
            )
        inputs["generation"] = _timed(timing, "generation_s", lambda: map_items(
            lambda part: generate_greedy(
                model, tokenizer, [item.prompt_ids for item in part],
                max_new_tokens=spec.max_new_tokens or config.max_new_tokens, batch_size=config.batch_size,
                stop_strings=spec.stop_strings, progress=f"{split}: generate",
            ),
            items,
        ))  # fmt: skip
    if "gradient_norm" in needed:
        conventions = config.conventions(split)
        inputs["gradient_norm"] = _timed(timing, "gradnorm_s", lambda: map_items(
            lambda part: gradient_norms(
                model, [item.encoded() for item in part], progress=f"{split}: gradnorm",
                exclude_last_token=conventions["exclude_last_token"],
                reduction=conventions["gradnorm_reduction"], mode=conventions["gradnorm_mode"],
            ),
            items,
        ))  # fmt: skip
    return inputs


def _column(dataset: Dataset, name: str) -> list[Any]:
    return list(dataset[name]) if name in dataset.column_names else [None] * len(dataset)


def _truth_ratio_stat(split: str, config: EvalConfig, ratios: list[float]) -> dict[str, Any]:
    """The split's truth-ratio statistic by its `truth_ratio_aggregator` (docs/metrics.md#truth_ratio_stat):
    `auto` takes mean min(R, 1/R) (closer_to_1) on the forget split and mean max(0, 1 - R) (true_better)
    elsewhere."""
    name = config.conventions(split)["truth_ratio_aggregator"]
    if name == "auto":
        name = "closer_to_1" if split == config.forget_split else "true_better"
    statistic = aggregate.TRUTH_RATIO_AGGREGATORS[name]
    return {"value": statistic(ratios) if ratios else None, "n": len(ratios)}


def evaluate_split(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    dataset: Dataset,
    config: EvalConfig,
    metric_names: Sequence[str] | None = None,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Evaluate one split with `metric_names` (default: the split's metrics in `config`); return its per-item
    values and their aggregates (mean, n, bootstrap 95% interval)."""
    timing = {} if timing is None else timing
    spec = config.split_config(split)
    metrics = [get_metric(name) for name in (metric_names or config.split_metrics(split))]
    items = build_items(
        split, dataset, tokenizer, data_format=spec.format, template=config.prompt_template,
        system_prompt=config.system_prompt, date_string=config.date_string, max_length=config.max_length,
        fewshot=spec.fewshot,
        max_answer_tokens=spec.max_answer_tokens,
    )  # fmt: skip
    if any(name == TRUTH_RATIO for name in (m.name for m in metrics)) and not any(
        i.perturbed_ids for i in items
    ):
        raise ValueError(
            f"split {split!r} has no item with perturbed answers (column 'perturbed_answer'); the truth_ratio "
            f"metric has nothing to score. Its columns are {dataset.column_names}."
        )
    inputs = _split_inputs(model, tokenizer, split, items, metrics, config, timing)
    conventions = config.conventions(split)
    subject_ids = _column(dataset, "subject_id")
    questions = _column(dataset, "question" if "question" in dataset.column_names else "prompt")
    records = []
    for index, item in enumerate(items):
        statistics = inputs["statistics"][index] if "statistics" in inputs else None
        record = {
            "index": index,
            "subject_id": subject_ids[index],
            "question": questions[index],
            "answer": item.reference,
            "generation": inputs["generation"][index] if "generation" in inputs else None,
            "num_answer_tokens": statistics.num_tokens if statistics is not None else len(item.answer_ids),
        }
        for metric in metrics:
            value = metric.compute([inputs[key][index] for key in metric.inputs], conventions)
            record[metric.name] = None if value is None else float(value)
        records.append(record)
    # Items about one subject (TOFU: 20 per author) are not independent: intervals resample subjects when known.
    aggregates = {
        metric.name: summarize_with_ci(
            [r[metric.name] for r in records if r[metric.name] is not None],
            clusters=[r["subject_id"] for r in records if r[metric.name] is not None],
        )
        for metric in metrics
    }
    if TRUTH_RATIO in aggregates:
        ratios = [r[TRUTH_RATIO] for r in records if r[TRUTH_RATIO] is not None]
        aggregates[TRUTH_RATIO_STAT] = _truth_ratio_stat(split, config, ratios)
    cut = truncation(items, config.max_length)
    if (warning := cut.warning(f"evaluation split {split!r}")) is not None:
        logger.warning(warning)
    return {
        "num_items": len(records), "format": spec.format, "truncation": cut.to_dict(), "aggregates": aggregates,
        "items": records,
    }  # fmt: skip


def _forget_ratios(items: Sequence[Mapping[str, Any]], split: str, owner: str) -> list[float]:
    """The per-item truth ratios of the items of `split`, or ValueError saying what is missing."""
    if not items or any(TRUTH_RATIO not in item for item in items):
        raise ValueError(
            f"the {owner} has no per-item truth ratios on the {split!r} split, which forget quality compares; "
            f"evaluate it with the truth_ratio metric on that split."
        )
    return [item[TRUTH_RATIO] for item in items if item[TRUTH_RATIO] is not None]


def check_reference(
    config: EvalConfig,
    splits: Sequence[str],
    reference: EvalResult,
    source: str,
    forget_questions: Sequence[str] | None = None,
) -> None:
    """Raise ValueError, before any model runs, when the reference eval `reference` (read from `source`) cannot
    serve a suite of `config` over `splits`: the suite computes nothing against a reference, or it takes forget
    quality and the reference has no per-item truth ratios on the forget split, or scored other items than
    `forget_questions` (the forget split's questions, when known; a framework log's items have none)."""
    forget = config.forget_split
    takes_forget_quality = forget in splits and TRUTH_RATIO in config.split_metrics(forget)
    scores = config.mia["scores"] if config.mia is not None else ()
    takes_mia_reference = membership.REFERENCE_SCORE in scores or config.privleak_score in scores
    if not (takes_forget_quality or takes_mia_reference):
        raise ValueError(
            f"--reference_eval {source}: this suite computes nothing against a reference (forget quality needs the "
            f"truth_ratio metric on the {forget!r} split; PrivLeak needs the {config.privleak_score!r} membership "
            f"score and {membership.REFERENCE_SCORE} a 'mia' section); drop --reference_eval, or add them."
        )
    if takes_forget_quality:
        if SOURCE_FORMAT in reference and not any(TRUTH_RATIO in item for item in reference.split_items(forget)):
            raise ValueError(
                f"--reference_eval {source}: this log of {reference[SOURCE_FORMAT]} has no per-item "
                "forget_truth_ratio values, which forget quality compares; give the retain model's TOFU_EVAL.json (a "
                "TOFU_SUMMARY.json or a MUSE_EVAL.json has none)."
            )
        _forget_ratios(reference.split_items(forget), forget, f"reference eval {source}")
        if forget_questions is not None:
            check_same_items(forget_questions, [item.get("question") for item in reference.split_items(forget)], forget)


def _forget_quality(
    splits: Mapping[str, Any], config: EvalConfig, reference: EvalResult | None
) -> dict[str, Any]:
    """Forget quality against the retain model's eval result `reference` (docs/metrics.md#forget_quality), or why not."""
    split = config.forget_split
    if split not in splits or TRUTH_RATIO not in splits[split]["aggregates"]:
        return {"value": None, "reason": f"no truth ratios on a {split!r} split were computed"}
    if reference is None:
        return {"value": None, "reason": "no reference eval given (pass --reference_eval retain/eval.json)"}
    check_same_items(
        [item.get("question") for item in splits[split]["items"]],
        [item.get("question") for item in reference.split_items(split)],
        split,
    )
    ratios = _forget_ratios(splits[split]["items"], split, "evaluated model")
    reference_ratios = _forget_ratios(reference.split_items(split), split, "reference eval")
    if len(ratios) != len(reference_ratios):
        raise ValueError(
            f"forget quality compares the same forget items, but this eval has {len(ratios)} forget truth "
            f"ratios and the reference eval {len(reference_ratios)}; evaluate both on the same items."
        )
    p_value, statistic = aggregate.ks_test(ratios, reference_ratios)
    low, high = _forget_quality_interval(splits[split]["items"], reference.split_items(split), config.seed)
    quality = {"value": p_value, "ks_statistic": statistic, "n": len(ratios), "ci_low": low, "ci_high": high}
    if SOURCE_FORMAT in reference:
        # A reference read from another framework's log says so: its items were matched by count, not by question.
        quality["reference_format"] = reference[SOURCE_FORMAT]
    return quality


def _forget_quality_interval(
    items: Sequence[Mapping[str, Any]], reference_items: Sequence[Mapping[str, Any]], seed: int
) -> tuple[float, float]:
    """Bootstrap interval of forget quality: the same forget items (whole subjects when known) drawn for both
    models, the KS p-value recomputed on each draw."""
    pairs = [
        (mine[TRUTH_RATIO], theirs[TRUTH_RATIO], mine.get("subject_id"))
        for mine, theirs in zip(items, reference_items, strict=True)
        if mine.get(TRUTH_RATIO) is not None and theirs.get(TRUTH_RATIO) is not None
    ]
    if len(pairs) < 2:
        return math.nan, math.nan
    mine, theirs = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    rows = aggregate.resampled_rows(len(pairs), [p[2] for p in pairs], seed=seed)
    return aggregate.percentile_interval(aggregate.ks_test(mine[row], theirs[row])[0] for row in rows)


def forget_questions(splits: Mapping[str, Dataset], forget_split: str) -> list[str] | None:
    """The questions of the loaded forget split, in order, which the reference eval must have scored; None when
    there is no such split or it has no questions."""
    dataset = splits.get(forget_split)
    if dataset is None or "question" not in dataset.column_names:
        return None
    return list(dataset["question"])


def check_same_items(questions: Sequence[str | None], reference_questions: Sequence[str | None], split: str) -> None:
    """Raise ValueError unless the reference eval scored the same items of `split`, in the same order, as this
    evaluation (compared by question; an older reference without questions is compared by count only)."""
    if None in reference_questions or None in questions:
        return
    if len(questions) != len(reference_questions):
        raise ValueError(
            f"forget quality compares the same {split!r} items, but this evaluation has {len(questions)} and the "
            f"reference eval {len(reference_questions)}; evaluate both with the same suite, data and max_items."
        )
    for index, (mine, theirs) in enumerate(zip(questions, reference_questions, strict=True)):
        if mine != theirs:
            raise ValueError(
                f"forget quality compares the same {split!r} items, but item {index} differs: {mine[:80]!r} here, "
                f"{theirs[:80]!r} in the reference eval; evaluate both with the same suite, data and max_items."
            )


def _model_utility(splits: Mapping[str, Any], config: EvalConfig) -> dict[str, Any]:
    """Model utility, the harmonic mean of the configured components (docs/metrics.md#model_utility), or why not."""
    if config.utility is not None:
        components = {split: list(names) for split, names in config.utility.items()}
    else:
        components = {
            split: list(DEFAULT_UTILITY)
            for split, result in splits.items()
            if split != config.forget_split and all(name in result["aggregates"] for name in DEFAULT_UTILITY)
        }
    measured = EvalResult({"splits": splits}, source="the splits just evaluated")
    inputs: dict[str, float] = {}
    for split, names in components.items():
        for name in names:
            value = measured.mean(split, name)
            if value is None:
                return {
                    "value": None,
                    "reason": f"model utility needs {name!r} on split {split!r}, not computed",
                }
            inputs[f"{split}/{name}"] = value
    if not inputs:
        return {
            "value": None,
            "reason": "no non-forget split has probability, rouge_l_recall and truth_ratio_stat "
            "(evaluate probability, rouge_l_recall and truth_ratio on a retain split)",
        }
    low, high = _model_utility_interval(splits, components, config)
    return {"value": aggregate.model_utility(inputs), "inputs": inputs, "ci_low": low, "ci_high": high}


def _model_utility_interval(
    splits: Mapping[str, Any], components: Mapping[str, Sequence[str]], config: EvalConfig
) -> tuple[float, float]:
    """Bootstrap interval of model utility: each split's items (whole subjects when known) drawn on their own,
    every component of the split recomputed on the draw, then the harmonic mean; NaN bounds when a component has
    no per-item values to draw from."""
    draws: dict[str, list[np.ndarray]] = {}
    values: dict[str, dict[str, list[Any]]] = {}
    for number, (split, names) in enumerate(components.items()):
        items = splits[split].get("items") or []
        source = {name: TRUTH_RATIO if name == TRUTH_RATIO_STAT else name for name in names}
        if not items or any(source[name] not in items[0] for name in names):
            return math.nan, math.nan
        values[split] = {name: [item.get(source[name]) for item in items] for name in names}
        clusters = [item.get("subject_id") for item in items]
        draws[split] = aggregate.resampled_rows(len(items), clusters, seed=config.seed + number)

    def component(split: str, name: str, rows: np.ndarray) -> float:
        drawn = [value for value in (values[split][name][row] for row in rows) if value is not None]
        if not drawn:
            return math.nan
        if name == TRUTH_RATIO_STAT:
            return _truth_ratio_stat(split, config, drawn)["value"]
        return float(np.mean(drawn))

    utilities = []
    for draw in range(len(next(iter(draws.values())))):
        inputs = {
            f"{split}/{name}": component(split, name, draws[split][draw]) for split, names in components.items()
            for name in names
        }  # fmt: skip
        utilities.append(
            math.nan if any(math.isnan(v) for v in inputs.values()) else aggregate.model_utility(inputs)
        )
    return aggregate.percentile_interval(utilities)


def _run_attacks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: Mapping[str, Dataset],
    results: Mapping[str, Any],
    config: EvalConfig,
    timing: dict[str, float],
) -> dict[str, Any]:
    def remeasure(attacked: PreTrainedModel, datasets: Mapping[str, Dataset]) -> dict[str, dict]:
        return {
            name: evaluate_split(attacked, tokenizer, name, data, config, config.attack_metrics)
            for name, data in datasets.items()
        }

    context = AttackContext(
        model=model, tokenizer=tokenizer, splits=splits, baseline=results, evaluate=remeasure,
        prompt_template=config.prompt_template, system_prompt=config.system_prompt, date_string=config.date_string,
        max_length=config.max_length,
        forget_split=config.forget_split, retain_split=config.retain_split if config.retain_split in splits else None,
        seed=config.seed,
    )  # fmt: skip
    return {
        name: _timed(
            timing, f"attack_{name}_s", lambda name=name, params=params: run_attack(name, context, **params)
        )
        for name, params in config.attacks.items()
    }


def evaluate_splits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: Mapping[str, Dataset],
    config: EvalConfig,
    reference: EvalResult | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on each split with `config`; return the eval.json document (`llm_unlearn.evaluation.results`
    reads and writes it): the config, per-split items and aggregates, membership inference, a summary (forget
    quality and PrivLeak against `reference`, the retain model's eval; model utility), robustness attacks and pass
    timings."""
    timing: dict[str, float] = {}
    results = {
        split: evaluate_split(model, tokenizer, split, dataset, config, timing=timing)
        for split, dataset in splits.items()
    }
    example = None
    if any(config.split_config(name).format == "qa" for name in splits):
        example = rendered_example(
            tokenizer, config.prompt_template, system_prompt=config.system_prompt, date_string=config.date_string
        )
    result: dict[str, Any] = {
        # Through JSON once so that the result equals what load_eval reads back (tuples become lists).
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        # A fixed question and answer as this evaluation tokenizes them, to hold beside the training run's.
        "prompt_format": json.loads(json.dumps(example)),
        "splits": results,
    }
    mia = None
    if config.mia is not None:
        mia = membership.membership_inference(
            result, members=config.mia["members"], nonmembers=config.mia["nonmembers"],
            scores=config.mia["scores"], reference=reference,
        )  # fmt: skip
        result["mia"] = mia
    result["summary"] = {
        "forget_quality": _forget_quality(results, config, reference),
        "model_utility": _model_utility(results, config),
        "privleak": membership.privleak_summary(
            mia, reference, config.privleak_score, published_auc=config.privleak_published_auc
        ),
    }
    if config.attacks:
        result["attacks"] = _run_attacks(model, tokenizer, splits, results, config, timing)
    result["timing"] = timing
    return result
