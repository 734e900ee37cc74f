"""Evaluation: the teacher-forced pass against a naive computation, metrics on hand cases, batched greedy
generation against one-by-one generation, and the evaluator's JSON result."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, build_tiny_tokenizer, sharpen
from datasets import Dataset

from llm_unlearn.data.formatting import IGNORE_INDEX, encode_qa, encode_text
from llm_unlearn.data.prompts import format_qa
from llm_unlearn.evaluation import (
    EvalConfig,
    EvalResult,
    ItemStatistics,
    compute_item_statistics,
    evaluate_splits,
    generate_greedy,
    get_metric,
    load_eval,
    probability,
    rouge_l_f1,
    rouge_l_recall,
    save_eval,
    summarize,
)
from llm_unlearn.evaluation import evaluator as evaluator_module
from llm_unlearn.evaluation import statistics as statistics_module
from llm_unlearn.evaluation.results import EvalFileError, EvalResultBuilder, utility_change

QA = [
    ("Where was Ada Lovelace born?", "Ada Lovelace was born in London."),
    ("What is the capital of France?", "Paris."),
    (
        "Where does Mara Velden work?",
        "Mara Velden works as a glass sculptor at Brightwater Studios in Porto, the quick brown fox.",
    ),
    ("Which award did she receive?", "She received the Silver Quill Award in 1998 for her second novel."),
    ("Hi?", "I don't know the answer to that question."),
]


def _encoded(tokenizer) -> list[dict]:
    items = [encode_qa(tokenizer, question, answer) for question, answer in QA]
    items.append(encode_text(tokenizer, "The quick brown fox jumps over the lazy dog 0123456789."))
    return items


def _naive_statistics(model, item: dict) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 log-softmax over every position of one unpadded sequence."""
    input_ids = torch.tensor([item["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    logprobs, hits = [], []
    for position in range(len(item["input_ids"]) - 1):
        target = item["labels"][position + 1]
        if target != IGNORE_INDEX:
            logprobs.append(log_probs[position, target].item())
            hits.append(int(logits[position].argmax()) == target)
    return np.array(logprobs), np.array(hits)


@pytest.mark.parametrize("logits_window", [True, False], ids=["logits_to_keep", "all_logits"])
def test_logprobs_and_argmax_hits_match_naive_log_softmax(
    tiny_model, tiny_tokenizer, monkeypatch, logits_window
):
    if not logits_window:
        monkeypatch.setattr(statistics_module.compat, "forward_parameters", lambda model: frozenset())
    items = _encoded(tiny_tokenizer)
    # The chat answers end with the end-of-turn token, which is also the pad token: it must still be scored.
    assert all(item["labels"][-1] == tiny_tokenizer.pad_token_id for item in items[: len(QA)])
    stats = compute_item_statistics(tiny_model, items, batch_size=3, pad_token_id=tiny_tokenizer.pad_token_id)
    assert len(stats) == len(items)
    for item, item_stats in zip(items, stats, strict=True):
        logprobs, hits = _naive_statistics(tiny_model, item)
        assert (
            item_stats.num_tokens
            == len(logprobs)
            == sum(label != IGNORE_INDEX for label in item["labels"][1:])
        )
        np.testing.assert_allclose(item_stats.logprobs, logprobs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(item_stats.argmax_hits, hits)
        assert item_stats.nll == pytest.approx(-logprobs.mean(), abs=1e-5)
        assert item_stats.seq_logprob == pytest.approx(logprobs.sum(), abs=1e-4)


def test_argmax_hits_on_the_models_own_greedy_continuation(tiny_model, tiny_tokenizer):
    prompt_ids = tiny_tokenizer(format_qa(tiny_tokenizer, "What is the capital of France?")[0])["input_ids"]
    continuation = []
    with torch.no_grad():
        for _ in range(6):
            logits = tiny_model(input_ids=torch.tensor([prompt_ids + continuation])).logits
            continuation.append(int(logits[0, -1].argmax()))
    item = {"input_ids": prompt_ids + continuation, "labels": [IGNORE_INDEX] * len(prompt_ids) + continuation}
    other = {"input_ids": prompt_ids + continuation[::-1], "labels": item["labels"]}
    greedy, shuffled = compute_item_statistics(
        tiny_model, [item, other], pad_token_id=tiny_tokenizer.pad_token_id
    )
    assert greedy.argmax_hits.all()
    assert greedy.num_tokens == 6
    assert not shuffled.argmax_hits.all()


def test_statistics_do_not_depend_on_batch_size_or_padding(tiny_model, tiny_tokenizer):
    items = _encoded(tiny_tokenizer)
    shortest = min(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    alone = compute_item_statistics(tiny_model, [items[shortest]], pad_token_id=tiny_tokenizer.pad_token_id)[
        0
    ]
    for batch_size in (1, 2, len(items)):
        batched = compute_item_statistics(
            tiny_model, items, batch_size=batch_size, pad_token_id=tiny_tokenizer.pad_token_id
        )
        np.testing.assert_allclose(batched[shortest].logprobs, alone.logprobs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(batched[shortest].argmax_hits, alone.argmax_hits)


def test_statistics_restore_training_mode_and_reject_unlabelled_items(tiny_model, tiny_tokenizer):
    items = _encoded(tiny_tokenizer)
    tiny_model.train()
    compute_item_statistics(tiny_model, items[:2], pad_token_id=tiny_tokenizer.pad_token_id)
    assert tiny_model.training
    tiny_model.eval()
    compute_item_statistics(tiny_model, items[:2], pad_token_id=tiny_tokenizer.pad_token_id)
    assert not tiny_model.training
    unlabelled = {"input_ids": [5, 6, 7], "labels": [5, IGNORE_INDEX, IGNORE_INDEX]}
    with pytest.raises(ValueError, match="item 1 has no labelled token"):
        compute_item_statistics(tiny_model, [items[0], unlabelled], pad_token_id=tiny_tokenizer.pad_token_id)


def test_probability_is_the_geometric_mean_token_probability():
    stats = ItemStatistics(
        logprobs=np.log(np.array([0.5, 0.25], dtype=np.float32)), argmax_hits=np.array([True, False])
    )
    assert stats.num_tokens == 2
    assert stats.seq_logprob == pytest.approx(math.log(0.125))
    assert stats.nll == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)
    assert probability(stats) == pytest.approx(0.35355339, abs=1e-7)


def test_rouge_l_recall_and_f1_on_hand_cases():
    assert rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l_recall("the mat", "the cat sat on the mat") == pytest.approx(2 / 6)
    # TOFU stems ("running" -> "run"); MUSE does not.
    assert rouge_l_recall("running", "run") == 1.0
    assert rouge_l_f1("running", "run") == 0.0
    assert rouge_l_recall("", "the cat") == 0.0


def test_summarize_gives_mean_count_and_sample_std():
    summary = summarize([1.0, 2.0, 3.0, 4.0])
    assert summary["n"] == 4
    assert summary["mean"] == pytest.approx(2.5)
    assert summary["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    single = summarize([0.5])
    assert single["mean"] == 0.5 and single["n"] == 1 and math.isnan(single["std"])
    assert summarize([])["n"] == 0


def _one_by_one(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return output[0, input_ids.shape[1] :].tolist()


def _prompts(tokenizer) -> list[list[int]]:
    """The QA prompts' token ids, tokenized as QA items tokenize them (no special tokens added)."""
    prompts = [format_qa(tokenizer, question)[0] for question, _ in QA]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


def test_batched_left_padded_generation_equals_one_by_one():
    tokenizer = build_tiny_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    prompts = _prompts(tokenizer)
    expected = [
        tokenizer.decode(_one_by_one(model, tokenizer, prompt, 12), skip_special_tokens=True).strip()
        for prompt in prompts
    ]
    assert len(set(expected)) == len(expected)  # distinct, so equality also proves the order
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=3) == expected
    assert tokenizer.padding_side == "right"
    tokenizer.padding_side = "left"
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=2) == expected
    assert tokenizer.padding_side == "left"
    assert generate_greedy(model, tokenizer, [], max_new_tokens=12) == []


def test_generation_cuts_at_the_first_stop_string():
    tokenizer = build_tiny_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    prompts = _prompts(tokenizer)
    full = generate_greedy(model, tokenizer, prompts, max_new_tokens=12)
    stop = full[0][4:6]
    later = full[0][7:9]
    cut = generate_greedy(
        model, tokenizer, prompts, max_new_tokens=12, stop_strings=[later, stop], batch_size=2
    )
    assert cut[0] == full[0][: full[0].find(stop)].strip()
    for text, cut_text in zip(full, cut, strict=True):
        positions = [text.find(s) for s in (stop, later) if s in text]
        assert cut_text == (text[: min(positions)] if positions else text).strip()


def test_generation_stops_at_the_models_generation_config_eos():
    tokenizer = build_tiny_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    prompt = _prompts(tokenizer)[0]
    tokens = _one_by_one(model, tokenizer, prompt, 10)
    stop_token = tokens[3]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_token]
    end = tokens.index(stop_token) + 1
    expected = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()
    assert generate_greedy(model, tokenizer, [prompt], max_new_tokens=10) == [expected]


def test_generation_is_plain_greedy_whatever_the_models_generation_config():
    tokenizer = build_tiny_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    prompts = _prompts(tokenizer)
    expected = generate_greedy(model, tokenizer, prompts, max_new_tokens=6)
    # As a Llama-2 generation_config.json does: sampling flags, a max_length, and a penalty.
    model.generation_config.update(
        do_sample=True, temperature=0.6, top_p=0.9, max_length=4096, repetition_penalty=5.0
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        assert generate_greedy(model, tokenizer, prompts, max_new_tokens=6) == expected
    finally:
        transformers_logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == []
    assert model.generation_config.do_sample is True


def test_generation_restores_training_mode(tiny_model, tiny_tokenizer):
    tiny_model.train()
    generate_greedy(tiny_model, tiny_tokenizer, _prompts(tiny_tokenizer)[:2], max_new_tokens=3)
    assert tiny_model.training


def _splits() -> dict[str, Dataset]:
    forget = Dataset.from_dict(
        {
            "question": [q for q, _ in QA[:3]],
            "answer": [a for _, a in QA[:3]],
            "subject_id": [7, 7, 9],
        }
    )
    retain = Dataset.from_dict({"question": [q for q, _ in QA[3:]], "answer": [a for _, a in QA[3:]]})
    return {"forget": forget, "retain": retain}


def test_evaluate_splits_end_to_end(tiny_model, tiny_tokenizer, tmp_path):
    config = EvalConfig(
        metrics=("probability", "rouge_l_recall", "rouge_l_f1"), batch_size=2, max_new_tokens=8
    )
    splits = _splits()
    result = evaluate_splits(tiny_model, tiny_tokenizer, splits, config)

    assert set(result) == {"config", "prompt_format", "splits", "summary", "timing"}
    # A fixed question and answer as the evaluation tokenized them: the chat template of the tiny tokenizer.
    assert result["prompt_format"]["text"].startswith("<|im_start|>user\n") and result["prompt_format"]["format"][
        "name"
    ] == "chat"
    assert result["config"]["metrics"] == ["probability", "rouge_l_recall", "rouge_l_f1"]
    assert result["config"]["max_new_tokens"] == 8
    assert set(result["timing"]) == {"forward_s", "generation_s"}
    assert result["timing"]["forward_s"] > 0 and result["timing"]["generation_s"] > 0
    assert list(result["splits"]) == ["forget", "retain"]
    for name, dataset in splits.items():
        split = result["splits"][name]
        assert split["num_items"] == len(dataset) == len(split["items"])
        stats = compute_item_statistics(
            tiny_model,
            [encode_qa(tiny_tokenizer, row["question"], row["answer"]) for row in dataset],
            pad_token_id=tiny_tokenizer.pad_token_id,
        )
        prompts = [format_qa(tiny_tokenizer, q)[0] for q in dataset["question"]]
        generations = generate_greedy(
            tiny_model,
            tiny_tokenizer,
            tiny_tokenizer(prompts, add_special_tokens=False)["input_ids"],
            max_new_tokens=8,
        )
        for index, (item, row) in enumerate(zip(split["items"], dataset, strict=True)):
            assert set(item) == {
                "index",
                "subject_id",
                "question",
                "answer",
                "generation",
                "num_answer_tokens",
                "probability",
                "rouge_l_recall",
                "rouge_l_f1",
            }
            assert item["index"] == index
            assert item["question"] == row["question"] and item["answer"] == row["answer"]
            assert item["subject_id"] == row.get("subject_id")
            assert item["num_answer_tokens"] == stats[index].num_tokens
            assert item["probability"] == pytest.approx(math.exp(-stats[index].nll), rel=1e-5)
            assert 0.0 < item["probability"] < 1.0
            assert item["generation"] == generations[index]
            assert item["rouge_l_recall"] == rouge_l_recall(generations[index], row["answer"])
            assert item["rouge_l_f1"] == rouge_l_f1(generations[index], row["answer"])
            assert all(type(item[key]) is float for key in ("probability", "rouge_l_recall", "rouge_l_f1"))
        for metric in config.metrics:
            values = [item[metric] for item in split["items"]]
            aggregate = split["aggregates"][metric]
            assert aggregate["n"] == len(values)
            assert aggregate["mean"] == pytest.approx(np.mean(values))
            assert aggregate["std"] == pytest.approx(np.std(values, ddof=1))
            # Every aggregate carries its bootstrap 95% interval, which brackets the mean.
            assert (
                min(values) <= aggregate["ci_low"] <= aggregate["mean"] <= aggregate["ci_high"] <= max(values)
            )
    assert result["splits"]["forget"]["items"][2]["subject_id"] == 9
    assert result["splits"]["retain"]["items"][0]["subject_id"] is None

    path = save_eval(result, tmp_path / "eval" / "result.json")
    assert load_eval(path) == json.loads(json.dumps(result)) == result
    read = load_eval(path)
    assert read.split_names() == ["forget", "retain"] and read.num_items("forget") == 3
    assert read.mean("retain", "rouge_l_f1") == result["splits"]["retain"]["aggregates"]["rouge_l_f1"]["mean"]


def _shape(value: Any) -> Any:
    """The keys of a JSON document, nested: what a reader relies on, without the numbers."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return None


def test_the_builder_writes_what_the_evaluator_writes(tiny_model, tiny_tokenizer):
    """Test fixtures are built with EvalResultBuilder: from the evaluator's numbers it writes the evaluator's
    document, key for key, and the same numbers by name."""
    rows = [
        {"question": q, "answer": a, "paraphrased_answer": a.upper(), "perturbed_answer": ["No.", "Maybe."]}
        for q, a in QA
    ]
    splits = {"forget": Dataset.from_list(rows[:3]), "holdout": Dataset.from_list(rows[3:])}
    config = EvalConfig(
        metrics=("probability", "truth_ratio"),
        mia={"members": "forget", "nonmembers": "holdout", "scores": ["loss", "loss_minus_reference"]},
    )
    result = EvalResult(evaluate_splits(tiny_model, tiny_tokenizer, splits, config))
    builder = EvalResultBuilder(config=result["config"], prompt_format=result["prompt_format"])
    for split in result.split_names():
        aggregates = {metric: result.metric(split, metric) for metric in result.metric_names(split)}
        builder.split(split, aggregates, items=result.split_items(split))
    for name in result.summary_names():
        fields = {key: value for key, value in result.summary_fields(name).items() if key != "reason"}
        builder.summary(name, reason=result.summary(name).reason, **fields)
    built = builder.mia(*result.mia_splits, result.mia_aucs()).build()
    assert _shape(built.to_dict()) == {**_shape(result.to_dict()), "timing": {}}
    assert built.names() == result.names()
    assert built.row() == pytest.approx(result.row(), nan_ok=True)


def test_eval_results_by_name_row_utility_change_and_bad_files(tmp_path):
    def built(retain: float, forget: float, utility: float | None) -> EvalResult:
        builder = (
            EvalResultBuilder(config={"forget_split": "forget"})
            .split("forget", {"probability": forget}, num_items=2)
            .split("retain", {"probability": retain, "truth_ratio_stat": 0.5}, num_items=2)
            .split("holdout", {"probability": 0.1}, num_items=2)
            .mia("forget", "holdout", {"loss": 0.75})
        )
        if utility is None:
            return builder.summary("model_utility", None, reason="no retain split").build()
        return builder.summary("model_utility", utility).build()

    target, unlearned = built(0.8, 0.9, 0.6), built(0.7, 0.2, None)
    assert unlearned.measure("model_utility").reason == "no retain split"
    assert unlearned.row() == pytest.approx(
        {"forget/probability": 0.2, "retain/probability": 0.7, "retain/truth_ratio_stat": 0.5,
         "holdout/probability": 0.1, "mia/loss": 0.75, "suite/model_utility": math.nan},
        nan_ok=True,
    )  # fmt: skip
    # Neither the forget split nor the nonmembers count as utility; a value not computed is left out.
    assert utility_change(target, unlearned) == {
        "retain/probability": {"before": 0.8, "after": 0.7},
        "retain/truth_ratio_stat": {"before": 0.5, "after": 0.5},
    }
    bad = tmp_path / "eval.json"
    bad.write_text(json.dumps({"splits": {"forget": {"aggregates": {"probability": {"mean": "high"}}}}}))
    with pytest.raises(EvalFileError, match=rf"{bad}: splits.forget.aggregates.probability is 'high'"):
        load_eval(bad)
    with pytest.raises(FileNotFoundError, match=r"nope.json does not exist; `llm-unlearn eval"):
        load_eval(tmp_path / "nope.json")


def test_only_the_passes_the_metrics_need_are_run(tiny_model, tiny_tokenizer, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("this pass should not run")

    monkeypatch.setattr(evaluator_module, "generate_greedy", forbidden)
    result = evaluate_splits(tiny_model, tiny_tokenizer, _splits(), EvalConfig(metrics=("probability",)))
    items = result["splits"]["forget"]["items"]
    assert all(item["generation"] is None and "rouge_l_recall" not in item for item in items)
    assert "generation_s" not in result["timing"]
    assert set(result["splits"]["forget"]["aggregates"]) == {"probability"}

    monkeypatch.undo()
    monkeypatch.setattr(evaluator_module, "compute_item_statistics", forbidden)
    result = evaluate_splits(
        tiny_model, tiny_tokenizer, _splits(), EvalConfig(metrics=("rouge_l_recall",), max_new_tokens=4)
    )
    items = result["splits"]["retain"]["items"]
    assert all(item["num_answer_tokens"] > 0 and isinstance(item["generation"], str) for item in items)
    assert "forward_s" not in result["timing"]


def test_metrics_declare_their_inputs():
    assert get_metric("probability").inputs == ("statistics",)
    assert get_metric("rouge_l_recall").inputs == ("generation", "answer")


def test_unknown_metric_and_missing_columns_are_clear_errors(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"unknown metric 'bleu'.*probability.*rouge_l_recall"):
        EvalConfig(metrics=("probability", "bleu"))
    config = EvalConfig()
    config.metrics = ("nope",)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config)
    bad = {"forget": Dataset.from_dict({"question": ["q?"], "text": ["t"]})}
    with pytest.raises(
        ValueError, match=r"split 'forget' \(format 'qa'\) lacks the column\(s\) \['answer'\]"
    ):
        evaluate_splits(tiny_model, tiny_tokenizer, bad, EvalConfig(metrics=("probability",)))


def test_eval_json_says_what_max_length_cut_per_split(tiny_model, tiny_tokenizer, caplog):
    """Items longer than the suite's max_length are scored cut, and the split's record says how many were cut and
    how many tokens of their answers (and alternatives) were dropped; a split with nothing cut says so."""
    long_answer = " ".join(["word"] * 60)
    rows = [{"question": "Q?", "answer": "Yes."}, {"question": "Q?", "answer": long_answer}]
    texts = [{"text": long_answer}, {"text": "A short document."}]
    full = [len(encode_qa(tiny_tokenizer, r["question"], r["answer"])["input_ids"]) for r in rows]
    full_text = [len(encode_text(tiny_tokenizer, r["text"])["input_ids"]) for r in texts]
    max_length = 64
    assert full[0] < max_length < full[1] and full_text[1] < max_length < full_text[0]
    config = EvalConfig(metrics=("probability",), max_length=max_length, splits={"docs": {"format": "text"}})
    splits = {"forget": Dataset.from_list(rows), "docs": Dataset.from_list(texts), "short": Dataset.from_list(rows[:1])}
    with caplog.at_level("WARNING", logger="llm_unlearn.evaluation.evaluator"):
        result = evaluate_splits(tiny_model, tiny_tokenizer, splits, config)
    assert result["splits"]["forget"]["truncation"] == {
        "max_length": max_length, "examples": 2, "truncated": 1, "tokens_dropped": full[1] - max_length,
        "longest": full[1],
    }  # fmt: skip
    assert result["splits"]["docs"]["truncation"] == {
        "max_length": max_length, "examples": 2, "truncated": 1, "tokens_dropped": full_text[0] - max_length,
        "longest": full_text[0],
    }  # fmt: skip
    assert result["splits"]["short"]["truncation"]["truncated"] == 0
    assert f"evaluation split 'forget': 1 of 2 examples are longer than max_length={max_length}" in caplog.text
    assert "evaluation split 'short'" not in caplog.text


def test_membership_splits_are_scored_through_one_numerical_path(tiny_model, tiny_tokenizer, monkeypatch):
    """The forget split takes the truth ratio, so it is scored through answer groups; the holdout split, its
    nonmembers, is then scored the same way rather than by whole-sequence forward passes, so that the AUC compares
    numbers from one path."""
    rows = [
        {"question": q, "answer": a, "paraphrased_answer": a, "perturbed_answer": ["No.", "Maybe."]} for q, a in QA
    ]
    splits = {"forget": Dataset.from_list(rows[:3]), "holdout": Dataset.from_list(rows[3:])}
    config = EvalConfig(
        metrics=("probability",), splits={"forget": {"metrics": ["probability", "truth_ratio"]}},
        mia={"members": "forget", "nonmembers": "holdout", "scores": ["loss"]},
    )  # fmt: skip

    def whole_sequence_pass(*args, **kwargs):
        raise AssertionError("a membership split was scored through the whole-sequence path")

    monkeypatch.setattr(evaluator_module, "compute_item_statistics", whole_sequence_pass)
    result = evaluate_splits(tiny_model, tiny_tokenizer, splits, config)
    assert result["mia"]["scores"]["loss"]["auc"] is not None
    assert "forward_s" not in result["timing"]
