"""The one place that adapts to differences between releases of transformers, and that touches what is not
a documented public API. docs/compatibility.md lists every entry with the reason it is kept, and
tests/test_compat*.py check each against the installed releases, so that a release that changes one fails
there with the cause named rather than deep inside an evaluation.

The key/value cache changed its name in transformers 5.24: models take it as `cache=` (the old
`past_key_values=` still works, with a deprecation warning, until 5.40) and return it as `output.cache` (the
field `past_key_values` is gone). Everything here works with both names.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import torch
from transformers import Cache, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


def _hub_transport_error() -> type[Exception]:
    """The error a failed connection to the Hub raises: huggingface_hub 2 talks to the Hub through httpx2, 1.x
    through httpx, and their TransportError (unlike the Hub's HTTP errors) is no OSError."""
    try:
        import httpx2 as http
    except ImportError:
        import httpx as http
    return http.TransportError


HubTransportError = _hub_transport_error()

CACHE_NAMES = ("cache", "past_key_values")  # newest first

# The cache field of the causal-LM output classes of the installed transformers.
CACHE_OUTPUT_FIELD = next(
    name
    for name in CACHE_NAMES
    if name in {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}
)


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (`PeftModel.get_base_model`), or `model` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_parameters(model: torch.nn.Module) -> frozenset[str]:
    """Names of the arguments the forward of `model` (under a PEFT wrapper, its base) declares."""
    return _declared_parameters(type(unwrap_peft(model)))


@functools.cache
def _declared_parameters(cls: type) -> frozenset[str]:
    # Read off the class, once: decoding asks for every step, and hooks that wrap an instance's forward
    # (accelerate's device placement) hide its arguments behind *args, **kwargs.
    return frozenset(inspect.signature(cls.forward).parameters)


def cache_argument(model: torch.nn.Module) -> str | None:
    """The name under which the forward of `model` takes a key/value cache (`cache` from transformers 5.24,
    `past_key_values` before and in remote code), or None if it takes none."""
    parameters = forward_parameters(model)
    return next((name for name in CACHE_NAMES if name in parameters), None)


def cache_kwargs(model: torch.nn.Module, cache: Cache | None) -> dict[str, Any]:
    """`{name: cache}` to pass `cache` to the forward of `model` under the name it declares."""
    name = cache_argument(model)
    if name is None:
        raise TypeError(f"the forward of {type(unwrap_peft(model)).__name__} takes no key/value cache.")
    return {name: cache}


def output_cache(output: Any) -> Cache | None:
    """The key/value cache a forward returned (`output.cache`, or `output.past_key_values` before 5.24)."""
    # The keys the output holds, not `name in output`: 5.24 still answers to the old name, with a warning.
    held = output.keys()
    return next((output[name] for name in CACHE_NAMES if name in held), None)


def causal_lm_output(
    *, loss: torch.Tensor | None, logits: torch.Tensor, cache: Cache | None
) -> CausalLMOutputWithPast:
    """A `CausalLMOutputWithPast` with `cache` in the field the installed transformers reads it from."""
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_OUTPUT_FIELD: cache})


def continues_from_cache(model: torch.nn.Module) -> bool:
    """Whether `model` can continue left-padded prompts from their key/value cache: its forward takes a cache
    and `position_ids`, transformers gives it a standard dynamic cache, and it keeps no other state
    (recurrent models and prompt-learning PEFT adapters do).

    Two private class attributes of transformers decide the last two, as `generate` itself decides them:
    `_supports_default_dynamic_cache()` (False for models with a cache of their own, e.g. XLNet, Reformer)
    and `_is_stateful` (True for Mamba-like models, whose state a left-padded batch would corrupt). No public
    API says either; tests/test_compat.py checks that both still exist and answer as expected."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    base = unwrap_peft(model)
    if not isinstance(base, PreTrainedModel):
        return False
    supports_dynamic_cache = getattr(base, "_supports_default_dynamic_cache", None)
    return (
        cache_argument(base) is not None
        and "position_ids" in forward_parameters(base)
        and supports_dynamic_cache is not None
        and supports_dynamic_cache()
        and not getattr(base, "_is_stateful", False)
        and not base.config.is_encoder_decoder
    )


def select_cache_rows(cache: Cache, rows: torch.Tensor) -> None:
    """Keep the batch rows `rows` of `cache` in place, in that order; an index may repeat or be left out.
    `Cache.reorder_cache` is an index_select over the batch of every layer (keys and values, and the states
    of linear-attention layers), which is what beam search uses it for and all a row selection needs."""
    cache.reorder_cache(rows.to(torch.long))
