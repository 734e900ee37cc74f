"""The bets llm_unlearn makes on transformers that are not a documented public API (llm_unlearn/compat.py,
docs/compatibility.md), checked against the installed release: each failure names what changed and where the
project adapts to it."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import transformers
from conftest import llama_without_tokenizer
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import (
    Cache,
    DynamicCache,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    XLNetConfig,
    XLNetLMHeadModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_unlearn import compat

RELEASE = f"transformers {transformers.__version__}"
WHERE = "adapt llm_unlearn/compat.py and docs/compatibility.md"


def test_the_output_classes_carry_the_cache_under_a_known_name():
    names = {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}
    assert names & set(compat.CACHE_NAMES), (
        f"{RELEASE}: CausalLMOutputWithPast has no field named {' or '.join(compat.CACHE_NAMES)} "
        f"(its fields: {sorted(names)}); the key/value cache was renamed again: {WHERE}."
    )


def test_a_llama_takes_and_returns_its_cache_under_the_name_compat_uses_without_a_deprecation():
    model = llama_without_tokenizer()
    name = compat.cache_argument(model)
    assert name is not None, (
        f"{RELEASE}: LlamaForCausalLM.forward declares none of {compat.CACHE_NAMES}; the cache argument was "
        f"renamed: {WHERE}."
    )
    input_ids = torch.tensor([[1, 2, 3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated name warns; it would stop working in a later release
        with torch.no_grad():
            prefill = model(input_ids=input_ids[:, :3], use_cache=True)
            cache = compat.output_cache(prefill)
            assert isinstance(cache, Cache), (
                f"{RELEASE}: a forward with use_cache=True returned no Cache under {compat.CACHE_NAMES}: {WHERE}."
            )
            step = model(input_ids=input_ids[:, 3:], use_cache=True, **compat.cache_kwargs(model, cache))
            whole = model(input_ids=input_ids, use_cache=False)
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], atol=1e-5, rtol=1e-5)
    assert compat.output_cache(whole) is None


def test_the_private_cache_class_attributes_still_answer_as_generate_uses_them():
    # `_supports_default_dynamic_cache` and `_is_stateful` are how `generate` itself decides whether a model
    # gets a plain DynamicCache and whether it carries recurrent state; no public API says either.
    for cls, supports in ((LlamaForCausalLM, True), (XLNetLMHeadModel, False)):
        method = getattr(cls, "_supports_default_dynamic_cache", None)
        assert callable(method), (
            f"{RELEASE}: PreTrainedModel._supports_default_dynamic_cache() is gone; compat.continues_from_cache "
            f"needs another way to tell a model with a cache of its own: {WHERE}."
        )
        assert method() is supports, f"{RELEASE}: {cls.__name__}._supports_default_dynamic_cache() changed."
    for cls, stateful in ((LlamaForCausalLM, False), (MambaForCausalLM, True)):
        assert getattr(cls, "_is_stateful", None) is stateful, (
            f"{RELEASE}: {cls.__name__}._is_stateful is no longer {stateful}; compat.continues_from_cache needs "
            f"another way to tell a recurrent model: {WHERE}."
        )


def test_continues_from_cache_accepts_decoders_and_refuses_the_others():
    assert compat.continues_from_cache(llama_without_tokenizer())
    lora = get_peft_model(llama_without_tokenizer(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert compat.continues_from_cache(lora)
    prefix = get_peft_model(
        llama_without_tokenizer(), PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    )
    assert not compat.continues_from_cache(prefix)
    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    assert not compat.continues_from_cache(mamba)
    xlnet = XLNetLMHeadModel(XLNetConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, d_inner=32))
    assert not compat.continues_from_cache(xlnet)
    assert not compat.continues_from_cache(torch.nn.Linear(2, 2))


def test_selecting_cache_rows_repeats_and_drops_rows_of_every_layer():
    model = llama_without_tokenizer()
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    rows = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = compat.output_cache(model(input_ids=prompts, use_cache=True))
        assert isinstance(cache, DynamicCache)
        try:
            compat.select_cache_rows(cache, rows)
        except AttributeError as error:
            pytest.fail(f"{RELEASE}: Cache.reorder_cache is gone ({error}); {WHERE}.")
        next_tokens = torch.tensor([[1], [2], [3]])
        continued = model(input_ids=next_tokens, use_cache=True, **compat.cache_kwargs(model, cache)).logits
        fresh = model(input_ids=torch.cat([prompts[rows], next_tokens], dim=1), use_cache=False).logits
    torch.testing.assert_close(continued[:, -1], fresh[:, -1], atol=1e-5, rtol=1e-5)


def test_causal_lm_output_puts_the_cache_where_generate_reads_it():
    cache = DynamicCache()
    output = compat.causal_lm_output(loss=None, logits=torch.zeros(1, 1, 4), cache=cache)
    assert compat.output_cache(output) is cache
    assert getattr(output, compat.CACHE_OUTPUT_FIELD) is cache


def test_a_refused_connection_to_the_hub_raises_the_transport_error_compat_names():
    """The loader and push turn compat.HubTransportError into a message; it must be what huggingface_hub raises."""
    from huggingface_hub import HfApi

    with pytest.raises(compat.HubTransportError):
        HfApi(endpoint="http://127.0.0.1:9").model_info("acme/model", timeout=2)
