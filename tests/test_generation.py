"""The decode loop: greedy output equal to `model.generate`, finished rows leaving the batch, stop strings,
and reproducible temperature / nucleus sampling."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama, build_tiny_tokenizer, sharpen
from transformers import GPT2Config, GPT2LMHeadModel

from llm_unlearn.data.formatting import format_qa
from llm_unlearn.evaluation.generation import (
    _NucleusSampler,
    generate_greedy,
    generate_samples,
    greedy_generation_config,
)

QUESTIONS = [
    "Where was Ada Lovelace born?",
    "What is the capital of France?",
    "Where does Mara Velden work?",
    "Which award did she receive in 1998 for her second novel?",
    "Hi?",
    "Who?",
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    return [format_qa(tokenizer, question)[0] for question in QUESTIONS]


def _reference(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, stop_strings=()) -> list[list[int]]:
    """New tokens of greedy `model.generate` on the left-padded batch, up to and including the eos token."""
    config = greedy_generation_config(
        model, tokenizer, max_new_tokens=max_new_tokens, stop_strings=stop_strings
    )
    left = build_tiny_tokenizer()
    left.padding_side = "left"
    inputs = left(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    config.max_length = inputs["input_ids"].shape[1] + max_new_tokens
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=config, tokenizer=left if stop_strings else None)
    rows = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        ends = [step for step, token in enumerate(row) if token in config.eos_token_id]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def _texts(tokenizer, rows: list[list[int]]) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]


@pytest.fixture(scope="module")
def stopping_model(tokenizer, prompts):
    """The sharpened tiny Llama whose generation config also ends a completion at a token that its greedy
    continuations produce early in some rows, later in others and never in the rest."""
    model = sharpen(build_tiny_llama(tokenizer))
    free_running = _reference(model, tokenizer, prompts)

    def first_steps(token: int) -> set[int]:
        return {row.index(token) for row in free_running if token in row}

    candidates = {token for row in free_running for token in row if any(token not in r for r in free_running)}
    stop_token = max(sorted(candidates), key=lambda token: len(first_steps(token)))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_token]
    return model


def _forward_batch_sizes(model) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []

    def record(module, args, kwargs) -> None:
        sizes.append(kwargs["input_ids"].shape[0])

    return sizes, model.register_forward_pre_hook(record, with_kwargs=True)


def test_greedy_equals_model_generate_when_rows_stop_at_different_steps(stopping_model, tokenizer, prompts):
    expected = _reference(stopping_model, tokenizer, prompts)
    lengths = [len(row) for row in expected]
    # The case this test is about: some rows end early, at different steps, and one runs to the limit.
    assert len({length for length in lengths if length < MAX_NEW_TOKENS}) >= 2
    assert MAX_NEW_TOKENS in lengths
    for batch_size in (6, 4, 1):
        assert generate_greedy(
            stopping_model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size
        ) == _texts(tokenizer, expected)


def test_finished_rows_leave_the_batch(stopping_model, tokenizer, prompts):
    lengths = [len(row) for row in _reference(stopping_model, tokenizer, prompts)]
    sizes, handle = _forward_batch_sizes(stopping_model)
    try:
        generate_greedy(
            stopping_model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=len(prompts)
        )
    finally:
        handle.remove()
    prefill, steps = sizes[0], sizes[1:]
    assert prefill == len(prompts)
    assert steps == sorted(steps, reverse=True) and steps[-1] < len(prompts)
    # A row with n new tokens is in the prefill and in n - 1 decode steps: no step computes a finished row.
    assert sum(steps) == sum(length - 1 for length in lengths)
    assert len(steps) == max(lengths) - 1


def test_greedy_equals_model_generate_on_gpt2(tokenizer, prompts):
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = sharpen(GPT2LMHeadModel(config))
    expected = _texts(tokenizer, _reference(model, tokenizer, prompts))
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=4) == expected


def test_a_row_whose_text_reaches_a_stop_string_leaves_and_is_cut(stopping_model, tokenizer, prompts):
    full = generate_greedy(stopping_model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)
    longest = max(range(len(full)), key=lambda row: len(full[row]))
    stop = full[longest][3:5]
    sizes, handle = _forward_batch_sizes(stopping_model)
    try:
        cut = generate_greedy(
            stopping_model,
            tokenizer,
            prompts,
            max_new_tokens=MAX_NEW_TOKENS,
            stop_strings=[stop],
            batch_size=6,
        )
    finally:
        handle.remove()
    assert cut[longest] == full[longest][:3].strip()
    for text, cut_text in zip(full, cut, strict=True):
        expected = text[: text.find(stop)] if stop in text else text
        assert cut_text == expected.strip()
    # The longest row leaves once its text holds the stop string: fewer rows are computed than without it.
    lengths = [len(row) for row in _reference(stopping_model, tokenizer, prompts)]
    assert sum(sizes[1:]) < sum(length - 1 for length in lengths)


def test_samples_are_reproducible_and_independent_of_batch_size(stopping_model, tokenizer, prompts):
    def sample(**kwargs):
        return generate_samples(
            stopping_model, tokenizer, prompts[:3], num_samples=4, max_new_tokens=8, **kwargs
        )

    first = sample(seed=7, batch_size=16)
    assert len(first) == 3 and all(len(samples) == 4 for samples in first)
    assert sample(seed=7, batch_size=16) == first
    assert sample(seed=7, batch_size=3) == first  # samples of one prompt split over batches
    assert sample(seed=7, batch_size=1) == first
    assert sample(seed=8, batch_size=16) != first
    # Each sample has its own random stream: the samples of a prompt differ from each other.
    assert all(len(set(samples)) > 1 for samples in first)


def test_a_tiny_top_p_keeps_only_the_most_likely_token(stopping_model, tokenizer, prompts):
    greedy = generate_greedy(stopping_model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)
    samples = generate_samples(
        stopping_model, tokenizer, prompts, num_samples=2, max_new_tokens=MAX_NEW_TOKENS, top_p=1e-6, seed=3
    )
    assert samples == [[text, text] for text in greedy]


def test_sampling_draws_from_the_temperature_scaled_nucleus():
    # Logits log(0.5), log(0.3), log(0.2): top_p = 0.6 keeps the first two (0.5 < 0.6 <= 0.8), renormalised
    # to 0.625 / 0.375. Temperature 2 flattens p to sqrt(p) / sum sqrt(p): 0.415, 0.322, 0.263.
    logits = torch.tensor([0.5, 0.3, 0.2]).log().repeat(4000, 1)
    rows = torch.arange(4000)
    nucleus = _NucleusSampler(temperature=1.0, top_p=0.6, seeds=range(4000))(logits, rows)
    assert set(nucleus.tolist()) == {0, 1}
    assert (nucleus == 0).float().mean().item() == pytest.approx(0.625, abs=0.03)
    flattened = _NucleusSampler(temperature=2.0, top_p=1.0, seeds=range(4000))(logits, rows)
    frequencies = torch.bincount(flattened, minlength=3).float() / 4000
    expected = torch.tensor([0.5, 0.3, 0.2]).sqrt() / torch.tensor([0.5, 0.3, 0.2]).sqrt().sum()
    assert torch.allclose(frequencies, expected, atol=0.03)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_samples": 0}, r"num_samples, batch_size and max_new_tokens must be at least 1, got 0"),
        ({"temperature": 0.0}, r"temperature must be > 0, got 0.0"),
        ({"temperature": -1.0}, r"temperature must be > 0, got -1.0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
    ],
)
def test_bad_sampling_arguments_are_refused(stopping_model, tokenizer, prompts, arguments, message):
    kwargs = {"num_samples": 2, "max_new_tokens": 4, **arguments}
    with pytest.raises(ValueError, match=message):
        generate_samples(stopping_model, tokenizer, prompts[:1], **kwargs)


def test_sampling_restores_training_mode(tokenizer, prompts):
    model = build_tiny_llama(tokenizer).train()
    assert generate_samples(model, tokenizer, [], num_samples=2, max_new_tokens=3) == []
    generate_samples(model, tokenizer, prompts[:2], num_samples=2, max_new_tokens=3)
    assert model.training
