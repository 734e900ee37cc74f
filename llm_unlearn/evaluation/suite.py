"""The eval suite format: a YAML file (`eval/builtin.yaml`, `eval/tofu.yaml`, `eval/muse.yaml`) naming the data,
the splits and their metrics, membership inference, model utility and robustness attacks. `Suite` is that file
as a dataclass, validated once when it is built, and it loads the suite's data."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from llm_unlearn.config_files import load_arguments
from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.benchmarks import load_benchmark
from llm_unlearn.evaluation.attacks import ATTACKS
from llm_unlearn.evaluation.evaluator import (
    CONVENTION_CHOICES,
    CONVENTIONS,
    EvalConfig,
    SplitConfig,
    check_convention,
)
from llm_unlearn.evaluation.harness import HarnessConfig, check_installed

# Splits that come from the data arguments' forget / retain / holdout selection; any other split names its
# data in `split_options`.
SELECTION_SPLITS = ("forget", "retain", "holdout")
# Keys of a `split_options` entry that say where its data comes from; the rest are `SplitConfig` fields.
DATA_KEYS = ("data", "benchmark", "config", "split", "fewshot", "max_items")
_SPLIT_CONFIG_KEYS = ("metrics", "format", "max_new_tokens", "stop_strings", "max_answer_tokens", *CONVENTIONS)
# The evaluator's defaults, which the suite's metric conventions share.
_EVAL_DEFAULTS = {item.name: item.default for item in dataclasses.fields(EvalConfig)}


def _mapping(value: Any, name: str) -> dict[str, Any]:
    """A YAML mapping, or the JSON text of one given on the command line."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name} must be a mapping (JSON on the command line), got {value!r}: {error}"
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}: {value!r}.")
    return value


