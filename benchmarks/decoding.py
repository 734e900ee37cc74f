"""Greedy and sampled decoding: our own decode loop (`llm_unlearn.evaluation.generation`) against transformers'
public ones, in one run, to decide whether the loop still earns its upkeep.

Greedy, for each prompt set and each `--max_new_tokens`, the same prompts decoded by
(a) `generate_greedy`: left-padded prefill, one token per step over a key/value cache, finished rows (eos, stop
    string, max_new_tokens) leave the batch;
(b) `model.generate` with `greedy_generation_config` on length-sorted, left-padded batches of `--batch_size`
    (a batch runs until its longest row stops), with generate's own stop strings (`stop_strings`, `tokenizer=`);
(c) `model.generate_batch`: transformers' continuous batching (paged cache, finished rows are replaced by waiting
    ones, at most `--batch_size` requests per step); it stops at eos or max_new_tokens only, with no stop strings;
(d) with stop strings only: the continuous batching manager that `generate_batch` wraps, streaming each request's
    tokens and cancelling a request once its text holds a stop string.
The prompt sets are chat-formatted questions about the built-in invented people (`format_qa`, TOFU-like, no stop
strings) and MUSE-like few-shot prompts ("Question: q\\nAnswer: a\\n\\n" shots) that stop at "\\n\\n" or
"Question:". Every completion is cut at its first stop string and stripped, then compared with (a)'s.

Sampled, for leak@k (`leak_at_k`'s defaults: k=16, temperature 1, top_p 1): `generate_samples` (one seeded
generator per row) against `model.generate(do_sample=True, num_return_sequences=k)` on batches of
`batch_size // k` prompts and against `generate_batch` with the same config. Samples differ between the three, so
only the time, the tokens kept (eos and padding left out) and the time per token kept are compared.

    python benchmarks/decoding.py [--model embedded] [--num_prompts 32] [--batch_size 16] [--repeats 3]
        [--max_new_tokens 40 200] [--sample_prompts 2] [--num_samples 16] [--top_p 1.0] [--threads 1]
        [--device cuda] [--dtype bfloat16]

Each path is warmed up once, then every setting runs `--repeats` times (the paths interleaved) and prints the
median seconds of each path, its ratio to (a)'s (above 1: slower than our loop), how many outputs equal (a)'s, and
the range and median of (a)'s completion lengths in tokens. Continuous batching gets a cache sized to the
workload (`ContinuousBatchingConfig`: `--batch_size` requests, their pages, one batch of prompts per prefill step):
left to its defaults on a CPU it sizes its cache from free RAM (60% of it) and spends most of each call on that.
Ratios are taken within one run; absolute seconds depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from llm_unlearn.data.benchmarks import muse_fewshot_prompt
from llm_unlearn.data.prompts import format_qa
from llm_unlearn.evaluation.generation import generate_greedy, generate_samples, greedy_generation_config

STOP_STRINGS = ["\n\n", "Question:"]


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


def cut(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to its first stop string, stripped: how `generate_greedy` returns a completion."""
    positions = [position for stop in stop_strings if (position := text.find(stop)) >= 0]
    return text[: min(positions, default=len(text))].strip()


def prompt_tokens(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """The prompts' token ids without special tokens, as every path here reads them."""
    return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]


