"""Scoring answer groups against one cached prompt gives what scoring every prompt + answer as its own
sequence gives, on Llama, GPT-2 and a LoRA-wrapped model, whatever the batch size; bad groups are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, build_tiny_tokenizer, sharpen
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from llm_unlearn.data.formatting import IGNORE_INDEX
from llm_unlearn.data.prompts import format_qa
from llm_unlearn.evaluation import statistics as statistics_module
from llm_unlearn.evaluation.statistics import AnswerGroup, compute_item_statistics, score_answer_groups

# Prompts of different lengths; groups with 1 to 5 answers of different lengths, one answer a single token.
QUESTIONS_AND_ANSWERS = [
    ("Where was Ada Lovelace born?", ["Ada Lovelace was born in London.", "In Paris, France.", "Porto"]),
    ("Hi?", ["I don't know the answer to that question."]),
    (
        "Which award did Mara Velden, the glass sculptor at Brightwater Studios, receive in 1998?",
        [
            "She received the Silver Quill Award.",
            "The Brown Fox Award",
            "None.",
            "Paris",
            "She works in Porto.",
        ],
    ),
    ("What is the capital of France?", ["Paris.", "The capital of France is London, not Paris."]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return sharpen(build_tiny_llama(tokenizer))


def _greedy_continuation(model, prompt_ids: list[int], length: int) -> list[int]:
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(length):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.fixture(scope="module")
def groups(tokenizer, model) -> list[AnswerGroup]:
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    groups = [
        AnswerGroup(ids(format_qa(tokenizer, question)[0]), [ids(answer) for answer in answers])
        for question, answers in QUESTIONS_AND_ANSWERS
    ]
    groups[1].answer_ids.append([tokenizer.eos_token_id])  # a one-token answer: only the prompt predicts it
    # The model's own continuation: every argmax hits, so the hits are compared on True values too.
    groups[2].answer_ids.insert(1, _greedy_continuation(model, groups[2].prompt_ids, 6))
    return groups


def _as_sequences(model, groups, pad_token_id, distribution_stats=False) -> list[list]:
    """The reference: every answer as its own sequence prompt + answer, the prompt masked."""
    encoded = [
        {"input_ids": group.prompt_ids + answer, "labels": [IGNORE_INDEX] * len(group.prompt_ids) + answer}
        for group in groups
        for answer in group.answer_ids
    ]
    flat = iter(
        compute_item_statistics(
            model, encoded, pad_token_id=pad_token_id, distribution_stats=distribution_stats
        )
    )
    return [[next(flat) for _ in group.answer_ids] for group in groups]


def _assert_equal(scored, expected, distribution_stats=False) -> None:
    assert [len(answers) for answers in scored] == [len(answers) for answers in expected]
    for scored_answers, expected_answers in zip(scored, expected, strict=True):
        for position, (got, want) in enumerate(zip(scored_answers, expected_answers, strict=True)):
            np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4, rtol=0)
            np.testing.assert_array_equal(got.argmax_hits, want.argmax_hits)
            if distribution_stats and position == 0:
                np.testing.assert_allclose(got.position_mean, want.position_mean, atol=1e-4, rtol=0)
                np.testing.assert_allclose(got.position_std, want.position_std, atol=1e-4, rtol=0)
            else:
                assert got.position_mean is None and got.position_std is None


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_groups_score_as_their_answers_do_one_by_one(model, tokenizer, groups, batch_size):
    expected = _as_sequences(model, groups, tokenizer.pad_token_id)
    # Not a degenerate model: the answers' log-probabilities differ and some argmax predictions hit.
    assert len({round(float(s.nll), 3) for answers in expected for s in answers}) > 5
    assert expected[2][1].argmax_hits.all() and not expected[2][0].argmax_hits.all()
    scored = score_answer_groups(model, groups, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id)
    _assert_equal(scored, expected)


def test_each_prompt_runs_once_and_its_answers_continue_from_its_cache(model, tokenizer, groups):
    shapes: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        score_answer_groups(model, groups, batch_size=16, pad_token_id=tokenizer.pad_token_id)
    finally:
        handle.remove()
    answers = [answer for group in groups for answer in group.answer_ids]
    longest_prompt = max(len(group.prompt_ids) for group in groups)
    # One forward of the 4 prompts, one of all answers without their last token (it predicts nothing).
    assert shapes == [(len(groups), longest_prompt), (len(answers), max(len(a) for a in answers) - 1)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_distribution_statistics_come_for_each_groups_first_answer(model, tokenizer, groups, batch_size):
    expected = _as_sequences(model, groups, tokenizer.pad_token_id, distribution_stats=True)
    scored = score_answer_groups(
        model, groups, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id, distribution_stats=True
    )
    _assert_equal(scored, expected, distribution_stats=True)


def test_gpt2_and_a_lora_wrapped_model_score_the_same_way(tokenizer, groups):
    gpt2 = sharpen(
        GPT2LMHeadModel(
            GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256)
        )
    )
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(sharpen(build_tiny_llama(tokenizer)), lora).eval()
    for model in (gpt2, wrapped):
        scored = score_answer_groups(model, groups, batch_size=4, pad_token_id=tokenizer.pad_token_id)
        _assert_equal(scored, _as_sequences(model, groups, tokenizer.pad_token_id))


def test_a_model_without_a_usable_cache_is_scored_answer_by_answer(model, tokenizer, groups, monkeypatch):
    monkeypatch.setattr(statistics_module.compat, "continues_from_cache", lambda model: False)

    def no_prefill(*args, **kwargs):
        raise AssertionError("a model without a usable cache must not be prefilled")

    monkeypatch.setattr(statistics_module, "prefill_prompts", no_prefill)
    scored = score_answer_groups(
        model, groups, batch_size=3, pad_token_id=tokenizer.pad_token_id, distribution_stats=True
    )
    _assert_equal(scored, _as_sequences(model, groups, tokenizer.pad_token_id, True), distribution_stats=True)


def test_scoring_restores_training_mode(tokenizer, groups):
    model = build_tiny_llama(tokenizer).train()
    score_answer_groups(model, groups[:2], pad_token_id=tokenizer.pad_token_id)
    assert model.training
    assert score_answer_groups(model, [], pad_token_id=tokenizer.pad_token_id) == []


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (AnswerGroup([5, 6], []), r"answer group 1 has no answers; give at least one answer per group"),
        (AnswerGroup([5, 6], [[7], []]), r"answer group 1 has empty answers at positions \[1\]"),
        (AnswerGroup([], [[7]]), r"answer group 1 has an empty prompt"),
    ],
)
def test_bad_groups_are_refused(model, tokenizer, group, message):
    with pytest.raises(ValueError, match=message):
        score_answer_groups(model, [AnswerGroup([5], [[6]]), group], pad_token_id=tokenizer.pad_token_id)


def test_batch_size_must_be_positive(model, tokenizer, groups):
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, got 0"):
        score_answer_groups(model, groups, batch_size=0, pad_token_id=tokenizer.pad_token_id)
