"""The eval suite's own cost: its wall time against the time the model itself spends in the same forward passes,
backward passes (GradNorm) and generation steps, measured in one run, plus the time of each metric family.

    python benchmarks/eval_suite.py [--suite eval/builtin.yaml] [--model embedded] [--reference_eval PATH]
        [--attacks] [--threads N] [--device cuda] [--dtype bfloat16]

The model's own time is every top-level `forward` call (timed with hooks, so it covers the teacher-forced
passes, answer groups, prefill and every decode step) plus every backward pass GradNorm takes. Everything else
in the wall time is the suite's overhead: tokenization, batching, cache bookkeeping, log-probabilities and
distribution statistics, decoding text, ROUGE, bootstrap intervals, membership inference. The issue's bound is
wall / model <= 1.3 for the suite without attacks; with --attacks the attacks run too and each is timed (the
relearning attack's training is model time by this count only for its forward passes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import torch

from llm_unlearn.evaluation import EvalResult, evaluate_splits, evaluator, load_eval
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]


def synchronize() -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a timer read without this misses them."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class ModelClock:
    """Seconds spent inside the model's top-level forward calls and in GradNorm's backward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.calls = 0
        self._started = 0.0
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._leave)
        self._grad = torch.autograd.grad

    def _enter(self, module, args) -> None:
        synchronize()
        self._started = time.perf_counter()

    def _leave(self, module, args, output) -> None:
        synchronize()
        self.forward_s += time.perf_counter() - self._started
        self.calls += 1

    def timed_grad(self, *args, **kwargs):
        """`torch.autograd.grad`, timed: in the eval suite only GradNorm calls it."""
        synchronize()
        started = time.perf_counter()
        result = self._grad(*args, **kwargs)
        synchronize()
        self.backward_s += time.perf_counter() - started
        return result

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(REPO / "eval" / "builtin.yaml"))
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--reference_eval", default=None, help="A retain model's eval.json (PrivLeak, FQ).")
    parser.add_argument("--attacks", action="store_true", help="Also run the suite's robustness attacks.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="Where the model runs: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", help="Weights' dtype: float32, bfloat16 or float16.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    suite = Suite.from_yaml(args.suite)
    if not args.attacks:
        suite = suite.without_attacks()
    datasets, config = suite.load()
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    model.to(args.device)
    reference = load_eval(args.reference_eval) if args.reference_eval else None
    # A warm-up pass, so one-time costs (allocator, kernels) fall on neither side of the ratio.
    evaluator.evaluate_split(
        model, tokenizer, "forget", datasets["forget"].select(range(2)), config, ["probability"]
    )

    clock = ModelClock(model)
    with mock.patch("torch.autograd.grad", clock.timed_grad):
        started = time.perf_counter()
        document = evaluate_splits(model, tokenizer, datasets, config, reference=reference)
        wall = time.perf_counter() - started

    result = EvalResult(document)
    items = {name: result.num_items(name) for name in result.split_names()}
    print(
        f"suite {suite.suite} on {args.model} ({args.dtype}, {model.device}), {torch.get_num_threads()} "
        f"threads; items per split: {items}"
    )
    print(f"{'metric family':<28}{'seconds':>9}{'share':>8}")
    passes = dict(result["timing"])
    passes["metrics, aggregates, MIA"] = wall - sum(passes.values())
    for name, seconds in passes.items():
        print(f"{name:<28}{seconds:>9.1f}{seconds / wall:>8.1%}")
    print(f"{'suite wall time':<28}{wall:>9.1f}")
    print(
        f"{'model time':<28}{clock.total_s:>9.1f}  ({clock.calls} forward calls {clock.forward_s:.1f} s, "
        f"GradNorm backward {clock.backward_s:.1f} s)"
    )
    print(f"overhead ratio wall / model = {wall / clock.total_s:.3f} (bound 1.3)")


if __name__ == "__main__":
    main()
