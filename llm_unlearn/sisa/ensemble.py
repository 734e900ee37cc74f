"""The SISA ensemble (Bourtoule et al. 2021, arXiv 1912.03817): k shard models, each the shared frozen base with
its shard's LoRA adapter, served as one causal LM whose next-token distribution is the mean of theirs."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from torch import nn
from transformers import Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_unlearn import compat
from llm_unlearn.methods.logprobs import token_logprobs
from llm_unlearn.sisa.record import read_sisa_record, served_checkpoints


def _add_low_rank_update(
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    output: torch.Tensor,
) -> torch.Tensor:
    """A forward hook of a linear layer: its output W x plus the LoRA update scaling * B (A x)."""
    update = nn.functional.linear(nn.functional.linear(inputs[0].to(lora_a.dtype), lora_a), lora_b)
    return output + (scaling * update).to(output.dtype)


class ShardAdapter(nn.Module):
    """One shard's LoRA factors: in the shard model, each adapted linear layer of the base computes
    W x + scaling * B (A x), PEFT's LoRA forward (without dropout)."""

    def __init__(
        self,
        targets: Sequence[str],
        lora_A: Sequence[torch.Tensor],
        lora_B: Sequence[torch.Tensor],
        scaling: Sequence[float],
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        self.lora_A = nn.ParameterList(lora_A)
        self.lora_B = nn.ParameterList(lora_B)
        self.scaling = list(scaling)

    @contextmanager
    def applied_to(self, base: nn.Module) -> Iterator[None]:
        """Within the block, `base` runs as this shard's model: its adapted layers add the low-rank update to
        their outputs (the base's weights stay as they are, quantized or relearned if an attack changed
        them)."""
        handles = [
            base.get_submodule(target).register_forward_hook(
                partial(_add_low_rank_update, lora_a, lora_b, scaling)
            )
            for target, lora_a, lora_b, scaling in zip(
                self.targets, self.lora_A, self.lora_B, self.scaling, strict=True
            )
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def shard_adapter_from_peft(model: PeftModel, adapter_name: str, source: str) -> ShardAdapter:
    """Copy the LoRA factors and scalings of `adapter_name` out of a PEFT model (loaded from `source`)."""
    config = model.peft_config[adapter_name]
    if config.modules_to_save:
        raise ValueError(
            f"adapter {source!r} trains whole modules ({config.modules_to_save}); a shard ensemble serves plain "
            "LoRA adapters only (no modules_to_save)."
        )
    # Trained token embeddings live in layers without LoRA factors, which the scan below would skip unnoticed.
    trainable_tokens = getattr(config, "trainable_token_indices", None)
    if trainable_tokens:
        raise ValueError(
            f"adapter {source!r} trains token embeddings (trainable_token_indices={trainable_tokens}); a shard "
            "ensemble serves plain LoRA adapters only (no trainable_token_indices)."
        )
    targets, lora_a, lora_b, scaling = [], [], [], []
    for name, module in model.get_base_model().named_modules():
        if not hasattr(module, "lora_A") or adapter_name not in module.lora_A:
            continue
        vanilla = (
            type(module) is LoraLinear
            and adapter_name not in module.lora_variant
            and not module.lora_bias[adapter_name]
            and not module.fan_in_fan_out
        )
        if not vanilla:
            raise ValueError(
                f"adapter {source!r}: layer {name} is a {type(module).__name__} with a LoRA variant, a LoRA "
                "bias or fan_in_fan_out; a shard ensemble serves plain LoRA on linear layers only."
            )
        targets.append(name)
        lora_a.append(nn.Parameter(module.lora_A[adapter_name].weight.detach().clone()))
        lora_b.append(nn.Parameter(module.lora_B[adapter_name].weight.detach().clone()))
        scaling.append(float(module.scaling[adapter_name]))
    if not targets:
        raise ValueError(f"adapter {source!r} adapts no layer of the base model.")
    return ShardAdapter(targets, lora_a, lora_b, scaling)


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy of `logits` against `labels` (-100 is not scored), as transformers' causal LMs
    compute it: the mean over the scored tokens, or, with `num_items_in_batch` (the Trainer's count of scored
    tokens over all its gradient-accumulation steps), their sum divided by that count."""
    logprobs, scored = token_logprobs(logits, labels.to(logits.device))
    count = scored.sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(count):
        count = count.to(logprobs.device)
    return -logprobs.sum() / count


class ShardEnsembleCache(Cache):
    """The key/value caches of the shard models, one per shard; every batch operation (row selection for a
    prompt cache, beam reordering, cropping) applies to all of them."""

    def __init__(self, shard_caches: Sequence[Cache]) -> None:
        super().__init__(layers=[])
        self.shard_caches = list(shard_caches)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Cached positions (the same in every shard)."""
        return self.shard_caches[0].get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows `beam_idx` (in that order, repeats allowed) in every shard's cache."""
        for cache in self.shard_caches:
            cache.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row `repeats` times in every shard's cache."""
        for cache in self.shard_caches:
            cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` in every shard's cache."""
        for cache in self.shard_caches:
            cache.batch_select_indices(indices)

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` positions from every shard's cache (as `Cache.crop`, which takes the
        count as a negative int and refuses a positive one)."""
        for cache in self.shard_caches:
            cache.crop(tokens_to_remove)

    def reset(self) -> None:
        """Empty every shard's cache."""
        for cache in self.shard_caches:
            cache.reset()

    # `generate` reads these of the cache it holds; `Cache` would answer them from its own (empty) layer list,
    # e.g. `is_croppable` True and `is_linear` [] whatever the shards hold.

    def activate_past_recording(self) -> None:
        """Let every shard's cache keep the states that a later `crop` needs (assisted decoding rolls back)."""
        for cache in self.shard_caches:
            cache.activate_past_recording()

    @property
    def is_compileable(self) -> bool:
        """Whether every shard's cache is compileable."""
        return all(cache.is_compileable for cache in self.shard_caches)

    @property
    def is_croppable(self) -> bool:
        """Whether `crop` can put every shard's cache back as it was."""
        return all(cache.is_croppable for cache in self.shard_caches)

    @property
    def is_linear(self) -> list[bool]:
        """Per layer, whether it is a linear-attention layer (the same in every shard: all run the one base)."""
        return self.shard_caches[0].is_linear


class ShardEnsembleForCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LM whose next-token distribution is the mean of its shard models' distributions:
    p(y | x) = (1/k) sum_i p_i(y | x) (SISA's aggregation by averaging).

    `logits` are log p(y | x), so their log-softmax (or logsumexp normalisation) gives the ensemble's
    log-probabilities unchanged, and argmax, greedy decoding and sampling act on the ensemble's distribution.
    The base is stored once; shard i runs as the base with its LoRA update added in the adapted layers
    (`ShardAdapter`), so the base's modules stay plain transformers modules (which attacks such as
    quantization act on). The model takes the arguments of a transformers causal LM (attention_mask,
    position_ids, the cache under either of its names, logits_to_keep, labels); caches come back as a
    `ShardEnsembleCache` holding one cache per shard.
    """

    # The shard models run the base's own attention; the ensemble adds none of its own.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, base: PreTrainedModel, shards: Sequence[ShardAdapter]) -> None:
        if not shards:
            raise ValueError("a shard ensemble needs at least one shard adapter.")
        super().__init__(base.config)
        self.base = base
        self.shards = nn.ModuleList(shards)
        self.generation_config = base.generation_config

    def _shard_caches(self, cache: Cache | None, use_cache: bool) -> list[Cache | None]:
        if isinstance(cache, ShardEnsembleCache):
            return cache.shard_caches
        if cache is not None and cache.get_seq_length() > 0:
            raise TypeError(
                f"a shard ensemble continues from the ShardEnsembleCache it returned, not from a filled "
                f"{type(cache).__name__}."
            )
        # An empty cache (what `generate` prepares for a plain model) is replaced by one cache per shard.
        return [DynamicCache(config=self.config) if use_cache else None for _ in self.shards]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Run every shard model on the inputs and return the log of their mean next-token probabilities as
        `logits` (float32), with the causal LM loss of those when `labels` are given. The cache comes as
        `cache` (transformers 5.24 and later) or `past_key_values` (earlier releases)."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if cache is not None and past_key_values is not None:
            raise TypeError("pass the cache once, as `cache` or as `past_key_values`, not both.")
        cache = cache if cache is not None else past_key_values
        caches = self._shard_caches(cache, use_cache)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "use_cache": use_cache,
            **kwargs,
        }
        keeps_logits = "logits_to_keep" in compat.forward_parameters(self.base)
        if keeps_logits:
            inputs["logits_to_keep"] = logits_to_keep
        log_sum = None
        for shard, shard_cache in zip(self.shards, caches, strict=True):
            with shard.applied_to(self.base):
                logits = self.base(**inputs, **compat.cache_kwargs(self.base, shard_cache)).logits
            if not keeps_logits and isinstance(logits_to_keep, int) and logits_to_keep > 0:
                logits = logits[:, -logits_to_keep:]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            # A running log-sum-exp keeps two [batch, positions, vocab] tensors alive, not one per shard.
            log_sum = log_probs if log_sum is None else torch.logaddexp(log_sum, log_probs)
        logits = log_sum - math.log(len(self.shards))
        loss = None if labels is None else causal_lm_loss(logits, labels, num_items_in_batch)
        ensemble_cache = None
        if use_cache:
            ensemble_cache = cache if isinstance(cache, ShardEnsembleCache) else ShardEnsembleCache(caches)
        return compat.causal_lm_output(loss=loss, logits=logits, cache=ensemble_cache)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        """Refused: as one checkpoint the ensemble would reload as its base model alone."""
        raise TypeError(
            "a shard ensemble is stored as its SISA directory (sisa.json and shards/); copy that directory, "
            "which llm_unlearn.models.load_model_and_tokenizer loads back as the ensemble."
        )


def load_ensemble(path: str | os.PathLike, base: PreTrainedModel) -> ShardEnsembleForCausalLM:
    """The SISA directory `path` as a `ShardEnsembleForCausalLM` on `base`, after checking every served adapter
    against the hashes in sisa.json. `base` must be the run's base model as sisa.json records it
    (`llm_unlearn.sisa.base_model_kwargs`); it becomes the ensemble's base, not a copy."""
    record = read_sisa_record(path)
    checkpoints = served_checkpoints(path, record)
    names = [f"shard-{shard['index']}" for shard in record["shards"]]
    peft_model = PeftModel.from_pretrained(base, str(checkpoints[0]), adapter_name=names[0])
    for name, checkpoint in zip(names[1:], checkpoints[1:], strict=True):
        peft_model.load_adapter(str(checkpoint), adapter_name=name)
    shards = [
        shard_adapter_from_peft(peft_model, name, str(checkpoint))
        for name, checkpoint in zip(names, checkpoints, strict=True)
    ]
    model = ShardEnsembleForCausalLM(peft_model.unload(), shards)
    model.name_or_path = str(path)
    return model.eval()
