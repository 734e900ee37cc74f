"""Logs of the reference framework, locuslab/open-unlearning: `load_reference` reads either this project's eval.json
or that framework's `TOFU_EVAL.json` / `MUSE_EVAL.json` (or `TOFU_SUMMARY.json`) as the reference eval of forget
quality and PrivLeak, and `write_open_unlearning_log` writes an eval.json's numbers as such a log, with its key
names, for its tools (docs/metrics.md#logs-of-the-reference-framework).

Its log is one JSON object, one entry per metric (the metric and the metrics it was computed from):
`{"agg_value": number or null, "value_by_index": {"<item index>": {field: value}}}`, the per-index part only for
per-item metrics. A membership attack's entry (`mia_min_k`, ...) holds `agg_value` = `auc`, the AUC with forget
items labelled 0 and holdout items 1 on scores where higher = less like a member (this project's `roc_auc`
orientation), and `forget` / `holdout` entries with per-index `score`s. Its summary file maps each metric to its
`agg_value`. What is read, and how it maps onto this project's names:

- `forget_truth_ratio`, per index `score` = P(wrong) / P(paraphrased), the perturbed answers' length-normalised
  probabilities averaged in log space: R itself (not 1/R, not min(R, 1/R), which is only its `agg_value`), so
  `truth_ratio` takes it as it is;
- `forget_Q_A_Prob` `prob` -> `probability`, `forget_Q_A_ROUGE` `rougeL_recall` -> `rouge_l_recall`,
  `exact_memorization` / `extraction_strength` `score` -> the metrics of the same names, all on the forget split;
- `mia_loss`, `mia_zlib`, `mia_min_k`, `mia_min_k_plus_plus`, `mia_gradnorm` `agg_value` -> the AUC of `loss`,
  `zlib`, `min_k`, `min_k_plus_plus`, `gradnorm`, unchanged: the orientations agree (the framework turns the AUC
  into MUSE's, 1 - AUC, only inside its `privleak`, as `aggregate.privleak` does).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_unlearn.evaluation.aggregate import summarize
from llm_unlearn.evaluation.results import NOT_AN_EVAL, SOURCE_FORMAT, EvalFileError, EvalResult
from llm_unlearn.files import write_json_atomic

if TYPE_CHECKING:
    from llm_unlearn.evaluation.evaluator import EvalConfig

OPEN_UNLEARNING = "open-unlearning"
# What `llm-unlearn eval --export_reference_format` writes.
EXPORT_FORMATS = (OPEN_UNLEARNING,)
NOT_A_LOG = (
    "a log of locuslab/open-unlearning: TOFU_EVAL.json or MUSE_EVAL.json, an object of metrics each with an "
    "'agg_value' (and per item a 'value_by_index'), or TOFU_SUMMARY.json, metric names and numbers"
)

# Per-item metrics of a split: (this project's metric, the framework's key after "forget_" / "retain_", the
# per-index field). Its retain truth ratio is spelled `retain_Truth_Ratio`, the forget one `forget_truth_ratio`.
SPLIT_METRICS = (
    ("truth_ratio", "truth_ratio", "score"),
    ("probability", "Q_A_Prob", "prob"),
    ("rouge_l_recall", "Q_A_ROUGE", "rougeL_recall"),
)
RETAIN_KEYS = {"truth_ratio": "retain_Truth_Ratio"}
# Per-item metrics the framework computes on the forget split alone, under their own names.
FORGET_METRICS = ("exact_memorization", "extraction_strength")
# This project's membership score -> the framework's attack. Its `mia_reference` (a second model's loss) has no
# counterpart here: `loss_minus_reference` subtracts the reference eval's per-item loss instead.
MIA_KEYS = {
    "loss": "mia_loss",
    "zlib": "mia_zlib",
    "min_k": "mia_min_k",
    "min_k_plus_plus": "mia_min_k_plus_plus",
    "gradnorm": "mia_gradnorm",
}
SUMMARY_KEYS = ("forget_quality", "model_utility", "privleak")
# Names that mark a file of plain numbers as the framework's summary rather than any JSON object.
_KNOWN_KEYS = {
    *(f"forget_{key}" for _, key, _ in SPLIT_METRICS),
    *FORGET_METRICS, *MIA_KEYS.values(), *SUMMARY_KEYS,
    "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE",
}  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def log_kind(document: Any) -> str | None:
    """What `document` is of the framework's files, by content: 'log' (`*_EVAL.json`: every entry an object,
    one at least with an `agg_value` or `value_by_index`), 'summary' (`*_SUMMARY.json`: numbers or nulls under
    metric names the framework uses), or None."""
    if not isinstance(document, Mapping) or not document or "splits" in document:
        return None
    entries = list(document.values())
    if all(isinstance(entry, Mapping) for entry in entries) and any(
        "agg_value" in entry or "value_by_index" in entry for entry in entries
    ):
        return "log"
    if all(entry is None or _is_number(entry) for entry in entries) and _KNOWN_KEYS & set(document):
        return "summary"
    return None


def _number(value: Any, where: str, source: str) -> float | None:
    if value is None:
        return None
    if not _is_number(value):
        raise EvalFileError(f"{source}: {where} is {value!r}; expected a number or null.")
    return float(value)


def _per_index(entry: Any, field: str, where: str, source: str) -> dict[int, float | None]:
    """`{item index: value}` of an entry's `value_by_index` field; an item without a value is None."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("value_by_index"), Mapping):
        raise EvalFileError(f"{source}: {where} has no 'value_by_index' object of per-item values.")
    values = {}
    for key, record in entry["value_by_index"].items():
        if not str(key).isdigit():
            raise EvalFileError(f"{source}: {where}.value_by_index has key {key!r}; expected item indices.")
        if record is not None and not isinstance(record, Mapping):
            raise EvalFileError(f"{source}: {where}.value_by_index[{key!r}] is {record!r}; expected an object.")
        value = None if record is None else record.get(field)
        values[int(key)] = _number(value, f"{where}.value_by_index[{key!r}].{field}", source)
    return values


