"""GradAscent and GradDiff loss values against a hand computation done independently here; every method's
hyperparameters, their descriptions and type checks; the `methods` command."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re

import pytest
import torch

from llm_unlearn.commands import methods as methods_command
from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.methods import METHODS, UnlearnStep, describe_method, get_method
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


def test_every_method_field_has_help_and_a_default():
    for name, method in METHODS.items():
        assert method.summary and not method.summary.startswith(method.config_class.__name__), name
        for f in dataclasses.fields(method.config_class):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        # Every documented default is accepted by the type check it documents.
        assert method.make_config({f.name: f.default for f in method.fields()}) == method.make_config(None)


def test_describe_method_lists_each_field_with_type_and_default():
    text = describe_method("NPO")
    assert text.startswith("npo: NPO: negative preference optimization")
    assert "method_args: {beta: 0.1}" in text
    assert re.search(r"^  beta +float +\(default 0\.1\) +Inverse temperature beta", text, re.MULTILINE)
    for name, type_ in (("gamma", "float"), ("alpha", "float"), ("retain_loss", "str")):
        assert re.search(rf"^  {name} +{type_} +\(default ", text, re.MULTILINE), name
    assert "str | None  (default None)" in describe_method("rmu")
    assert "method_args: none" in describe_method("retain_finetune")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("npo", {"beta": "high"}, "method 'npo': method_args.beta must be a float, got 'high' (str)."),
        ("npo", {"beta": True}, "method 'npo': method_args.beta must be a float, got True (bool)."),
        ("graddiff", {"alpha": "1e-5"}, "method 'graddiff': method_args.alpha must be a float, got '1e-5'"),
        ("rmu", {"layer": 7.0}, "method 'rmu': method_args.layer must be an int, got 7.0 (float)."),
        ("rmu", {"trainable_params": 3}, "method 'rmu': method_args.trainable_params must be a str or None"),
        ("dpo", {"preferred": None}, "method 'dpo': method_args.preferred must be a str, got None"),
    ],
)
def test_make_config_rejects_values_of_the_wrong_type(name, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        get_method(name).make_config(kwargs)


def test_make_config_accepts_an_int_for_a_float_and_none_for_an_optional():
    assert get_method("npo").make_config({"beta": 1}).beta == 1
    assert get_method("rmu").make_config({"trainable_params": None, "layer": 2}).layer == 2


def test_methods_command_lists_and_describes(capsys):
    parser = methods_command.make_parser(prog="llm-unlearn methods")
    assert methods_command.main(*parser.parse_args_and_config([])) == 0
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in METHODS)
    assert methods_command.main(*parser.parse_args_and_config(["npo"])) == 0
    assert capsys.readouterr().out.strip() == describe_method("npo")
    with pytest.raises(ValueError, match="unknown unlearning method 'npo-x'"):
        methods_command.main(*parser.parse_args_and_config(["npo-x"]))


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


def test_grad_ascent_is_graddiff_without_the_retain_term(tiny_model, tiny_tokenizer):
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    grad_ascent, graddiff = get_method("grad_ascent"), get_method("graddiff")
    config = grad_ascent.make_config(None)
    assert config.alpha == 0 and not config.uses_retain and not config.needs_reference_model
    # No retain batch in the step: grad_ascent must not ask for one.
    loss, logs = grad_ascent.loss(UnlearnStep(tiny_model, {"forget": forget}), config)
    expected, expected_logs = graddiff.loss(
        UnlearnStep(tiny_model, {"forget": forget, "retain": retain}), graddiff.make_config({"alpha": 0.0})
    )
    assert loss.item() == expected.item() and logs == expected_logs


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
