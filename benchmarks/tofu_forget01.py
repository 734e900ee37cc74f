"""The TOFU suite on forget01 with one model: every summary number, the aggregates of each split, the
membership AUCs, and the wall time split by pass, with the generation rate.

    python benchmarks/tofu_forget01.py [--benchmark_source DIR] [--model embedded] [--max_items N]
        [--reference_eval PATH] [--output_dir DIR] [--attacks] [--threads N] [--dtype bfloat16]

It runs `eval/tofu.yaml`, whose metric conventions are the reference framework's (docs/benchmarks.md), with
its forget and holdout splits switched from forget10 to forget01: forget 40 items (forget01_perturbed),
holdout 40 (holdout01), retain 400 (retain_perturbed), real authors 100, world facts 117; greedy generation of
up to 200 new tokens; the suite's membership scores, and exact memorization and extraction strength on the
forget set; with --attacks, the suite's robustness attacks as well. Prompts use the model's chat template with
the system prompt "You are a helpful assistant.".

The data is a local snapshot of the Hub dataset locuslab/TOFU (one `<config>.json` per config): by default
`../shared/data/tofu` beside the checkout, else `--benchmark_source DIR` (or `--benchmark_source
locuslab/TOFU` to read the Hub). The run goes through `evaluate_model`, as `llm-unlearn eval` does: on the GPU
when there is one (`ACCELERATE_USE_CPU=true` keeps it on the CPU). Forget quality and PrivLeak need
`--reference_eval`, a retain99 model's eval.json on the same items or its locuslab/open-unlearning log
(`--output_dir` keeps this run's eval.json). The full run takes about 20 minutes on a 2-core CPU with the
embedded model, most of it generation; `--max_items N` takes a seeded N items of each split for a quick check.

Generated tokens are counted by re-encoding each recorded generation (the evaluator keeps the text, stripped
and cut before the end-of-turn token), so the rate is approximate: end-of-turn tokens are not counted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_unlearn.data.benchmarks import TOFU_FORGET_SETS
from llm_unlearn.embedded import EMBEDDED, embedded_checkpoint
from llm_unlearn.evaluation import EvalResult, load_eval
from llm_unlearn.evaluation.runner import evaluate_model
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import ModelArguments

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "eval" / "tofu.yaml"
# A convenience for checkouts with a snapshot beside them; any other place is given with --benchmark_source.
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "tofu"
SYSTEM_PROMPT = "You are a helpful assistant."
# The fields of a summary entry that `print_summary` shows in place; every other field follows the value.
SUMMARY_SHOWN = ("value", "ci_low", "ci_high", "reason", "inputs")


def forget01_suite(args: argparse.Namespace) -> Suite:
    """`eval/tofu.yaml` with forget01's evaluation and holdout sets in place of forget10's, and the options
    given."""
    options = Suite.from_yaml(SUITE).split_options
    forget01 = TOFU_FORGET_SETS["forget01"]
    options = {
        **options,
        "forget": {**options["forget"], "config": forget01.perturbed},
        "holdout": {**options["holdout"], "config": forget01.holdout},
    }
    suite = Suite.from_yaml(
        SUITE, split_options=options, benchmark_source=args.benchmark_source, max_items=args.max_items,
        prompt_template="chat", system_prompt=SYSTEM_PROMPT, reference_eval=args.reference_eval,
        report=False,
    )  # fmt: skip
    # The attacks (4-bit weights, paraphrased questions) re-measure the model on top of the suite's own
    # passes: off unless asked for, so that the default run is the suite's evaluation alone.
    return suite if args.attacks else suite.without_attacks()


def generated_tokens(result: EvalResult, tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokens of every recorded generation, re-encoded."""
    texts = [
        item["generation"]
        for split in result.split_names()
        for item in result.split_items(split)
        if item.get("generation")
    ]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def number(value: float | None) -> str:
    """A value to 4 decimals, in scientific notation below 1e-3 (forget quality p-values can be tiny)."""
    if value is None:
        return "n/a"
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def interval(entry: dict[str, Any]) -> str:
    """An entry's bootstrap 95% interval, when it has one."""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return "" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def print_summary(result: EvalResult) -> None:
    """Forget quality, model utility with its nine inputs, and PrivLeak: each value with its interval and the
    entry's other fields (KS statistic, the AUCs PrivLeak compares, ...), or why it is missing."""
    print("summary")
    for name, entry in result["summary"].items():
        parts = [f"  {name:<34}{number(entry.get('value')):>12}", interval(entry)]
        parts += [
            f"{key} {number(value) if isinstance(value, float) else value}"
            for key, value in entry.items()
            if key not in SUMMARY_SHOWN
        ]
        parts.append(f"({entry['reason']})" if "reason" in entry else "")
        print("  ".join(part for part in parts if part))
        for component, value in (entry.get("inputs") or {}).items():
            print(f"    {component:<32}{number(value):>12}")


