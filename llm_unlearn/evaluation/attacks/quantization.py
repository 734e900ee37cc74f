"""Quantization attack (Zhang et al. 2024, arXiv 2410.16454; docs/attacks.md#quantization): re-measure the model with
round-to-nearest quantized weights. Unlearning with a utility constraint moves weights by less than a 4-bit
quantization step, so rounding can land them back where the fine-tuned model had them: about 21% of the
forgotten knowledge was kept at full precision, about 83% after 4-bit quantization."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel

from llm_unlearn.evaluation.attacks.base import (
    AttackContext,
    measure,
    register_attack,
    restored_afterwards,
    retain_remeasure,
    whole_split,
)
from llm_unlearn.methods.layers import decoder_layers


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Round-to-nearest symmetric absmax quantization of a `[out, in]` weight, returned dequantized in the
    weight's dtype: each output row (or each group of `group_size` consecutive input columns of it; the last
    group may be shorter) is scaled by absmax / (2^(bits-1) - 1) and rounded (half to even) to an integer level
    in [-(2^(bits-1) - 1), 2^(bits-1) - 1] (Zhang et al. 2024, arXiv 2410.16454; docs/attacks.md#quantization)."""
    if weight.ndim != 2:
        raise ValueError(f"quantize_rtn takes a 2-D [out, in] weight, got shape {tuple(weight.shape)}.")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}.")
    if group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise ValueError(
            f"group_size must be a positive integer or None (one group per row), got {group_size!r}."
        )
    rows, columns = weight.shape
    width = columns if group_size is None else min(group_size, columns)
    padded = -(-columns // width) * width
    # Zero padding completes the last group without raising its absmax.
    groups = torch.nn.functional.pad(weight.float(), (0, padded - columns)).view(rows, -1, width)
    max_level = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(dim=-1, keepdim=True) / max_level
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays all zero
    dequantized = torch.round(groups / scale) * scale
    return dequantized.view(rows, padded)[:, :columns].to(weight.dtype)


def decoder_linear_weights(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """The weight of every `torch.nn.Linear` inside the model's decoder layers (`decoder_layers`: the blocks
    the config counts), by parameter name."""
    layers_path, layers = decoder_layers(model)
    weights: dict[str, torch.nn.Parameter] = {}
    for index, layer in enumerate(layers):
        layer_name = f"{layers_path}.{index}"
        for name, module in layer.named_modules():
            if isinstance(module, BaseTunerLayer):
                raise ValueError(
                    f"{layer_name}.{name} is a PEFT adapter layer; quantize the merged model "
                    "(PeftModel.merge_and_unload()), as a quantized checkpoint would hold it."
                )
            if isinstance(module, torch.nn.Linear):
                weights[f"{layer_name}.{name}.weight"] = module.weight
    if not weights:
        raise ValueError(
            f"found no linear layer inside the decoder layers of {type(model).__name__} ({layers_path}); the "
            "quantization attack cannot run on it."
        )
    return weights


# 8-bit: one scale per output channel, as in LLM.int8() and the usual 8-bit RTN. 4-bit: groups of 128 input
# columns, the common GPTQ / AWQ 4-bit setting: with one scale per channel, 4-bit rounding degrades a model
# far more, and a user would not ship that checkpoint.
@register_attack("quantize_8bit", bits=8, group_size=None)
@register_attack("quantize_4bit", bits=4, group_size=128)
def quantize(context: AttackContext, *, bits: int, group_size: int | None) -> dict:
    """Re-measure the forget and retain splits with every linear weight of the decoder layers replaced by its
    `quantize_rtn` value (Zhang et al. 2024, arXiv 2410.16454; docs/attacks.md#quantization); retain shows whether
    utility survives the rounding. Embeddings and lm_head keep full precision, as weight-only quantizers (GPTQ,
    AWQ, bitsandbytes) leave them by default, so this measures what a user of a quantized checkpoint gets."""
    remeasures = {
        context.forget_split: whole_split(context, context.forget_split),
        **retain_remeasure(context),
    }
    weights = decoder_linear_weights(context.model)
    with restored_afterwards(context.model, weights):
        with torch.no_grad():
            for weight in weights.values():
                weight.copy_(quantize_rtn(weight, bits, group_size))
        measured = measure(context, remeasures)
    groups = "per output channel" if group_size is None else f"in groups of {group_size} input columns"
    return {
        "description": f"{bits}-bit round-to-nearest weights ({groups}) in every decoder-layer linear layer",
        "num_quantized_weights": len(weights),
        **measured,
    }
