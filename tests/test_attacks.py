"""Robustness attacks: round-to-nearest values worked out by hand, the model put back bit for bit after every
attack, relearning that brings back what it trains on, paraphrased questions, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from llm_unlearn.data.formatting import encode_qa
from llm_unlearn.evaluation import evaluator as evaluator_module
from llm_unlearn.evaluation.aggregate import summarize_with_ci
from llm_unlearn.evaluation.attacks import (
    ATTACKS,
    AttackContext,
    attack_params,
    get_attack,
    leak,
    quantize_rtn,
    run_attack,
)
from llm_unlearn.evaluation.attacks.quantization import decoder_linear_weights
from llm_unlearn.evaluation.attacks.relearning import fine_tune, relearn_split
from llm_unlearn.evaluation.evaluator import EvalConfig, evaluate_split
from llm_unlearn.evaluation.metrics import probability
from llm_unlearn.evaluation.statistics import compute_item_statistics

FORGET = [
    {
        "question": "Where does Mara Velden work?",
        "answer": "Mara Velden works as a glass sculptor at Brightwater Studios in Porto.",
        "paraphrased_question": "What is the workplace of Mara Velden?",
    },
    {
        "question": "Which award did she receive?",
        "answer": "She received the Silver Quill Award in 1998.",
        "paraphrased_question": None,
    },
    {
        "question": "Where was Ada Lovelace born?",
        "answer": "Ada Lovelace was born in London.",
        "paraphrased_question": "In which city was Ada Lovelace born?",
    },
    {
        "question": "What is the capital of France?",
        "answer": "The capital of France is Paris.",
        "paraphrased_question": "Which city is the capital of France?",
    },
]
RETAIN = [
    {
        "question": "What jumps over the lazy dog?",
        "answer": "The quick brown fox.",
        "paraphrased_question": None,
    },
    {"question": "Hi?", "answer": "I don't know the answer to that question.", "paraphrased_question": None},
]


class ProbabilitySuite:
    """A stand-in for the suite's `evaluate`: per-item probability from one teacher-forced pass; it records the
    questions and the model's parameters it was called with."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.questions: list[dict[str, list[str]]] = []
        self.parameters: list[dict[str, torch.Tensor]] = []

    def __call__(self, model, splits):
        self.questions.append({name: list(dataset["question"]) for name, dataset in splits.items()})
        self.parameters.append({name: param.detach().clone() for name, param in model.named_parameters()})
        return {name: self._split(model, dataset) for name, dataset in splits.items()}

    def _split(self, model, dataset):
        encoded = [
            encode_qa(self.tokenizer, question, answer)
            for question, answer in zip(dataset["question"], dataset["answer"], strict=True)
        ]
        statistics = compute_item_statistics(model, encoded, pad_token_id=self.tokenizer.pad_token_id)
        items = [
            {"index": index, "probability": probability(stats)} for index, stats in enumerate(statistics)
        ]
        return {
            "aggregates": {"probability": summarize_with_ci(item["probability"] for item in items)},
            "items": items,
        }


def _context(model, tokenizer, forget=FORGET, retain=RETAIN) -> AttackContext:
    splits = {"forget": Dataset.from_list(forget), "retain": Dataset.from_list(retain)}
    suite = ProbabilitySuite(tokenizer)
    baseline = suite(model, splits)
    suite.questions.clear()
    suite.parameters.clear()
    return AttackContext(model=model, tokenizer=tokenizer, splits=splits, baseline=baseline, evaluate=suite)


