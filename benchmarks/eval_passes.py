"""Truth-ratio scoring, the evaluation pass that dominates a TOFU-style suite, old way against new way, in one
run: each item's paraphrased and perturbed answers scored each as its own padded sequence
(`compute_item_statistics`) against the answers of an item continuing one cached prompt (`score_answer_groups`).
Generation, the other heavy pass, is measured in benchmarks/decoding.py.

    python benchmarks/eval_passes.py [--model embedded] [--num_people 6] [--threads 1] [--device cuda]
        [--dtype bfloat16]

It prints both times, their ratio, and whether the results agree (log-probabilities within 1e-4 and the same
argmax hits). The ratio is taken within one run; absolute seconds depend on the machine and on what else runs on
it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from llm_unlearn.data.formatting import IGNORE_INDEX
from llm_unlearn.data.prompts import format_qa
from llm_unlearn.evaluation.statistics import AnswerGroup, compute_item_statistics, score_answer_groups


def synchronize() -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a timer read without this misses them."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    synchronize()
    started = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize()
    return result, time.perf_counter() - started


def answer_groups(tokenizer, rows) -> tuple[list[dict[str, list[int]]], list[AnswerGroup]]:
    """Every item's paraphrased + perturbed answers, as separate encoded sequences (the layout of `encode_qa`)
    and as one group per item."""
    sequences, groups = [], []
    for row in rows:
        prompt = format_qa(tokenizer, row["question"])[0]
        completions = [
            format_qa(tokenizer, row["question"], answer)[1]
            for answer in [row["paraphrased_answer"], *row["perturbed_answer"]]
        ]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
        groups.append(AnswerGroup(prompt_ids=prompt_ids, answer_ids=answer_ids))
        sequences.extend(
            {"input_ids": prompt_ids + answer, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer}
            for answer in answer_ids
        )
    return sequences, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="`embedded`, a local directory or a Hub id.")
    parser.add_argument(
        "--num_people", type=int, default=6, help="Invented people (8 questions each) to score."
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="Where the model runs: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", help="Weights' dtype: float32, bfloat16 or float16.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llm_unlearn.data.fictional import make_fictional_dataset
    from llm_unlearn.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    model.to(args.device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = list(make_fictional_dataset(num_people=args.num_people)["train"])
    print(f"Model {args.model} ({type(model).__name__}, {args.dtype}) on {model.device}, ", end="")
    print(f"{torch.get_num_threads()} threads, ", end="")
    print(f"batch size {args.batch_size}")

    sequences, groups = answer_groups(tokenizer, rows)
    # Warm-up, so that neither side pays the first call's one-off costs.
    score_answer_groups(model, groups[:2], pad_token_id=pad)
    separate, separate_s = timed(
        compute_item_statistics, model, sequences, batch_size=args.batch_size, pad_token_id=pad
    )
    grouped, grouped_s = timed(
        score_answer_groups, model, groups, batch_size=args.batch_size, pad_token_id=pad
    )
    grouped_flat = [stats for answers in grouped for stats in answers]
    logprob_diff = max(
        float(np.abs(a.logprobs - b.logprobs).max()) for a, b in zip(separate, grouped_flat, strict=True)
    )
    same_hits = all(
        np.array_equal(a.argmax_hits, b.argmax_hits) for a, b in zip(separate, grouped_flat, strict=True)
    )
    tokens_separate = sum(len(item["input_ids"]) for item in sequences)
    tokens_grouped = sum(len(g.prompt_ids) + sum(len(a) for a in g.answer_ids) for g in groups)
    print(
        f"\nTruth-ratio scoring: {len(groups)} items x {len(groups[0].answer_ids)} answers "
        f"({tokens_separate} tokens as separate sequences, {tokens_grouped} grouped)"
    )
    print(f"  separate sequences (compute_item_statistics) {separate_s:8.1f} s")
    print(f"  answer groups (score_answer_groups)          {grouped_s:8.1f} s")
    print(f"  speed-up {separate_s / grouped_s:.2f}x; max |logprob difference| {logprob_diff:.2e}; ", end="")
    print(f"same argmax hits: {same_hits}")


if __name__ == "__main__":
    main()
