"""The offline end-to-end run behind `llm-unlearn demo`. Fine-tune a target model (all subjects) and a retain model
(forget subjects left out), unlearn the forget subjects from the target, evaluate all three with the built-in
suite (eval/builtin.yaml), print a table and write a comparison report.

Each phase runs a recipe YAML of `configs/builtin/` through the library's entry points (`finetune`, `unlearn`,
`evaluate_model`), the ones `accelerate launch recipes/... --config configs/builtin/...` calls. The configs and the suite are the copies
packaged with llm_unlearn (`llm_unlearn.resources`), so the demo runs from any directory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_unlearn.config_files import load_arguments
from llm_unlearn.embedded import EMBEDDED, embedded_checkpoint
from llm_unlearn.evaluation.report import write_report
from llm_unlearn.evaluation.results import load_eval
from llm_unlearn.evaluation.runner import EVAL_FILE, evaluate_model
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.files import check_output_dir, write_json_atomic
from llm_unlearn.finetune import FINETUNE_ARGUMENTS, finetune
from llm_unlearn.methods import METHODS, get_method
from llm_unlearn.models import ModelArguments
from llm_unlearn.resources import packaged_path
from llm_unlearn.unlearn import UNLEARN_ARGUMENTS, unlearn

PACKAGED_CONFIGS = packaged_path("configs/builtin")
PACKAGED_SUITE = packaged_path("eval/builtin.yaml")
MODES = ("lora", "full")
# The unlearned model passes when it keeps at most half the target's forget probability and stays within
# 20% of the target's retain probability.
MAX_FORGET_RATIO = 0.5
MAX_RETAIN_CHANGE = 0.2
SHORT_METRIC_NAMES = {
    "probability": "prob", "probability_mc": "MC prob", "rouge_l_recall": "ROUGE-L", "truth_ratio_stat": "TR",
    "min_k": "Min-K AUC",
}  # fmt: skip
# What the printed table shows; demo.json keeps every number.
TABLE_COLUMNS = (
    "forget/probability", "forget/rouge_l_recall", "forget/truth_ratio_stat", "retain/probability",
    "retain/rouge_l_recall", "world_facts/probability_mc", "mia/min_k", "suite/forget_quality",
    "suite/model_utility", "suite/privleak",
)  # fmt: skip


@dataclass
class DemoArguments:
    """What to run the demo on; everything else comes from the recipe configs."""

    model: str = field(
        default=EMBEDDED, metadata={"help": "Base model: 'embedded', a directory or a Hub id."}
    )
    dataset: str | None = field(default=None, metadata={"help": "Override the configs' dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "e.g. 'num_people=6,num_holdout=2'."})
    forget_subjects: list[str] | None = field(
        default=None, metadata={"help": "Override the forget subjects."}
    )
    method: str = field(default="graddiff", metadata={"help": "Unlearning method."})
    methods: list[str] | None = field(
        default=None,
        metadata={"help": "Compare several methods ('all': every registered one); overrides method."},
    )
    mode: str = field(default="lora", metadata={"help": f"Unlearning mode, one of {MODES}."})
    output_dir: str = field(
        default="outputs/demo", metadata={"help": "Where models, evals and demo.json go."}
    )
    configs_dir: str = field(
        default=str(PACKAGED_CONFIGS),
        metadata={"help": "Directory of the recipe configs; by default the packaged configs/builtin."},
    )
    eval_suite: str = field(
        default=str(PACKAGED_SUITE),
        metadata={
            "help": "The eval suite every model is scored with; by default the packaged eval/builtin.yaml. A "
            "relative configs/...yaml or eval/...yaml missing from the current directory is read from the package."
        },
    )
    finetune_epochs: float | None = field(default=None, metadata={"help": "Override fine-tuning epochs."})
    unlearn_epochs: float | None = field(default=None, metadata={"help": "Override unlearning epochs."})
    max_eval_items: int | None = field(default=None, metadata={"help": "Evaluate at most N items per split."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not known; use one of {MODES}.")
        for name in self.method_names():
            get_method(name)

    def method_names(self) -> list[str]:
        """The methods to run, in order."""
        if not self.methods:
            return [self.method]
        return sorted(METHODS) if self.methods == ["all"] else list(self.methods)

    def config(self, name: str) -> Path:
        path = Path(self.configs_dir) / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"demo config {path} not found; pass --configs_dir with a directory of recipe configs, or leave it "
                "out for the packaged configs/builtin."
            )
        return path

    def unlearn_config(self, method: str) -> Path:
        """`<method>_<mode>.yaml` when shipped, else the GradDiff config with the method swapped in."""
        specific = Path(self.configs_dir) / f"{method}_{self.mode}.yaml"
        return specific if specific.is_file() else self.config(f"graddiff_{self.mode}")

    def data_overrides(self) -> dict[str, Any]:
        """The data options every phase takes from the demo's arguments instead of its config."""
        overrides: dict[str, Any] = {}
        if self.dataset is not None:
            overrides["dataset"] = self.dataset
        if self.dataset_config is not None:
            overrides["dataset_config"] = self.dataset_config
        if self.forget_subjects:
            overrides["forget_subjects"] = list(self.forget_subjects)
        return overrides


