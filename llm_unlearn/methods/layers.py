"""Finding a causal LM's decoder blocks and capturing one block's output, for activation-level methods such as
RMU (Li et al. 2024, arXiv 2403.03218).

Layer paths are module names relative to the model inside any data-parallel container (DDP, DeepSpeed, FSDP), so
one path names the same block in the trained model, in a frozen copy of it, and in a PeftModel with adapters off.
"""

from __future__ import annotations

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

# Wrappers that gather and release sharded weights in hooks around the whole forward pass: aborting their forward
# would leave that state broken, so under them the forward runs to the end. Matched by class name so that neither
# DeepSpeed nor a particular torch version's FSDP module path has to be importable. The names are checked against
# the installed torch (and deepspeed, where installed) by tests/test_compat_training.py.
_RUN_TO_END_WRAPPERS = frozenset({"FullyShardedDataParallel", "FSDPModule", "DeepSpeedEngine"})


class _StopForward(Exception):
    """Raised by the capture hook to end a forward pass once the hooked layer has produced its output."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return `(path, blocks)`: the first `ModuleList` (in module order) whose length is the config's number of
    hidden layers, found the same way for every model family and through a PeftModel wrapper."""
    inner = extract_model_from_parallel(model)
    config = getattr(inner, "config", None)
    count = getattr(config.get_text_config(), "num_hidden_layers", None) if config is not None else None
    if count is None:
        raise ValueError(
            f"cannot find the decoder layers of {type(inner).__name__}: it has no config with num_hidden_layers."
        )
    for name, module in inner.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ValueError(
        f"cannot find the decoder layers of {type(inner).__name__}: no ModuleList has num_hidden_layers={count} "
        "entries."
    )


def capture_layer_output(model: nn.Module, layer_path: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run `model` on `inputs` and return the hidden states output by the block at `layer_path`; the forward pass
    stops right after that block (no later layers, no LM head) unless a sharding wrapper needs it to finish."""
    if isinstance(model, nn.DataParallel):
        # Its replicas would each fire the hook on a slice of the batch in another thread.
        raise ValueError(
            "capturing activations needs one process per device (accelerate launch or torchrun)."
        )
    block = extract_model_from_parallel(model).get_submodule(layer_path)
    stop_early = not _RUN_TO_END_WRAPPERS & {cls.__name__ for cls in type(model).__mro__}
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        if stop_early:
            raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    except _StopForward:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            # DDP arms its gradient all-reduce at the end of its forward, which the early stop skipped. No public
            # API does this; tests/test_compat_training.py checks that _post_forward(output) still exists.
            return model._post_forward(captured[0])
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward pass of {type(model).__name__} never ran the module {layer_path!r}.")
    return captured[0]