def with_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str] = (),
    config: GenerationConfig | None = None,
    num_samples: int = 1,
) -> list[list[str]]:
    """`num_samples` completions of each prompt by `model.generate` on length-sorted, left-padded batches of
    `batch_size` rows (`batch_size // num_samples` prompts), cut and stripped; greedy unless `config` says."""
    if config is None:
        config = greedy_generation_config(
            model, tokenizer, max_new_tokens=max_new_tokens, stop_strings=stop_strings
        )
    left_padding = copy.deepcopy(tokenizer)
    left_padding.padding_side = "left"
    lengths = [len(ids) for ids in prompt_tokens(tokenizer, prompts)]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i], reverse=True)
    per_batch = max(1, batch_size // num_samples)
    stop_kwargs = {"tokenizer": tokenizer} if stop_strings else {}
    completions: dict[int, list[str]] = {}
    with torch.inference_mode():
        for start in range(0, len(order), per_batch):
            batch = order[start : start + per_batch]
            inputs = left_padding(
                [prompts[i] for i in batch], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(model.device)
            config.max_length = inputs["input_ids"].shape[1] + max_new_tokens
            output = model.generate(**inputs, generation_config=config, **stop_kwargs)
            texts = tokenizer.batch_decode(
                output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for position, index in enumerate(batch):
                rows = texts[position * num_samples : (position + 1) * num_samples]
                completions[index] = [cut(text, stop_strings) for text in rows]
    return [completions[index] for index in range(len(prompts))]


def cb_config(
    prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int
) -> ContinuousBatchingConfig:
    """A paged cache for `batch_size` requests at a time, each as long as the longest prompt + `max_new_tokens`,
    and prefill steps of up to `batch_size` of the longest prompts (as our loop prefills a batch at once)."""
    page_size = ContinuousBatchingConfig.page_size
    pages_per_request = math.ceil((max(map(len, prompt_ids)) + max_new_tokens) / page_size)
    longest = sorted(map(len, prompt_ids), reverse=True)[:batch_size]
    return ContinuousBatchingConfig(
        max_requests_per_batch=batch_size,
        num_blocks=batch_size * pages_per_request + 1,
        max_batch_tokens=max(sum(longest), batch_size),
    )


def with_generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str] = (),
    config: GenerationConfig | None = None,
    num_samples: int = 1,
) -> list[list[str]]:
    """`num_samples` completions of each prompt by `model.generate_batch` (continuous batching), cut and
    stripped. It has no stop strings: a request runs to eos or `max_new_tokens`, and is cut afterwards."""
    if config is None:
        config = greedy_generation_config(model, tokenizer, max_new_tokens=max_new_tokens)
    prompt_ids = prompt_tokens(tokenizer, prompts)
    outputs = model.generate_batch(
        prompt_ids,
        generation_config=config,
        continuous_batching_config=cb_config(prompt_ids, max_new_tokens, batch_size),
        max_new_tokens=max_new_tokens,
        warmup=False,  # only captures CUDA graphs, which are off for SDPA; on a CPU it runs a full dummy batch
    )
    texts = [
        cut(tokenizer.decode(output.generated_tokens, skip_special_tokens=True), stop_strings)
        for output in outputs.values()
    ]
    if len(texts) != len(prompts) * num_samples:
        raise RuntimeError(
            f"generate_batch returned {len(texts)} of {len(prompts) * num_samples} completions."
        )
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def with_cb_streaming(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str],
) -> list[list[str]]:
    """Greedy completions by the continuous batching manager (`continuous_batching_context_manager`, what
    `generate_batch` wraps) with streamed requests, each cancelled once its text holds a stop string."""
    config = greedy_generation_config(model, tokenizer, max_new_tokens=max_new_tokens)
    prompt_ids = prompt_tokens(tokenizer, prompts)
    tokens: dict[str, list[int]] = {}
    with model.continuous_batching_context_manager(
        generation_config=config,
        continuous_batching_config=cb_config(prompt_ids, max_new_tokens, batch_size),
        block=True,
        timeout=5,
        warmup=False,
    ) as manager:
        request_ids = manager.add_requests(prompt_ids, max_new_tokens=max_new_tokens, streaming=True)
        running = set(request_ids)
        while running:
            result = manager.get_result(timeout=1)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("the continuous batching thread stopped before all requests finished.")
                continue
            if result.request_id not in running:
                continue  # a token that was on its way when the request was cancelled
            tokens[result.request_id] = result.generated_tokens
            text = tokenizer.decode(result.generated_tokens, skip_special_tokens=True)
            if result.is_finished():
                running.discard(result.request_id)
            elif any(stop in text for stop in stop_strings):
                manager.cancel_request(result.request_id)
                running.discard(result.request_id)
    return [[cut(tokenizer.decode(tokens[i], skip_special_tokens=True), stop_strings)] for i in request_ids]


