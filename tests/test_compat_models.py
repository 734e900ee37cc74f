"""The bets the model code makes on transformers and peft that are not a documented public API (the SISA shard
ensemble, RMU's parameter names; docs/compatibility.md), checked against the installed releases: each failure
names the library, the symbol, what changed and where the project adapts to it.

The captured block output that RMU relies on (a decoder block returns its hidden states, alone or first in a
tuple) is checked against `output_hidden_states` for six model families in
tests/test_rmu.py::test_decoder_layers_and_default_regex_across_families.
"""

from __future__ import annotations

import copy
import math
import re

import peft
import pytest
import torch
import transformers
from conftest import build_tiny_llama, llama_without_tokenizer, sharpen
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Cache,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)

from llm_unlearn import compat
from llm_unlearn.methods.layers import decoder_layers
from llm_unlearn.methods.rmu import MLP_OUTPUT_PROJECTIONS, RMUConfig
from llm_unlearn.sisa import ShardEnsembleCache, ShardEnsembleForCausalLM, shard_adapter_from_peft

TRANSFORMERS = f"transformers {transformers.__version__}"
PEFT = f"peft {peft.__version__}"
ADAPT_SISA = "adapt llm_unlearn/sisa/ensemble.py and docs/compatibility.md"
ADAPT_RMU = "adapt llm_unlearn/methods/rmu.py and docs/compatibility.md"

# What ShardEnsembleCache overrides of transformers.Cache: the batch operations `generate` and our decoding loop
# apply to a cache, and the properties `generate` reads of it.
CACHE_OVERRIDES = (
    "get_seq_length",
    "reorder_cache",
    "batch_repeat_interleave",
    "batch_select_indices",
    "crop",
    "reset",
    "activate_past_recording",
    "is_compileable",
    "is_croppable",
    "is_linear",
)
# The private class flags that keep PreTrainedModel.__init__ from rejecting or downgrading the attention
# implementation of the config the ensemble shares with its base.
ATTENTION_FLAGS = (
    "_supports_sdpa",
    "_supports_flash_attn",
    "_supports_flex_attn",
    "_supports_attention_backend",
)


def random_lora(model: PreTrainedModel, config: LoraConfig, seed: int) -> peft.PeftModel:
    """`model` wrapped in a LoRA adapter whose B factors are not zero, so that it changes the logits."""
    torch.manual_seed(seed)
    wrapped = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return wrapped.eval()


# TF-9: ShardEnsembleCache subclasses transformers.Cache.


def test_cache_still_has_what_the_shard_ensemble_cache_overrides():
    for name in CACHE_OVERRIDES:
        assert hasattr(Cache, name), (
            f"{TRANSFORMERS}: transformers.Cache has no {name!r} any more; ShardEnsembleCache overrides it to "
            f"apply it to every shard's cache, and `generate` may now use another name: {ADAPT_SISA}."
        )
    try:
        Cache(layers=[])
    except TypeError as error:
        pytest.fail(
            f"{TRANSFORMERS}: transformers.Cache(layers=[]) raised {error!r}; ShardEnsembleCache builds its base "
            f"class that way: {ADAPT_SISA}."
        )


def test_crop_takes_a_negative_count_and_the_ensemble_cache_passes_it_to_every_shard():
    model = llama_without_tokenizer()
    with torch.no_grad():
        caches = [
            compat.output_cache(model(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=True)) for _ in "ab"
        ]
    ensemble_cache = ShardEnsembleCache(caches)
    ensemble_cache.crop(-1)
    lengths = [cache.get_seq_length() for cache in caches]
    assert lengths == [3, 3], (
        f"{TRANSFORMERS}: DynamicCache.crop(-1) left {lengths} positions of 4, not 3; Cache.crop no longer takes "
        f"the number of tokens to remove as a negative int: {ADAPT_SISA}."
    )
    with pytest.raises(ValueError):
        caches[0].crop(2)  # the old meaning, "crop to 2 positions", is refused rather than misread
    assert ensemble_cache.is_linear == caches[0].is_linear == [False, False], (
        f"{TRANSFORMERS}: Cache.is_linear of a filled Llama DynamicCache is {caches[0].is_linear}, not one False "
        f"per layer; `generate` slices its inputs by it: {ADAPT_SISA}."
    )
    assert ensemble_cache.is_croppable is caches[0].is_croppable is True
    assert ensemble_cache.is_compileable is caches[0].is_compileable is False


