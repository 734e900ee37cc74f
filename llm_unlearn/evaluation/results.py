"""eval.json, the evaluator's result, and its one reader and writer: `load_eval` reads and checks a file,
`save_eval` writes one, `EvalResult` gives its numbers by name (as the gate checks them, the reports and the model
card show them and the deletion report compares them) and `EvalResultBuilder` writes one from chosen numbers.

The format, as `evaluate_splits` writes it, with the run's fields that `llm-unlearn eval` adds:

- `splits`: `{split: {"num_items", "format", "truncation", "aggregates": {metric: aggregate}, "items": [per-item
  record]}}`; `truncation` says what max_length cut (`Truncation`: examples, truncated, tokens_dropped, longest); an
  aggregate is `{"mean", "n", "std", "ci_low", "ci_high"}` (bootstrap 95% interval), or `{"value", "n"}` for a
  statistic of the split as a whole (`SPLIT_STATISTICS`); a mean with no items is NaN.
- `summary`: `{name: {"value", ...}}` (forget quality, model utility, PrivLeak); a value that could not be
  computed is null, with a `reason`.
- `mia`: `{"members", "nonmembers", "scores": {score: entry}}`, an entry `{"auc", "ci_low", "ci_high",
  "n_members", "n_nonmembers"}`, or `{"auc": null, "reason"}` for a score that could not be computed; absent
  without membership inference.
- `attacks`: `{name: {"description", "params", "splits": {split: {metric: aggregate}}, "baseline": {...}, ...}}`,
  the aggregates after the attack and, in `baseline`, before it on the same items.
- `prompt_format`: a fixed question and answer as the evaluation tokenized them (`PromptFormat.example`), null without QA
  splits.
- `harness`: lm-evaluation-harness results (`llm_unlearn.evaluation.harness`), `{"lm_eval_version", "requested":
  [task named by the suite], "args": {num_fewshot, limit, batch_size, include_path, include_defaults}, "n_shot":
  {task: shots}, "tasks": {task: {metric: {"value", "stderr", "n"}}}}`, every task and group lm-eval reported (a
  group's subtasks too), `value` and `stderr` null where lm-eval gave no number; absent when the suite names no
  `lm_eval_tasks`.
- `config` (the EvalConfig), `timing`, and from the command `suite`, `model`, `artifacts`, `reference_eval`,
  `num_processes` and `wall_time_s`.
- `source_format`: absent from an eval.json; in a result read from another framework's log as a reference eval
  (`llm_unlearn.evaluation.reference_logs`), that framework ('open-unlearning').
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_unlearn.data.formatting import Truncation
from llm_unlearn.files import write_json_atomic

TRUTH_RATIO_STAT = "truth_ratio_stat"
# The key naming the framework whose log a result was read from (absent: this project's eval.json).
SOURCE_FORMAT = "source_format"
# Aggregates over a split's items as a whole, written as {"value", "n"} rather than a mean with an interval.
SPLIT_STATISTICS = (TRUTH_RATIO_STAT,)
NOT_AN_EVAL = (
    "expected a JSON object with a 'splits' object (each split with its 'aggregates') and a 'summary' object, "
    "as `llm-unlearn eval` writes eval.json"
)


class EvalFileError(ValueError):
    """An eval result that is not in the evaluator's format; the message names the file and the entry."""


@dataclass(frozen=True)
class Measurement:
    """One number of an eval result with what eval.json records beside it: its bootstrap 95% interval, the number
    of items it covers and, when it was not computed, why."""

    value: float  # NaN when not computed (null in eval.json) or undefined (a mean over no items)
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    reason: str | None = None

    @property
    def computed(self) -> bool:
        """Whether there is a number: the value is neither null nor NaN."""
        return not math.isnan(self.value)

    def text(self, digits: int = 3, count: str = " n={}") -> str:
        """'value [ci_low, ci_high] n=N' with what is recorded, each number to `digits` significant digits and
        'n/a' for one that is not finite; `count` formats N."""

        def number(value: float) -> str:
            return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"

        text = number(self.value)
        if self.ci_low is not None and self.ci_high is not None:
            text += f" [{number(self.ci_low)}, {number(self.ci_high)}]"
        return text if self.n is None else text + count.format(self.n)