def with_ours(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str],
) -> list[list[str]]:
    texts = generate_greedy(
        model,
        tokenizer,
        prompt_tokens(tokenizer, prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_strings=stop_strings,
    )
    return [[text] for text in texts]


def sampling_config(
    model, tokenizer, *, max_new_tokens: int, num_samples: int, top_p: float
) -> GenerationConfig:
    """`generate_samples`' distribution (temperature 1, nucleus top_p, no top-k) for `model.generate`."""
    config = greedy_generation_config(model, tokenizer, max_new_tokens=max_new_tokens)
    config.update(do_sample=True, temperature=1.0, top_p=top_p, top_k=0, num_return_sequences=num_samples)
    return config


def run_paths(
    paths: dict[str, Callable[[], list[list[str]]]], repeats: int
) -> tuple[dict[str, list[list[str]]], dict[str, float]]:
    """Run every path `repeats` times, interleaved; return each path's last outputs and median seconds."""
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    outputs: dict[str, list[list[str]]] = {}
    for _ in range(repeats):
        for name, path in paths.items():
            outputs[name], elapsed = timed(path)
            seconds[name].append(elapsed)
    return outputs, {name: float(np.median(times)) for name, times in seconds.items()}


def token_counts(tokenizer, completions: list[list[str]]) -> list[int]:
    texts = [text for samples in completions for text in samples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="`embedded`, a local directory or a Hub id.")
    parser.add_argument("--num_prompts", type=int, default=32, help="Prompts per greedy prompt set.")
    parser.add_argument("--batch_size", type=int, default=16, help="Rows decoded together, by every path.")
    parser.add_argument("--max_new_tokens", type=int, nargs="+", default=[40, 200])
    parser.add_argument("--shots", type=int, default=3, help="Question/answer shots of each few-shot prompt.")
    parser.add_argument("--sample_prompts", type=int, default=2, help="Prompts to sample (0: no sampling).")
    parser.add_argument("--num_samples", type=int, default=16, help="Samples per prompt (leak@k's k).")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus mass for sampling (1: plain).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per setting; the median counts.")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="Where the model runs: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", help="Weights' dtype: float32, bfloat16 or float16.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from llm_unlearn.data.fictional import make_fictional_dataset
    from llm_unlearn.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    model.to(args.device).eval()
    print(
        f"Model {args.model} ({type(model).__name__}, {args.dtype}, {model.config._attn_implementation}) ",
        end="",
    )
    print(f"on {model.device}, {torch.get_num_threads()} threads, batch size {args.batch_size}, ", end="")
    print(f"median of {args.repeats}; transformers {transformers.__version__}, torch {torch.__version__}")

    # Questions about the invented people (8 each); the few-shot prompts' shots are about held-out people.
    dataset = make_fictional_dataset(num_people=max(1, math.ceil(args.num_prompts / 8)))
    questions = [row["question"] for row in dataset["train"]][: args.num_prompts]
    shots = [(row["question"], row["answer"]) for row in dataset["holdout"]][: args.shots]
    prompt_sets = {
        "chat QA (format_qa)": ([format_qa(tokenizer, question)[0] for question in questions], []),
        f"few-shot QA ({args.shots} shots)": (
            [muse_fewshot_prompt(question, shots) for question in questions],
            STOP_STRINGS,
        ),
    }

    def greedy_paths(prompts, stop_strings, max_new_tokens):
        settings = {
            "max_new_tokens": max_new_tokens,
            "batch_size": args.batch_size,
            "stop_strings": stop_strings,
        }
        paths = {
            "(a) generate_greedy (ours)": lambda: with_ours(model, tokenizer, prompts, **settings),
            "(b) model.generate": lambda: with_generate(model, tokenizer, prompts, **settings),
            "(c) model.generate_batch": lambda: with_generate_batch(model, tokenizer, prompts, **settings),
        }
        if stop_strings:
            paths["(d) CB stream + cancel"] = lambda: with_cb_streaming(model, tokenizer, prompts, **settings)
        return paths

    # Warm-up: every path once on a few prompts, so that none pays the first call's one-off costs when timed.
    for prompts, stop_strings in prompt_sets.values():
        run_paths(greedy_paths(prompts[:2], stop_strings, 4), repeats=1)

    for set_name, (prompts, stop_strings) in prompt_sets.items():
        prompt_lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        print(f"\nGreedy, {set_name}: {len(prompts)} prompts of {min(prompt_lengths)} to ", end="")
        print(f"{max(prompt_lengths)} tokens, stop strings {stop_strings or 'none'}")
        for max_new_tokens in args.max_new_tokens:
            outputs, seconds = run_paths(greedy_paths(prompts, stop_strings, max_new_tokens), args.repeats)
            ours_name = next(iter(outputs))
            lengths = token_counts(tokenizer, outputs[ours_name])
            print(
                f"  max_new_tokens={max_new_tokens}: (a)'s completions {min(lengths)} to {max(lengths)} tokens ",
                end="",
            )
            print(f"(median {int(np.median(lengths))})")
            for name, completions in outputs.items():
                identical = sum(a == b for a, b in zip(outputs[ours_name], completions, strict=True))
                print(
                    f"    {name:28} {seconds[name]:7.1f} s  {seconds[name] / seconds[ours_name]:5.2f}x  ",
                    end="",
                )
                print(f"identical {identical}/{len(prompts)}")
                for index, (a, b) in enumerate(zip(outputs[ours_name], completions, strict=True)):
                    if a != b:  # the first difference, to tell rounding from a bug
                        print(f"      first difference, prompt {index}: (a) {a[0]!r}\n{'':<30}here {b[0]!r}")
                        break

    if args.sample_prompts:
        k = args.num_samples

        def sampling_paths(prompts, max_new_tokens):
            settings = {"max_new_tokens": max_new_tokens, "batch_size": args.batch_size}
            config = sampling_config(
                model, tokenizer, max_new_tokens=max_new_tokens, num_samples=k, top_p=args.top_p
            )
            return {
                "generate_samples (ours)": lambda: generate_samples(
                    model,
                    tokenizer,
                    prompt_tokens(tokenizer, prompts),
                    num_samples=k,
                    top_p=args.top_p,
                    **settings,
                ),
                "model.generate": lambda: with_generate(
                    model, tokenizer, prompts, config=config, num_samples=k, **settings
                ),
                "model.generate_batch": lambda: with_generate_batch(
                    model, tokenizer, prompts, config=config, num_samples=k, **settings
                ),
            }

        prompts = prompt_sets["chat QA (format_qa)"][0][: args.sample_prompts]
        run_paths(sampling_paths(prompts[:1], 4), repeats=1)  # warm-up
        print(f"\nSampling (leak@k), {len(prompts)} prompts x {k} samples, temperature 1, top_p {args.top_p}")
        for max_new_tokens in args.max_new_tokens:
            outputs, seconds = run_paths(sampling_paths(prompts, max_new_tokens), args.repeats)
            print(f"  max_new_tokens={max_new_tokens}:")
            ours_name = next(iter(outputs))
            for name, completions in outputs.items():
                lengths = token_counts(tokenizer, completions)
                print(
                    f"    {name:28} {seconds[name]:7.1f} s  {seconds[name] / seconds[ours_name]:5.2f}x  ",
                    end="",
                )
                print(f"{sum(lengths):5} tokens kept (median {int(np.median(lengths))} per sample), ", end="")
                print(f"{1000 * seconds[name] / sum(lengths):5.1f} ms per token kept")


if __name__ == "__main__":
    main()