@dataclass
class Suite(DataArguments):
    """An eval suite: its data (the data arguments' forget / retain / holdout selection, and further splits named
    in `split_options`), the splits and metrics to evaluate, membership inference, model utility and attacks."""

    suite: str | None = field(default=None, metadata={"help": "The suite's name, recorded in eval.json."})
    splits: list[str] = field(
        default_factory=lambda: ["forget", "retain"],
        metadata={"help": f"Splits to evaluate: {SELECTION_SPLITS} or names defined in split_options."},
    )
    split_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "Per split: where its data comes from (data, benchmark, config, split, fewshot) and how it "
            "is evaluated (metrics, format, max_new_tokens, stop_strings, max_answer_tokens, and any metric "
            "convention below)."
        },
    )
    benchmark_source: str | None = field(
        default=None,
        metadata={"help": "Local snapshot of the suite's Hub dataset, read instead of the Hub (offline)."},
    )
    metrics: list[str] = field(
        default_factory=lambda: ["probability", "rouge_l_recall"],
        metadata={"help": "Metrics of every split that names none in split_options."},
    )
    mia: dict | str | None = field(
        default=None,
        metadata={
            "help": "Membership inference: {members: forget, nonmembers: holdout, scores: [loss, ...]}."
        },
    )
    privleak_score: str = field(
        default="min_k", metadata={"help": "The MIA score PrivLeak uses (MUSE: min_k)."}
    )
    privleak_published_auc: float | None = field(
        default=None,
        metadata={
            "help": "A published retrained model's AUC for PrivLeak when no reference eval is given (MUSE-News "
            "0.4772, MUSE-Books 0.5393); the summary labels the value as taken against it."
        },
    )
    utility: dict | str | None = field(
        default=None, metadata={"help": "Model utility's components: {split: [aggregate, ...]}."}
    )
    forget_split: str = field(default="forget", metadata={"help": "The split forget quality is measured on."})
    retain_split: str = field(default="retain", metadata={"help": "The split attacks check utility on."})
    attacks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Robustness attacks: quantize_8bit, quantize_4bit, relearn, paraphrase, leak_at_k."
        },
    )
    attack_args: dict | str | None = field(
        default=None, metadata={"help": "Attack parameters: {attack: {param: value}}."}
    )
    attack_metrics: list[str] = field(
        default_factory=lambda: ["probability", "rouge_l_recall"],
        metadata={"help": "Metrics an attack re-measures."},
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "lm-evaluation-harness tasks to run on the model (mmlu, wmdp_bio, a custom task; needs the "
            "harness extra); none runs none."
        },
    )
    lm_eval_args: dict | str | None = field(
        default=None,
        metadata={
            "help": "lm-eval's settings: {num_fewshot, limit, batch_size, include_path, include_defaults}."
        },
    )
    batch_size: int = 16
    max_new_tokens: int = field(
        default=200, metadata={"help": "Greedy generation length for ROUGE (TOFU: 200)."}
    )
    max_items: int | None = field(
        default=None, metadata={"help": "Evaluate at most this many items per split (a seeded sample)."}
    )
    seed: int = 42
    reference_eval: str | None = field(
        default=None,
        metadata={
            "help": "The retain model's eval.json, for forget quality, PrivLeak and the reference MIA; or its log "
            "from locuslab/open-unlearning (TOFU_EVAL.json, MUSE_EVAL.json), for forget quality and PrivLeak."
        },
    )
    report: bool = field(default=True, metadata={"help": "Write report.md and report.html beside eval.json."})
    # Metric conventions (docs/metrics.md#metric-conventions); a split may override each in split_options.
    exclude_last_token: bool = field(
        default=_EVAL_DEFAULTS["exclude_last_token"],
        metadata={
            "help": "Leave the last target token (end-of-turn / EOS) out of exact_memorization, "
            "extraction_strength, min_k, min_k_plus_plus and gradnorm."
        },
    )
    rouge_stemmer: bool | None = field(
        default=_EVAL_DEFAULTS["rouge_stemmer"],
        metadata={"help": "ROUGE with the Porter stemmer; unset: rouge_l_recall stemmed, rouge_l_f1 not."},
    )
    min_k_fraction: float = field(
        default=_EVAL_DEFAULTS["min_k_fraction"], metadata={"help": "k of min_k and min_k_plus_plus, in (0, 1]."}
    )
    zlib_text: str = field(
        default=_EVAL_DEFAULTS["zlib_text"],
        metadata={"help": f"What zlib compresses, one of {CONVENTION_CHOICES['zlib_text']}."},
    )
    es_no_match: str = field(
        default=_EVAL_DEFAULTS["es_no_match"],
        metadata={"help": f"ES with no matching suffix, one of {CONVENTION_CHOICES['es_no_match']}."},
    )
    gradnorm_reduction: str = field(
        default=_EVAL_DEFAULTS["gradnorm_reduction"],
        metadata={"help": f"GradNorm's reduction, one of {CONVENTION_CHOICES['gradnorm_reduction']}."},
    )
    gradnorm_mode: str = field(
        default=_EVAL_DEFAULTS["gradnorm_mode"],
        metadata={"help": f"The model's mode for GradNorm, one of {CONVENTION_CHOICES['gradnorm_mode']}."},
    )
    truth_ratio_aggregator: str = field(
        default=_EVAL_DEFAULTS["truth_ratio_aggregator"],
        metadata={"help": f"truth_ratio_stat, one of {CONVENTION_CHOICES['truth_ratio_aggregator']}."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.split_options = _mapping(self.split_options, "split_options")
        self.mia = _mapping(self.mia, "mia") or None
        self.utility = _mapping(self.utility, "utility") or None
        self.attack_args = _mapping(self.attack_args, "attack_args")
        if self.attacks == ["none"]:
            self.attacks = []
        for name in self.splits:
            if name not in SELECTION_SPLITS and not self._data_options(name):
                raise ValueError(
                    f"split {name!r} is not one of {SELECTION_SPLITS}, so split_options must say where its data "
                    f"comes from, e.g. {{{name!r}: {{'data': 'builtin', 'split': {name!r}}}}}."
                )
        for name, options in self.split_options.items():
            unknown = sorted(set(options) - set(DATA_KEYS) - set(_SPLIT_CONFIG_KEYS))
            if unknown:
                raise ValueError(
                    f"split_options[{name!r}] has unknown keys {unknown}; accepted: {[*DATA_KEYS, *_SPLIT_CONFIG_KEYS]}."
                )
            for option in CONVENTIONS:
                check_convention(option, options.get(option), f"split_options[{name!r}]", inherit=True)
        for option in CONVENTIONS:
            check_convention(option, getattr(self, option), "suite")
        # Settings of a known attack that is not run are kept (a suite may name several and the command line
        # pick fewer); a name that is no attack at all is a typo.
        unknown = sorted(set(self.attack_args) - set(ATTACKS))
        if unknown:
            raise ValueError(
                f"attack_args names unknown attacks {unknown}; known attacks are {sorted(ATTACKS)}."
            )
        self.lm_eval_args = _mapping(self.lm_eval_args, "lm_eval_args")
        if self.lm_eval_tasks == ["none"]:
            self.lm_eval_tasks = []
        # Here, before any model or data loads: a bad lm_eval_args entry, or tasks without lm-eval installed.
        if self.harness_config() is not None:
            check_installed()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> Suite:
        """The suite in the YAML file at `path`, with `overrides` replacing its options (as flags after `--config`
        do on the command line)."""
        (suite,) = load_arguments((cls,), path, **overrides)
        return suite

    def harness_config(self) -> HarnessConfig | None:
        """The lm-eval tasks and their settings (`lm_eval_args`, checked); None when the suite names no task."""
        harness = HarnessConfig.from_args(self.lm_eval_tasks, self.lm_eval_args, self.batch_size)
        return harness if harness.tasks else None

    def without_attacks(self) -> Suite:
        """This suite with no robustness attack (for a model that has forgotten nothing an attack could bring
        back, such as the target)."""
        return dataclasses.replace(self, attacks=[])

    def load(self) -> tuple[dict[str, Dataset], EvalConfig]:
        """The data of every split and the evaluator's config (with each `fewshot_qa` split's shots)."""
        datasets, fewshot = self.load_eval_splits()
        return datasets, self.eval_config(fewshot)

    def _data_options(self, split: str) -> dict[str, Any]:
        options = self.split_options.get(split, {})
        return {key: options[key] for key in ("data", "benchmark") if key in options}

    def eval_config(self, fewshot: dict[str, list[tuple[str, str]]] | None = None) -> EvalConfig:
        """The evaluator's config; `fewshot` holds each `fewshot_qa` split's loaded shots."""
        fewshot = fewshot or {}
        splits = {
            name: SplitConfig(
                **{key: options[key] for key in _SPLIT_CONFIG_KEYS if key in options},
                fewshot=fewshot.get(name, ()),
            )
            for name, options in self.split_options.items()
        }
        return EvalConfig(
            metrics=tuple(self.metrics),
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            max_length=self.max_length,
            prompt_template=self.prompt_template,
            system_prompt=self.system_prompt,
            date_string=self.date_string,
            splits=splits,
            mia=self.mia,
            privleak_score=self.privleak_score,
            privleak_published_auc=self.privleak_published_auc,
            utility=self.utility,
            forget_split=self.forget_split,
            retain_split=self.retain_split,
            attacks={name: self.attack_args.get(name, {}) for name in self.attacks},
            attack_metrics=tuple(self.attack_metrics),
            seed=self.seed,
            **{option: getattr(self, option) for option in CONVENTIONS},
        )

    def _load(self, name: str, options: dict[str, Any]) -> Dataset:
        if "benchmark" in options:
            return load_benchmark(
                options["benchmark"],
                options["config"],
                options.get("split", "train"),
                source=self.benchmark_source or options.get("data"),
            )
        return self._load_optional(options["data"], options.get("config"), options.get("split", "train"))

    def load_eval_splits(self) -> tuple[dict[str, Dataset], dict[str, list[tuple[str, str]]]]:
        """Each split's data (a seeded sample of at most `max_items` rows) and each `fewshot_qa` split's shots."""
        selection = None
        datasets = {}
        for name in self.splits:
            options = self.split_options.get(name, {})
            if self._data_options(name):
                data = self._load(name, options)
            else:
                selection = selection or self.load_split()
                data = getattr(selection, name)
                if data is None:
                    raise ValueError(
                        f"the {name!r} split is asked for but the data arguments select none; give "
                        f"{name}_subjects or {name}_data (e.g. holdout_data: builtin, holdout_data_split: holdout)."
                    )
            # A split's own max_items and the global one both cap it.
            limits = [limit for limit in (options.get("max_items"), self.max_items) if limit is not None]
            datasets[name] = sample(data, min(limits, default=None), self.seed)
        fewshot = {}
        for name, options in self.split_options.items():
            if "fewshot" in options:
                shots = self._load(
                    f"{name} shots", _mapping(options["fewshot"], f"split_options[{name!r}].fewshot")
                )
                fewshot[name] = list(zip(shots["question"], shots["answer"], strict=True))
        return datasets, fewshot


def sample(dataset: Dataset, max_items: int | None, seed: int) -> Dataset:
    """A seeded subset of at most `max_items` rows, kept in their original order (all rows when None)."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), max_items)))
