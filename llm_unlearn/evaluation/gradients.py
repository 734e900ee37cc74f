"""Per-item gradient norms for the GradNorm membership score (docs/metrics.md#gradnorm)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llm_unlearn.data.formatting import IGNORE_INDEX


def gradient_norms(
    model: PreTrainedModel, encoded: Sequence[dict[str, list[int]]], *, progress: str | None = None
) -> list[float]:
    """The L2 norm of the gradient of each item's mean answer NLL with respect to the model's trainable
    parameters (all parameters when none is marked trainable), one item at a time as GradNorm prescribes
    (batch size 1; docs/metrics.md#gradnorm). The model's own `.grad` buffers are left untouched."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    frozen = not parameters
    if frozen:
        parameters = list(model.parameters())
    was_training = model.training
    # Dropout off: the score is a property of the model, not of a random mask.
    model.eval()
    norms = []
    try:
        for parameter in parameters if frozen else ():
            parameter.requires_grad_(True)
        for item in tqdm(encoded, desc=progress, disable=progress is None):
            input_ids = torch.tensor([item["input_ids"]], device=model.device)
            labels = torch.tensor([item["labels"]], device=model.device)
            logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
            # autograd.grad returns the gradients instead of accumulating into .grad, so evaluating inside a
            # training loop (the eval callback) cannot disturb the optimizer's gradients.
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            squared = sum(grad.float().square().sum() for grad in grads if grad is not None)
            norms.append(float(torch.as_tensor(squared).sqrt()))
    finally:
        for parameter in parameters if frozen else ():
            parameter.requires_grad_(False)
        model.train(was_training)
    return norms
