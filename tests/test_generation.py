"""The decode loop: greedy output equal to `model.generate`, finished rows leaving the batch, stop strings,
reproducible temperature / nucleus sampling, and plain prompts decoded from the same BOS-prefixed token ids
that scoring reads."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny_llama, build_tiny_tokenizer, sharpen
from datasets import Dataset
from tokenizers import processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from llm_unlearn.data.benchmarks import muse_fewshot_prompt
from llm_unlearn.data.prompts import format_qa
from llm_unlearn.evaluation.evaluator import EvalConfig, evaluate_split
from llm_unlearn.evaluation.generation import (
    _NucleusSampler,
    generate_greedy,
    generate_samples,
    greedy_generation_config,
)
from llm_unlearn.evaluation.items import build_items

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


@pytest.fixture(scope="module")
def prompt_ids(tokenizer, prompts) -> list[list[int]]:
    """The prompts tokenized as QA items tokenize them: the chat template's text, no special tokens added."""
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


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


def test_greedy_equals_model_generate_when_rows_stop_at_different_steps(
    stopping_model, tokenizer, prompts, prompt_ids
):
    expected = _reference(stopping_model, tokenizer, prompts)
    lengths = [len(row) for row in expected]
    # The case this test is about: some rows end early, at different steps, and one runs to the limit.
    assert len({length for length in lengths if length < MAX_NEW_TOKENS}) >= 2
    assert MAX_NEW_TOKENS in lengths
    for batch_size in (6, 4, 1):
        assert generate_greedy(
            stopping_model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size
        ) == _texts(tokenizer, expected)


def test_finished_rows_leave_the_batch(stopping_model, tokenizer, prompts, prompt_ids):
    lengths = [len(row) for row in _reference(stopping_model, tokenizer, prompts)]
    sizes, handle = _forward_batch_sizes(stopping_model)
    try:
        generate_greedy(
            stopping_model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, batch_size=len(prompts)
        )
    finally:
        handle.remove()
    prefill, steps = sizes[0], sizes[1:]
    assert prefill == len(prompts)
    assert steps == sorted(steps, reverse=True) and steps[-1] < len(prompts)
    # A row with n new tokens is in the prefill and in n - 1 decode steps: no step computes a finished row.
    assert sum(steps) == sum(length - 1 for length in lengths)
    assert len(steps) == max(lengths) - 1


