"""NPO and DPO/IdkPO: loss values by hand, their limits, and reference log-probs cached once before training."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from llm_unlearn.data.formatting import IGNORE_INDEX, PaddingCollator, encode_qa, tokenize_views
from llm_unlearn.methods import UnlearnStep, get_method
from llm_unlearn.methods.dpo import REFUSALS, dpo_loss_from_logprobs, refusal_for
from llm_unlearn.methods.npo import npo_loss_from_logprobs
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer

FORGET = [
    {
        "question": "Where was Mara born?",
        "answer": "Mara was born in Porto.",
        "perturbed_answer": ["In Lyon."],
    },
    {"question": "What is 2+2?", "answer": "It is 4.", "perturbed_answer": ["It is 5."]},
]
RETAIN = [{"question": "Capital of France?", "answer": "Paris."}, {"question": "Who?", "answer": "She did."}]


def hand_seq_logprob(model, input_ids: list[int], labels: list[int]) -> float:
    """Sum of log p(y_t) over answer tokens, one position at a time in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids], device=model.device)).logits[0].double()
    return sum(
        torch.log_softmax(logits[t - 1], -1)[labels[t]].item()
        for t in range(1, len(labels))
        if labels[t] != IGNORE_INDEX
    )


def test_npo_formula_by_hand():
    seq, ref, beta = torch.tensor([-3.0, -10.0]), torch.tensor([-4.0, -8.0]), 0.5
    expected = -(2 / beta) * sum(math.log(1 / (1 + math.exp(beta * d))) for d in (1.0, -2.0)) / 2
    assert npo_loss_from_logprobs(seq, ref, beta).item() == pytest.approx(expected, rel=1e-6)


def test_npo_with_reference_equal_to_model_is_2_log2_over_beta():
    seq = torch.tensor([-3.0, -7.5, -0.2])
    for beta in (0.1, 1.0, 4.0):
        assert npo_loss_from_logprobs(seq, seq.clone(), beta).item() == pytest.approx(2 * math.log(2) / beta)


def test_npo_gradient_approaches_gradient_ascent_as_beta_goes_to_zero(tiny_model, tiny_tokenizer):
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)(
        [encode_qa(tiny_tokenizer, row["question"], row["answer"]) for row in FORGET]
    )
    from llm_unlearn.methods.logprobs import sequence_logprob

    def grads(loss_of_seq):
        tiny_model.zero_grad()
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_of_seq(sequence_logprob(logits, batch["labels"])).backward()
        return torch.cat([p.grad.flatten() for p in tiny_model.parameters()])

    with torch.no_grad():
        ref = sequence_logprob(tiny_model(**batch).logits, batch["labels"]) - 1.0
    npo = grads(lambda seq: npo_loss_from_logprobs(seq, ref, beta=1e-4))
    # Gradient ascent on the (summed) answer log-likelihood: minimise mean_i seqlogp(y_i).
    ascent = grads(lambda seq: seq.mean())
    assert torch.nn.functional.cosine_similarity(npo, ascent, dim=0).item() > 0.9999
    assert (npo.norm() / ascent.norm()).item() == pytest.approx(1.0, rel=1e-3)


def test_dpo_formula_by_hand_and_idk_refusals():
    win, win_ref = torch.tensor([-5.0]), torch.tensor([-6.0])
    lose, lose_ref = torch.tensor([-2.0]), torch.tensor([-1.0])
    margin = (-5.0 + 6.0) - (-2.0 + 1.0)
    expected = -(2 / 0.1) * math.log(1 / (1 + math.exp(-0.1 * margin)))
    assert dpo_loss_from_logprobs(win, win_ref, lose, lose_ref, 0.1).item() == pytest.approx(
        expected, rel=1e-6
    )
    assert len(set(REFUSALS)) >= 15
    assert refusal_for("Where was Mara born?") == refusal_for("Where was Mara born?") in REFUSALS
    assert len({refusal_for(f"question {i}") for i in range(200)}) > 10