def manual_beam_search(
    shard_models: list[PreTrainedModel], prompt: list[int], num_beams: int, steps: int, banned: int
) -> list[list[int]]:
    """Beam search over the ensemble distribution (1/k) sum_i softmax(logits_i), recomputed from scratch at every
    step (no cache), with token `banned` never chosen; the beams' new tokens, best first."""
    beams = [(list(prompt), 0.0)]
    for _ in range(steps):
        candidates = []
        for tokens, score in beams:
            with torch.no_grad():
                probs = [
                    torch.softmax(m(input_ids=torch.tensor([tokens])).logits[0, -1], -1) for m in shard_models
                ]
            log_probs = torch.stack(probs).mean(dim=0).log().double()
            log_probs[banned] = -math.inf
            top = log_probs.topk(2 * num_beams)
            candidates += [
                ([*tokens, int(t)], score + float(v)) for v, t in zip(top.values, top.indices, strict=True)
            ]
        beams = sorted(candidates, key=lambda candidate: -candidate[1])[:num_beams]
    return [tokens[len(prompt) :] for tokens, _ in beams]


def test_the_ensemble_under_beam_search_with_two_return_sequences_matches_a_manual_beam_search(
    tiny_tokenizer,
):
    base = sharpen(build_tiny_llama(tiny_tokenizer))
    adapters, merged = [], []
    for seed in range(2):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        wrapped = random_lora(copy.deepcopy(base), lora, seed)
        adapters.append(shard_adapter_from_peft(wrapped, "default", f"shard {seed}"))
        merged.append(wrapped.merge_and_unload().eval())
    ensemble = ShardEnsembleForCausalLM(base, adapters).eval()
    pad = tiny_tokenizer.pad_token_id
    prompts = [[5, 17, 42, 9, 77], [120, 33, 8]]
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    steps = 4
    with torch.no_grad():
        output = ensemble.generate(
            input_ids=input_ids, attention_mask=attention_mask, num_beams=2, num_return_sequences=2,
            max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=pad,
            return_dict_in_generate=True,
        )  # fmt: skip
    eos = tiny_tokenizer.eos_token_id
    for index, prompt in enumerate(prompts):
        expected = manual_beam_search(merged, prompt, num_beams=2, steps=steps, banned=eos)
        got = output.sequences[2 * index : 2 * index + 2, width:].tolist()
        assert got == expected, (
            f"{TRANSFORMERS}: beam search (num_beams=2, num_return_sequences=2) on ShardEnsembleForCausalLM gave "
            f"{got} for prompt {index}, a manual beam search over the shard models {expected}; `generate` now uses "
            f"a Cache method or property that ShardEnsembleCache does not fan out to the shard caches: {ADAPT_SISA}."
        )
    # The cache comes back as the ensemble's, every shard's at the last fed position.
    cache = compat.output_cache(output)
    assert isinstance(cache, ShardEnsembleCache)
    assert [shard.get_seq_length() for shard in cache.shard_caches] == [width + steps - 1] * 2


# TF-11 / TF-12: the ensemble is a PreTrainedModel on its base's config.


def test_the_private_attention_flags_still_exist_on_pretrained_model():
    for name in ATTENTION_FLAGS:
        assert hasattr(PreTrainedModel, name), (
            f"{TRANSFORMERS}: PreTrainedModel.{name} is gone; ShardEnsembleForCausalLM sets it so that "
            f"PreTrainedModel.__init__ keeps the base's attention implementation on the shared config, and the "
            f"check may now read another attribute: {ADAPT_SISA}."
        )


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_building_an_ensemble_leaves_the_bases_attention_implementation(attn_implementation):
    config = llama_without_tokenizer().config
    base = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
    assert base.config._attn_implementation == attn_implementation
    adapter = shard_adapter_from_peft(
        random_lora(llama_without_tokenizer(), LoraConfig(r=2, target_modules=["q_proj"]), 0),
        "default",
        "shard",
    )
    try:
        ensemble = ShardEnsembleForCausalLM(base, [adapter]).eval()
    except (ValueError, ImportError) as error:
        pytest.fail(
            f"{TRANSFORMERS}: building ShardEnsembleForCausalLM on a base with "
            f"attn_implementation={attn_implementation!r} raised {error!r}; PreTrainedModel.__init__ no longer "
            f"honours the class flags {ATTENTION_FLAGS}: {ADAPT_SISA}."
        )
    assert base.config._attn_implementation == attn_implementation, (
        f"{TRANSFORMERS}: building ShardEnsembleForCausalLM changed the shared config's attention implementation "
        f"from {attn_implementation!r} to {base.config._attn_implementation!r}; PreTrainedModel.__init__ no "
        f"longer honours the class flags {ATTENTION_FLAGS}: {ADAPT_SISA}."
    )
    assert ensemble.config is base.config and ensemble.can_generate()
    with torch.no_grad():
        generated = ensemble.generate(input_ids=torch.tensor([[3, 4, 5]]), max_new_tokens=2, do_sample=False)
    assert generated.shape == (1, 5)