def test_greedy_equals_model_generate_on_gpt2(tokenizer, prompts, prompt_ids):
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
    texts = generate_greedy(model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
    assert texts == expected


def test_a_row_whose_text_reaches_a_stop_string_leaves_and_is_cut(
    stopping_model, tokenizer, prompts, prompt_ids
):
    full = generate_greedy(stopping_model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS)
    longest = max(range(len(full)), key=lambda row: len(full[row]))
    stop = full[longest][3:5]
    sizes, handle = _forward_batch_sizes(stopping_model)
    try:
        cut = generate_greedy(
            stopping_model,
            tokenizer,
            prompt_ids,
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


def test_samples_are_reproducible_and_independent_of_batch_size(stopping_model, tokenizer, prompt_ids):
    def sample(**kwargs):
        return generate_samples(
            stopping_model, tokenizer, prompt_ids[:3], num_samples=4, max_new_tokens=8, **kwargs
        )

    first = sample(seed=7, batch_size=16)
    assert len(first) == 3 and all(len(samples) == 4 for samples in first)
    assert sample(seed=7, batch_size=16) == first
    assert sample(seed=7, batch_size=3) == first  # samples of one prompt split over batches
    assert sample(seed=7, batch_size=1) == first
    assert sample(seed=8, batch_size=16) != first
    # Each sample has its own random stream: the samples of a prompt differ from each other.
    assert all(len(set(samples)) > 1 for samples in first)


def test_a_tiny_top_p_keeps_only_the_most_likely_token(stopping_model, tokenizer, prompt_ids):
    greedy = generate_greedy(stopping_model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS)
    samples = generate_samples(
        stopping_model,
        tokenizer,
        prompt_ids,
        num_samples=2,
        max_new_tokens=MAX_NEW_TOKENS,
        top_p=1e-6,
        seed=3,
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
def test_bad_sampling_arguments_are_refused(stopping_model, tokenizer, prompt_ids, arguments, message):
    kwargs = {"num_samples": 2, "max_new_tokens": 4, **arguments}
    with pytest.raises(ValueError, match=message):
        generate_samples(stopping_model, tokenizer, prompt_ids[:1], **kwargs)


def test_sampling_restores_training_mode(tokenizer, prompt_ids):
    model = build_tiny_llama(tokenizer).train()
    assert generate_samples(model, tokenizer, [], num_samples=2, max_new_tokens=3) == []
    generate_samples(model, tokenizer, prompt_ids[:2], num_samples=2, max_new_tokens=3)
    assert model.training


def build_bos_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with a `<s>` token that its post-processor puts before every text, as Llama-2's
    tokenizer adds its BOS."""
    backend = copy.deepcopy(build_tiny_tokenizer().backend_tokenizer)
    backend.add_special_tokens(["<s>"])
    bos = ("<s>", backend.token_to_id("<s>"))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )


def _greedy_one(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """Greedy `model.generate` on one unpadded prompt of token ids, decoded and stripped."""
    config = greedy_generation_config(model, tokenizer, max_new_tokens=max_new_tokens)
    config.max_length = len(ids) + max_new_tokens
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([ids]), generation_config=config)
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()


# MUSE's plain prompts: verbatim prefixes (`completion`) and few-shot questions (`fewshot_qa`).
PLAIN_PROMPTS = [
    "The quick brown fox jumps over",
    "Mara Velden works as a glass sculptor at",
    muse_fewshot_prompt("Where was Ada Lovelace born?", [("What is the capital of France?", "Paris")]),
    "She received the Silver Quill Award in",
]


def test_plain_prompts_are_decoded_from_the_bos_prefixed_ids_that_scoring_reads():
    tokenizer = build_bos_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    dataset = Dataset.from_dict({"prompt": PLAIN_PROMPTS, "answer": ["the lazy dog."] * len(PLAIN_PROMPTS)})
    items = build_items("verbmem", dataset, tokenizer, data_format="completion")
    prompt_ids = [item.prompt_ids for item in items]
    without_bos = tokenizer(PLAIN_PROMPTS, add_special_tokens=False)["input_ids"]
    assert prompt_ids == [[tokenizer.bos_token_id, *ids] for ids in without_bos]

    expected = [_greedy_one(model, tokenizer, ids, MAX_NEW_TOKENS) for ids in prompt_ids]
    texts = generate_greedy(model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, batch_size=3)
    assert texts == expected
    # The BOS token changes what this model continues with: without it, generation would not match scoring.
    assert [_greedy_one(model, tokenizer, ids, MAX_NEW_TOKENS) for ids in without_bos] != expected

    # The evaluator generates from the same ids.
    config = EvalConfig(
        metrics=("rouge_l_f1",),
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=3,
        splits={"verbmem": {"format": "completion"}},
    )
    result = evaluate_split(model, tokenizer, "verbmem", dataset, config)
    assert [record["generation"] for record in result["items"]] == expected


def test_prompts_must_be_token_ids(tokenizer, prompt_ids):
    model = build_tiny_llama(tokenizer)
    with pytest.raises(ValueError, match=r"prompt 1 is a string; give each prompt as token ids"):
        generate_greedy(model, tokenizer, [prompt_ids[0], "Hi?"], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt 0 has no tokens"):
        generate_samples(model, tokenizer, [[]], num_samples=2, max_new_tokens=3)


def test_a_verbatim_reference_counts_the_bos_token_as_muse_does():
    """MUSE keeps the first 128 tokens of the continuation encoded on its own: with a tokenizer that adds BOS, that
    is BOS and 127 tokens of text, and the scored answer holds the same 127."""
    from llm_unlearn.evaluation.items import build_items

    tokenizer = build_bos_tokenizer()
    answer = " ".join(["alpha beta gamma"] * 20)
    rows = Dataset.from_list([{"prompt": "Once upon a time", "answer": answer}])
    text_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(text_ids) > 10
    [item] = build_items("verbmem", rows, tokenizer, data_format="completion", max_answer_tokens=10)
    assert item.answer_ids == text_ids[:9]
    assert item.reference == tokenizer.decode(text_ids[:9], skip_special_tokens=True)