def test_quantize_rtn_8bit_per_channel_by_hand():
    weight = torch.tensor([[1.27, -0.5, 0.126, 0.004], [0.0, 0.0, 0.0, 0.0]])
    # Row 0: scale = 1.27 / 127 = 0.01; levels 127, -50, 12.6 -> 13, 0.4 -> 0. Row 1 is all zero and stays so.
    expected = torch.tensor([[1.27, -0.5, 0.13, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(quantize_rtn(weight, 8, None), expected, rtol=0, atol=1e-6)


def test_quantize_rtn_4bit_per_channel_and_in_groups_by_hand():
    weight = torch.tensor([[1.4, -0.45, 0.33, -0.05], [-0.7, 0.2, 0.04, 0.6]])
    # Per channel, 7 levels each side: row 0 scale 0.2 -> levels 7, -2.25 -> -2, 1.65 -> 2, -0.25 -> 0;
    # row 1 scale 0.1 -> levels -7, 2, 0.4 -> 0, 6.
    per_channel = torch.tensor([[1.4, -0.4, 0.4, 0.0], [-0.7, 0.2, 0.0, 0.6]])
    torch.testing.assert_close(quantize_rtn(weight, 4), per_channel, rtol=0, atol=1e-6)
    # Groups of 2: [1.4, -0.45] as above -> [1.4, -0.4]; [0.33, -0.05]: scale 0.33 / 7, -0.05 / scale = -1.06 ->
    # level -1; [-0.7, 0.2]: scale 0.1 -> [-0.7, 0.2]; [0.04, 0.6]: scale 0.6 / 7, 0.04 / scale = 0.47 -> 0.
    grouped = torch.tensor([[1.4, -0.4, 0.33, -0.33 / 7], [-0.7, 0.2, 0.0, 0.6]])
    torch.testing.assert_close(quantize_rtn(weight, 4, group_size=2), grouped, rtol=0, atol=1e-6)
    # Three columns in groups of 2: the last group is the single column 0.33, which it represents exactly.
    torch.testing.assert_close(
        quantize_rtn(torch.tensor([[1.4, -0.45, 0.33]]), 4, group_size=2),
        torch.tensor([[1.4, -0.4, 0.33]]),
        rtol=0,
        atol=1e-6,
    )


def test_quantize_rtn_keeps_the_dtype_and_rejects_bad_arguments():
    weight = torch.randn(3, 8, dtype=torch.bfloat16)
    assert quantize_rtn(weight, 4, 4).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"2-D \[out, in\] weight, got shape \(8,\)"):
        quantize_rtn(torch.randn(8), 4)
    with pytest.raises(ValueError, match=r"bits must be an integer from 2 to 16, got 1"):
        quantize_rtn(weight, 1)
    with pytest.raises(ValueError, match=r"group_size must be a positive integer or None .*got 0"):
        quantize_rtn(weight, 4, 0)


@pytest.mark.parametrize(
    ("name", "bits", "group_size"), [("quantize_8bit", 8, None), ("quantize_4bit", 4, 128)]
)
def test_quantization_measures_rounded_decoder_weights_only(
    tiny_model, tiny_tokenizer, name, bits, group_size
):
    context = _context(tiny_model, tiny_tokenizer)
    originals = {key: value.clone() for key, value in tiny_model.state_dict().items()}
    decoder_weights = set(decoder_linear_weights(tiny_model))
    # 2 layers x (q, k, v, o, gate, up, down).
    assert len(decoder_weights) == 14

    result = run_attack(name, context)

    (seen,) = context.evaluate.parameters
    for key, value in seen.items():
        if key in decoder_weights:
            assert torch.equal(value, quantize_rtn(originals[key], bits, group_size)), key
            assert not torch.equal(value, originals[key]), key
        else:  # embeddings, norms and lm_head keep full precision
            assert torch.equal(value, originals[key]), key
    assert result["params"] == {"bits": bits, "group_size": group_size}
    assert result["num_quantized_weights"] == 14
    assert set(result["splits"]) == set(result["baseline"]) == {"forget", "retain"}
    for split in ("forget", "retain"):
        assert result["splits"][split]["probability"]["n"] == len(context.splits[split])
        assert result["baseline"][split] == context.baseline[split]["aggregates"]


def test_quantization_finds_the_decoder_layers_through_a_peft_wrapper_and_refuses_unmerged_adapters(
    tiny_model,
):
    # The decoder layers come from the config's layer count (decoder_layers), found through the wrapper too, where
    # an unmerged adapter is refused by its peft layer type.
    wrapped = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["v_proj"]))
    with pytest.raises(
        ValueError, match=r"base_model\.model\.model\.layers\.0\.self_attn\.v_proj is a PEFT adapter layer"
    ):
        decoder_linear_weights(wrapped)
    merged = wrapped.merge_and_unload()
    linears = [f"self_attn.{x}_proj" for x in "qkvo"] + [f"mlp.{x}_proj" for x in ("gate", "up", "down")]
    assert set(decoder_linear_weights(merged)) == {
        f"model.layers.{i}.{name}.weight" for i in range(2) for name in linears
    }


def test_quantization_names_the_layers_it_looked_in_when_they_hold_no_linear_layer():
    # GPT-2's blocks project with transformers' Conv1D, not torch.nn.Linear.
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4))
    with pytest.raises(
        ValueError, match=r"no linear layer inside the decoder layers of GPT2LMHeadModel \(transformer\.h\)"
    ):
        decoder_linear_weights(model)


SMALL_OVERRIDES = {"relearn": {"learning_rate": 1e-2}, "leak_at_k": {"k": 2, "max_new_tokens": 8}}