def test_dpo_preferred_answers_and_their_errors():
    refusal = get_method("dpo").make_config(None)
    assert refusal.forget_views()["win"](FORGET[0]) == refusal_for(FORGET[0]["question"])
    alternate = get_method("dpo").make_config({"preferred": "alternate"})
    assert alternate.preferred_answer(FORGET[0]) == "In Lyon."
    with pytest.raises(ValueError, match=r"needs a non-empty 'perturbed_answer'.*preferred='refusal'"):
        alternate.preferred_answer({"question": "Q?", "answer": "A."})
    with pytest.raises(ValueError, match="preferred='best' is not known"):
        get_method("dpo").make_config({"preferred": "best"})
    with pytest.raises(ValueError, match="needs beta > 0"):
        get_method("npo").make_config({"beta": 0})


def test_views_are_tokenized_and_collated_with_their_own_masks(tiny_tokenizer):
    config = get_method("dpo").make_config(None)
    data, _ = tokenize_views(Dataset.from_list(FORGET), tiny_tokenizer, config.forget_views(), max_length=64)
    assert set(data.column_names) == {"input_ids", "labels", "win__input_ids", "win__labels"}
    row = data[0]
    win_answer = [
        t for t, label in zip(row["win__input_ids"], row["win__labels"], strict=True) if label != -100
    ]
    assert tiny_tokenizer.decode(win_answer) == refusal_for(FORGET[0]["question"]) + "<|im_end|>"
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)([{**data[0], "ref": 1.5}, {**data[1], "ref": -2.0}])
    assert batch["win__attention_mask"].sum(1).tolist() == [len(data[i]["win__input_ids"]) for i in range(2)]
    assert batch["attention_mask"].sum(1).tolist() == [len(data[i]["input_ids"]) for i in range(2)]
    assert batch["ref"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize("method", ["npo", "dpo"])
def test_reference_logprobs_are_cached_once_and_first_step_is_2_log2_over_beta(
    tiny_model, tiny_tokenizer, tmp_path, method
):
    config = get_method(method).make_config(None)
    forget, _ = tokenize_views(Dataset.from_list(FORGET), tiny_tokenizer, config.forget_views(), max_length=64)
    retain, _ = tokenize_views(Dataset.from_list(RETAIN), tiny_tokenizer, {}, max_length=64)
    args = UnlearnConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, max_steps=2,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True, method=method,
    )  # fmt: skip
    calls = []
    tiny_model.register_forward_hook(lambda *_: calls.append(1))
    trainer = UnlearnTrainer(
        model=tiny_model, args=args, train_dataset=forget, retain_dataset=retain,
        data_collator=PaddingCollator(tiny_tokenizer.pad_token_id),
    )  # fmt: skip
    views = ["", "win"] if method == "dpo" else [""]
    assert len(calls) == len(views)  # one batched reference pass per view, before training
    for view in views:
        prefix = f"{view}__" if view else ""
        for i in range(len(FORGET)):
            row = trainer.train_dataset[i]
            expected = hand_seq_logprob(tiny_model, row[f"{prefix}input_ids"], row[f"{prefix}labels"])
            assert row[f"{prefix}ref_seq_logprob"] == pytest.approx(expected, rel=1e-4)
    calls.clear()
    trainer.train()
    # Per step: the forget views and the retain batch, and no reference pass.
    assert len(calls) == 2 * (len(views) + 1)
    logged = [entry[f"forget_{method}"] for entry in trainer.state.log_history if f"forget_{method}" in entry]
    assert logged[0] == pytest.approx(2 * math.log(2) / 0.1, rel=1e-4)
    assert logged[1] != pytest.approx(logged[0])


def test_npo_loss_in_a_step_uses_the_cached_reference(tiny_model, tiny_tokenizer):
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)(
        [encode_qa(tiny_tokenizer, row["question"], row["answer"]) for row in FORGET]
    )
    seq = [
        hand_seq_logprob(tiny_model, batch["input_ids"][i][: int(batch["attention_mask"][i].sum())].tolist(),
                         batch["labels"][i][: int(batch["attention_mask"][i].sum())].tolist())
        for i in range(2)
    ]  # fmt: skip
    batch["ref_seq_logprob"] = torch.tensor([seq[0] + 2.0, seq[1] - 1.0])
    method = get_method("npo")
    config = method.make_config({"alpha": 0.0, "beta": 0.5})
    loss, _ = method.loss(UnlearnStep(tiny_model, {"forget": batch}), config)
    expected = -(2 / 0.5) * sum(math.log(1 / (1 + math.exp(0.5 * d))) for d in (-2.0, 1.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-4)
