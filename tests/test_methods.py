"""GradAscent and GradDiff loss values against a hand computation done independently here."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.methods import METHODS, UnlearnStep, get_method
from llm_unlearn.methods.logprobs import sequence_kl, sequence_nll

FORGET = [("Where was Mara Velden born?", "Mara Velden was born in Porto."), ("What is 2+2?", "4")]
RETAIN = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Who wrote it?", "She did."),
]


def make_batch(tokenizer, pairs):
    return PaddingCollator(tokenizer.pad_token_id)([encode_qa(tokenizer, q, a) for q, a in pairs])


def hand_nll(model, batch) -> list[float]:
    """Per-sequence mean NLL over answer tokens, one position at a time from a plain log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    result = []
    for row in range(batch["input_ids"].shape[0]):
        terms = []
        for t in range(1, batch["input_ids"].shape[1]):
            target = batch["labels"][row, t].item()
            if target == -100:
                continue
            distribution = torch.softmax(logits[row, t - 1].double(), dim=-1)
            terms.append(-math.log(distribution[target].item()))
        result.append(sum(terms) / len(terms))
    return result


def hand_kl(reference, model, batch) -> list[float]:
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits, ref_logits = model(**inputs).logits, reference(**inputs).logits
    result = []
    for row in range(batch["input_ids"].shape[0]):
        terms = []
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][row, t].item() == -100:
                continue
            p = torch.softmax(ref_logits[row, t - 1].double(), -1)
            q = torch.softmax(logits[row, t - 1].double(), -1)
            terms.append(sum(p[v].item() * math.log(p[v].item() / q[v].item()) for v in range(p.numel())))
        result.append(sum(terms) / len(terms))
    return result


def test_registry_lists_methods_and_rejects_unknown_names():
    assert {"grad_ascent", "graddiff"} <= set(METHODS)
    with pytest.raises(ValueError, match=r"unknown unlearning method 'npo-x'.*graddiff"):
        get_method("npo-x")
    with pytest.raises(ValueError, match=r"does not take \['beta'\].*alpha"):
        get_method("graddiff").make_config({"beta": 0.1})
    with pytest.raises(ValueError, match=r"retain_loss='mse'.*kl.*nll"):
        get_method("graddiff").make_config({"retain_loss": "mse"})


def test_sequence_nll_matches_hand_computation_and_ignores_padding(tiny_model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer, FORGET)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert sequence_nll(logits, batch["labels"]).tolist() == pytest.approx(
        hand_nll(tiny_model, batch), rel=1e-5
    )


def test_grad_ascent_loss_is_minus_mean_forget_nll(tiny_model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer, FORGET)
    method = get_method("grad_ascent")
    loss, logs = method.loss(UnlearnStep(tiny_model, {"forget": batch}), method.make_config(None))
    expected = -sum(hand_nll(tiny_model, batch)) / len(FORGET)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["forget_nll"] == pytest.approx(-expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in tiny_model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("gamma", "alpha"), [(1.0, 1.0), (0.5, 2.0)])
def test_grad_diff_nll_loss_combines_forget_and_retain(tiny_model, tiny_tokenizer, gamma, alpha):
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    method = get_method("graddiff")
    config = method.make_config({"gamma": gamma, "alpha": alpha})
    loss, _ = method.loss(UnlearnStep(tiny_model, {"forget": forget, "retain": retain}), config)
    forget_nll = sum(hand_nll(tiny_model, forget)) / 2
    retain_nll = sum(hand_nll(tiny_model, retain)) / 2
    assert loss.item() == pytest.approx(-gamma * forget_nll + alpha * retain_nll, rel=1e-5)


def test_grad_diff_kl_uses_reference_and_matches_hand_kl(tiny_tokenizer):
    from conftest import build_tiny_llama

    model, reference = build_tiny_llama(tiny_tokenizer, seed=1), build_tiny_llama(tiny_tokenizer, seed=2)
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)

    @contextlib.contextmanager
    def reference_context():
        with torch.no_grad():
            yield reference

    method = get_method("graddiff")
    config = method.make_config({"retain_loss": "kl"})
    assert config.needs_reference_model
    step = UnlearnStep(model, {"forget": forget, "retain": retain}, reference=reference_context)
    loss, logs = method.loss(step, config)
    kl = sum(hand_kl(reference, model, retain)) / 2
    assert logs["retain_kl"] == pytest.approx(kl, rel=1e-4)
    assert loss.item() == pytest.approx(-sum(hand_nll(model, forget)) / 2 + kl, rel=1e-4)


def test_kl_of_a_model_to_itself_is_zero(tiny_model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer, RETAIN)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert sequence_kl(logits, logits, batch["labels"]).abs().max().item() < 1e-6


def test_step_runs_each_forward_once(tiny_model, tiny_tokenizer):
    calls = []
    tiny_model.register_forward_hook(lambda *_: calls.append(1))
    step = UnlearnStep(tiny_model, {"forget": make_batch(tiny_tokenizer, FORGET)})
    step.logits("forget")
    step.logits("forget")
    assert len(calls) == 1
    with pytest.raises(KeyError, match="no 'retain' batch"):
        step.logits("retain")