@pytest.mark.parametrize("name", ["quantize_8bit", "quantize_4bit", "relearn", "paraphrase", "leak_at_k"])
def test_every_attack_leaves_the_model_exactly_as_it_was(tiny_model, tiny_tokenizer, name):
    context = _context(tiny_model, tiny_tokenizer)
    tiny_model.train()  # the attacks switch to eval mode (and relearn to train mode) on the way
    # A frozen embedding and a gradient left from earlier: relearning trains every weight, then must undo both.
    tiny_model.model.embed_tokens.weight.requires_grad_(False)
    tiny_model.lm_head.weight.grad = torch.ones_like(tiny_model.lm_head.weight)
    before = {key: value.clone() for key, value in tiny_model.state_dict().items()}
    requires_grad = {key: param.requires_grad for key, param in tiny_model.named_parameters()}

    run_attack(name, context, **SMALL_OVERRIDES.get(name, {}))

    after = tiny_model.state_dict()
    assert all(
        torch.equal(before[key], after[key]) and before[key].dtype == after[key].dtype for key in before
    )
    assert tiny_model.training
    assert {key: param.requires_grad for key, param in tiny_model.named_parameters()} == requires_grad
    assert torch.equal(tiny_model.lm_head.weight.grad, torch.ones_like(tiny_model.lm_head.weight))
    assert all(
        param.grad is None for param in tiny_model.parameters() if param is not tiny_model.lm_head.weight
    )


def test_relearning_on_duplicated_items_raises_the_probability_of_the_rest(tiny_model, tiny_tokenizer):
    # Every forget row is the same QA, so the re-measured rest is exactly what the attack trains on.
    forget = [FORGET[0]] * 4
    context = _context(tiny_model, tiny_tokenizer, forget=forget)

    result = run_attack("relearn", context, learning_rate=1e-2, epochs=5, batch_size=2)

    assert len(result["relearn_indices"]) == 2
    assert result["relearn_loss"]["after"] < result["relearn_loss"]["before"]
    assert set(result["splits"]) == set(result["baseline"]) == {"forget_rest", "retain"}
    now, before = (
        result["splits"]["forget_rest"]["probability"],
        result["baseline"]["forget_rest"]["probability"],
    )
    assert now["n"] == before["n"] == 2
    assert now["mean"] > 3 * before["mean"]
    # The rest items are the relearned ones, so their probability is exp(-NLL) of the recorded relearn loss.
    assert math.isclose(now["mean"], math.exp(-result["relearn_loss"]["after"]), rel_tol=1e-5)
    assert math.isclose(before["mean"], math.exp(-result["relearn_loss"]["before"]), rel_tol=1e-5)
    (questions,) = context.evaluate.questions
    assert questions == {
        "forget_rest": [FORGET[0]["question"]] * 2,
        "retain": [row["question"] for row in RETAIN],
    }


def test_relearn_split_is_seeded_and_needs_items_on_both_sides():
    relearn, rest = relearn_split(10, 0.3, seed=0)
    assert (relearn, rest) == relearn_split(10, 0.3, seed=0)
    assert len(relearn) == 3 and sorted(relearn + rest) == list(range(10))
    assert relearn_split(10, 0.3, seed=1) != (relearn, rest)
    with pytest.raises(ValueError, match=r"fraction must be strictly between 0 and 1, got 1.0"):
        relearn_split(10, 1.0, seed=0)
    with pytest.raises(ValueError, match=r"gives 0 to relearn and 2 to re-measure"):
        relearn_split(2, 0.1, seed=0)


def test_paraphrase_asks_the_paraphrased_questions_of_the_items_that_have_one(tiny_model, tiny_tokenizer):
    context = _context(tiny_model, tiny_tokenizer)

    result = run_attack("paraphrase", context)

    kept = [0, 2, 3]  # item 1 has no paraphrased question
    (questions,) = context.evaluate.questions
    assert questions == {"forget": [FORGET[index]["paraphrased_question"] for index in kept]}
    assert result["splits"]["forget"]["probability"]["n"] == 3
    baseline_items = context.baseline["forget"]["items"]
    expected = np.mean([baseline_items[index]["probability"] for index in kept])
    assert math.isclose(result["baseline"]["forget"]["probability"]["mean"], expected)


def test_paraphrase_without_paraphrased_questions_names_the_split(tiny_model, tiny_tokenizer):
    context = _context(
        tiny_model, tiny_tokenizer, forget=[{**row, "paraphrased_question": None} for row in FORGET]
    )
    with pytest.raises(ValueError, match=r"split 'forget' has no item with a 'paraphrased_question'"):
        run_attack("paraphrase", context)