@dataclass(frozen=True)
class MembershipAuc(Measurement):
    """A membership-inference AUC (members labelled 0, nonmembers 1) and the item counts it compares."""

    n_members: int | None = None
    n_nonmembers: int | None = None


@dataclass(frozen=True)
class HarnessScore(Measurement):
    """A metric of an lm-evaluation-harness task with the standard error lm-eval computed for it."""

    stderr: float | None = None

    def text(self, digits: int = 3, count: str = " n={}") -> str:
        """'value ± stderr n=N' with what is recorded, each number to `digits` significant digits."""
        text = super().text(digits, count="")
        if self.stderr is not None and math.isfinite(self.stderr):
            text += f" ± {self.stderr:.{digits}g}"
        return text if self.n is None else text + count.format(self.n)


@dataclass(frozen=True)
class AttackResult:
    """A robustness attack: what it did, its parameters, and the aggregates after it (`attacked`) and before it on
    the same items (`baseline`), by split and metric."""

    name: str
    description: str | None
    params: dict[str, Any]
    attacked: dict[str, dict[str, Measurement]]
    baseline: dict[str, dict[str, Measurement]]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _object(value: Any, where: str, source: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EvalFileError(f"{source}: {where} is {value!r}; expected {expected}.")
    return value


def _measurement(
    entry: Mapping[str, Any],
    key: str,
    where: str,
    source: str,
    kind: type[Measurement] = Measurement,
    **extra: Any,
) -> Measurement:
    """`entry[key]` (null as NaN) with the entry's interval (when both bounds are finite), count and reason."""
    raw = entry.get(key)
    if raw is not None and not _is_number(raw):
        raise EvalFileError(
            f"{source}: {where} is {raw!r}; expected a number, or null when it was not computed."
        )
    low, high = entry.get("ci_low"), entry.get("ci_high")
    bounded = all(_is_number(bound) and math.isfinite(bound) for bound in (low, high))
    reason = entry.get("reason")
    return kind(
        value=math.nan if raw is None else float(raw),
        ci_low=float(low) if bounded else None,
        ci_high=float(high) if bounded else None,
        n=_count(entry.get("n")),
        reason=reason if isinstance(reason, str) else None,
        **extra,
    )


def _aggregate(entry: Any, where: str, source: str) -> Measurement:
    """An aggregate: its `value` (a split statistic), or else its `mean`."""
    entry = _object(entry, where, source, "an aggregate object with a 'mean' (or a 'value')")
    if "value" not in entry and "mean" not in entry:
        raise EvalFileError(f"{source}: {where} has neither 'mean' nor 'value'; it has {sorted(entry)}.")
    return _measurement(entry, "value" if "value" in entry else "mean", where, source)


def _aggregates(section: Any, where: str, source: str) -> dict[str, dict[str, Measurement]]:
    """`{split: {metric: aggregate}}`, as an attack records its splits and its baseline."""
    section = _object(section, where, source, "an object of splits, each an object of aggregates")
    splits = {}
    for split, metrics in section.items():
        metrics = _object(metrics, f"{where}.{split}", source, "an object of aggregates")
        splits[split] = {
            metric: _aggregate(entry, f"{where}.{split}.{metric}", source) for metric, entry in metrics.items()
        }
    return splits


def _read_splits(document: Mapping[str, Any], source: str) -> dict[str, dict[str, Measurement]]:
    """Each split's aggregates, after checking that every split has aggregates and per-item objects."""
    splits = {}
    for split, body in document["splits"].items():
        body = _object(body, f"splits.{split}", source, "an object with 'aggregates'")
        items = body.get("items", [])
        if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
            raise EvalFileError(f"{source}: splits.{split}.items is not a list of per-item objects.")
        where = f"splits.{split}.aggregates"
        aggregates = _object(body.get("aggregates"), where, source, "an object of aggregates")
        splits[split] = {
            metric: _aggregate(entry, f"{where}.{metric}", source) for metric, entry in aggregates.items()
        }
    return splits


def _read_summary(document: Mapping[str, Any], source: str) -> dict[str, Measurement]:
    """The summary values, each an object with a `value`; an eval.json older than the summary has none."""
    summary = _object(document.get("summary", {}), "summary", source, "an object of summary values")
    values = {}
    for name, entry in summary.items():
        entry = _object(entry, f"summary.{name}", source, "an object with a 'value' (null with a 'reason')")
        if "value" not in entry:
            raise EvalFileError(f"{source}: summary.{name} has no 'value'; it has {sorted(entry)}.")
        values[name] = _measurement(entry, "value", f"summary.{name}", source)
    return values


def _read_mia(
    document: Mapping[str, Any], source: str
) -> tuple[tuple[str, str] | None, dict[str, MembershipAuc]]:
    """The (members, nonmembers) splits of membership inference and each score's AUC; (None, {}) without it."""
    mia = document.get("mia")
    if mia is None:
        return None, {}
    mia = _object(mia, "mia", source, "an object with 'members', 'nonmembers' and 'scores'")
    scores = _object(mia.get("scores", {}), "mia.scores", source, "an object of AUC entries")
    aucs = {}
    for score, entry in scores.items():
        entry = _object(entry, f"mia.scores.{score}", source, "an object with an 'auc'")
        aucs[score] = _measurement(
            entry, "auc", f"mia.scores.{score}.auc", source, MembershipAuc,
            n_members=_count(entry.get("n_members")), n_nonmembers=_count(entry.get("n_nonmembers")),
        )  # fmt: skip
    return (str(mia.get("members")), str(mia.get("nonmembers"))), aucs


def _read_attacks(document: Mapping[str, Any], source: str) -> dict[str, AttackResult]:
    attacks = _object(document.get("attacks") or {}, "attacks", source, "an object of attack results")
    results = {}
    for name, entry in attacks.items():
        entry = _object(entry, f"attacks.{name}", source, "an object with 'splits' and 'baseline'")
        description = entry.get("description")
        results[name] = AttackResult(
            name=name,
            description=description if isinstance(description, str) else None,
            params=dict(entry.get("params") or {}),
            attacked=_aggregates(entry.get("splits", {}), f"attacks.{name}.splits", source),
            baseline=_aggregates(entry.get("baseline", {}), f"attacks.{name}.baseline", source),
        )
    return results


def _read_harness(
    document: Mapping[str, Any], source: str
) -> tuple[list[str], dict[str, dict[str, HarnessScore]]]:
    """The lm-eval tasks the suite named and every reported task's metrics; ([], {}) without a `harness` section."""
    harness = document.get("harness")
    if harness is None:
        return [], {}
    harness = _object(harness, "harness", source, "an object with 'tasks'")
    tasks = _object(harness.get("tasks", {}), "harness.tasks", source, "an object of lm-eval tasks")
    scores = {}
    for task, metrics in tasks.items():
        metrics = _object(metrics, f"harness.tasks.{task}", source, "an object of metrics")
        scores[task] = {}
        for metric, entry in metrics.items():
            where = f"harness.tasks.{task}.{metric}"
            entry = _object(entry, where, source, "an object with a 'value' and a 'stderr'")
            stderr = entry.get("stderr")
            if stderr is not None and not _is_number(stderr):
                raise EvalFileError(f"{source}: {where}.stderr is {stderr!r}; expected a number or null.")
            scores[task][metric] = _measurement(
                entry, "value", f"{where}.value", source, HarnessScore,
                stderr=None if stderr is None else float(stderr),
            )  # fmt: skip
    requested = harness.get("requested", [])
    if not isinstance(requested, list):
        raise EvalFileError(f"{source}: harness.requested is {requested!r}; expected a list of task names.")
    return [str(task) for task in requested], scores


class EvalResult(Mapping[str, Any]):
    """An eval result as the evaluator writes it: its numbers by name, checked and typed, and read-only access to
    the JSON document itself (per-item records, config) as a mapping. Numbers are named as `llm-unlearn gate`
    checks them: a summary key (`forget_quality`), `split/metric` (`forget/probability`), `mia/score`
    (`mia/min_k`), `attack/name/split/metric` (`attack/quantize_4bit/forget/probability`) and
    `harness/task/metric` (`harness/mmlu/acc`); a summary key wins a name clash."""

    def __init__(self, document: Mapping[str, Any], source: str = "the eval result") -> None:
        """Check `document` and keep a copy of it; `source` names it in error messages (its path, when read)."""
        if not isinstance(document, Mapping) or not isinstance(document.get("splits"), Mapping):
            raise EvalFileError(f"{source} is not an eval.json: {NOT_AN_EVAL}.")
        # Through JSON, so the result is plain JSON types, equal to what `load_eval` reads back once saved.
        self._document: dict[str, Any] = json.loads(json.dumps(dict(document)))
        self.source = source
        self._splits = _read_splits(self._document, source)
        self._summary = _read_summary(self._document, source)
        self._mia_splits, self._mia = _read_mia(self._document, source)
        self._attacks = _read_attacks(self._document, source)
        self._harness_requested, self._harness = _read_harness(self._document, source)
        self._by_name: dict[str, Measurement] = dict(self._summary)
        others = [
            *(
                (f"{split}/{metric}", m)
                for split, metrics in self._splits.items()
                for metric, m in metrics.items()
            ),
            *((f"mia/{score}", auc) for score, auc in self._mia.items()),
            *(
                (f"attack/{name}/{split}/{metric}", m)
                for name, attack in self._attacks.items()
                for split, metrics in attack.attacked.items()
                for metric, m in metrics.items()
            ),
            *(
                (f"harness/{task}/{metric}", score)
                for task, scores in self._harness.items()
                for metric, score in scores.items()
            ),
        ]
        for name, measurement in others:
            self._by_name.setdefault(name, measurement)

    def __getitem__(self, key: str) -> Any:
        return self._document[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._document)

    def __len__(self) -> int:
        return len(self._document)

    def __repr__(self) -> str:
        return f"EvalResult({self.source!r})"

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the JSON document, to derive another result from."""
        return json.loads(json.dumps(self._document))

    # The run's fields.

    @property
    def suite(self) -> str | None:
        """The suite's name, when the command recorded it."""
        return self._document.get("suite")

    @property
    def model(self) -> str | None:
        """The evaluated model (Hub id or path), when the command recorded it."""
        return self._document.get("model")

    @property
    def reference_eval(self) -> str | None:
        """The path of the retain model's eval.json this eval compared with, when it had one."""
        return self._document.get("reference_eval")

    @property
    def forget_split(self) -> str:
        """The suite's forget split (`EvalConfig.forget_split`; 'forget' when the config does not say)."""
        return (self._document.get("config") or {}).get("forget_split") or "forget"

    # Splits.

    def split_names(self) -> list[str]:
        """The evaluated splits, in the order they were evaluated."""
        return list(self._splits)

    def num_items(self, split: str) -> int | None:
        """How many items `split` has; None when the split or its count is not recorded."""
        return _count(self._document["splits"].get(split, {}).get("num_items"))

    def truncation(self, split: str) -> Truncation | None:
        """What max_length cut from `split`'s items; None when the split or its record is absent (older files)."""
        recorded = self._document["splits"].get(split, {}).get("truncation")
        return Truncation(**recorded) if isinstance(recorded, dict) else None

    def split_items(self, split: str) -> list[dict[str, Any]]:
        """The per-item records of `split` (index, subject id, question, answer, generation, each metric); none
        when the split was not evaluated or its items were not kept."""
        return list(self._document["splits"].get(split, {}).get("items", []))

    def metric_names(self, split: str) -> list[str]:
        """The aggregates of `split`, in the order they were computed; none when it was not evaluated."""
        return list(self._splits.get(split, {}))

    def metric(self, split: str, metric: str) -> Measurement | None:
        """The aggregate `metric` of `split` (its mean or value, interval and count); None when not recorded."""
        return self._splits.get(split, {}).get(metric)

    def mean(self, split: str, metric: str) -> float | None:
        """The number of the aggregate `metric` of `split` (its value, or else its mean); None when it is not
        recorded or not computed (null or NaN)."""
        measurement = self.metric(split, metric)
        return measurement.value if measurement is not None and measurement.computed else None

    # The summary.

    def summary_names(self) -> list[str]:
        """The summary's values (forget_quality, model_utility, privleak, ...), in the recorded order."""
        return list(self._summary)

    def summary(self, name: str) -> Measurement | None:
        """The summary value `name`, with the reason the evaluator recorded when it is null; None when absent."""
        return self._summary.get(name)

    def summary_value(self, name: str) -> float | None:
        """The summary value `name`; None when absent or not computed."""
        measurement = self.summary(name)
        return measurement.value if measurement is not None and measurement.computed else None

    def summary_fields(self, name: str) -> dict[str, Any]:
        """Everything recorded with the summary value `name`: model utility's `inputs`, PrivLeak's `score`, `auc`
        and `reference_auc`, ...; empty when absent."""
        return dict(self._document.get("summary", {}).get(name, {}))

    # Membership inference and attacks.

    @property
    def mia_splits(self) -> tuple[str, str] | None:
        """The (members, nonmembers) splits of membership inference; None when it was not run."""
        return self._mia_splits

    def mia_aucs(self) -> dict[str, MembershipAuc]:
        """Each membership score's AUC with its interval and item counts (NaN, with why, when not computed)."""
        return dict(self._mia)

    def attacks(self) -> dict[str, AttackResult]:
        """Each robustness attack that was run, by name."""
        return dict(self._attacks)

    # lm-evaluation-harness.

    def harness_requested(self) -> list[str]:
        """The lm-eval tasks the suite named (`lm_eval_tasks`), in its order; none without harness results."""
        return list(self._harness_requested)

    def harness_tasks(self) -> list[str]:
        """Every lm-eval task and group with results: the requested ones first, then their subtasks."""
        return list(self._harness)

    def harness_metrics(self, task: str) -> dict[str, HarnessScore]:
        """The metrics of lm-eval task `task` (value, stderr, n), by name; empty when it has no results."""
        return dict(self._harness.get(task, {}))

    # Numbers by name.

    def names(self) -> list[str]:
        """Every name `measure` takes: summary keys first, then `split/metric`, `mia/score`,
        `attack/name/split/metric` and `harness/task/metric`."""
        return list(self._by_name)

    def measure(self, name: str) -> Measurement:
        """The number called `name` (see the class); KeyError when there is none, so check `names()` first."""
        return self._by_name[name]

    def row(self) -> dict[str, float]:
        """One flat row of this result: `split/metric` values, `mia/score` AUCs, `harness/task/metric` scores and
        `suite/name` summary values, NaN for what was not computed."""
        row = {
            f"{split}/{metric}": measurement.value
            for split, metrics in self._splits.items()
            for metric, measurement in metrics.items()
        }
        row.update({f"mia/{score}": auc.value for score, auc in self._mia.items()})
        row.update(
            {
                f"harness/{task}/{metric}": score.value
                for task, scores in self._harness.items()
                for metric, score in scores.items()
            }
        )
        row.update({f"suite/{name}": measurement.value for name, measurement in self._summary.items()})
        return row


def load_eval(path: str | os.PathLike) -> EvalResult:
    """Read and check the eval.json at `path`: FileNotFoundError when there is none, EvalFileError (naming the
    file) when it is not valid JSON or not in the evaluator's format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; `llm-unlearn eval --output_dir DIR` writes DIR/eval.json."
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise EvalFileError(f"{path} is not valid JSON: {error}.") from error
    return EvalResult(document, source=str(path))


def save_eval(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `result` (an `EvalResult`, or the dict `evaluate_splits` returns, checked on the way) to `path` as
    JSON, atomically; returns the path."""
    checked = result if isinstance(result, EvalResult) else EvalResult(result)
    return write_json_atomic(checked.to_dict(), path)


def utility_change(target: EvalResult, unlearned: EvalResult) -> dict[str, dict[str, float]]:
    """What unlearning did to utility: model utility and every aggregate of the splits that are neither the forget
    split nor membership inference's nonmembers, `{"before": target's, "after": unlearned's}` where both were
    computed."""
    excluded = {unlearned.forget_split}
    if unlearned.mia_splits is not None:
        excluded.add(unlearned.mia_splits[1])
    change = {}
    before, after = target.summary_value("model_utility"), unlearned.summary_value("model_utility")
    if before is not None and after is not None:
        change["model_utility"] = {"before": before, "after": after}
    for split in unlearned.split_names():
        if split in excluded:
            continue
        for metric in unlearned.metric_names(split):
            old, new = target.mean(split, metric), unlearned.mean(split, metric)
            if old is not None and new is not None:
                change[f"{split}/{metric}"] = {"before": old, "after": new}
    return change


def _aggregate_json(metric: str, value: float | Measurement | None, n: int) -> dict[str, Any]:
    """An aggregate as the evaluator writes it: `{"value", "n"}` for a split statistic, else the mean with its
    interval (NaN bounds and spread where not given, as for a mean over too few items)."""
    measurement = (
        value if isinstance(value, Measurement) else Measurement(math.nan if value is None else value)
    )
    count = n if measurement.n is None else measurement.n
    if metric in SPLIT_STATISTICS:
        return {"value": measurement.value if measurement.computed else None, "n": count}
    return {
        "mean": measurement.value,
        "n": count,
        "std": math.nan,
        "ci_low": math.nan if measurement.ci_low is None else measurement.ci_low,
        "ci_high": math.nan if measurement.ci_high is None else measurement.ci_high,
    }


class EvalResultBuilder:
    """An eval result in the evaluator's format from chosen numbers, without a model: for tests and examples. Each
    method adds one part and returns the builder; `build` checks the whole as `load_eval` does."""

    def __init__(self, **fields: Any) -> None:
        """An empty result with the top-level `fields` given: suite, model, reference_eval, config..."""
        self._document: dict[str, Any] = {"config": {}, "splits": {}, "summary": {}, "timing": {}, **fields}

    def split(
        self,
        name: str,
        aggregates: Mapping[str, float | Measurement | None] | None = None,
        *,
        items: Sequence[Mapping[str, Any]] = (),
        num_items: int | None = None,
        format: str = "qa",
        truncation: Truncation | None = None,
    ) -> EvalResultBuilder:
        """Add split `name` with its per-item records and aggregates (a number is a mean over all `num_items`,
        which default to the number of items); `truncation` defaults to nothing cut."""
        count = len(items) if num_items is None else num_items
        truncation = truncation or Truncation(max_length=self._document["config"].get("max_length"), examples=count)
        self._document["splits"][name] = {
            "num_items": count,
            "format": format,
            "truncation": truncation.to_dict(),
            "aggregates": {
                metric: _aggregate_json(metric, value, count) for metric, value in (aggregates or {}).items()
            },
            "items": [dict(item) for item in items],
        }
        return self

    def summary(
        self, name: str, value: float | None, *, reason: str | None = None, **fields: Any
    ) -> EvalResultBuilder:
        """Add the summary value `name` with its other fields (n, inputs, score...); a null value needs the
        `reason` the evaluator would record."""
        if value is None and reason is None:
            raise ValueError(f"summary value {name!r} is null; the evaluator records why, so give reason=.")
        entry = {"value": value, **fields}
        if value is None:
            entry["reason"] = reason
        self._document["summary"][name] = entry
        return self

    def mia(self, members: str, nonmembers: str, aucs: Mapping[str, float | MembershipAuc]) -> EvalResultBuilder:
        """Add membership inference between the splits `members` and `nonmembers` with each score's AUC; one
        that was not computed is a `MembershipAuc` of NaN with its reason."""
        scores = {}
        for score, auc in aucs.items():
            auc = auc if isinstance(auc, MembershipAuc) else MembershipAuc(auc)
            if not auc.computed:
                if auc.reason is None:
                    raise ValueError(f"AUC {score!r} is not computed; the evaluator records why, so give reason=.")
                scores[score] = {"auc": None, "reason": auc.reason}
                continue
            scores[score] = {
                "auc": auc.value,
                "ci_low": math.nan if auc.ci_low is None else auc.ci_low,
                "ci_high": math.nan if auc.ci_high is None else auc.ci_high,
                "n_members": auc.n_members,
                "n_nonmembers": auc.n_nonmembers,
            }
        self._document["mia"] = {"members": members, "nonmembers": nonmembers, "scores": scores}
        return self

    def attack(
        self,
        name: str,
        attacked: Mapping[str, Mapping[str, float | Measurement]],
        baseline: Mapping[str, Mapping[str, float | Measurement]],
        *,
        description: str = "",
        params: Mapping[str, Any] | None = None,
        n: int = 0,
        **fields: Any,
    ) -> EvalResultBuilder:
        """Add robustness attack `name` with its aggregates after the attack and before it, by split and metric
        (a number is a mean over `n` items), and its other fields."""

        def section(splits: Mapping[str, Mapping[str, float | Measurement]]) -> dict[str, dict[str, Any]]:
            return {
                split: {metric: _aggregate_json(metric, value, n) for metric, value in metrics.items()}
                for split, metrics in splits.items()
            }

        self._document.setdefault("attacks", {})[name] = {
            "description": description, "params": dict(params or {}), **fields,
            "splits": section(attacked), "baseline": section(baseline),
        }  # fmt: skip
        return self

    def harness(
        self,
        tasks: Mapping[str, Mapping[str, float | HarnessScore | None]],
        *,
        requested: Sequence[str] | None = None,
        n: int | None = None,
        **fields: Any,
    ) -> EvalResultBuilder:
        """Add lm-evaluation-harness results, `{task: {metric: score}}` (a number is a value over `n` items with no
        stderr), the tasks the suite named (default: all of `tasks`) and the section's other fields (args,
        n_shot, lm_eval_version)."""

        def entry(value: float | HarnessScore | None) -> dict[str, Any]:
            if isinstance(value, HarnessScore):
                score = value
            else:
                score = HarnessScore(math.nan if value is None else value)
            return {
                "value": score.value if score.computed else None,
                "stderr": score.stderr,
                "n": n if score.n is None else score.n,
            }

        scores = {
            task: {metric: entry(value) for metric, value in metrics.items()} for task, metrics in tasks.items()
        }
        requested = list(tasks if requested is None else requested)
        self._document["harness"] = {"requested": requested, **fields, "tasks": scores}
        return self

    def build(self) -> EvalResult:
        """The result, checked as `load_eval` checks a file."""
        return EvalResult(self._document, source="the built eval result")