# TF-19: RMU's default trainable parameters are found by module name.


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama+lora"])
def test_rmu_default_regex_matches_a_parameter(family):
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4))
    else:
        model = llama_without_tokenizer()
    if family == "llama+lora":
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["down_proj"]))
    path, _ = decoder_layers(model)
    pattern = re.compile(RMUConfig(layer=1).trainable_regex(path))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    library = PEFT if family == "llama+lora" else TRANSFORMERS
    assert any(pattern.search(name) for name in trainable), (
        f"{library}: no trainable parameter of {family} matches RMU's default trainable-parameter regex "
        f"{pattern.pattern!r} (an MLP output projection named one of {MLP_OUTPUT_PROJECTIONS}, or its LoRA "
        f"factors `<name>.lora_A.default.weight`); the module or parameter names changed: {ADAPT_RMU}."
    )


# PE-1 / PE-2: shard adapters copy LoRA factors out of peft's LoRA layers.


def test_peft_lora_linear_keeps_the_attributes_shard_adapters_read():
    wrapped = get_peft_model(llama_without_tokenizer(), LoraConfig(r=2, target_modules=["q_proj"]))
    layer = wrapped.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer) is LoraLinear, (
        f"{PEFT}: LoRA on nn.Linear now builds a {type(layer).__module__}.{type(layer).__name__}, not "
        f"peft.tuners.lora.Linear; shard_adapter_from_peft accepts only that class: {ADAPT_SISA}."
    )
    for name, kind in (
        ("lora_A", nn.ModuleDict),
        ("lora_B", nn.ModuleDict),
        ("scaling", dict),
        ("lora_variant", dict),
        ("lora_bias", dict),
        ("fan_in_fan_out", bool),
    ):
        value = getattr(layer, name, None)
        assert isinstance(value, kind), (
            f"{PEFT}: peft.tuners.lora.Linear.{name} is a {type(value).__name__}, not a {kind.__name__}; "
            f"shard_adapter_from_peft reads it to copy a shard's LoRA factors: {ADAPT_SISA}."
        )


@pytest.mark.parametrize(
    "lora",
    [
        {"r": 4, "lora_alpha": 8},
        {"r": 4, "lora_alpha": 8, "use_rslora": True},
        {"r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"down_proj": 3}},
    ],
    ids=["plain", "rslora", "rank_and_alpha_pattern"],
)
def test_a_one_shard_ensemble_matches_the_peft_model(lora):
    base = llama_without_tokenizer()
    wrapped = random_lora(
        llama_without_tokenizer(), LoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], **lora), 0
    )
    input_ids = torch.tensor([[3, 9, 27, 14, 5, 60]])
    with torch.no_grad():
        expected = torch.log_softmax(wrapped(input_ids=input_ids).logits, dim=-1)
        ensemble = ShardEnsembleForCausalLM(
            base, [shard_adapter_from_peft(wrapped, "default", "shard")]
        ).eval()
        logits = ensemble(input_ids=input_ids, use_cache=False).logits
    difference = (logits - expected).abs().max().item()
    assert difference < 1e-5, (
        f"{PEFT}: a one-shard ensemble differs from the PeftModel by {difference:.2e} in log-probabilities with "
        f"LoraConfig({lora}); peft's LoRA forward (W x + scaling * B(A x)) or where it keeps the scaling changed: "
        f"{ADAPT_SISA}."
    )


@pytest.mark.parametrize("variant", ["use_dora", "lora_bias"])
def test_lora_variants_and_lora_bias_are_refused(variant):
    wrapped = get_peft_model(
        llama_without_tokenizer(), LoraConfig(r=2, target_modules=["q_proj"], **{variant: True})
    )
    message = (
        f"{PEFT}: an adapter with {variant}=True was not refused naming its layer; peft.tuners.lora.Linear "
        f"no longer records it in lora_variant / lora_bias, and the ensemble would serve it as plain LoRA: "
        f"{ADAPT_SISA}."
    )
    try:
        shard_adapter_from_peft(wrapped, "default", "shard")
    except ValueError as error:
        assert "model.layers.0.self_attn.q_proj" in str(error), message
    else:
        pytest.fail(message)