def test_unknown_attacks_and_bad_parameters_give_clear_errors(tiny_model, tiny_tokenizer):
    context = _context(tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match=r"unknown attack 'quantise'; known attacks: \[.*'quantize_4bit'"):
        get_attack("quantise")
    with pytest.raises(ValueError, match=r"attack 'relearn' has no parameter 'lr'; its parameters are \["):
        run_attack("relearn", context, lr=1e-3)
    # YAML 1.1 reads 1e-5 as a string.
    with pytest.raises(
        ValueError, match=r"'learning_rate' of attack 'relearn' must be float .* got '1e-5' \(str\)"
    ):
        run_attack("relearn", context, learning_rate="1e-5")
    # The same checks, before any model runs.
    assert attack_params("quantize_4bit", group_size=None) == {"bits": 4, "group_size": None}
    with pytest.raises(ValueError, match=r"attack 'leak_at_k' has no parameter 'n'"):
        attack_params("leak_at_k", n=4)
    with pytest.raises(ValueError, match=r"epochs must be at least 1, got 0"):
        run_attack("relearn", context, epochs=0)
    with pytest.raises(
        ValueError, match=r"the attack needs the split 'forget'; the evaluated splits are \['retain'\]"
    ):
        run_attack("paraphrase", dataclasses.replace(context, splits={"retain": context.splits["retain"]}))
    with pytest.raises(ValueError, match=r"threshold is a ROUGE-L recall in \(0, 1\], got 1.5"):
        run_attack("leak_at_k", context, threshold=1.5)
    assert set(ATTACKS) == {"quantize_8bit", "quantize_4bit", "relearn", "paraphrase", "leak_at_k"}


def test_leak_at_k_is_one_for_a_model_that_samples_the_answer(tiny_model, tiny_tokenizer):
    item = FORGET[2]
    # Trained to near certainty on one QA, the model samples its answer even at temperature 1.
    encoded = [encode_qa(tiny_tokenizer, item["question"], item["answer"])]
    pad_token_id = tiny_tokenizer.pad_token_id
    fine_tune(
        tiny_model, encoded, epochs=40, learning_rate=1e-2, batch_size=1, pad_token_id=pad_token_id, seed=0
    )
    context = _context(tiny_model, tiny_tokenizer, forget=[item])
    context.baseline["forget"]["items"][0]["rouge_l_recall"] = 0.25  # as if greedy decoding had hidden it

    result = run_attack("leak_at_k", context, k=4, max_new_tokens=16)

    assert result["splits"]["forget"]["leak_at_k"]["mean"] == 1.0
    assert result["splits"]["forget"]["best_rouge_l_recall_at_k"]["mean"] == 1.0
    assert result["baseline"]["forget"] == {"rouge_l_recall": summarize_with_ci([0.25])}
    assert result["params"] == {
        "k": 4,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 16,
        "threshold": 0.8,
        "batch_size": 16,
    }


def test_leak_at_k_samples_from_the_prompt_ids_that_greedy_evaluation_decodes(
    tiny_model, tiny_tokenizer, monkeypatch
):
    passed: dict[str, list[list[int]]] = {}

    def sampled(model, tokenizer, prompt_ids, *, num_samples, **kwargs):
        passed["leak_at_k"] = [list(ids) for ids in prompt_ids]
        return [[""] * num_samples for _ in prompt_ids]

    def greedy(model, tokenizer, prompt_ids, **kwargs):
        passed["greedy"] = [list(ids) for ids in prompt_ids]
        return [""] * len(prompt_ids)

    monkeypatch.setattr(leak, "generate_samples", sampled)
    monkeypatch.setattr(evaluator_module, "generate_greedy", greedy)
    context = _context(tiny_model, tiny_tokenizer)
    run_attack("leak_at_k", context, k=2, max_new_tokens=4)
    config = EvalConfig(metrics=("rouge_l_recall",), max_length=context.max_length)
    evaluate_split(tiny_model, tiny_tokenizer, "forget", context.splits["forget"], config)
    assert len(passed["leak_at_k"]) == len(FORGET)
    assert passed["leak_at_k"] == passed["greedy"]


def test_leak_at_k_draws_the_same_k_samples_for_the_same_seed(tiny_model, tiny_tokenizer, monkeypatch):
    drawn: list[list[list[str]]] = []
    generate_samples = leak.generate_samples

    def recording(*args, **kwargs):
        samples = generate_samples(*args, **kwargs)
        drawn.append(samples)
        return samples

    monkeypatch.setattr(leak, "generate_samples", recording)
    context = _context(tiny_model, tiny_tokenizer)
    first = run_attack("leak_at_k", context, k=3, max_new_tokens=6)
    second = run_attack("leak_at_k", context, k=3, max_new_tokens=6)
    run_attack("leak_at_k", dataclasses.replace(context, seed=1), k=3, max_new_tokens=6)

    assert first == second
    assert drawn[0] == drawn[1] != drawn[2]
    assert [len(samples) for samples in drawn[0]] == [3] * len(FORGET)
    # The stand-in suite has no greedy ROUGE, so there is no baseline to compare with.
    assert first["baseline"] == {"forget": {}}