def _timed(phases: dict[str, float], name: str, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    print(f"\n== {name} ==", flush=True)
    started = time.perf_counter()
    result = work(*args, **kwargs)
    phases[name] = round(time.perf_counter() - started, 2)
    return result


def _short(column: str) -> str:
    split, metric = column.split("/")
    if split == "suite":
        return metric.replace("_", " ")
    return f"{split} {SHORT_METRIC_NAMES.get(metric, metric)}"


def format_table(
    rows: dict[str, dict[str, float]], phases: dict[str, float], seconds: dict[str, float] | None = None
) -> str:
    """A fixed-width table, one line per model; `seconds` adds each model's training wall time."""
    columns = list(next(iter(rows.values())))
    widths = [max(len(_short(c)), 7) + 2 for c in columns]
    name_width = max(10, *(len(name) + 2 for name in rows))
    header = f"{'model':<{name_width}}" + "".join(
        f"{_short(c):>{w}}" for c, w in zip(columns, widths, strict=True)
    )
    header += f"{'train s':>9}" if seconds is not None else ""
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = "".join(f"{row.get(c, float('nan')):>{w}.4f}" for c, w in zip(columns, widths, strict=True))
        if seconds is not None:
            cells += f"{seconds[name]:>9.1f}" if name in seconds else f"{'':>9}"
        lines.append(f"{name:<{name_width}}" + cells)
    lines.append("")
    lines.append("wall time by phase (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    return "\n".join(lines)


def check_forgetting(target: dict[str, float], unlearned: dict[str, float]) -> dict[str, Any]:
    """Compare an unlearned model with the target on forget and retain probability."""
    forget_ratio = unlearned["forget/probability"] / target["forget/probability"]
    retain_change = abs(unlearned["retain/probability"] / target["retain/probability"] - 1)
    return {
        "forget_probability_ratio": forget_ratio,
        "forget_passed": forget_ratio <= MAX_FORGET_RATIO,
        "retain_probability_change": retain_change,
        "retain_passed": retain_change <= MAX_RETAIN_CHANGE,
    }


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Run the whole demo, write `output_dir/demo.json` and return what it holds."""
    started = time.perf_counter()
    out = check_output_dir(args.output_dir, args.overwrite).resolve()
    phases: dict[str, float] = {}
    if args.model == EMBEDDED:
        _timed(phases, "prepare_model", embedded_checkpoint)
    data = args.data_overrides()
    methods = args.method_names()
    # One method keeps the plain name "unlearned"; a comparison names each model by its method.
    unlearned = {"unlearned": methods[0]} if len(methods) == 1 else {method: method for method in methods}
    dirs = {name: out / name for name in ("target", "retain", *unlearned)}
    # Read (and checked) once, before any training, so a bad suite fails at once.
    eval_items = {"max_items": args.max_eval_items} if args.max_eval_items else {}
    demo_suite = Suite.from_yaml(args.eval_suite, **data, **eval_items)
    finetune_epochs = {"num_train_epochs": args.finetune_epochs} if args.finetune_epochs else {}
    for name, train_on in (("target", "all"), ("retain", "retain")):
        data_args, training_args, model_args = load_arguments(
            FINETUNE_ARGUMENTS, args.config("finetune"), model_name_or_path=args.model, train_on=train_on,
            output_dir=str(dirs[name]), **finetune_epochs, **data,
        )  # fmt: skip
        _timed(phases, f"finetune_{name}", finetune, model_args, data_args, training_args, overwrite=args.overwrite)
    unlearn_epochs = {"num_train_epochs": args.unlearn_epochs} if args.unlearn_epochs else {}
    rows, seconds = {}, {}
    # The retain model is evaluated first: its per-item values are the reference for forget quality, PrivLeak
    # and the reference membership score. Of the attacks it runs the two whose result on a model that never
    # saw the forget set is the control for the unlearned model's: relearning (what the attack itself teaches)
    # and leak@k (what sampling guesses by chance). The target has forgotten nothing for an attack to bring back.
    attacks = {"retain": ["relearn", "leak_at_k"], "target": []}
    for name in ("retain", "target", *unlearned):
        if name in unlearned:
            phase = f"unlearn_{name}" if len(methods) > 1 else "unlearn"
            data_args, training_args, model_args = load_arguments(
                UNLEARN_ARGUMENTS, args.unlearn_config(unlearned[name]), model_name_or_path=str(dirs["target"]),
                method=unlearned[name], output_dir=str(dirs[name]), **unlearn_epochs, **data,
            )  # fmt: skip
            _timed(phases, phase, unlearn, model_args, data_args, training_args, overwrite=args.overwrite)
            seconds[name] = phases[phase]
        model_suite: dict[str, Any] = {}
        if name != "retain":
            model_suite["reference_eval"] = str(dirs["retain"] / EVAL_FILE)
        if name in attacks:
            model_suite["attacks"] = attacks[name]
        suite = dataclasses.replace(demo_suite, **model_suite)
        model_args = ModelArguments(model_name_or_path=str(dirs[name]))
        path = _timed(phases, f"eval_{name}", evaluate_model, model_args, suite, dirs[name], overwrite=True)
        rows[name] = load_eval(path).row()
    rows = {name: rows[name] for name in dirs}
    report_md, report_html = _timed(
        phases, "report", lambda: write_report(list(dirs.values()), out / "report", overwrite=args.overwrite)
    )
    checks = {name: check_forgetting(rows["target"], rows[name]) for name in unlearned}
    seconds.update({name: phases[f"finetune_{name}"] for name in ("target", "retain")})
    summary = {
        "output_dir": str(out),
        "models": {name: str(path) for name, path in dirs.items()},
        "methods": unlearned,
        "mode": args.mode,
        "table": rows,
        "train_seconds": seconds,
        "checks": checks,
        "report": {"markdown": str(report_md), "html": str(report_html)},
        "phases_s": phases,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(summary, out / "demo.json")
    return summary


def render(summary: dict[str, Any]) -> str:
    """What the demo prints at the end: the table, each unlearned model's checks, where the report and results
    are."""
    rows = {name: {c: row[c] for c in TABLE_COLUMNS if c in row} for name, row in summary["table"].items()}
    lines = ["", format_table(rows, summary["phases_s"], summary["train_seconds"]), ""]
    for name, check in summary["checks"].items():
        lines.append(
            f"{name}: forget probability / target = {check['forget_probability_ratio']:.3f} "
            f"(needs <= {MAX_FORGET_RATIO}): {'PASS' if check['forget_passed'] else 'FAIL'}; "
            f"retain probability change = {check['retain_probability_change']:.1%} "
            f"(needs <= {MAX_RETAIN_CHANGE:.0%}): {'PASS' if check['retain_passed'] else 'FAIL'}"
        )
    report = Path(summary["report"]["html"])
    lines.append(f"report: {report} (and {Path(summary['report']['markdown']).name} beside it)")
    lines.append(f"total wall time {summary['wall_time_s']:.0f} s; results in {Path(summary['output_dir']) / 'demo.json'}")
    return "\n".join(lines)