def _read_forget_split(document: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The forget split's per-item values in item-index order, with their means; None without any."""
    columns = {
        metric: _per_index(document[key], field, key, source)
        for metric, key, field in (
            *((metric, f"forget_{key}", field) for metric, key, field in SPLIT_METRICS),
            *((metric, metric, "score") for metric in FORGET_METRICS),
        )
        if key in document
    }
    if not columns:
        return None
    # The framework keys items by their row in the dataset split; its order is the order of the items.
    indices = sorted(set().union(*columns.values()))
    items = [
        {"index": index, "question": None, **{metric: values.get(index) for metric, values in columns.items()}}
        for index in indices
    ]
    aggregates = {
        metric: summarize(value for value in values.values() if value is not None)
        for metric, values in columns.items()
    }
    return {"num_items": len(items), "format": "qa", "aggregates": aggregates, "items": items}


def _membership_aucs(document: Mapping[str, Any], kind: str, source: str) -> dict[str, dict[str, Any]]:
    """Each membership score's AUC (with the item counts a log records), in `roc_auc`'s orientation."""
    scores = {}
    for score, key in MIA_KEYS.items():
        if key not in document:
            continue
        if kind == "summary":
            auc = _number(document[key], key, source)
            counts = {}
        else:
            entry = document[key]
            auc = _number(entry.get("agg_value", entry.get("auc")), f"{key}.agg_value", source)
            counts = {
                name: len(entry[role]["value_by_index"])
                for name, role in (("n_members", "forget"), ("n_nonmembers", "holdout"))
                if isinstance(entry.get(role), Mapping) and isinstance(entry[role].get("value_by_index"), Mapping)
            }
        if auc is not None:
            scores[score] = {"auc": auc, **counts}
    return scores


def from_open_unlearning(
    document: Mapping[str, Any],
    source: str,
    *,
    forget_split: str = "forget",
    mia_splits: tuple[str, str] | None = None,
) -> EvalResult:
    """An eval result holding what forget quality and PrivLeak take from a log (or summary) of
    locuslab/open-unlearning: the forget split's per-item values in index order under `forget_split`, and the
    membership AUCs between `mia_splits` (members, nonmembers; default `forget_split` and 'holdout'), the
    framework's forget and holdout data. Its items have no questions, so forget quality checks them by count."""
    kind = log_kind(document)
    if kind is None:
        raise EvalFileError(f"{source} is not {NOT_A_LOG}.")
    members, nonmembers = mia_splits or (forget_split, "holdout")
    split = _read_forget_split(document, source) if kind == "log" else None
    result: dict[str, Any] = {
        SOURCE_FORMAT: OPEN_UNLEARNING,
        "config": {"forget_split": forget_split},
        "splits": {} if split is None else {forget_split: split},
        "summary": {},
    }
    scores = _membership_aucs(document, kind, source)
    if scores:
        result["mia"] = {"members": members, "nonmembers": nonmembers, "scores": scores}
    return EvalResult(result, source=source)


def load_reference(path: str | os.PathLike, config: EvalConfig | None = None) -> EvalResult:
    """Read the reference eval at `path`, this project's eval.json or a log of locuslab/open-unlearning (told
    apart by content): FileNotFoundError when there is none, EvalFileError naming the file and both formats when
    it is neither. A framework log's forget split and membership splits take the names `config` gives them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the retain model's eval.json or TOFU_EVAL.json.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise EvalFileError(f"{path} is not valid JSON: {error}.") from error
    if isinstance(document, Mapping) and "splits" in document:
        return EvalResult(document, source=str(path))
    if log_kind(document) is None:
        raise EvalFileError(
            f"{path} is not an eval.json ({NOT_AN_EVAL}) and not {NOT_A_LOG}; --reference_eval takes either."
        )
    if config is None:
        return from_open_unlearning(document, str(path))
    mia_splits = (config.mia["members"], config.mia["nonmembers"]) if config.mia else None
    return from_open_unlearning(document, str(path), forget_split=config.forget_split, mia_splits=mia_splits)


def _finite(value: float | None) -> float | None:
    """JSON's null for what is not a finite number (the framework's readers take null, not NaN)."""
    return value if value is not None and math.isfinite(value) else None


def _entry(
    items: Sequence[Mapping[str, Any]], fields: Mapping[str, str], agg_value: float | None
) -> dict[str, Any]:
    """A per-item metric as the framework logs it: `agg_value` and, keyed by each item's index as a string, the
    item's values under the framework's field names (`fields`: its field -> this project's item key)."""

    def value(item: Mapping[str, Any], key: str) -> Any:
        found = item.get(key)
        return _finite(found) if _is_number(found) else found

    return {
        "agg_value": _finite(agg_value),
        "value_by_index": {
            str(item.get("index", position)): {field: value(item, key) for field, key in fields.items()}
            for position, item in enumerate(items)
        },
    }


def _mean(items: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [item[key] for item in items if item.get(key) is not None]
    return summarize(values)["mean"] if values else None


def to_open_unlearning(result: EvalResult) -> dict[str, Any]:
    """The numbers of `result` as a `TOFU_EVAL.json` of locuslab/open-unlearning, under its key names: per-item
    truth ratio, probability and ROUGE-L recall of the forget and retain splits (`forget_truth_ratio`,
    `forget_Q_A_Prob`, `forget_Q_A_ROUGE`, `retain_Truth_Ratio`, ...), EM and ES of the forget split,
    `forget_quality`, `model_utility`, `privleak`, and each membership score's AUC with its per-item scores
    (`mia_min_k`, ...). A truth ratio's `agg_value` is the split's `truth_ratio_stat`, the framework's aggregate
    (closer to 1 on forget, true better on retain); every other one the mean, or the summary value."""
    config = result.get("config") or {}
    roles = {"forget": result.forget_split, "retain": config.get("retain_split") or "retain"}
    log: dict[str, Any] = {}
    for role, split in roles.items():
        items = result.split_items(split)
        for metric, key, field in SPLIT_METRICS:
            if result.metric(split, metric) is None:
                continue
            name = RETAIN_KEYS.get(metric, f"retain_{key}") if role == "retain" else f"forget_{key}"
            fields = {field: metric}
            if metric == "rouge_l_recall":
                # The framework keeps what ROUGE compared beside the score.
                fields.update(input="question", ground_truth="answer", generation="generation")
            agg = result.mean(split, "truth_ratio_stat" if metric == "truth_ratio" else metric)
            log[name] = _entry(items, fields, agg)
    forget_items = result.split_items(roles["forget"])
    for metric in FORGET_METRICS:
        if result.metric(roles["forget"], metric) is not None:
            log[metric] = _entry(forget_items, {"score": metric}, result.mean(roles["forget"], metric))
    for name in SUMMARY_KEYS:
        if result.summary(name) is not None:
            log[name] = {"agg_value": result.summary_value(name)}
    if result.mia_splits is not None:
        members, nonmembers = (result.split_items(split) for split in result.mia_splits)
        for score, auc in result.mia_aucs().items():
            if score not in MIA_KEYS or not auc.computed:
                continue
            log[MIA_KEYS[score]] = {"agg_value": auc.value, "auc": auc.value}
            for role, items in (("forget", members), ("holdout", nonmembers)):
                if any(score in item for item in items):
                    log[MIA_KEYS[score]][role] = _entry(items, {"score": score}, _mean(items, score))
    # The framework sorts its log by metric name.
    return dict(sorted(log.items()))


def open_unlearning_log_name(suite: str | None) -> str:
    """The file name the framework gives a benchmark's log: `MUSE_EVAL.json` for the muse suite, else
    `TOFU_EVAL.json`."""
    return "MUSE_EVAL.json" if (suite or "").lower() == "muse" else "TOFU_EVAL.json"


def write_open_unlearning_log(result: EvalResult, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `to_open_unlearning(result)` to `path` atomically; FileExistsError when it exists and not
    `overwrite`. Returns the path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
    return write_json_atomic(to_open_unlearning(result), path)