def print_splits(result: EvalResult) -> None:
    """Each split's aggregates: mean, 95% interval and n."""
    print(f"\n{'split':<14}{'metric':<22}{'mean':>12}  {'95% interval':<18}{'n':>5}")
    for split in result.split_names():
        for metric, entry in result["splits"][split]["aggregates"].items():
            value = entry.get("mean", entry.get("value"))
            print(f"{split:<14}{metric:<22}{number(value):>12}  {interval(entry):<18}{entry['n']:>5}")


def print_mia(result: EvalResult) -> None:
    """The AUC of each membership score, forget authors against holdout authors."""
    mia = result["mia"]
    print(f"\nmembership inference, {mia['members']} (members) vs {mia['nonmembers']} (nonmembers)")
    for score, entry in mia["scores"].items():
        line = f"  {score:<24}AUC {number(entry['auc']):>8}"
        if "reason" in entry:
            print(f"{line}  ({entry['reason']})")
        else:
            print(f"{line}  {interval(entry):<18}n {entry['n_members']}/{entry['n_nonmembers']}")


def print_timing(phases: dict[str, float], generation_tokens: int) -> None:
    """Wall time by phase and by evaluation pass, each with its share, and the generation rate."""
    total = sum(phases.values())
    print(f"\n{'wall time':<34}{'seconds':>9}{'share':>8}")
    for name, seconds in phases.items():
        print(f"  {name:<32}{seconds:>9.1f}{seconds / total:>8.1%}")
    print(f"  {'total':<32}{total:>9.1f}")
    generation_s = phases.get("generation_s")
    if generation_s:
        print(
            f"generation: {generation_tokens} tokens (recorded generations, re-encoded) in "
            f"{generation_s:.1f} s = {generation_tokens / generation_s:.1f} tokens/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--benchmark_source", default=str(DEFAULT_SOURCE),
        help="A local snapshot of locuslab/TOFU (a directory of <config>.json files), or the Hub id.",
    )  # fmt: skip
    parser.add_argument("--model", default=EMBEDDED, help="'embedded', a model directory or a Hub id.")
    parser.add_argument("--max_items", type=int, default=None, help="A seeded N items per split (quick run).")
    parser.add_argument(
        "--reference_eval", default=None,
        help="A retain99 model's eval.json, or its open-unlearning log (forget quality, PrivLeak).",
    )  # fmt: skip
    parser.add_argument("--output_dir", default=None, help="Keep this run's eval.json there.")
    parser.add_argument("--attacks", action="store_true", help="Also run the suite's robustness attacks.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float32", help="Weights' dtype: float32, bfloat16 or float16.")
    args = parser.parse_args()
    if args.benchmark_source == str(DEFAULT_SOURCE) and not DEFAULT_SOURCE.is_dir():
        parser.error(
            f"no TOFU snapshot at {DEFAULT_SOURCE}; pass --benchmark_source DIR (a local snapshot of the Hub "
            "dataset locuslab/TOFU) or --benchmark_source locuslab/TOFU."
        )
    if args.threads:
        torch.set_num_threads(args.threads)

    suite = forget01_suite(args)
    model_args = ModelArguments(model_name_or_path=args.model, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as scratch:
        # The library's own path, as `llm-unlearn eval` takes it: data, model, passes, eval.json.
        result = load_eval(evaluate_model(model_args, suite, args.output_dir or scratch))
    # The evaluator times each pass (eval.json's `timing`); the rest of the wall time is loading the data and
    # the model, metrics, aggregates with their bootstrap intervals, and membership inference.
    phases = dict(result["timing"])
    phases["load, metrics, aggregates, MIA"] = result["wall_time_s"] - sum(phases.values())
    # Only the tokenizer, to count the generated tokens: the model was loaded and freed by evaluate_model.
    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint() if args.model == EMBEDDED else args.model)

    items = ", ".join(f"{name} {result.num_items(name)}" for name in result.split_names())
    print(
        f"TOFU forget01 on {args.model} ({args.dtype}, threads {torch.get_num_threads()}), up to "
        f"{result['config']['max_new_tokens']} new tokens, chat template with system prompt {SYSTEM_PROMPT!r}"
    )
    print(f"data: {args.benchmark_source}; items: {items}\n")
    print_summary(result)
    print_splits(result)
    print_mia(result)
    print_timing(phases, generated_tokens(result, tokenizer))
    if args.output_dir is not None:
        print(f"wrote {Path(args.output_dir) / 'eval.json'}")

if __name__ == "__main__":
    main()
